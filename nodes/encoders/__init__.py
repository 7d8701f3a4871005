"""ComfyUI-side Qwen2.5-VL encoders: core CLIP, Hugging Face folders, the v1.2 VLM."""

"""Qwen2.5-VL prompt and image logic of the encoders (v1.0/v1.1 and v1.2)."""

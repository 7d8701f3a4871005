"""ComfyUI-side runtime of the DiT: the native model, CFG guider, loading, folders, capability checks,
the v1.2 edit."""

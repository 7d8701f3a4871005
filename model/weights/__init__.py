"""Weight files: checkpoint layouts, key maps, the loader, LoRA."""

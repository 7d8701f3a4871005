"""The Step1X-Edit DiT: layers, connector, transformer, version presets, sampling loops."""

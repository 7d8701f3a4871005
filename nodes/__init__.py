"""ComfyUI nodes of the Step1X-Edit pack: thin adapters from ComfyUI types to ``model/``."""

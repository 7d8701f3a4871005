"""ComfyUI entry point of the Step1X-Edit node pack (V3 schema, ``comfy_api.latest``).

Importing this file only registers the nodes; models load when a node runs. ComfyUI imports
``comfy.model_management`` before it loads custom nodes; anything else that imports this folder as
a package (pytest, multiprocessing children) registers nothing and touches no device.
"""
import sys

# ComfyUI imports this folder as a package (a name for the relative import below); pytest may import this
# file on its own while collecting tests, after a test module has imported ComfyUI.
if "comfy.model_management" in sys.modules and __package__:
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401  (probe for the V3 schema)
    except ImportError as error:
        raise ImportError(
            "the Step1X-Edit nodes need ComfyUI 0.3.75 or newer (the comfy_api.latest V3 node schema); "
            "update ComfyUI."
        ) from error
    from .nodes.extension import comfy_entrypoint  # noqa: F401

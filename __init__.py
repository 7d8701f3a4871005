"""ComfyUI entry point of the Step1X-Edit node pack (V3 schema, ``comfy_api.latest``).

Importing this file only registers the nodes; models load when a node runs. Outside ComfyUI (for
example when pytest imports this repository as a package) there is nothing to register.
"""
from importlib.util import find_spec

if find_spec("comfy") is not None:
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401  (probe for the V3 schema)
    except ImportError as error:
        raise ImportError(
            "the Step1X-Edit nodes need ComfyUI 0.3.75 or newer (the comfy_api.latest V3 node schema); "
            "update ComfyUI."
        ) from error
    from .nodes.extension import comfy_entrypoint  # noqa: F401

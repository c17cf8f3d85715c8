"""comfyui-atelier: sketches, glyphs and style references to finished commercial images.

ComfyUI imports this file when it loads the pack from custom_nodes/ (under whatever folder
name it was cloned as). Outside ComfyUI (the torch-free client, the CLI, unit tests of the
core) nothing is registered, so importing `comfyui_atelier.client` stays cheap.
"""
from importlib.util import find_spec

WEB_DIRECTORY = "./js"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if find_spec("folder_paths") is not None:  # running inside ComfyUI
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

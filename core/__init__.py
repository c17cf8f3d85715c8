"""Pure core of comfyui-atelier: algorithms over numpy arrays and torch tensors.

No `import comfy`, no `folder_paths`: everything here runs and is tested without ComfyUI.
"""

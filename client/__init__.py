"""Torch-free client: workflow conversion, batch submission to ComfyUI servers, the model
downloader CLI and the runtime launcher. Imports only the standard library, so it runs on a
laptop that only talks to a GPU box."""

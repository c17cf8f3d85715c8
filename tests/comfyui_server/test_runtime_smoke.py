"""The harness itself: a real ComfyUI server starts with the pack and runs a plain SD1.5 graph."""


def test_plain_sd15_graph_runs_on_tiny_models(comfy_server, tiny_sd15):
    from PIL import Image

    assert tiny_sd15["checkpoints"].exists()
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15["checkpoints"].name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a chair"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                    "latent_image": ["3", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "smoke"}},
    }
    files = comfy_server.output_files(comfy_server.run(prompt), "6")
    assert len(files) == 1 and files[0].is_file()
    assert Image.open(files[0]).size == (64, 64)

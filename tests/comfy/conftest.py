"""Fixtures for graph tests: MUSIQ weights files in the host's models/iqa folder, graph helpers."""

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import musiq_with_level

KONIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"


@pytest.fixture(scope="session")
def iqa_files(host, musiq_random_state):
    """Weights files the IQA node can load: pyiqa's file name (level 55, `params`-wrapped .pth), fixed levels as
    safetensors, and a random-feature model whose scores differ from image to image."""
    d = host.models_dir / "iqa"
    torch.save({"params": musiq_with_level(musiq_random_state, 55.0)}, d / KONIQ_FILE)
    for level in (30.0, 85.0):
        save_file(musiq_with_level(musiq_random_state, level), str(d / f"level{int(level)}.safetensors"))
    spread = dict(musiq_random_state)
    spread["head.weight"] = musiq_random_state["head.weight"] * 400.0
    spread["head.bias"] = torch.full_like(musiq_random_state["head.bias"], 55.0)
    save_file(spread, str(d / "spread.safetensors"))
    return d


@pytest.fixture(scope="session")
def irc_file(host, tiny):
    """A tiny IRControlNet (DiffBIR key layout, seeded) saved in the host's models/diffbir folder."""
    d = host.models_dir / "diffbir"
    d.mkdir(exist_ok=True)
    save_file(tiny.tiny_ircontrolnet_state_dict(0), str(d / "tiny_irc.safetensors"))
    return "tiny_irc.safetensors"


@pytest.fixture(scope="session")
def swinir_file(host):
    """A tiny seeded SwinIR (DiffBIR key layout) saved in the host's models/diffbir folder; returns its name."""
    from tests.comfy.test_cleaners import SWINIR, tiny_swinir

    d = host.models_dir / "diffbir"
    d.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_swinir().state_dict().items()}, str(d / SWINIR))
    return SWINIR


@pytest.fixture(scope="session")
def sm(pack):
    """The pack's SUPIR model module (adapter network, patch) as ComfyUI loaded it."""
    return pack("nodes.supir_model")


@pytest.fixture(scope="session")
def sdxl(tiny):
    """The tiny SDXL model (shared; tests must not patch it in place)."""
    return tiny.tiny_model("sdxl", 0)


def write_kohya_lora(host, file_name: str, layers, seed: int, scale: float) -> str:
    """Save a kohya-style LoRA (rank 4, alpha 4) on 3x3 convolutions ``layers`` = [(lora_unet name, channels)] in
    the host's models/loras folder (registered with ComfyUI); returns ``file_name``."""
    import folder_paths

    d = host.models_dir / "loras"
    d.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(d), is_default=True)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, ch in layers:
        sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, ch, 3, 3, generator=g) * scale
        sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(ch, 4, 1, 1, generator=g) * scale
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    save_file(sd, str(d / file_name))
    return file_name


def image_node(tiny, name, tensor):
    tiny.IMAGES[name] = tensor
    return {"class_type": "AdaptBIRTest_Image", "inputs": {"name": name}}


def iqa_node(image_link, **widgets):
    inputs = {"image": image_link, "metric": "musiq", "weights": "auto", "mode": "adaptbir", "low_threshold": 40.0,
              "high_threshold": 70.0, "k_max": 0.7, "w_max": 1.0, "score_max_side": 0}
    inputs.update(widgets)
    return {"class_type": "AdaptBIR_IQAClassifier", "inputs": inputs}


def sample_images(b=3, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(1, h, w, 3)
    noise = torch.rand(1, h, w, 3, generator=g)
    flat = torch.full((1, h, w, 3), 0.5)
    return torch.cat([ramp, noise, flat, torch.rand(max(0, b - 3), h, w, 3, generator=g)])[:b].contiguous()

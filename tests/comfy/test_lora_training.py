"""LoRA-SUPIR's LoRA training on ComfyUI's own nodes (workflows/supir_lora_training.json's graph) with the tiny SDXL:
a folder of photos + captions -> dataset nodes -> Train LoRA -> Save LoRA; the saved file loads in SUPIR LoRA and in
core's LoRA loader and changes what they produce."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.comfy.test_supir import graph, sampled, supir_files  # noqa: F401  (module fixture)

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "supir_lora_training.json"
FOLDER = "lora_photos"
pytestmark = pytest.mark.slow


def photo_folder(host) -> str:
    """Three photos (different sizes) with caption .txt files in ComfyUI's input folder."""
    d = host.workdir / "input" / FOLDER
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(80, 96), (72, 72), (96, 80)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(d / f"photo{i}.png")
        (d / f"photo{i}.txt").write_text(f"a detailed landscape photo number {i}, mountains and a lake")
    return FOLDER


# TrainLoraNode's outputs as saved in the shipped workflow (ComfyUI 0.3.75); newer ComfyUI (0.12.1) dropped the
# MODEL output, so links into it are looked up by type on the running host
SAVED_TRAIN_OUTPUTS = ("MODEL", "LORA_MODEL", "LOSS_MAP", "INT")


def train_slot(host, io_type: str) -> int:
    """The running host's TrainLoraNode output slot of ``io_type``."""
    return [o.io_type for o in host.node_class("TrainLoraNode").GET_SCHEMA().outputs].index(io_type)


def with_host_defaults(host, class_type: str, inputs: dict) -> dict:
    """``inputs`` plus the running host's defaults for required widgets it lacks (newer ComfyUI added some to
    TrainLoraNode, e.g. bypass_mode and bucket_mode in 0.12.1; the page fills them the same way)."""
    for name, spec in host.node_class(class_type).INPUT_TYPES()["required"].items():
        if name not in inputs and len(spec) > 1 and "default" in spec[1]:
            inputs[name] = spec[1]["default"]
    return inputs


def training_prompt(host, size=64, steps=2, prefix="loras/tiny_trained"):
    """The training workflow's graph in the API format, with the tiny SDXL in place of the checkpoint."""
    lora, loss, count = (train_slot(host, t) for t in ("LORA_MODEL", "LOSS_MAP", "INT"))
    return {
        "1": {"class_type": "AdaptBIRTest_TinyCheckpointLoader", "inputs": {"kind": "sdxl", "seed": 0}},
        "2": {"class_type": "LoadImageTextDataSetFromFolder", "inputs": {"folder": FOLDER}},
        "3": {"class_type": "ResizeImagesByShorterEdge", "inputs": {"images": ["2", 0], "shorter_edge": size}},
        "4": {"class_type": "CenterCropImages", "inputs": {"images": ["3", 0], "width": size, "height": size}},
        "5": {"class_type": "MakeTrainingDataset", "inputs": {
            "images": ["4", 0], "vae": ["1", 2], "clip": ["1", 1], "texts": ["2", 1]}},
        "6": {"class_type": "TrainLoraNode", "inputs": with_host_defaults(host, "TrainLoraNode", {
            "model": ["1", 0], "latents": ["5", 0], "positive": ["5", 1], "batch_size": 1,
            "grad_accumulation_steps": 1, "steps": steps, "learning_rate": 1e-2, "rank": 4, "optimizer": "AdamW",
            "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32", "algorithm": "LoRA",
            "gradient_checkpointing": True, "existing_lora": "[None]"})},
        "7": {"class_type": "SaveLoRA", "inputs": {"lora": ["6", lora], "prefix": prefix, "steps": ["6", count]}},
        "8": {"class_type": "LossGraphNode", "inputs": {"loss": ["6", loss], "filename_prefix": "loss_graph"}},
    }


def check_training_run(host, prompt: dict) -> None:
    """Run the shipped workflow's API prompt (tiny checkpoint in place) on 64 px crops; a LoRA file is saved."""
    photo_folder(host)
    train_ids = {k for k, v in prompt.items() if v["class_type"] == "TrainLoraNode"}
    for node in prompt.values():
        for name, value in node["inputs"].items():  # links into TrainLoraNode: to the running host's slots
            if isinstance(value, list) and len(value) == 2 and value[0] in train_ids:
                node["inputs"][name] = [value[0], train_slot(host, SAVED_TRAIN_OUTPUTS[value[1]])]
    for node in prompt.values():
        inputs = node["inputs"]
        for key in ("shorter_edge", "width", "height"):
            if key in inputs:
                inputs[key] = 64
        if node["class_type"] == "SaveLoRA":
            inputs["prefix"] = "loras/workflow_check"
        if node["class_type"] == "TrainLoraNode":  # bf16 is slow on a CPU; 2 steps (the loss graph needs two)
            inputs.update(training_dtype="fp32", lora_dtype="fp32", steps=2)
            with_host_defaults(host, "TrainLoraNode", inputs)
    host.run(prompt)
    assert list((host.workdir / "output" / "loras").glob("workflow_check_*_steps_*.safetensors"))


@pytest.fixture(scope="module")
def trained_lora(host):
    """Train a few steps through the executor; copy the saved file into models/loras; returns its name."""
    import folder_paths

    photo_folder(host)
    ex = host.run(training_prompt(host))
    losses = host.output(ex, "6", train_slot(host, "LOSS_MAP"))["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    saved = sorted((host.workdir / "output" / "loras").glob("tiny_trained_2_steps_*.safetensors"))
    assert len(saved) == 1, saved
    d = host.models_dir / "loras"
    d.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(d), is_default=True)
    name = "tiny_trained_lora.safetensors"
    (d / name).write_bytes(saved[0].read_bytes())
    return name


def test_saved_lora_is_a_unet_lora_that_training_moved(host, trained_lora):
    sd = load_file(str(host.models_dir / "loras" / trained_lora))
    ups = [k for k in sd if k.endswith(".lora_up.weight")]
    downs = [k for k in sd if k.endswith(".lora_down.weight")]
    assert ups and len(ups) == len(downs) and all(k.startswith("diffusion_model.") for k in sd)
    assert all(sd[k].shape[0] == 4 for k in downs)  # rank 4
    # LoRA starts with lora_down = 0: after training some are non-zero
    assert any(sd[k].abs().max() > 0 for k in downs)


def test_trained_lora_loads_in_supir_lora_and_changes_the_output(host, supir_files, trained_lora, tiny):  # noqa: F811
    import comfy.lora

    base = sampled(host, graph(tiny))
    with_lora = sampled(host, graph(tiny, loras=[(trained_lora, 1.0, 0.0)]))
    assert (base - with_lora).abs().max() > 1e-4
    # and core's LoRA loader turns every trained layer of it into a patch of the SDXL UNet (no key left unused)
    sd = load_file(str(host.models_dir / "loras" / trained_lora))
    model = tiny.tiny_model("sdxl", 0)
    patches = comfy.lora.load_lora(sd, comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=False)
    expected = {k.rsplit(".", 2)[0] + ".weight" for k in sd if k.endswith(".lora_up.weight")}
    expected |= {k[:-len(".diff")] + ".weight" for k in sd if k.endswith(".diff")}
    expected |= {k[:-len(".diff_b")] + ".bias" for k in sd if k.endswith(".diff_b")}
    assert set(patches) == expected and len(expected) > 50
    via_core = sampled(host, graph(tiny, lora_loader=trained_lora))
    assert (via_core - base).abs().max() > 1e-4


def test_shipped_workflow_is_this_graph_with_the_papers_settings(host, pack):
    """workflows/supir_lora_training.json: the same nodes and links, and the paper's settings as defaults."""
    wf = json.loads(WORKFLOW.read_text())
    prompt = pack("batch.workflow").to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS)
    by_type = {v["class_type"]: v["inputs"] for v in prompt.values()}
    ours = training_prompt(host)
    assert set(by_type) == {v["class_type"] for v in ours.values()} - {"AdaptBIRTest_TinyCheckpointLoader"} \
        | {"CheckpointLoaderSimple"}
    train = by_type["TrainLoraNode"]
    assert (train["learning_rate"], train["optimizer"], train["algorithm"]) == (1e-4, "AdamW", "LoRA")
    assert by_type["CenterCropImages"]["width"] == by_type["CenterCropImages"]["height"] == 512
    assert by_type["ResizeImagesByShorterEdge"]["shorter_edge"] == 512
    assert by_type["SaveLoRA"]["prefix"].startswith("loras/")

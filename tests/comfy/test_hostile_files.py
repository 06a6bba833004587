"""Hostile and wrong files for every loader of the pack, through ComfyUI's executor (issue 9, item 1).

One matrix: each loader node x {a pickle that would run code, a zero-byte file, truncated safetensors and .pth,
non-weights files, SD 1.5 / SD 2.1 / SDXL checkpoints, a LoRA, a plain SD VAE, each of the pack's own file kinds}
(plus, for the LoRA loader, a LoRA whose keys match nothing). Every cell must fail on the loader node with a message
that names the file, what the loader expected and what it found; the code-running pickle must leave no marker.

The foreign layouts are ComfyUI's own: the SD 1.5 / 2.1 / SDXL checkpoints are the key names of ComfyUI's model,
text-encoder and VAE classes built on the meta device and put together by ComfyUI's checkpoint-saving code (and
ComfyUI's detection must recognise them); the LoRA uses ComfyUI's kohya key map of that SD 1.5 UNet. Only the names
decide these refusals, so the files hold one-element tensors and stay small.
"""

import inspect
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy.conftest import KONIQ_FILE, image_node, iqa_node, sample_images
from tests.support.comfy_host import ExecutionFailed

PREFIX = "hostile_"
FOLDERS = ("iqa", "diffbir", "supir", "loras", "facedetection", "hypir")
SUPIR_OK = PREFIX + "ok_supir.safetensors"  # a loadable tiny SUPIR file, for the LoRA loader's row

# loader -> (node that must fail, model folder, phrase of what it expects)
LOADERS = {
    "iqa": ("AdaptBIR_IQAClassifier", "iqa", "MUSIQ weights"),
    "ircontrolnet": ("AdaptBIR_IRControlNetLoader", "diffbir", "IRControlNet"),
    "restoration_vae": ("AdaptBIR_RestorationVAELoader", "diffbir", "restoration encoder"),
    "csft": ("AdaptBIR_CSFTLoader", "diffbir", "CSFT weights"),
    "restorer": ("AdaptBIR_RestorerLoader", "diffbir", "stage-1 SwinIR restorer"),
    "supir": ("AdaptBIR_LoRASUPIRLoader", "supir", "SUPIR weights"),
    "lora": ("AdaptBIR_LoRASUPIRLoader", "loras", "LoRA"),
    "face_detector": ("AdaptBIR_FaceDetectorLoader", "facedetection", "RetinaFace-R50 face detector"),
    "face_parser": ("AdaptBIR_FaceParserLoader", "facedetection", "ParseNet face parsing weights"),
    "hypir": ("AdaptBIR_HYPIRLoader", "hypir", "HYPIR weights"),
}

# sample -> (file name, phrase of what the message must say was found)
BROKEN = {
    "code_pickle": ("code.pth", "pickle that would run code"),
    "zero_bytes": ("zero.safetensors", "empty (0-byte)"),
    "truncated_safetensors": ("cut.safetensors", "could not be read safely"),
    "truncated_pth": ("cut.pth", "could not be read safely"),
    "text_file": ("readme.safetensors", "could not be read safely"),
    "random_bytes": ("noise.pth", "could not be read safely"),
}
FAMILIES = {
    "sd15": ("sd15.safetensors", "Stable Diffusion checkpoint (SD 1.x"),
    "sd21": ("sd21.safetensors", "Stable Diffusion checkpoint (SD 2.x"),
    "sdxl": ("sdxl.safetensors", "SDXL checkpoint"),
    "lora": ("lora_sd15.safetensors", "a LoRA"),
    "sd_vae": ("sd_vae.safetensors", "a VAE"),
    # the pack's own kinds
    "ircontrolnet": ("irc.safetensors", "IRControlNet"),
    "swinir": ("swinir.safetensors", "SwinIR"),
    "csft": ("csft.safetensors", "CSFT"),
    "denoise_encoder": ("denoise_encoder.safetensors", "restoration encoder"),
    "restoration_vae_export": ("restoration_vae.safetensors", "VAE"),
    "supir": ("supir.safetensors", "SUPIR"),
    "musiq": ("musiq.safetensors", "MUSIQ"),
    "retinaface": ("retinaface.safetensors", "RetinaFace face detector"),
    "parsenet": ("parsenet.safetensors", "ParseNet face parsing"),
    "hypir": ("hypir.safetensors", "HYPIR"),
}
NOMATCH = ("lora_nomatch.safetensors", "match no layer")
# files a loader accepts (its own kind, or one it is documented to read)
ACCEPTED = {("ircontrolnet", "ircontrolnet"), ("restorer", "swinir"), ("csft", "csft"),
            ("restoration_vae", "denoise_encoder"), ("restoration_vae", "supir"), ("supir", "supir"),
            ("iqa", "musiq"), ("lora", "lora"), ("face_detector", "retinaface"),
            ("face_parser", "parsenet"), ("hypir", "hypir")}


def _cells():
    for loader in LOADERS:
        for sample in BROKEN:
            yield loader, sample
        for sample in FAMILIES:
            if (loader, sample) not in ACCEPTED:
                yield loader, sample
    yield "lora", "lora_nomatch"


class _Marker:
    """Unpickling this object would create ``path``: proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------ layouts

_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
         "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
         "use_temporal_resblock": False}
SD15_UNET = dict(_UNET, adm_in_channels=None, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=768, num_heads=8)
SD21_UNET = dict(SD15_UNET, use_linear_in_transformer=True, context_dim=1024, num_heads=-1, num_head_channels=64)
SDXL_UNET = dict(_UNET, adm_in_channels=2816, num_classes="sequential", num_res_blocks=[2, 2, 2],
                 channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                 use_linear_in_transformer=True, context_dim=2048, num_heads=-1, num_head_channels=64)


def meta_checkpoint(kind: str, vae_config: dict):
    """(key names of a whole ``kind`` checkpoint as ComfyUI saves it, the meta BaseModel). ``kind``: sd15, sd21,
    sdxl; ``vae_config``: the SD KL VAE's. Asserts that ComfyUI's own detection recognises the UNet part as that
    architecture."""
    import comfy.model_base
    import comfy.model_detection
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models as sm
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.text_encoders.sd2_clip import SD2ClipModel

    unet, config, model_class, clip_class = {
        "sd15": (SD15_UNET, sm.SD15, comfy.model_base.BaseModel, comfy.sd1_clip.SD1ClipModel),
        "sd21": (SD21_UNET, sm.SD20, comfy.model_base.BaseModel, SD2ClipModel),
        "sdxl": (SDXL_UNET, sm.SDXL, comfy.model_base.SDXL, comfy.sdxl_clip.SDXLClipModel)}[kind]
    base = model_class(config(dict(unet)), device="meta")
    clip = clip_class(device="meta")
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    parts = {"clip_state_dict": clip.state_dict(), "vae_state_dict": vae.state_dict()}
    if "unet_state_dict" in inspect.signature(base.state_dict_for_saving).parameters:  # ComfyUI 0.12 asks for it
        parts["unet_state_dict"] = base.diffusion_model.state_dict()
    sd = base.state_dict_for_saving(**parts)
    assert type(comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")) is config
    return sorted(sd), base


def names_only(keys) -> dict:
    """One-element tensors under the given names: enough where a loader decides by names."""
    return {k: torch.zeros(1, dtype=torch.float16) for k in keys}


def sd_vae_keys(vae_config: dict):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        return sorted(AutoencoderKL(**vae_config).state_dict())


def sd15_lora_keys(sd15_model):
    """A kohya LoRA (rank 4) on the attention projections of SD 1.5's UNet, named by ComfyUI's LoRA key map."""
    import comfy.lora

    names = sorted(k for k in comfy.lora.model_lora_keys_unet(sd15_model, {}) if k.startswith("lora_unet_")
                   and "_attn1_to_" in k)[:24]
    assert names
    return [f"{n}.{part}" for n in names for part in ("lora_down.weight", "lora_up.weight", "alpha")]


@pytest.fixture(scope="module")
def hostile(host, pack, tiny, sm, sdxl, tmp_path_factory):
    """Every sample in every pack model folder (and models/loras) under ``hostile_<name>``; returns the marker path
    that the code-running pickle would create."""
    import folder_paths
    from pyiqa.archs.musiq_arch import MUSIQ

    from tests.comfy.test_cleaners import tiny_swinir
    from tests.comfy.test_supir import tiny_adapter_sd

    src = tmp_path_factory.mktemp("hostile_src")
    marker = tmp_path_factory.mktemp("hostile_marker") / "code_ran"
    loras = host.models_dir / "loras"
    loras.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)

    # broken files
    torch.save({"weight": torch.zeros(4), "payload": _Marker(marker)}, src / BROKEN["code_pickle"][0])
    (src / BROKEN["zero_bytes"][0]).write_bytes(b"")
    g = torch.Generator().manual_seed(0)
    real = {f"block.{i}.weight": torch.randn(64, 64, generator=g) for i in range(4)}
    save_file(real, str(src / "whole.safetensors"))
    torch.save(real, src / "whole.pth")
    for whole, cut in (("whole.safetensors", BROKEN["truncated_safetensors"][0]),
                       ("whole.pth", BROKEN["truncated_pth"][0])):
        data = (src / whole).read_bytes()
        (src / cut).write_bytes(data[: len(data) * 3 // 4])
    (src / BROKEN["text_file"][0]).write_text("This folder holds the model weights.\n" * 20)
    (src / BROKEN["random_bytes"][0]).write_bytes(torch.randint(0, 256, (4096,), generator=g,
                                                                dtype=torch.uint8).numpy().tobytes())

    # other families, by their real key names
    vae_config = pack("nodes.restoration_vae").SD_KL_CONFIG
    vae_keys = sd_vae_keys(vae_config)
    sd15_keys, sd15_model = meta_checkpoint("sd15", vae_config)
    files = {"sd15": names_only(sd15_keys), "sd21": names_only(meta_checkpoint("sd21", vae_config)[0]),
             "sdxl": names_only(meta_checkpoint("sdxl", vae_config)[0]),
             "lora": names_only(sd15_lora_keys(sd15_model)), "sd_vae": names_only(vae_keys)}
    # the pack's own kinds
    files["ircontrolnet"] = names_only(tiny.tiny_ircontrolnet_state_dict(0))
    files["swinir"] = names_only(tiny_swinir().state_dict())
    files["denoise_encoder"] = names_only("denoise_encoder." + k[len("encoder."):] for k in vae_keys
                                          if k.startswith("encoder."))
    with torch.device("meta"):
        musiq_keys = list(MUSIQ(pretrained=False, pretrained_model_path=None, num_class=1).state_dict())
    files["musiq"] = names_only(musiq_keys)
    from tests.comfy.test_faces import tiny_detector_state_dict, tiny_parser_state_dict
    files["retinaface"] = names_only(tiny_detector_state_dict())
    files["parsenet"] = names_only(tiny_parser_state_dict())
    metadata = {"csft": {"adaptbir_kind": "csft", "format_version": "1"},
                "restoration_vae_export": {"adaptbir_kind": "restoration_vae", "format_version": "1"}}
    files["csft"] = names_only(tiny.tiny_csft_state_dict(0))
    files["restoration_vae_export"] = names_only(vae_keys)
    supir = tiny_adapter_sd(sm, sdxl, tiny, 5)  # a real tiny SUPIR (bare layout) with its denoise encoder
    supir.update({"denoise_encoder." + k[len("encoder."):]: v for k, v in tiny._vae_weights(3, 4).items()
                  if k.startswith("encoder.")})
    files["supir"] = {k: v.contiguous() for k, v in supir.items()}
    from tests.comfy.test_hypir import tiny_hypir_state_dict

    files["hypir"] = names_only(tiny_hypir_state_dict(tiny))
    for sample, sd in files.items():
        save_file(sd, str(src / FAMILIES[sample][0]), metadata=metadata.get(sample))
    save_file({f"lora_unet_no_such_block_{i}.{p}": torch.zeros(1) for i in range(3)
               for p in ("lora_down.weight", "lora_up.weight", "alpha")}, str(src / NOMATCH[0]))

    for folder in FOLDERS:
        d = host.models_dir / folder
        d.mkdir(exist_ok=True)
        for f in src.iterdir():
            shutil.copyfile(f, d / (PREFIX + f.name))
    shutil.copyfile(src / FAMILIES["supir"][0], host.models_dir / "supir" / SUPIR_OK)
    return marker


# ------------------------------------------------------------------------------------------------ graphs


def loader_graph(tiny, loader: str, name: str) -> dict:
    """The loader node alone (fed by tiny models where it needs them), its output into a sink."""
    sink = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["5", 0]}}
    if loader == "iqa":
        return {"1": image_node(tiny, "hostile", sample_images(1, 32, 32)), "5": iqa_node(["1", 0], weights=name)}
    if loader in ("supir", "lora"):
        p = {"2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sdxl", "seed": 0}},
             "5": {"class_type": "AdaptBIR_LoRASUPIRLoader", "inputs": {
                 "model": ["2", 0], "vae": ["2", 1], "supir_name": name if loader == "supir" else SUPIR_OK}},
             "9": dict(sink, inputs={"value": ["5", 3]})}
        if loader == "lora":
            p["3"] = {"class_type": "AdaptBIR_SUPIRLoRA", "inputs": {
                "lora_name": name, "strength_model": 1.0, "strength_clip": 0.0, "strength_adapter": 0.0}}
            p["5"]["inputs"]["loras"] = ["3", 0]
        return p
    if loader == "hypir":
        return {"2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
                "5": {"class_type": "AdaptBIR_HYPIRLoader", "inputs": {"model": ["2", 0], "hypir_name": name,
                                                                       "strength": 1.0}}, "9": sink}
    node, _, _ = LOADERS[loader]
    widget = {"ircontrolnet": "control_net_name", "restoration_vae": "ckpt_name", "csft": "csft_name",
              "restorer": "restorer_name", "face_detector": "detector_name", "face_parser": "parser_name"}[loader]
    inputs = {widget: name}
    if loader == "restorer":
        inputs["precision"] = "fp32"
    return {"5": {"class_type": node, "inputs": inputs}, "9": sink}


def assert_names_file_expected_found(msg: str, name: str, expected: str, found: str):
    """The message names the file; what was expected comes before 'found', what was found after it."""
    assert name in msg, msg
    head, sep, tail = msg.partition(" found ")
    assert sep, f"no 'found' in: {msg}"
    assert expected in head, msg
    assert found.lower() in tail.lower(), msg


# ------------------------------------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("loader,sample", list(_cells()))
def test_loader_refuses_hostile_and_wrong_files(host, tiny, hostile, loader, sample):
    node, _, expected = LOADERS[loader]
    fname, found = BROKEN.get(sample) or FAMILIES.get(sample) or NOMATCH
    name = PREFIX + fname
    assert not hostile.exists()
    with pytest.raises(ExecutionFailed) as e:
        host.run(loader_graph(tiny, loader, name))
    assert not hostile.exists(), "loading the pickle ran its code"
    assert e.value.node_type == node, e.value
    assert e.value.exception_type.endswith("PackError"), e.value
    msg = e.value.exception_message
    assert_names_file_expected_found(msg, name, expected, found)
    if sample == "code_pickle":
        assert "it was not executed" in msg and "open" in msg, msg
    assert "\x1b[" not in msg and "weights_only` set to `False" not in msg, msg


def test_the_tiny_supir_file_itself_loads(host, tiny, hostile):
    """The LoRA row's refusals come from the LoRA: the same graph with no LoRA runs."""
    p = loader_graph(tiny, "lora", PREFIX + NOMATCH[0])
    del p["3"], p["5"]["inputs"]["loras"]
    host.run(p)


# ------------------------------------------------------------------------------------------------ paths


@pytest.fixture(scope="module")
def escape(host, hostile):
    """hostile_escape.safetensors both in models/ (outside every model folder) and inside each folder, so a
    name like ../hostile_escape.safetensors would reach a real file if it were followed or silently mapped."""
    src = host.models_dir / "diffbir" / (PREFIX + FAMILIES["sd15"][0])
    name = PREFIX + "escape.safetensors"
    shutil.copyfile(src, host.models_dir / name)
    for folder in FOLDERS:
        shutil.copyfile(src, host.models_dir / folder / name)
    return name


def _execute(host, tiny, loader: str, name: str):
    cls = host.node_class(LOADERS[loader][0])
    if loader == "iqa":
        return cls.execute(sample_images(1, 32, 32), weights=name)
    if loader == "ircontrolnet":
        return cls.execute(control_net_name=name)
    if loader == "restoration_vae":
        return cls.execute(ckpt_name=name)
    if loader == "csft":
        return cls.execute(csft_name=name)
    if loader == "restorer":
        return cls.execute(restorer_name=name, precision="fp32")
    if loader == "face_detector":
        return cls.execute(detector_name=name)
    if loader == "face_parser":
        return cls.execute(parser_name=name)
    if loader == "hypir":
        return cls.execute(model=tiny.tiny_model("sd2-eps", 0), hypir_name=name)
    model, vae = tiny.tiny_model("sdxl", 0), tiny.tiny_vae(0)
    if loader == "supir":
        return cls.execute(model=model, vae=vae, supir_name=name)
    entry = {"name": name, "strength_model": 1.0, "strength_clip": 0.0, "strength_adapter": 0.0}
    return cls.execute(model=model, vae=vae, supir_name=SUPIR_OK, loras=[entry])


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("how", ["dotdot", "nested_dotdot", "absolute", "backslash"])
def test_names_that_leave_the_model_folder_are_refused(host, tiny, escape, loader, how):
    name = {"dotdot": f"../{escape}", "nested_dotdot": f"sub/../../{escape}",
            "absolute": str(host.models_dir / escape), "backslash": f"..\\{escape}"}[how]
    with pytest.raises(ValueError) as e:
        _execute(host, tiny, loader, name)
    assert type(e.value).__name__ == "PackError"
    msg = str(e.value)
    assert name in msg and f"expected a file name inside the '{LOADERS[loader][1]}' model folder" in msg, msg
    assert "found a path that leads outside it" in msg, msg
    cls = host.node_class(LOADERS[loader][0])
    if loader not in ("iqa", "lora"):  # the fingerprint of a refused name is None, not the escaped file's
        widget = {"ircontrolnet": "control_net_name", "restoration_vae": "ckpt_name", "csft": "csft_name",
                  "restorer": "restorer_name", "supir": "supir_name", "face_detector": "detector_name",
                  "face_parser": "parser_name", "hypir": "hypir_name"}[loader]
        fp = cls.fingerprint_inputs(**{widget: name})
        assert fp is None or (isinstance(fp, tuple) and fp[-1] is None), fp


@pytest.mark.parametrize("loader", ["ircontrolnet", "supir", "lora", "iqa", "face_detector", "face_parser", "hypir"])
def test_such_names_are_refused_through_the_executor_too(host, tiny, escape, loader):
    """ComfyUI 0.3.75 lets a combo value outside the list reach the node, so the loader's own check is what
    refuses it: when the prompt is validated, before anything runs (ComfyUI 0.12.1, which checks V3 combo values
    itself, may refuse it there as a value not in the list)."""
    name = f"../{escape}"
    prompt = loader_graph(tiny, loader, name)
    valid, _, _, node_errors = host.validate(prompt)
    assert not valid
    refusing = "AdaptBIR_SUPIRLoRA" if loader == "lora" else LOADERS[loader][0]  # the node with the file widget
    (nid, err), = [(k, v) for k, v in node_errors.items() if v["class_type"] == refusing]
    details = " ".join(str(r.get("details")) for r in err["errors"])
    if all(r.get("type") == "value_not_in_list" for r in err["errors"]):
        assert name in details, details
        return
    assert f"model file '{name}'" in details and "found a path that leads outside it" in details, details


# ------------------------------------------------------------------------------------------------ MUSIQ


def test_musiq_weights_are_read_weights_only_and_scored_without_pyiqa(host, pack, tiny, iqa_files, monkeypatch):
    """pyiqa's own loader uses torch.load(weights_only=False); the pack reads the .pth itself, weights-only, into
    its own MUSIQ (modules/musiq.py): pyiqa's class is never built at run time (pyiqa is only a test reference)."""
    import pyiqa.archs.musiq_arch

    loads = []
    real_load = torch.load

    def guarded_load(f, *args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load without weights_only=True on {f}")
        loads.append(os.path.basename(str(f)))
        return real_load(f, *args, **kwargs)

    def no_pyiqa(self, *args, **kwargs):
        raise AssertionError("the pack built pyiqa's MUSIQ at run time")

    monkeypatch.setattr(torch, "load", guarded_load)
    monkeypatch.setattr(pyiqa.archs.musiq_arch.MUSIQ, "__init__", no_pyiqa)
    cache = pack("nodes.iqa").MUSIQ_CACHE
    cache.clear()
    try:
        ex = host.run({"1": image_node(tiny, "hostile_iqa", sample_images(1, 32, 32)),
                       "2": iqa_node(["1", 0], weights=KONIQ_FILE)})
    finally:
        cache.clear()
    assert host.output(ex, "2", 3) == pytest.approx(55.0, abs=1e-3)  # the file's weights were used
    assert loads == [KONIQ_FILE]


# ------------------------------------------------------------------------------------------------ damaged weights
# Issue 20 item 3: the loader's own kind of file, damaged in one tensor. One validation in the shared loading path
# refuses each before a network is built, naming the file, the key, what was expected and what was found.

DAMAGE = {
    "non_tensor": ("a int at key", ".pth"),
    "int64": ("dtype torch.int64 at key", ".safetensors"),
    "nan": ("NaN or inf at key", ".safetensors"),
    "inf_fp16": ("NaN or inf at key", ".safetensors"),
    "wrong_shape": ("shape [", ".safetensors"),
}
# loaders that build a network from the file: a wrong shape must be named before building (a LoRA's shapes are
# checked by ComfyUI when it patches; the restoration VAE's shapes are ComfyUI's VAE's, whose size mismatch
# nodes/common.size_mismatch_error words)
SHAPED = ("iqa", "ircontrolnet", "csft", "restorer", "supir")


def _damaged_cells():
    for loader in LOADERS:
        for damage in DAMAGE:
            if damage != "wrong_shape" or loader in SHAPED:
                yield loader, damage


def _victim(sd: dict, prefix: str = "") -> str:
    """The key the damage goes to: the first 2-D-or-more float tensor by name (a real weight) under ``prefix``."""
    return min(k for k, v in sd.items() if v.ndim >= 2 and v.is_floating_point() and k.startswith(prefix))


def damage_state_dict(sd: dict, damage: str, prefix: str = ""):
    """(damaged copy of ``sd``, the damaged key)."""
    sd = {k: v.clone().contiguous() for k, v in sd.items()}
    key = _victim(sd, prefix)
    t = sd[key]
    if damage == "non_tensor":
        sd[key] = 3
    elif damage == "int64":
        sd[key] = t.round().to(torch.int64)
    elif damage == "nan":
        t.view(-1)[0] = float("nan")
    elif damage == "inf_fp16":
        sd[key] = t.half()
        sd[key].view(-1)[-1] = float("inf")
    elif damage == "wrong_shape":
        sd[key] = torch.cat([t, t[:1]], dim=0)
    return sd, key


@pytest.fixture(scope="module")
def damaged(host, tiny, sm, sdxl, musiq_random_state, hostile):
    """Each loader's own kind of file, damaged each way, as hostile_damaged_<loader>_<damage>.<ext> in its folder;
    returns {(loader, damage): (file name, damaged key)}."""
    from tests.comfy.test_cleaners import tiny_swinir
    from tests.comfy.test_faces import tiny_detector_state_dict, tiny_parser_state_dict
    from tests.comfy.test_hypir import tiny_hypir_state_dict
    from tests.comfy.test_supir import tiny_adapter_sd

    vae = tiny._vae_weights(3, 4)
    vae_enc = dict(vae, **{"denoise_encoder." + k[len("encoder."):]: v for k, v in vae.items()
                           if k.startswith("encoder.")})
    supir = tiny_adapter_sd(sm, sdxl, tiny, 5)
    own = {"iqa": dict(musiq_random_state), "ircontrolnet": dict(tiny.tiny_ircontrolnet_state_dict(0)),
           "restoration_vae": vae_enc, "csft": dict(tiny.tiny_csft_state_dict(0)),
           "restorer": dict(tiny_swinir().state_dict()), "supir": supir,
           "lora": {f"lora_unet_block_{i}.{p}": torch.randn(4, 8) for i in range(2)
                    for p in ("lora_down.weight", "lora_up.weight")}}
    own.update(face_detector=dict(tiny_detector_state_dict()), face_parser=dict(tiny_parser_state_dict()),
               hypir=dict(tiny_hypir_state_dict(tiny)))
    missing = set(LOADERS) - set(own)
    assert not missing, f"no damaged-file sample for the loaders {sorted(missing)}"
    metadata = {"csft": {"adaptbir_kind": "csft", "format_version": "1"}}
    out = {}
    for loader, damage in _damaged_cells():
        sd, key = damage_state_dict(own[loader], damage, "denoise_encoder." if loader == "restoration_vae" else "")
        ext = DAMAGE[damage][1]
        name = f"{PREFIX}damaged_{loader}_{damage}{ext}"
        path = host.models_dir / LOADERS[loader][1] / name
        if ext == ".pth":
            torch.save(sd, path)
        else:
            save_file(sd, str(path), metadata=metadata.get(loader))
        out[(loader, damage)] = (name, key)
    return out


@pytest.mark.parametrize("loader,damage", list(_damaged_cells()))
def test_loader_names_the_damaged_tensor(host, tiny, damaged, loader, damage):
    node, _, expected = LOADERS[loader]
    name, key = damaged[(loader, damage)]
    with pytest.raises(ExecutionFailed) as e:
        host.run(loader_graph(tiny, loader, name))
    assert e.value.node_type == node, e.value
    assert e.value.exception_type.endswith("PackError"), e.value
    msg = e.value.exception_message
    if damage == "wrong_shape":  # each builder knows its layout: the file, the key and both shapes are named
        assert name in msg and "expected" in msg and "found" in msg, msg
        assert key.split(".", 1)[-1] in msg, msg
        return
    assert_names_file_expected_found(msg, name, expected, DAMAGE[damage][0])
    assert f"'{key}'" in msg, msg


def test_the_undamaged_files_load(host, tiny, damaged, iqa_files):
    """The same kinds undamaged pass the validation (its rules do not refuse real files: SwinIR's int64 index
    buffers, a params-wrapped MUSIQ .pth)."""
    import safetensors.torch

    from tests.comfy.conftest import KONIQ_FILE

    common = host.node_class("AdaptBIR_IQAClassifier").__module__.rsplit(".", 1)[0] + ".common"
    check = __import__(common, fromlist=["check_weights"]).check_weights
    check(torch.load(host.models_dir / "iqa" / KONIQ_FILE, weights_only=True), "koniq", "MUSIQ weights")
    for f in (host.models_dir / "diffbir").glob("tiny_*.safetensors"):
        check(safetensors.torch.load_file(str(f)), f.name, "weights")
    from tests.comfy.test_cleaners import tiny_swinir

    sd = tiny_swinir().state_dict()
    assert any(v.dtype == torch.int64 for v in sd.values())
    check(sd, "swinir", "SwinIR")

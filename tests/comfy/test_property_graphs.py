"""Property-based graph test (hypothesis): random, type-valid pipelines of the pack's nodes, run by ComfyUI's
executor with the tiny seeded models.

Every drawn pipeline must

(a) run, or fail with the pack's own ``PackError`` whose text starts with the input's name (the documented
    errors). A drawn fault (NaN pixel, 2-channel image, unusable pad_multiple, restoration VAE of another latent
    space...) must end in such an error; a widget out of its range or options, or two widgets that contradict each
    other, must be refused by validation before anything runs (ComfyUI's, or the node's ``validate_inputs``).
    Any other exception (e.g. a traceback from inside torch) fails the test;
(b) leave its inputs alone: the IMAGE tensors fed in, the tiny checkpoint's UNet weights and patches, the VAEs'
    weights and the conditioning are unchanged after the run;
(c) be deterministic: running the same prompt again gives bit-identical outputs at every node (or the same error).

One executor serves the whole module (ComfyUI's classic cache): loaders whose widgets did not change are reused
between runs, which is how ComfyUI runs prompts, and which makes (b) stronger (a model mutated by run 1 would be
fed to run 2). The test image node always re-executes (its fingerprint is NaN), so every node that depends on the
image (all computing nodes of these graphs) runs again in the second run; the test checks that it did.

Sizes: the image-only branch draws any size from 1 to 96 px; the diffusion branches draw 64..96 px, because
images with a side under 64 px are sampled at 512 px (DiffBIR's rule), which costs seconds per run on a CPU; those
sizes are covered by tests/comfy/test_sizes.py. Examples are derandomized, so CI runs the same examples each time;
a few explicit examples (EXPLICIT) always run and cover every block at once. Locally,
ADAPTBIR_PROPERTY_EXAMPLES=300 draws more pipelines, ADAPTBIR_PROPERTY_VERBOSE=1 prints each outcome and its time,
ADAPTBIR_PROPERTY_NOSHRINK=1 reports the first failure as drawn (no shrinking).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import time

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tests.comfy.test_csft_apply import csft_file  # noqa: F401  (fixture: tiny CSFT in models/diffbir)
from tests.comfy.test_supir import SUPIR_FILE, SUPIR_ZERO, supir_files  # noqa: F401  (fixture)
from tests.support.comfy_host import ExecutionFailed

pytestmark = pytest.mark.slow

# Samplers and schedulers that finish in 1-2 model calls per step (no adaptive step control).
SAMPLERS = ["euler", "euler_ancestral", "ddpm", "dpmpp_2m", "ddim", "lcm", "heun", "uni_pc", "dpmpp_sde"]
SCHEDULERS = ["simple", "normal", "karras", "exponential", "sgm_uniform", "beta", "ddim_uniform"]
IQA_WEIGHTS = ["auto", "level30.safetensors", "level85.safetensors", "spread.safetensors"]
# Output types whose values are compared between the two runs.
COMPARED_TYPES = {"IMAGE", "LATENT", "ADAPTBIR_CONDITION", "ADAPTBIR_RESTORE_PARAMS", "FLOAT", "STRING", "SIGMAS"}
# Widgets set outside their declared range or options: the prompt must be refused before anything runs (numbers by
# ComfyUI's validation, combos of the pack's v3 nodes by their validate_inputs: ComfyUI 0.3.75 checks neither).
OUT_OF_RANGE = {
    "image": [("color", "method", "median")],
    "diffbir": [("dual", "k", 1.5), ("dual", "pad_multiple", 4), ("irc", "strength", -0.5), ("sampler", "steps", 0),
                ("irc", "hint_convention", "sd15")],
    "supir": [("supir_apply", "control_scale_start", 2.5), ("sampler", "cfg", -1.0)],
}


def chance(draw, p: float) -> bool:
    """True with probability about ``p``: a band of 0..999 that avoids the ends, which hypothesis favours."""
    return 100 <= draw(st.integers(0, 999)) < 100 + 800 * p


def rounded(lo, hi, places=2):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda v: round(v, places))


# ---------------------------------------------------------------------------------------------- the strategy


# One fault at most per drawn pipeline (about one in four): an input or widget the pack must refuse by name.
FAULTS = {
    "image": ["nan", "channels", "out_of_range", "stride"],
    "diffbir": ["nan", "channels", "out_of_range", "pad", "vae", "window"],
    "supir": ["nan", "channels", "out_of_range"],
}


VALIDATION_FAULTS = ("out_of_range", "stride", "window")


@st.composite
def pipelines(draw):
    """A pipeline description (plain dict, printed by hypothesis on failure); :func:`build` makes the prompt."""
    branch = draw(st.sampled_from(["image", "diffbir", "diffbir", "diffbir", "supir"]))
    diffusion = branch != "image"
    lo = 64 if diffusion else 1
    spec = {"branch": branch, "image": {
        "h": draw(st.integers(lo, 96)), "w": draw(st.integers(lo, 96)),
        "batch": draw(st.sampled_from([1, 1, 2, 3] if not diffusion else [1, 1, 2])),
        "channels": draw(st.sampled_from([3, 3, 3, 4, 1])), "nan": False, "seed": draw(st.integers(0, 2 ** 16))}}
    if chance(draw, 0.25):
        spec["degrade"] = {"pipeline": draw(st.sampled_from(["realesrgan", "codeformer_diffbir", "codeformer_small",
                                                             "mild_adaptbir"])),
                           "seed": draw(st.integers(0, 2 ** 32)), "scale": draw(rounded(1.0, 16.0, 1))}
    if chance(draw, 0.35):
        spec["stage1"] = {"output_scale": draw(st.sampled_from([1.0, 1.25, 1.5] if diffusion else
                                                               [0.125, 0.5, 1.0, 1.5, 2.0])),
                          "tile_size": draw(st.sampled_from([0, 0, 64, 128])),
                          "tile_stride": draw(st.sampled_from([8, 32, 64])),
                          "precision": draw(st.sampled_from(["auto", "fp32", "bf16", "fp16"]))}
    if chance(draw, 0.25):
        low = draw(rounded(0.0, 90.0, 1))
        spec["iqa"] = {"weights": draw(st.sampled_from(IQA_WEIGHTS)),
                       "mode": draw(st.sampled_from(["adaptbir", "classes"])), "low_threshold": low,
                       "high_threshold": min(100.0, low + draw(st.sampled_from([20.0, 0.5, 50.0]))),
                       "k_max": draw(rounded(0.0, 1.0)), "w_max": draw(rounded(0.0, 2.0)),
                       "score_max_side": draw(st.sampled_from([32, 64, 0])),
                       "route": draw(st.sampled_from([None, 0, 1, 2]))}
    if branch == "image":
        spec["color"] = {"method": draw(st.sampled_from(["wavelet", "adain"]))}
    elif branch == "diffbir":
        spec.update(draw_diffbir(draw, "iqa" in spec))
    else:
        spec.update(draw_supir(draw, "iqa" in spec))
    if chance(draw, 0.2):
        fault = spec["fault"] = draw(st.sampled_from(FAULTS[branch]))
        if fault == "nan":
            spec["image"]["nan"] = True
        elif fault == "channels":  # no IMAGE layout the pack accepts
            spec["image"]["channels"] = 2
        elif fault == "out_of_range":
            spec["out_of_range"] = draw(st.sampled_from(OUT_OF_RANGE[branch]))
        elif fault == "stride":  # Stage-1 Restore: tile_stride above tile_size
            spec["stage1"] = dict(spec.get("stage1") or {"output_scale": 1.0, "precision": "auto"},
                                  tile_size=64, tile_stride=160)
        elif fault == "pad":  # not a multiple of the VAE's compression
            spec["dual"]["pad_multiple"] = 12
        elif fault == "vae":  # a restoration VAE with another latent space
            spec["restoration_channels"] = 16
        elif fault == "window":  # Apply IRControlNet: start_percent above end_percent
            spec["irc"].update(start_percent=0.75, end_percent=0.5)
    return spec


def draw_sampler(draw, pack_sampler: bool):
    s = {"seed": draw(st.integers(0, 2 ** 32)), "steps": draw(st.integers(1, 2)),
         "cfg": draw(st.sampled_from([1.0, 1.0, 2.5])), "sampler_name": draw(st.sampled_from(SAMPLERS))}
    if pack_sampler:
        s["scheduler"] = draw(st.sampled_from(["diffbir_spaced", "diffbir_spaced", *SCHEDULERS]))
        s["start"] = draw(st.sampled_from(["noise", "cond"]))
    else:
        s["scheduler"] = draw(st.sampled_from(SCHEDULERS))
        s["denoise"] = draw(st.sampled_from([1.0, 1.0, 0.6]))
    return s


def draw_guidance(draw):
    return {"guidance_scale": draw(st.sampled_from([0.0, 0.01, 0.5])), "g_start": draw(st.sampled_from([1001, 1001, 800, 400])),
            "g_stop": draw(st.sampled_from([-1, -1, 0, 300])), "g_repeat": draw(st.integers(1, 2)),
            "g_space": draw(st.sampled_from(["rgb", "latent"])), "g_loss": draw(st.sampled_from(["w_mse", "mse"])),
            "block_size": draw(st.sampled_from([1, 2, 7, 64])),
            "g_memory": draw(st.sampled_from(["auto", "full", "checkpoint", "tiled"])),
            "g_precision": draw(st.sampled_from(["auto", "fp32", "bf16", "fp16"])),
            "g_tile_size": draw(st.sampled_from([128, 192]))}


def draw_diffbir(draw, has_iqa):
    d = {"kind": draw(st.sampled_from(["sd2-eps", "sd2-eps", "sd2-v", "sd2-v-zsnr", "sd2-eps", "sdxl"])),
         "restoration_channels": 4,
         "dual": {"k": draw(rounded(0.0, 1.0)), "pad_multiple": draw(st.sampled_from([64, 64, 32, 16, 8])),
                  "tile_size": draw(st.sampled_from([0, 0, 64])), "min_side": draw(st.sampled_from([0, 0, 8, 72, 96, 136])),
                  "params": has_iqa and draw(st.booleans())},
         "irc": {"strength": draw(rounded(0.0, 2.0)), "start_percent": draw(st.sampled_from([0.0, 0.0, 0.25])),
                 "end_percent": draw(st.sampled_from([1.0, 1.0, 0.5])),
                 "hint_convention": draw(st.sampled_from(["auto", "diffbir", "adaptbir"])),
                 "from_image": chance(draw, 0.15)}}
    if chance(draw, 0.5):
        d["csft"] = {"w": draw(rounded(0.0, 2.0)), "params": has_iqa and draw(st.booleans())}
    mode = draw(st.sampled_from(["none", "none", "patch", "sampler"]))
    if mode != "none":
        d["guidance"] = dict(draw_guidance(draw), mode=mode,
                             guide=draw(st.sampled_from(["condition", "stage1", "source"])))
    if chance(draw, 0.25):
        tile = draw(st.sampled_from([128, 192]))
        d["tiled"] = {"tile_size": tile, "tile_stride": draw(st.sampled_from([64, 128, tile]))}
    d["sampler"] = draw_sampler(draw, pack_sampler=mode == "sampler" or draw(st.booleans()))
    d["crop_from"] = draw(st.sampled_from(["latent", "condition"]))
    if draw(st.booleans()):
        d["color"] = {"method": draw(st.sampled_from(["wavelet", "adain"])),
                      "reference": draw(st.sampled_from(["stage1", "source"]))}
    return d


def draw_supir(draw, has_iqa):
    d = {"supir_name": draw(st.sampled_from([SUPIR_FILE, SUPIR_FILE, SUPIR_ZERO])),
         "supir_apply": {"control_scale_start": draw(rounded(0.0, 2.0)), "control_scale_end": draw(rounded(0.0, 2.0)),
                         "cfg_start": draw(rounded(0.0, 8.0, 1)), "restore_cfg": draw(st.sampled_from([-1.0, -1.0,
                                                                                                     0.0, 4.0])),
                         "restore_cfg_s_tmin": draw(rounded(0.0, 1.0)),
                         "pad_multiple": draw(st.sampled_from([64, 32, 8])),
                         "tile_size": draw(st.sampled_from([0, 0, 64])),
                         "params_scale_min": draw(rounded(0.0, 1.0)), "params": has_iqa and draw(st.booleans())},
         "hint": draw(st.sampled_from(["image", "image", "condition"])),
         "supir_sampler": draw(st.booleans())}
    d["sampler"] = draw_sampler(draw, pack_sampler=False)
    if d["supir_sampler"]:
        d["sampler"]["s_churn"] = draw(rounded(0.0, 10.0, 1))
        d["sampler"]["s_noise"] = draw(rounded(0.9, 1.2, 3))
    return d


# ---------------------------------------------------------------------------------------------- prompt building


def make_image(spec) -> torch.Tensor:
    im = spec["image"]
    g = torch.Generator().manual_seed(im["seed"])
    x = torch.rand(im["batch"], im["h"], im["w"], im["channels"], generator=g)
    if im["nan"]:
        x[0, im["h"] // 2, im["w"] // 2, 0] = float("nan")
    return x


def build(spec, files) -> dict:
    """The API-format prompt for ``spec``. Node ids name their role (``src``, ``dual``, ``sampler`` ...)."""
    p = {"src": {"class_type": "AdaptBIRTest_Image", "inputs": {"name": "property"}}}
    image = ["src", 0]
    if "degrade" in spec:
        p["degrade"] = {"class_type": "AdaptBIR_DegradeImage", "inputs": {"image": image, **spec["degrade"]}}
        image = ["degrade", 0]
        p["degrade_text"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["degrade", 1]}}
    source = image  # the low-quality input of the restoration
    if "stage1" in spec:
        p["restorer"] = {"class_type": "AdaptBIR_RestorerLoader", "inputs": {
            "restorer_name": files["swinir"], "precision": spec["stage1"]["precision"]}}
        s = {k: v for k, v in spec["stage1"].items() if k != "precision"}
        p["stage1"] = {"class_type": "AdaptBIR_Stage1Restore", "inputs": {"image": image, "restorer": ["restorer", 0],
                                                                          **s}}
        image = ["stage1", 0]
    cleaned = image
    params = None
    if "iqa" in spec:
        q = {k: v for k, v in spec["iqa"].items() if k != "route"}
        p["iqa"] = {"class_type": "AdaptBIR_IQAClassifier", "inputs": {"image": cleaned, "metric": "musiq", **q}}
        params = ["iqa", 0]
        if spec["iqa"]["route"] is not None:
            p["route"] = {"class_type": "AdaptBIR_RouteByQuality", "inputs": {"image": cleaned, "params": params}}
            p["route_out"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["route", spec["iqa"]["route"]]}}
    if spec["branch"] == "image":
        p["color"] = {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": cleaned, "reference": ["src", 0],
                                                                    **spec["color"]}}
        p["out"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["color", 0]}}
    elif spec["branch"] == "diffbir":
        build_diffbir(p, spec, files, source, cleaned, params)
    else:
        build_supir(p, spec, files, cleaned, params)
    if "out_of_range" in spec:
        nid, key, value = spec["out_of_range"]
        p[nid]["inputs"][key] = value
    return p


def sampler_nodes(p, spec, model, positive, negative, latent, vae, condition=None, guide=None):
    s = spec["sampler"]
    if "start" in s:  # the pack's Restoration Guidance Sampler
        inputs = {"model": model, "positive": positive, "negative": negative, "vae": vae, "latent_image": latent,
                  **{k: v for k, v in s.items()}, "guidance_scale": 0.0, "g_start": 1001, "g_stop": -1,
                  "g_repeat": 1, "g_space": "rgb", "g_loss": "w_mse", "block_size": 2}
        if condition is not None:
            inputs["condition"] = condition
        if guide is not None:
            inputs.update({k: v for k, v in guide.items() if k not in ("mode", "guide", "image")})
            if guide.get("image") is not None:
                inputs["guide_image"] = guide["image"]
        p["sampler"] = {"class_type": "AdaptBIR_RestorationGuidanceSampler", "inputs": inputs}
    elif "s_churn" in s:  # SUPIR's EDM sampler through SamplerCustom
        p["supir_sampler"] = {"class_type": "AdaptBIR_SUPIRSampler", "inputs": {"s_churn": s["s_churn"],
                                                                                 "s_noise": s["s_noise"]}}
        p["sigmas"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": s["scheduler"],
                                                                  "steps": s["steps"], "denoise": s["denoise"]}}
        p["sampler"] = {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": True, "noise_seed": s["seed"], "cfg": s["cfg"], "positive": positive,
            "negative": negative, "sampler": ["supir_sampler", 0], "sigmas": ["sigmas", 0], "latent_image": latent}}
    else:
        p["sampler"] = {"class_type": "KSampler", "inputs": {
            "model": model, "positive": positive, "negative": negative, "latent_image": latent,
            **{k: v for k, v in s.items()}}}
    return ["sampler", 0]


def build_diffbir(p, spec, files, source, cleaned, params):
    kind = spec["kind"]
    p["ckpt"] = {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": kind, "seed": 0}}
    p["rvae"] = {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": 1,
                                                                  "latent_channels": spec["restoration_channels"]}}
    sdxl = kind == "sdxl"  # type-valid, though IRControlNet and CSFT are made for SD 2.1
    p["pos"] = {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": sdxl}}
    p["neg"] = {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "low quality", "seed": 0,
                                                                          "sdxl": sdxl}}
    p["irc_loader"] = {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": files["irc"]}}
    dual = {k: v for k, v in spec["dual"].items() if k != "params"}
    p["dual"] = {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": {
        "image": cleaned, "restoration_vae": ["rvae", 0], "internal_vae": ["ckpt", 1], **dual}}
    if spec["dual"]["params"]:
        p["dual"]["inputs"]["params"] = params
    irc = {k: v for k, v in spec["irc"].items() if k != "from_image"}
    p["irc"] = {"class_type": "AdaptBIR_ApplyIRControlNet", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["irc_loader", 0], **irc}}
    if spec["irc"]["from_image"]:
        p["irc"]["inputs"].update({"image": cleaned, "vae": ["ckpt", 1]})
    else:
        p["irc"]["inputs"]["condition"] = ["dual", 1]
    model = ["ckpt", 0]
    if "csft" in spec:
        p["csft_loader"] = {"class_type": "AdaptBIR_CSFTLoader", "inputs": {"csft_name": files["csft"]}}
        p["csft"] = {"class_type": "AdaptBIR_CSFTApply", "inputs": {
            "model": model, "csft": ["csft_loader", 0], "control_net": ["irc_loader", 0], "w": spec["csft"]["w"]}}
        if spec["csft"]["params"]:
            p["csft"]["inputs"]["params"] = params
        model = ["csft", 0]
    guide = None
    if "guidance" in spec:
        gd = dict(spec["guidance"])
        gd["image"] = {"condition": None, "stage1": cleaned, "source": source}[gd["guide"]]
        if gd["mode"] == "patch":
            p["guidance"] = {"class_type": "AdaptBIR_ApplyRestorationGuidance", "inputs": {
                "model": model, "vae": ["ckpt", 1], "guide_image": gd["image"] or cleaned,  # it takes an IMAGE
                **{k: v for k, v in gd.items() if k not in ("mode", "guide", "image")}}}
            model = ["guidance", 0]
        else:
            guide = gd
    if "tiled" in spec:
        p["tiled"] = {"class_type": "AdaptBIR_TiledDiffusion", "inputs": {"model": model, **spec["tiled"]}}
        model = ["tiled", 0]
    latent = sampler_nodes(p, spec, model, ["irc", 0], ["irc", 1], ["dual", 0], ["ckpt", 1],
                           condition=["irc", 2], guide=guide)
    p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["ckpt", 1]}}
    crop = {"latent": latent} if spec["crop_from"] == "latent" else {"condition": ["dual", 1]}
    p["crop"] = {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["decode", 0], **crop}}
    final = ["crop", 0]
    if "color" in spec:
        ref = cleaned if spec["color"]["reference"] == "stage1" else source
        p["color"] = {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": final, "reference": ref,
                                                                    "method": spec["color"]["method"]}}
        final = ["color", 0]
    p["out"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": final}}


def build_supir(p, spec, files, cleaned, params):
    p["ckpt"] = {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sdxl", "seed": 0}}
    p["pos"] = {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "a", "seed": 0, "sdxl": True}}
    p["neg"] = {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "b", "seed": 1, "sdxl": True}}
    p["supir_loader"] = {"class_type": "AdaptBIR_LoRASUPIRLoader", "inputs": {
        "model": ["ckpt", 0], "vae": ["ckpt", 1], "supir_name": spec["supir_name"]}}
    a = {k: v for k, v in spec["supir_apply"].items() if k != "params"}
    p["supir_apply"] = {"class_type": "AdaptBIR_SUPIRApply", "inputs": {"model": ["supir_loader", 0],
                                                                        "supir": ["supir_loader", 3], **a}}
    if spec["supir_apply"]["params"]:
        p["supir_apply"]["inputs"]["params"] = params
    if spec["hint"] == "image":
        p["supir_apply"]["inputs"]["image"] = cleaned
    else:  # the stage-1 VAE (SUPIR's denoise encoder) as the restoration encoder of Dual Encoder Interpolate
        p["dual"] = {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": {
            "image": cleaned, "restoration_vae": ["supir_loader", 4], "internal_vae": ["supir_loader", 2],
            "k": 0.0, "pad_multiple": a["pad_multiple"], "tile_size": 0}}
        p["supir_apply"]["inputs"]["condition"] = ["dual", 1]
    latent = sampler_nodes(p, spec, ["supir_apply", 0], ["pos", 0], ["neg", 0], ["supir_apply", 1], None)
    p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["supir_loader", 2]}}
    p["crop"] = {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["decode", 0], "latent": latent}}
    p["out"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["crop", 0]}}


# ---------------------------------------------------------------------------------------------- the checks


def flatten(value, out: list):
    """Tensors, numbers and strings inside a node output (dicts, lists, dataclasses), in a fixed order."""
    if isinstance(value, torch.Tensor):
        out.append(value.detach().cpu().clone())
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out.append(value)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            out.append(str(k))
            flatten(value[k], out)
    elif isinstance(value, (list, tuple)):
        out.append(len(value))
        for v in value:
            flatten(v, out)
    elif dataclasses.is_dataclass(value):
        flatten(dataclasses.asdict(value), out)
    else:
        out.append(type(value).__name__)
    return out


def same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape \
                    or x.dtype != y.dtype or x.numpy().tobytes() != y.numpy().tobytes():
                return False
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        elif x != y:
            return False
    return True


def compared_outputs(host, ex, prompt) -> dict:
    """{node id: flattened outputs} of every node whose outputs are data (not models) and that ran."""
    out = {}
    for nid, node in prompt.items():
        cls = host.node_class(node["class_type"])
        types = cls.RETURN_TYPES
        entry = ex.caches.outputs.get(nid)
        if entry is None:
            continue
        outs = entry.outputs if hasattr(entry, "outputs") else entry
        vals = []
        for i, t in enumerate(types):
            if t in COMPARED_TYPES:
                vals.append(flatten(outs[i], []))
        if vals:
            out[nid] = (vals, outs)
    return out


@functools.lru_cache(maxsize=8)
def fresh_patcher_state(tiny, kind):
    return patcher_state(tiny.tiny_model(kind, 0))


def patcher_state(m) -> dict:
    """The parts of a ModelPatcher that patching nodes change: patches, object patches, options, wrappers."""
    keys = ("patches", "object_patches", "model_options", "wrappers", "callbacks", "additional_models",
            "attachments", "injections", "hook_patches", "weight_wrapper_patches")
    return {k: repr(getattr(m, k, None)) for k in keys}


def state_equal(module: torch.nn.Module, reference: dict, what: str):
    sd = module.state_dict()
    assert sorted(sd) == sorted(reference), f"{what}: state dict keys changed"
    for k, v in reference.items():
        assert torch.equal(sd[k].cpu(), v), f"{what}: {k} was changed by the run"


def check_inputs_unchanged(host, tiny, ex, prompt, image_before):
    assert tiny.IMAGES["property"].numpy().tobytes() == image_before, "the input IMAGE tensor was modified"
    import comfy.model_management as mm

    mm.unload_all_models()  # ComfyUI patches weights in place while a patched clone is loaded; unload first
    for nid, node in prompt.items():
        entry = ex.caches.outputs.get(nid)
        if entry is None:
            continue
        outs = entry.outputs if hasattr(entry, "outputs") else entry
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "AdaptBIRTest_TinyCheckpoint":
            model, vae = outs[0][0], outs[1][0]
            state_equal(model.model.diffusion_model, tiny._unet_weights(inputs["kind"], inputs["seed"]),
                        f"{nid} model")
            assert patcher_state(model) == fresh_patcher_state(tiny, inputs["kind"]), f"{nid}: model was patched"
            state_equal(vae.first_stage_model, tiny._vae_weights(inputs["seed"], 4), f"{nid} vae")
        elif ct == "AdaptBIRTest_TinyVAE":
            state_equal(outs[0][0].first_stage_model, tiny._vae_weights(inputs["seed"], inputs["latent_channels"]),
                        f"{nid} vae")
        elif ct == "AdaptBIRTest_TinyConditioning":
            ref = tiny.tiny_conditioning(inputs["text"], inputs["seed"], sdxl=inputs["sdxl"])
            got = outs[0][0]
            assert len(got) == len(ref) and torch.equal(got[0][0], ref[0][0]), f"{nid}: conditioning changed"
            assert sorted(got[0][1]) == sorted(ref[0][1]), f"{nid}: conditioning options changed: {got[0][1]}"


def outcome(host, ex, prompt):
    """("ok", None) or ("error", (node type, message)); fails the test on any exception but a PackError."""
    try:  # a fresh copy, as from the server: ComfyUI stores its fingerprints in the prompt's node dicts
        host.run(copy.deepcopy(prompt), executor=ex)
        return "ok", None
    except ExecutionFailed as e:
        pack_error = f"{host.pack_module_name}.nodes.common.PackError"
        assert e.exception_type == pack_error, (
            f"{e.node_type} raised {e.exception_type}, not a PackError: {e.exception_message}\n"
            + "".join(next(d for ev, d in e.messages if ev == "execution_error").get("traceback", [])))
        assert re.match(r"[^\s:][^:]{0,80}: \S", e.exception_message), \
            f"{e.node_type}: a PackError that does not start with the input's name: {e.exception_message}"
        return "error", (e.node_type, e.exception_message.strip())


@pytest.fixture(scope="module")
def files(host, irc_file, swinir_file, csft_file, iqa_files, supir_files):  # noqa: F811
    return {"irc": irc_file, "swinir": swinir_file, "csft": csft_file}


@pytest.fixture(scope="module")
def executor(host):
    """One executor for the module, with ComfyUI's classic cache (unchanged loaders are reused)."""
    return host.execution.PromptExecutor(host.server, cache_type=host.execution.CacheType.CLASSIC,
                                         cache_args={"lru": 0, "ram": 0})


def check_pipeline(host, tiny, executor, files, spec):
    prompt = build(spec, files)
    if currently_in_test_context():
        note(f"prompt: {prompt}")
    image = make_image(spec)
    tiny.IMAGES["property"] = image
    before = image.numpy().tobytes()
    valid, error, outputs, node_errors = host.validate(copy.deepcopy(prompt))
    fault = spec.get("fault")
    if fault in VALIDATION_FAULTS:
        # refused before anything runs: numbers by ComfyUI, combos and rules between widgets by validate_inputs
        nid = spec["out_of_range"][0] if fault == "out_of_range" else {"stride": "stage1", "window": "irc"}[fault]
        assert nid in node_errors and "out" not in outputs, f"ComfyUI accepted the fault {fault}: {prompt[nid]}"
        reasons = [(prompt[n]["class_type"], e["type"]) for n, ne in node_errors.items() for e in ne["errors"]]
        if fault != "out_of_range":
            assert all(ct.startswith("AdaptBIR_") and t == "custom_validation_failed" for ct, t in reasons), reasons
        return "refused", sorted({e.get("details", "") for ne in node_errors.values() for e in ne["errors"]})[:1]
    assert valid and not node_errors, f"a type-valid prompt did not validate: {error} {node_errors}"

    first, err1 = outcome(host, executor, prompt)
    outs1 = compared_outputs(host, executor, prompt) if first == "ok" else None
    assert tiny.IMAGES["property"].numpy().tobytes() == before, "the input IMAGE tensor was modified"
    if "fault" in spec:
        assert first == "error", f"the fault {spec['fault']!r} was not refused: the graph ran"
    second, err2 = outcome(host, executor, prompt)
    assert (first, err1) == (second, err2), f"the second run ended differently: {err1} vs {err2}"
    if first == "ok":
        outs2 = compared_outputs(host, executor, prompt)
        assert outs1.keys() == outs2.keys()
        for nid in outs1:
            for a, b in zip(outs1[nid][0], outs2[nid][0]):
                assert same(a, b), f"node {nid} ({prompt[nid]['class_type']}): the second run differs"
        last = "sampler" if "sampler" in prompt else "color"
        assert outs1[last][1][0][0] is not outs2[last][1][0][0], f"{last} did not run again"
    check_inputs_unchanged(host, tiny, executor, prompt, before)
    return first, err1


def full_diffbir(**over):
    """A pipeline with every DiffBIR/AdaptBIR block (explicit example: each run covers them all)."""
    spec = {"branch": "diffbir", "image": {"h": 72, "w": 90, "batch": 2, "channels": 3, "nan": False, "seed": 1},
            "degrade": {"pipeline": "realesrgan", "seed": 3, "scale": 2.0},
            "stage1": {"output_scale": 1.0, "tile_size": 64, "tile_stride": 32, "precision": "fp32"},
            "iqa": {"weights": "spread.safetensors", "mode": "adaptbir", "low_threshold": 40.0, "high_threshold": 70.0,
                    "k_max": 0.7, "w_max": 1.0, "score_max_side": 32, "route": 1},
            "kind": "sd2-eps", "restoration_channels": 4,
            "dual": {"k": 0.5, "pad_multiple": 8, "tile_size": 0, "min_side": 0, "params": True},
            "irc": {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "hint_convention": "auto",
                    "from_image": False},
            "csft": {"w": 1.0, "params": True},
            "guidance": {"guidance_scale": 0.5, "g_start": 1001, "g_stop": -1, "g_repeat": 1, "g_space": "rgb",
                         "g_loss": "w_mse", "block_size": 2, "g_memory": "tiled", "g_precision": "auto",
                         "g_tile_size": 128, "mode": "sampler", "guide": "condition"},
            "tiled": {"tile_size": 128, "tile_stride": 64},
            "sampler": {"seed": 7, "steps": 2, "cfg": 2.5, "sampler_name": "ddpm", "scheduler": "diffbir_spaced",
                        "start": "cond"},
            "crop_from": "latent", "color": {"method": "wavelet", "reference": "stage1"}}
    for key, val in over.items():
        if val is None:
            spec.pop(key, None)
        elif isinstance(val, dict) and isinstance(spec.get(key), dict) and key != "sampler":
            spec[key] = {**spec[key], **val}
        else:
            spec[key] = val
    return spec


EXPLICIT = [
    full_diffbir(),
    full_diffbir(kind="sd2-v-zsnr", image={"channels": 4, "batch": 1, "h": 64, "w": 96},
                 dual={"pad_multiple": 64, "min_side": 0, "params": False, "tile_size": 64},
                 guidance={"mode": "patch", "g_space": "latent", "g_loss": "mse", "guide": "stage1",
                           "g_memory": "auto"},
                 sampler={"seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "karras",
                          "denoise": 1.0},
                 csft={"w": 0.5, "params": False}, crop_from="condition", tiled=None,
                 color={"method": "adain", "reference": "source"}, irc={"from_image": True}),
    {"branch": "supir", "image": {"h": 80, "w": 70, "batch": 2, "channels": 1, "nan": False, "seed": 2},
     "iqa": {"weights": "spread.safetensors", "mode": "classes", "low_threshold": 40.0, "high_threshold": 70.0,
             "k_max": 0.7, "w_max": 1.0, "score_max_side": 32, "route": None},
     "supir_name": SUPIR_FILE,
     "supir_apply": {"control_scale_start": 0.5, "control_scale_end": 1.0, "cfg_start": 2.0, "restore_cfg": 4.0,
                     "restore_cfg_s_tmin": 0.05, "pad_multiple": 32, "tile_size": 64, "params_scale_min": 0.5,
                     "params": True},
     "hint": "condition", "supir_sampler": True,
     "sampler": {"seed": 3, "steps": 2, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0,
                 "s_churn": 5.0, "s_noise": 1.01}},
    # upscaled to a 136 px short side: Tiled Diffusion's 128 px tiles and tiled rgb guidance really tile
    full_diffbir(image={"batch": 1, "h": 64, "w": 80}, iqa=None, dual={"min_side": 136, "params": False},
                 csft={"params": False}, color={"reference": "source"}),
    {"branch": "supir", "image": {"h": 70, "w": 64, "batch": 1, "channels": 4, "nan": False, "seed": 5},
     "stage1": {"output_scale": 1.25, "tile_size": 0, "tile_stride": 8, "precision": "auto"},
     "supir_name": SUPIR_FILE,
     "supir_apply": {"control_scale_start": 1.0, "control_scale_end": 0.9, "cfg_start": 1.0, "restore_cfg": 4.0,
                     "restore_cfg_s_tmin": 0.05, "pad_multiple": 64, "tile_size": 64, "params_scale_min": 0.9,
                     "params": False},
     "hint": "image", "supir_sampler": False,
     "sampler": {"seed": 4, "steps": 2, "cfg": 2.0, "sampler_name": "dpmpp_2m", "scheduler": "normal",
                 "denoise": 1.0}},
    {"branch": "image", "image": {"h": 1, "w": 3, "batch": 3, "channels": 1, "nan": False, "seed": 6},
     "degrade": {"pipeline": "codeformer_diffbir", "seed": 1, "scale": 4.0},
     "stage1": {"output_scale": 0.125, "tile_size": 64, "tile_stride": 8, "precision": "bf16"},
     "iqa": {"weights": "level85.safetensors", "mode": "classes", "low_threshold": 40.0, "high_threshold": 70.0,
             "k_max": 0.7, "w_max": 1.0, "score_max_side": 0, "route": 2}, "color": {"method": "wavelet"}},
]


def with_examples(test):
    for spec in reversed(EXPLICIT):
        test = example(spec=spec)(test)
    return test


@settings(max_examples=int(os.environ.get("ADAPTBIR_PROPERTY_EXAMPLES", "50")), deadline=None, derandomize=True,
          database=None, print_blob=True, phases=tuple(Phase) if not os.environ.get("ADAPTBIR_PROPERTY_NOSHRINK") else
          (Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@with_examples
@given(spec=pipelines())
def test_random_pipelines_run_or_raise_pack_errors_leave_inputs_alone_and_repeat(host, tiny, executor, files,
                                                                                 spec):
    t = time.perf_counter()
    result = check_pipeline(host, tiny, executor, files, spec)
    note(f"result: {result}")
    if os.environ.get("ADAPTBIR_PROPERTY_VERBOSE"):
        print(f"{time.perf_counter() - t:6.2f}s {spec['branch']:8s} {result}")


# ---------------------------------------------------------------------------------------------- regressions
# Bugs the property test found, each pinned by a focused test.


def validation_errors(host, prompt) -> dict:
    _, _, _, node_errors = host.validate(prompt)
    return {nid: [e.get("details", "") for e in ne["errors"]] for nid, ne in node_errors.items()}


def test_combo_values_outside_the_options_are_refused_before_anything_runs(host, tiny, files):
    """ComfyUI 0.3.75 does not check combo values of v3-schema nodes (their type is "COMBO", not a list): an
    unknown value used to reach execute and silently take another branch (Colour Fix ran AdaIN for 'median')."""
    spec = EXPLICIT[0]
    cases = [("color", "method", "median"), ("irc", "hint_convention", "sd15"), ("sampler", "g_space", "pixel"),
             ("sampler", "start", "middle"), ("sampler", "scheduler", "nope"), ("sampler", "sampler_name", "dpm9"),
             ("sampler", "g_memory", "swap"), ("iqa", "mode", "linear")]
    assert validation_errors(host, build(spec, files)) == {}
    for nid, key, value in cases:
        prompt = build(spec, files)
        prompt[nid]["inputs"][key] = value
        errors = validation_errors(host, prompt)
        assert list(errors) == [nid], (key, errors)
        assert any(f"{key}: expected one of [" in d and f"found '{value}'" in d for d in errors[nid]), errors
    patch = build(EXPLICIT[1], files)
    patch["guidance"]["inputs"]["g_loss"] = "l1"
    assert any("g_loss: expected one of ['w_mse', 'mse'], found 'l1'" in d
               for d in validation_errors(host, patch).get("guidance", [])), validation_errors(host, patch)


def test_ircontrolnet_on_a_unet_of_another_layout_is_refused_before_sampling(host, tiny, executor, files,
                                                                            monkeypatch):
    """The SD 2.1-layout IRControlNet on an SDXL UNet: ComfyUI skipped every control output with a log warning
    (it catches the shape error), so the graph sampled as if no control were connected."""
    import comfy.samplers

    started = []
    sample = comfy.samplers.KSAMPLER.sample

    def counted(self, *args, **kwargs):
        started.append(1)
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(comfy.samplers.KSAMPLER, "sample", counted)
    spec = full_diffbir(kind="sdxl", csft=None, guidance=None, tiled=None, iqa=None, dual={"params": False},
                        image={"batch": 1})
    tiny.IMAGES["property"] = make_image(spec)
    for sampler in ("pack", "ksampler"):
        if sampler == "ksampler":
            spec["sampler"] = {"seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                               "denoise": 1.0}
        with pytest.raises(ExecutionFailed) as err:
            host.run(build(spec, files), executor=executor)
        assert err.value.exception_type.endswith("PackError") and err.value.exception_message.startswith(
            "control_net: expected a model with the UNet the IRControlNet was made for (64 base channels, levels "
            "[1, 1, 2, 2], 12 input blocks: SD 2.1 for DiffBIR/AdaptBIR), found 32 channels, levels [1, 2, 2] and "
            "9 input blocks"), err.value.exception_message
    assert not started, "sampling started"


IMAGE_ONLY = {"branch": "image", "image": {"h": 20, "w": 30, "batch": 2, "channels": 3, "nan": False, "seed": 4},
              "color": {"method": "wavelet"}}


def test_the_property_checks_catch_a_mutated_input_and_a_nondeterministic_node(host, tiny, files, pack, monkeypatch):
    """The checks can fail: a Colour Fix that scales its reference in place (the caller's IMAGE) or adds unseeded
    noise, and a Tiled Diffusion that patches the caller's model instead of a clone, are reported."""
    executor = host.execution.PromptExecutor(host.server, cache_type=host.execution.CacheType.CLASSIC,
                                             cache_args={"lru": 0, "ram": 0})  # its own: models get mutated here
    colour_fix = pack("nodes.sampling").ColorFix
    execute = colour_fix.execute.__func__
    assert check_pipeline(host, tiny, executor, files, IMAGE_ONLY) == ("ok", None)

    def mutating(cls, image, reference, method="wavelet"):
        reference.mul_(0.5)
        return execute(cls, image, reference, method)

    monkeypatch.setattr(colour_fix, "execute", classmethod(mutating))
    with pytest.raises(AssertionError, match="the input IMAGE tensor was modified"):
        check_pipeline(host, tiny, executor, files, IMAGE_ONLY)

    def noisy(cls, image, reference, method="wavelet"):
        return execute(cls, (image + 1e-3 * torch.rand(image.shape)).clamp(0, 1), reference, method)

    monkeypatch.setattr(colour_fix, "execute", classmethod(noisy))
    with pytest.raises(AssertionError, match="the second run differs"):
        check_pipeline(host, tiny, executor, files, IMAGE_ONLY)

    tiled = pack("nodes.tiled_sampling")

    def in_place(cls, model, tile_size=512, tile_stride=256):  # forgets model.clone()
        return tiled.io.NodeOutput(tiled.set_tiling(model, tile_size, tile_stride))

    monkeypatch.setattr(tiled.TiledDiffusion, "execute", classmethod(in_place))
    spec = full_diffbir(iqa=None, dual={"params": False}, csft=None, image={"batch": 1})
    with pytest.raises(AssertionError, match="ckpt: model was patched"):
        check_pipeline(host, tiny, executor, files, spec)

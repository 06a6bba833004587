"""Bad inputs to every node (issue 9, item 2), through ComfyUI's real executor.

Each case ends in one of three ways, and only these:

* **invalid** - ComfyUI's validation refuses the prompt (a widget beyond its bounds) before anything runs;
* **refused** - the node raises the pack's ``PackError`` whose text names the input, says what was expected and
  what was found; where the graph samples, before sampling starts (or, for what only the sampler's first model
  call can see, before any step completes), checked with counters on ComfyUI's sampler;
* **handled** - the documented handling happens (grey/RGBA accepted, batch-1 guide/condition broadcast, tiny
  and thin images processed at their size).

Any other exception that escapes a node (a traceback from deep inside torch) fails the test. Cases already covered
elsewhere are not repeated: the 512-px small-image rule and too-thin refusals of Dual Encoder Interpolate
(test_sizes.py), IQA on RGBA/grey/thin images (test_iqa_node.py), grey/RGBA in Stage-1 Restore (test_cleaners.py).
"""

from __future__ import annotations

import pytest
import torch

from tests.comfy.conftest import image_node, sample_images
from tests.comfy.test_csft_apply import csft_file  # noqa: F401 - module fixture: the tiny CSFT file
from tests.comfy.test_faces import DETECTOR, NOSES, detector_files, photo  # noqa: F401 - tiny face detector
from tests.comfy.test_supir import SUPIR_FILE, supir_files  # noqa: F401 - module fixture: the tiny SUPIR files
from tests.support.comfy_host import ExecutionFailed

# --------------------------------------------------------------------------------------------- test plumbing

VALUES: dict = {}  # name -> Python value for the value nodes below


def _value_node(type_name: str):
    """A test-only (V1) node that outputs ``VALUES[name]`` as a ``type_name`` socket (LATENT, a condition, ...)."""

    class ValueNode:
        RETURN_TYPES = (type_name,)
        FUNCTION = "get"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"name": ("STRING", {"default": ""})}}

        @classmethod
        def IS_CHANGED(cls, name):
            return float("nan")

        def get(self, name):
            return (VALUES[name],)
    return ValueNode


VALUE_NODES = {"BadInputs_Latent": "LATENT", "BadInputs_Condition": "ADAPTBIR_CONDITION",
               "BadInputs_Params": "ADAPTBIR_RESTORE_PARAMS"}


@pytest.fixture(scope="module", autouse=True)
def value_nodes(host):
    import nodes

    for node_id, type_name in VALUE_NODES.items():
        nodes.NODE_CLASS_MAPPINGS[node_id] = _value_node(type_name)
    yield
    for node_id in VALUE_NODES:
        nodes.NODE_CLASS_MAPPINGS.pop(node_id, None)
    VALUES.clear()


def value(kind: str, name: str, obj) -> dict:
    VALUES[name] = obj
    return {"class_type": f"BadInputs_{kind}", "inputs": {"name": name}}


@pytest.fixture(scope="module")
def executor(host):
    """One executor for the module: unchanged loaders (tiny models) are cached between runs as in ComfyUI; the test
    image and value nodes always re-run (their fingerprint is NaN)."""
    return host.execution.PromptExecutor(host.server, cache_type=host.execution.CacheType.CLASSIC,
                                         cache_args={"lru": 0, "ram": 0})


class SamplerCounter:
    started: int = 0  # sampler runs that began (ComfyUI's KSAMPLER.sample entered)
    steps: int = 0  # sampler steps completed (the sampler's per-step callback)


@pytest.fixture
def sampling(monkeypatch):
    """Counts sampler runs and completed steps of every ComfyUI sampler (KSampler, SamplerCustom, the pack's)."""
    import comfy.samplers
    import latent_preview

    counter = SamplerCounter()
    sample, prepare = comfy.samplers.KSAMPLER.sample, latent_preview.prepare_callback

    def counted_sample(self, *args, **kwargs):
        counter.started += 1
        return sample(self, *args, **kwargs)

    def counted_prepare(*args, **kwargs):
        callback = prepare(*args, **kwargs)

        def cb(*a, **k):
            counter.steps += 1
            return callback(*a, **k)
        return cb

    monkeypatch.setattr(comfy.samplers.KSAMPLER, "sample", counted_sample)
    monkeypatch.setattr(latent_preview, "prepare_callback", counted_prepare)
    return counter


def run(host, executor, prompt):
    return host.run(prompt, executor=executor)


def refused(host, executor, prompt, node_type: str, *needles: str) -> str:
    """Run ``prompt``; it must fail in ``node_type`` with a PackError whose text contains every needle. Returns
    the message. Any other exception type (a torch error escaping a node) fails here, with its text."""
    with pytest.raises(ExecutionFailed) as err:
        run(host, executor, prompt)
    e = err.value
    assert e.exception_type and e.exception_type.endswith(".PackError"), \
        f"{e.node_type} raised {e.exception_type} instead of a PackError: {e.exception_message}"
    assert e.node_type == node_type, (e.node_type, e.exception_message)
    msg = e.exception_message
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def out(host, executor, node_id: str, index: int = 0):
    return host.output(executor, node_id, index)


# ------------------------------------------------------------------------------------------------ graph pieces

H = W = 64  # image size of the sampled graphs: an 8x8 latent


def sources(tiny, irc_file=None, batch: int = 1, sdxl: bool = False) -> dict:
    """Model, conditioning, VAE and an empty latent; nodes no output needs are not run."""
    kind = "sdxl" if sdxl else "sd2-eps"
    p = {
        "ck": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": kind, "seed": 0}},
        "pos": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": sdxl}},
        "neg": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "bad", "seed": 0, "sdxl": sdxl}},
        "vae": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": 0, "latent_channels": 4}},
        "vae2": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": 1, "latent_channels": 4}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": W, "height": H, "batch_size": batch}},
    }
    if irc_file is not None:
        p["irc"] = {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": irc_file}}
    return p


def ksampler(model, positive, negative, latent=("lat", 0), steps=1) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": list(model), "positive": list(positive), "negative": list(negative), "latent_image": list(latent),
        "seed": 3, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}


def sink(link) -> dict:
    return {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": list(link)}}


def apply_irc(image=None, condition=None, strength=1.0) -> dict:
    inputs = {"positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["irc", 0], "strength": strength,
              "start_percent": 0.0, "end_percent": 1.0, "hint_convention": "diffbir"}
    if image is not None:
        inputs.update(image=list(image), vae=["vae", 0])
    if condition is not None:
        inputs["condition"] = list(condition)
    return {"class_type": "AdaptBIR_ApplyIRControlNet", "inputs": inputs}


def rgs(guide=None, condition=None, latent=("lat", 0), scale=0.5, start="noise", steps=1, **extra) -> dict:
    inputs = {"model": ["ck", 0], "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ck", 1],
              "latent_image": list(latent), "start": start, "seed": 0, "steps": steps, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "normal", "guidance_scale": scale, "g_start": 1001,
              "g_stop": -1, "g_repeat": 1, "g_space": "latent", "g_loss": "w_mse", "block_size": 2}
    if guide is not None:
        inputs["guide_image"] = list(guide)
    if condition is not None:
        inputs["condition"] = list(condition)
    inputs.update(extra)
    return {"class_type": "AdaptBIR_RestorationGuidanceSampler", "inputs": inputs}


def apply_guidance(guide, scale=0.5) -> dict:
    return {"class_type": "AdaptBIR_ApplyRestorationGuidance", "inputs": {
        "model": ["ck", 0], "vae": ["ck", 1], "guide_image": list(guide), "guidance_scale": scale,
        "g_start": 1001, "g_stop": -1, "g_repeat": 1, "g_space": "latent", "g_loss": "w_mse", "block_size": 2}}


def supir_loader() -> dict:
    return {"class_type": "AdaptBIR_LoRASUPIRLoader", "inputs": {
        "model": ["ck", 0], "vae": ["ck", 1], "supir_name": SUPIR_FILE}}


def supir_apply(image=None, condition=None, params=None, **widgets) -> dict:
    inputs = {"model": ["sl", 0], "supir": ["sl", 3], "control_scale_start": 1.0, "control_scale_end": 1.0,
              "cfg_start": 1.0, "restore_cfg": -1.0, "restore_cfg_s_tmin": 0.05, "pad_multiple": 64, "tile_size": 0,
              "params_scale_min": 0.9}
    for name, link in (("image", image), ("condition", condition), ("params", params)):
        if link is not None:
            inputs[name] = list(link)
    inputs.update(widgets)
    return {"class_type": "AdaptBIR_SUPIRApply", "inputs": inputs}


def params_for(pack, scores) -> object:
    """Real IQA Classifier parameters for ``scores`` (0..100, KonIQ scale), without running MUSIQ."""
    return pack("modules.iqa").params_from_scores(scores, metric="musiq", mode="adaptbir", score_scale=100.0)


def condition_for(pack, tiny, image: torch.Tensor) -> dict:
    """A real Dual Encoder Interpolate-style condition of ``image`` (the tiny VAE, padded to 64)."""
    return pack("nodes.latent").encode_condition_image(image, tiny.tiny_vae(0))


def crop_latent(h: int, w: int, batch: int = 1) -> dict:
    """A LATENT as Dual Encoder Interpolate gives it for an h x w image (no resize), padded to 64."""
    ph, pw = h + (-h) % 64, w + (-w) % 64
    return {"samples": torch.zeros(batch, 4, ph // 8, pw // 8),
            "adaptbir_crop": {"height": h, "width": w, "pad_bottom": ph - h, "pad_right": pw - w,
                              "resized_height": h, "resized_width": w}}


# ------------------------------------------------------------------------------- widgets at and beyond bounds


def _number_widgets(host):
    """(node id, input name, min, max) of every INT/FLOAT widget of every node the pack registers."""
    import importlib

    ext = importlib.import_module(f"{host.pack_module_name}.nodes.extension")
    rows = []
    for node in ext.node_list():
        spec = node.INPUT_TYPES()
        node_id = node.define_schema().node_id
        for group in ("required", "optional"):
            for name, entry in (spec.get(group) or {}).items():
                if entry[0] in ("INT", "FLOAT") and len(entry) > 1 and "min" in entry[1] and "max" in entry[1]:
                    rows.append((node_id, name, entry[0], entry[1]["min"], entry[1]["max"]))
    return rows


@pytest.fixture(scope="module")
def number_widgets(host):
    rows = _number_widgets(host)
    assert len(rows) > 40  # every node's k, w, strengths, scales, sizes, steps...
    return rows


def _bound_errors(host, node_id: str, name: str, val) -> list:
    """The validation errors of a one-node prompt that name ``name`` as out of bounds."""
    prompt = {"1": {"class_type": node_id, "inputs": {name: val}}, "2": sink(["1", 0])}
    _, _, _, node_errors = host.validate(prompt)
    errors = node_errors.get("1", {}).get("errors", []) if isinstance(node_errors, dict) else []
    hits = []
    for e in errors:
        details = str(e.get("details", ""))
        comfy_check = e["type"] in ("value_smaller_than_min", "value_bigger_than_max") and details == name
        pack_check = e["type"] == "custom_validation_failed" and f"{name}: expected a value in" in details
        if comfy_check or pack_check:
            hits.append(e)
    return hits


def test_every_number_widget_is_refused_beyond_its_bounds_by_validation(host, number_widgets):
    """k, w, strengths, scales, sizes ... one below min and one above max: ComfyUI's validation refuses the prompt
    and names the widget (also on nodes whose own validate_inputs switches ComfyUI's range check off)."""
    missing = []
    for node_id, name, kind, lo, hi in number_widgets:
        step = 1 if kind == "INT" else 0.5
        for bad in (lo - step, hi + step):
            if not _bound_errors(host, node_id, name, bad):
                missing.append(f"{node_id}.{name}={bad}")
    assert not missing, f"not refused by validation: {missing}"


def test_every_number_widget_at_its_bounds_passes_the_range_check(host, number_widgets):
    wrong = [f"{node_id}.{name}={v}" for node_id, name, _, lo, hi in number_widgets for v in (lo, hi)
             if _bound_errors(host, node_id, name, v)]
    assert not wrong, f"refused at a bound: {wrong}"


def test_a_bound_error_reaches_the_user_before_anything_runs(host, executor, tiny, irc_file, sampling):
    p = sources(tiny, irc_file)
    p.update(img=image_node(tiny, "b_strength", sample_images(1, H, W)),
             a=apply_irc(image=("img", 0), strength=10.5), ks=ksampler(("ck", 0), ("a", 0), ("a", 1)),
             s=sink(("ks", 0)))
    with pytest.raises(AssertionError, match=r"strength: expected a value in \[0.0, 10.0\], found 10.5"):
        run(host, executor, p)
    assert sampling.started == 0


# ------------------------------------------------------------------------------------------- bad IMAGE inputs

BAD_IMAGES = {
    "empty_batch": (lambda: torch.zeros(0, 16, 16, 3), "expected a non-empty image batch, found shape (0, 16, 16, 3)"),
    "nan": (lambda: sample_images(1, 16, 16).index_put_((torch.tensor([0]), torch.tensor([3]), torch.tensor([4]),
                                                         torch.tensor([1])), torch.tensor(float("nan"))),
            "expected finite values in [0, 1], found NaN or inf"),
    "inf": (lambda: sample_images(1, 16, 16).index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([0]),
                                                         torch.tensor([0])), torch.tensor(float("inf"))),
            "expected finite values in [0, 1], found NaN or inf"),
    "two_channels": (lambda: torch.rand(1, 16, 16, 2), "expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, found 2"),
}


def _g_iqa(tiny, pack, img):
    return {"n": {"class_type": "AdaptBIR_IQAClassifier", "inputs": {
        "image": img, "metric": "musiq", "weights": "auto", "mode": "adaptbir", "low_threshold": 40.0,
        "high_threshold": 70.0, "k_max": 0.7, "w_max": 1.0, "score_max_side": 0}}}


def _g_route(tiny, pack, img):
    return {"par": value("Params", "route_params", params_for(pack, [50.0])),
            "n": {"class_type": "AdaptBIR_RouteByQuality", "inputs": {"image": img, "params": ["par", 0]}},
            "s": sink(("n", 3))}


def _g_dual(tiny, pack, img):
    return {"n": {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": {
        "image": img, "restoration_vae": ["vae2", 0], "internal_vae": ["vae", 0], "k": 0.5, "pad_multiple": 64,
        "tile_size": 0}}, "s": sink(("n", 0))}


def _g_crop(tiny, pack, img):
    return {"l": value("Latent", "crop_latent", crop_latent(10, 12)),
            "n": {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": img, "latent": ["l", 0]}},
            "s": sink(("n", 0))}


def _g_stage1(tiny, pack, img):
    return {"r": {"class_type": "AdaptBIR_RestorerLoader", "inputs": {"restorer_name": "tiny_swinir.safetensors",
                                                                       "precision": "fp32"}},
            "n": {"class_type": "AdaptBIR_Stage1Restore", "inputs": {
                "image": img, "restorer": ["r", 0], "output_scale": 1.0, "tile_size": 0, "tile_stride": 256}},
            "s": sink(("n", 0))}


def _g_degrade(tiny, pack, img):
    return {"n": {"class_type": "AdaptBIR_DegradeImage", "inputs": {
        "image": img, "pipeline": "realesrgan", "seed": 0, "scale": 4.0}}, "s": sink(("n", 0))}


def _g_irc(tiny, pack, img):
    return {"n": apply_irc(image=img), "ks": ksampler(("ck", 0), ("n", 0), ("n", 1)), "s": sink(("ks", 0))}


def _g_rgs(tiny, pack, img):
    return {"n": rgs(guide=img), "s": sink(("n", 0))}


def _g_arg(tiny, pack, img):
    return {"n": apply_guidance(img), "ks": ksampler(("n", 0), ("pos", 0), ("neg", 0)), "s": sink(("ks", 0))}


def _g_colorfix_image(tiny, pack, img):
    good = image_node(tiny, "cf_good", sample_images(1, 16, 16))
    return {"g": good, "n": {"class_type": "AdaptBIR_ColorFix", "inputs": {
        "image": img, "reference": ["g", 0], "method": "wavelet"}}, "s": sink(("n", 0))}


def _g_colorfix_reference(tiny, pack, img):
    good = image_node(tiny, "cf_good", sample_images(1, 16, 16))
    return {"g": good, "n": {"class_type": "AdaptBIR_ColorFix", "inputs": {
        "image": ["g", 0], "reference": img, "method": "adain"}}, "s": sink(("n", 0))}


def _g_supir(tiny, pack, img):
    return {"sl": supir_loader(), "n": supir_apply(image=img),
            "ks": ksampler(("n", 0), ("pos", 0), ("neg", 0), latent=("n", 1)), "s": sink(("ks", 0))}


# node[/input] -> (input name, graph builder, whether a sampler follows the node in the graph)
IMAGE_INPUTS = {
    "AdaptBIR_IQAClassifier": ("image", _g_iqa, False),
    "AdaptBIR_RouteByQuality": ("image", _g_route, False),
    "AdaptBIR_DualEncoderInterpolate": ("image", _g_dual, False),
    "AdaptBIR_CropToOriginal": ("image", _g_crop, False),
    "AdaptBIR_Stage1Restore": ("image", _g_stage1, False),
    "AdaptBIR_DegradeImage": ("image", _g_degrade, False),
    "AdaptBIR_ApplyIRControlNet": ("image", _g_irc, True),
    "AdaptBIR_RestorationGuidanceSampler": ("guide_image", _g_rgs, True),
    "AdaptBIR_ApplyRestorationGuidance": ("guide_image", _g_arg, True),
    "AdaptBIR_ColorFix/image": ("image", _g_colorfix_image, False),
    "AdaptBIR_ColorFix/reference": ("reference", _g_colorfix_reference, False),
    "AdaptBIR_SUPIRApply": ("image", _g_supir, True),
}

# ------------------------------------------------------ the image inputs of the metrics, faces and HYPIR nodes


def _g_metrics(good_input):
    """Restoration Metrics with the bad image on one input and a valid 16x16 image on the other (LPIPS and MUSIQ
    off: nothing is loaded)."""
    def build(tiny, pack, img):
        good = image_node(tiny, "metrics_good", sample_images(1, 16, 16))
        inputs = {"restored": img, "reference": img, "crop_border": 0, "lpips_weights": "none",
                  "musiq_weights": "none"}
        inputs[good_input] = ["g", 0]
        return {"g": good, "n": {"class_type": "AdaptBIR_RestorationMetrics", "inputs": inputs}, "s": sink(("n", 0))}
    return build


def _face_detection(tiny, img) -> dict:
    """Load Face Detector (the tiny RetinaFace of test_faces.py) -> Detect & Align Faces on ``img`` (node "fd")."""
    return {"fl": {"class_type": "AdaptBIR_FaceDetectorLoader", "inputs": {"detector_name": DETECTOR}},
            "fd": {"class_type": "AdaptBIR_DetectFaces", "inputs": {
                "image": img, "face_detector": ["fl", 0], "face_size": 64, "threshold": 0.97, "detect_size": 0,
                "min_eye_distance": 5.0, "max_faces": 0}}}


def _g_detect_faces(tiny, pack, img):
    return {**_face_detection(tiny, img), "s": sink(("fd", 1))}


def _g_paste_faces(bad_input):
    """Paste Faces with valid faces (one face found in test_faces' synthetic photo) and its crops as the restored
    faces, the bad image on ``bad_input``. A face must be found: with none, restored_faces is never evaluated."""
    def build(tiny, pack, img):
        p = {"ph": image_node(tiny, "paste_photo", photo(NOSES[:1])), **_face_detection(tiny, ["ph", 0])}
        inputs = {"background": ["ph", 0], "faces": ["fd", 1], "restored_faces": ["fd", 0], "feather": 0.1}
        inputs[bad_input] = img
        return {**p, "n": {"class_type": "AdaptBIR_PasteFaces", "inputs": inputs}, "s": sink(("n", 0))}
    return build


def _g_hypir(tiny, pack, img):
    """HYPIR Restore on the tiny SD 2 model of sources() (adapt off needs no HYPIR LoRA; test_hypir.py covers it)."""
    return {"n": {"class_type": "AdaptBIR_HYPIRRestore", "inputs": {
        "model": ["ck", 0], "vae": ["ck", 1], "positive": ["pos", 0], "image": img, "model_t": 200, "coeff_t": 200,
        "upscale": 1.0, "color_fix": "wavelet", "tile_size": 64, "tile_stride": 32, "adapt": "off",
        "mild_factor": 0.5}}, "s": sink(("n", 0))}


IMAGE_INPUTS.update({
    "AdaptBIR_RestorationMetrics/restored": ("restored", _g_metrics("reference"), False),
    "AdaptBIR_RestorationMetrics/reference": ("reference", _g_metrics("restored"), False),
    "AdaptBIR_DetectFaces": ("image", _g_detect_faces, False),
    "AdaptBIR_PasteFaces/background": ("background", _g_paste_faces("background"), False),
    "AdaptBIR_PasteFaces/restored_faces": ("restored_faces", _g_paste_faces("restored_faces"), False),
    "AdaptBIR_HYPIRRestore": ("image", _g_hypir, False),
})


@pytest.fixture(scope="module")
def files(host, iqa_files, irc_file, swinir_file, supir_files, detector_files):  # noqa: F811 - imported fixtures
    return {"irc": irc_file}


def test_the_image_matrix_covers_every_node_with_an_image_input(host):
    import importlib

    ext = importlib.import_module(f"{host.pack_module_name}.nodes.extension")
    have = set()
    for node in ext.node_list():
        spec = node.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, entry in (spec.get(group) or {}).items():
                if entry[0] == "IMAGE":
                    have.add((node.define_schema().node_id, name))
    covered = {(k.split("/")[0], v[0]) for k, v in IMAGE_INPUTS.items()}
    assert have == covered


@pytest.mark.parametrize("bad", list(BAD_IMAGES))
@pytest.mark.parametrize("target", list(IMAGE_INPUTS))
def test_bad_image_is_refused_naming_the_input(host, executor, tiny, pack, files, sampling, target, bad):
    name, build, samples = IMAGE_INPUTS[target]
    make, expected = BAD_IMAGES[bad]
    p = sources(tiny, files["irc"], sdxl=target == "AdaptBIR_SUPIRApply")
    p["img"] = image_node(tiny, f"bad_{bad}", make())
    p.update(build(tiny, pack, ["img", 0]))
    refused(host, executor, p, target.split("/")[0], f"{name}: {expected}")
    assert sampling.started == 0, "refused only after sampling started" if samples else "a sampler ran"


# ------------------------------------------------------------------------ 1x1, very wide, very tall, RGBA, grey

ODD = {"1x1": (1, 1, 1, 3), "wide_1x300": (1, 1, 300, 3), "tall_300x1": (1, 300, 1, 3),
       "rgba": (1, 9, 13, 4), "grey": (1, 9, 13, 1)}


@pytest.mark.parametrize("shape", list(ODD))
def test_odd_shapes_are_processed_at_their_size(host, executor, tiny, pack, files, shape):
    """Nodes that work at any size (no 64-px rule): Stage-1 Restore (SwinIR), Degrade Image (every pipeline) and
    Colour Fix (both methods; alpha kept) give an image of the input's size."""
    b, h, w, c = ODD[shape]
    image = torch.rand(ODD[shape], generator=torch.Generator().manual_seed(h * 7 + w))
    p = sources(tiny)
    p["img"] = image_node(tiny, f"odd_{shape}", image)
    p.update(_g_stage1(tiny, pack, ["img", 0]))
    for i, pipeline in enumerate(("realesrgan", "codeformer_diffbir", "mild_adaptbir")):
        p[f"d{i}"] = {"class_type": "AdaptBIR_DegradeImage", "inputs": {
            "image": ["img", 0], "pipeline": pipeline, "seed": 1, "scale": 4.0}}
        p[f"ds{i}"] = sink((f"d{i}", 0))
    methods = ("wavelet",) if h * w == 1 else ("wavelet", "adain")  # adain on one pixel: refused, below
    for i, method in enumerate(methods):
        p[f"c{i}"] = {"class_type": "AdaptBIR_ColorFix", "inputs": {
            "image": ["img", 0], "reference": ["img", 0], "method": method}}
        p[f"cs{i}"] = sink((f"c{i}", 0))
    run(host, executor, p)
    rgb = (b, h, w, 3)
    assert out(host, executor, "n").shape == rgb  # Stage-1 Restore: RGB at the input size
    for i in range(3):
        d = out(host, executor, f"d{i}")
        assert d.shape == rgb and torch.isfinite(d).all() and 0 <= float(d.min()) and float(d.max()) <= 1
    for i in range(len(methods)):
        f = out(host, executor, f"c{i}")
        assert f.shape == (b, h, w, 4 if c == 4 else 3) and torch.isfinite(f).all()
        if c == 4:
            assert torch.equal(f[..., 3], image[..., 3])  # alpha kept


def test_adain_colour_fix_of_a_single_pixel_is_refused(host, executor, tiny):
    p = {"img": image_node(tiny, "one_pixel", torch.full((2, 1, 1, 3), 0.3)),
         "ref": image_node(tiny, "one_pixel_ref", sample_images(1, 16, 16)),
         "n": {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": ["img", 0], "reference": ["ref", 0],
                                                            "method": "adain"}}, "s": sink(("n", 0))}
    refused(host, executor, p, "AdaptBIR_ColorFix", "image: expected at least 2 pixels for method 'adain'",
            "found 1x1")


def test_route_and_crop_pass_odd_shapes_through(host, executor, tiny, pack):
    """Route By Quality passes every image unchanged (alpha/grey included); Crop To Original keeps channels."""
    p = sources(tiny)
    rgba = torch.rand(2, 1, 300, 4, generator=torch.Generator().manual_seed(2))
    grey_padded = torch.rand(1, 64, 64, 1, generator=torch.Generator().manual_seed(3))
    p["img"] = image_node(tiny, "route_rgba", rgba)
    p.update(_g_route(tiny, pack, ["img", 0]))
    p["s1"] = sink(("n", 1))  # medium: score 50
    p["gi"] = image_node(tiny, "crop_grey", grey_padded)
    p["cl"] = value("Latent", "crop_grey_lat", crop_latent(1, 1))
    p["c"] = {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["gi", 0], "latent": ["cl", 0]}}
    p["cs"] = sink(("c", 0))
    run(host, executor, p)
    assert torch.equal(out(host, executor, "n", 1), rgba)
    assert torch.equal(out(host, executor, "c"), grey_padded[:, :1, :1])


@pytest.mark.parametrize("target", ["AdaptBIR_ApplyIRControlNet", "AdaptBIR_SUPIRApply"])
@pytest.mark.parametrize("shape", [(1, 1, 300, 3), (1, 300, 2, 4)])
def test_too_thin_images_are_refused_before_encoding_and_sampling(host, executor, tiny, pack, files, sampling,
                                                                  target, shape):
    """The 64-px rule of the condition-image inputs: a 1 px high strip would become 153600 px wide."""
    _, build, _ = IMAGE_INPUTS[target]
    p = sources(tiny, files["irc"], sdxl=target == "AdaptBIR_SUPIRApply")
    p["img"] = image_node(tiny, "thin", torch.rand(shape))
    p.update(build(tiny, pack, ["img", 0]))
    refused(host, executor, p, target, "image: expected", "(width x height), which would become", "8192")
    assert sampling.started == 0


# --------------------------------------------------------------------------------------- batch size mismatches


def test_batch_mismatches_without_sampling_are_refused(host, executor, tiny, pack):
    """Per-image params against the image batch (Route By Quality, Dual Encoder Interpolate) and the colour-fix
    reference against the image batch."""
    cases = [
        ("AdaptBIR_RouteByQuality", _g_route, 2, [40.0, 50.0, 60.0], "params: expected 1 or 2 entries", "found 3"),
        ("AdaptBIR_DualEncoderInterpolate", _g_dual, 2, [40.0, 50.0, 60.0], "params: 'k' has 3 per-image values",
         "the batch has 2 images"),
    ]
    for node_type, build, batch, scores, *needles in cases:
        p = sources(tiny)
        p["img"] = image_node(tiny, "mismatch", sample_images(batch, 16, 16))
        p.update(build(tiny, pack, ["img", 0]))
        p["par"] = value("Params", "mismatch_params", params_for(pack, scores))
        p["n"]["inputs"]["params"] = ["par", 0]
        refused(host, executor, p, node_type, *needles)
    p = sources(tiny)
    p["img"] = image_node(tiny, "cf3", sample_images(3, 16, 16))
    p["ref"] = image_node(tiny, "cf2", sample_images(2, 16, 16))
    p["n"] = {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": ["img", 0], "reference": ["ref", 0],
                                                           "method": "wavelet"}}
    p["s"] = sink(("n", 0))
    refused(host, executor, p, "AdaptBIR_ColorFix", "reference: expected 1 or 3 images, found 2")
    # one reference for the whole batch is the documented broadcast
    p["ref"] = image_node(tiny, "cf1", sample_images(1, 24, 20))
    run(host, executor, p)
    assert out(host, executor, "n").shape == (3, 16, 16, 3)


def test_guide_batch_mismatch_is_refused_before_sampling(host, executor, tiny, sampling):
    p = sources(tiny, batch=3)
    p["img"] = image_node(tiny, "guide2", sample_images(2, H, W))
    p.update(n=rgs(guide=("img", 0)), s=sink(("n", 0)))
    refused(host, executor, p, "AdaptBIR_RestorationGuidanceSampler", "guide_image: expected 1 or 3 images",
            "found 2")
    assert sampling.started == 0


def test_guide_patch_batch_mismatch_is_refused_before_the_first_step(host, executor, tiny, sampling):
    """The model patch learns the batch at the sampler's first model call: refused there, no step completes."""
    p = sources(tiny, batch=3)
    p["img"] = image_node(tiny, "guide2p", sample_images(2, H, W))
    p.update(_g_arg(tiny, None, ["img", 0]))
    refused(host, executor, p, "KSampler", "guide_image: expected 1 or 3 images", "found 2")
    assert sampling.steps == 0


def test_single_guide_is_broadcast_over_the_latent_batch(host, executor, tiny, sampling):
    p = sources(tiny, batch=2)
    p["img"] = image_node(tiny, "guide1", sample_images(1, H, W))
    p.update(n=rgs(guide=("img", 0)), s=sink(("n", 0)), a=apply_guidance(("img", 0)),
             ks=ksampler(("a", 0), ("pos", 0), ("neg", 0)), s2=sink(("ks", 0)))
    run(host, executor, p)
    assert out(host, executor, "n")["samples"].shape == (2, 4, 8, 8)
    assert out(host, executor, "ks")["samples"].shape == (2, 4, 8, 8)
    assert sampling.steps == 2


def test_condition_batch_mismatch_with_the_latent_is_refused_before_the_first_step(host, executor, tiny, irc_file,
                                                                                  sampling):
    """Apply IRControlNet with 2 condition images and a 3-image latent: ComfyUI would silently repeat the first
    condition for the third image; the control refuses at its first call instead."""
    p = sources(tiny, irc_file, batch=3)
    p["img"] = image_node(tiny, "irc2", sample_images(2, H, W))
    p.update(_g_irc(tiny, None, ["img", 0]))
    refused(host, executor, p, "KSampler", "condition: expected 1 or 3 condition latents", "found 2")
    assert sampling.steps == 0
    # one condition image for the whole batch is broadcast
    p["img"] = image_node(tiny, "irc1", sample_images(1, H, W))
    run(host, executor, p)
    assert out(host, executor, "ks")["samples"].shape == (3, 4, 8, 8)


def test_cond_start_with_a_condition_of_another_batch_is_refused_before_sampling(host, executor, tiny, pack,
                                                                                sampling):
    p = sources(tiny, batch=2)
    p["c"] = value("Condition", "cond1", condition_for(pack, tiny, sample_images(1, H, W)))
    p.update(n=rgs(condition=("c", 0), start="cond", scale=0.0), s=sink(("n", 0)))
    refused(host, executor, p, "AdaptBIR_RestorationGuidanceSampler", "condition: expected a latent of shape "
            "(2, 4, 8, 8), found (1, 4, 8, 8)")
    assert sampling.started == 0


def test_csft_params_of_another_batch_are_refused_before_the_first_step(host, executor, tiny, pack, irc_file,
                                                                       csft_file, sampling):  # noqa: F811
    p = sources(tiny, irc_file, batch=3)
    p["img"] = image_node(tiny, "csft1", sample_images(1, H, W))
    p["par"] = value("Params", "csft_params", params_for(pack, [50.0, 60.0]))
    p.update(a=apply_irc(image=("img", 0)),
             cl={"class_type": "AdaptBIR_CSFTLoader", "inputs": {"csft_name": csft_file}},
             cs={"class_type": "AdaptBIR_CSFTApply", "inputs": {
                 "model": ["ck", 0], "csft": ["cl", 0], "control_net": ["irc", 0], "w": 1.0, "params": ["par", 0]}},
             ks=ksampler(("cs", 0), ("a", 0), ("a", 1)), s=sink(("ks", 0)))
    refused(host, executor, p, "KSampler", "params: expected one CSFT weight w per image of the sampled batch (3)",
            "found 2")
    assert sampling.steps == 0


def test_supir_params_of_another_batch_are_refused_before_sampling(host, executor, tiny, pack, files, sampling):
    p = sources(tiny, sdxl=True)
    p["img"] = image_node(tiny, "supir2", sample_images(2, H, W))
    p["par"] = value("Params", "supir_params", params_for(pack, [30.0, 50.0, 90.0]))
    p.update(_g_supir(tiny, pack, ["img", 0]))
    p["n"]["inputs"]["params"] = ["par", 0]
    refused(host, executor, p, "AdaptBIR_SUPIRApply", "params: expected 1 or 2 entries", "found 3")
    assert sampling.started == 0


def test_supir_condition_of_another_batch_than_the_latent_is_refused_before_the_first_step(host, executor, tiny,
                                                                                          files, sampling):
    p = sources(tiny, batch=3, sdxl=True)
    p["img"] = image_node(tiny, "supir2b", sample_images(2, H, W))
    p.update(_g_supir(tiny, None, ["img", 0]))
    p["ks"]["inputs"]["latent_image"] = ["lat", 0]
    refused(host, executor, p, "KSampler", "expected 1 or 3 images (the sampled batch), found 2")
    assert sampling.steps == 0


# ------------------------------------------------------------------------------------- NaN / inf / empty latents


def _nan_latent(batch=1):
    z = torch.zeros(batch, 4, 8, 8)
    z[0, 1, 2, 3] = float("nan")
    return {"samples": z}


def test_non_finite_and_empty_latents_are_refused_before_sampling(host, executor, tiny, pack, files, sampling):
    p = sources(tiny)
    for name, latent, needle in (
            ("nan", _nan_latent(), "latent_image: expected finite values, found NaN or inf"),
            ("inf", {"samples": torch.full((1, 4, 8, 8), float("-inf"))}, "latent_image: expected finite values"),
            ("empty", {"samples": torch.zeros(0, 4, 8, 8)}, "latent_image: expected a non-empty latent batch")):
        p["l"] = value("Latent", f"lat_{name}", latent)
        p.update(n=rgs(latent=("l", 0), scale=0.0), s=sink(("n", 0)))
        refused(host, executor, p, "AdaptBIR_RestorationGuidanceSampler", needle, "found")
    assert sampling.started == 0


@pytest.mark.parametrize("target", ["AdaptBIR_ApplyIRControlNet", "AdaptBIR_SUPIRApply",
                                    "AdaptBIR_RestorationGuidanceSampler"])
def test_non_finite_condition_is_refused_before_sampling(host, executor, tiny, pack, files, sampling, target):
    good = condition_for(pack, tiny, sample_images(1, H, W))
    bad = dict(good, samples=good["samples"].clone())
    bad["samples"][0, 0, 0, 0] = float("inf")
    if target == "AdaptBIR_RestorationGuidanceSampler":  # the condition's image is the guide
        bad = dict(good, image=good["image"].clone())
        bad["image"][0, 5, 5, 0] = float("nan")
    p = sources(tiny, files["irc"], sdxl=target == "AdaptBIR_SUPIRApply")
    p["c"] = value("Condition", "bad_cond", bad)
    if target == "AdaptBIR_ApplyIRControlNet":
        p.update(n=apply_irc(condition=("c", 0)), ks=ksampler(("ck", 0), ("n", 0), ("n", 1)), s=sink(("ks", 0)))
        needle = "condition: expected finite latent values, found NaN or inf"
    elif target == "AdaptBIR_SUPIRApply":
        p.update(sl=supir_loader(), n=supir_apply(condition=("c", 0)),
                 ks=ksampler(("n", 0), ("pos", 0), ("neg", 0), latent=("n", 1)), s=sink(("ks", 0)))
        needle = "condition: expected finite latent values, found NaN or inf"
    else:
        p.update(n=rgs(condition=("c", 0)), s=sink(("n", 0)))
        needle = "condition.image: expected finite values in [0, 1], found NaN or inf"
    refused(host, executor, p, target, needle)
    assert sampling.started == 0


# ------------------------------------------------------------------------- a guide / condition of another size


def test_guide_of_another_size_than_the_latent(host, executor, tiny, pack, irc_file, sampling):
    """The sampler refuses before sampling; the model patch and the IRControlNet (which see the latent only at the
    sampler's first model call) refuse before any step completes; a guide of the unpadded size is edge-padded."""
    p = sources(tiny, irc_file)
    p["big"] = image_node(tiny, "guide_big", sample_images(1, 2 * H, W))
    p.update(n=rgs(guide=("big", 0)), s=sink(("n", 0)))
    refused(host, executor, p, "AdaptBIR_RestorationGuidanceSampler",
            "guide_image: expected the size of the sampled image (64x64", "found 64x128")
    assert sampling.started == 0

    p = sources(tiny, irc_file)
    p["big"] = image_node(tiny, "guide_big", sample_images(1, 2 * H, W))
    p.update(_g_arg(tiny, None, ["big", 0]))
    refused(host, executor, p, "KSampler", "guide_image: expected the size of the sampled image", "found 64x128")
    assert sampling.steps == 0

    p = sources(tiny, irc_file)
    p["big"] = image_node(tiny, "cond_big", sample_images(1, 2 * H, W))
    p.update(_g_irc(tiny, None, ["big", 0]))
    refused(host, executor, p, "KSampler", "condition: expected a condition latent of the sampled latent's size (8, 8)",
            "found (16, 8)")
    assert sampling.steps == 0

    p = sources(tiny, irc_file)
    p["small"] = image_node(tiny, "guide_unpadded", sample_images(1, H - 5, W - 9))
    p.update(n=rgs(guide=("small", 0)), s=sink(("n", 0)))
    run(host, executor, p)
    assert sampling.steps == 1


# ------------------------------------------------------------------------------- widgets at their bounds, run


def test_widgets_at_their_bounds_run(host, executor, tiny, pack, files, csft_file, sampling):  # noqa: F811
    """k, w, strengths and scales at their min and max go through without a traceback."""
    p = sources(tiny, files["irc"])
    p["img"] = image_node(tiny, "bounds", sample_images(1, H, W))
    p["tiny_img"] = image_node(tiny, "bounds_small", sample_images(1, 8, 8))
    p.update(
        d0=_g_dual(tiny, pack, ["img", 0])["n"], d1=_g_dual(tiny, pack, ["img", 0])["n"],
        a=apply_irc(image=("img", 0), strength=10.0),
        cl={"class_type": "AdaptBIR_CSFTLoader", "inputs": {"csft_name": csft_file}},
        cs={"class_type": "AdaptBIR_CSFTApply", "inputs": {"model": ["ck", 0], "csft": ["cl", 0],
                                                          "control_net": ["irc", 0], "w": 2.0}},
        t={"class_type": "AdaptBIR_TiledDiffusion", "inputs": {"model": ["cs", 0], "tile_size": 128,
                                                              "tile_stride": 64}},
        n=rgs(guide=("img", 0), scale=100.0, steps=1, g_repeat=1),
        r={"class_type": "AdaptBIR_RestorerLoader", "inputs": {"restorer_name": "tiny_swinir.safetensors",
                                                               "precision": "fp32"}},
        st0={"class_type": "AdaptBIR_Stage1Restore", "inputs": {"image": ["tiny_img", 0], "restorer": ["r", 0],
                                                                "output_scale": 0.125, "tile_size": 0,
                                                                "tile_stride": 8}},
        st1={"class_type": "AdaptBIR_Stage1Restore", "inputs": {"image": ["tiny_img", 0], "restorer": ["r", 0],
                                                                "output_scale": 8.0, "tile_size": 64,
                                                                "tile_stride": 64}},
        dg={"class_type": "AdaptBIR_DegradeImage", "inputs": {"image": ["tiny_img", 0], "pipeline": "realesrgan",
                                                              "seed": 0, "scale": 1.0}},
    )
    p["d0"]["inputs"].update(k=0.0, pad_multiple=64, min_side=0)
    p["d1"]["inputs"].update(k=1.0, pad_multiple=8, min_side=0)
    p["n"]["inputs"].update(model=["t", 0], positive=["a", 0], negative=["a", 1], g_start=1001, g_stop=-1)
    for key in ("d0", "d1", "n", "st0", "st1", "dg"):
        p[f"s_{key}"] = sink((key, 0))
    run(host, executor, p)
    assert out(host, executor, "d0")["samples"].shape == (1, 4, 8, 8)
    assert out(host, executor, "d1")["samples"].shape == (1, 4, 8, 8)
    assert out(host, executor, "n")["samples"].shape == (1, 4, 8, 8) and sampling.steps == 1
    assert out(host, executor, "st0").shape == (1, 1, 1, 3) and out(host, executor, "st1").shape == (1, 64, 64, 3)
    assert out(host, executor, "dg").shape == (1, 8, 8, 3)


# ------------------------------------------------------------------ cost ceilings: thin, huge and extreme aspects
# Issue 20 item 1: a node whose cost grows with the image stays within its documented ceiling at default settings:
# beyond it the image is brought to the ceiling or refused clearly, never handed whole to the allocator. MUSIQ is
# replaced by a spy that records the size it is given (the ceiling is about what reaches it, not about MUSIQ).

IQA_SIZES = {  # name -> (H, W, the scored (H, W), or None when refused)
    "thin_1x5000": (1, 5000, None),  # 32 x 160000 px would be 5.1 MP, above the 4.2 MP ceiling: refused
    "tall_5000x1": (5000, 1, None),
    "thin_2x5000": (2, 5000, (32, 80000)),  # 2.56 MP: brought up to 32 px, within the ceiling
    "exact_ceiling_2048x2048": (2048, 2048, (2048, 2048)),
    "just_above_2049x2048": (2049, 2048, "shrunk"),
    "photo_3000x4000": (3000, 4000, "shrunk"),  # 12 MP: like the 16-MP photo that asked for 6.6 GB
}


@pytest.fixture
def musiq_spy(pack, monkeypatch):
    """Replaces MUSIQ's scoring with a recorder of the (B, 3, H, W) shapes it receives; scores 50."""
    seen = []
    iqa_mod = pack("modules.iqa")

    def spy(net, images, check=None, done=None):
        seen.append(tuple(images.shape))
        return [50.0] * images.shape[0]

    monkeypatch.setattr(iqa_mod, "score_images", spy)
    return seen


def _iqa_graph(tiny, name, image):
    from tests.comfy.conftest import iqa_node

    return {"img": image_node(tiny, name, image), "q": iqa_node(["img", 0]), "s": sink(("q", 0))}


@pytest.mark.parametrize("case", list(IQA_SIZES))
def test_iqa_scores_within_its_ceiling_or_refuses(host, executor, tiny, pack, files, musiq_spy, case):
    h, w, scored = IQA_SIZES[case]
    ceiling = pack("nodes.iqa").MUSIQ_MAX_PIXELS
    assert ceiling == 2048 * 2048
    image = torch.full((1, h, w, 3), 0.5)
    if scored is None:
        refused(host, executor, _iqa_graph(tiny, f"ceil_{case}", image), "AdaptBIR_IQAClassifier",
                "image: expected an aspect ratio MUSIQ can score", f"found {w}x{h}")
        assert musiq_spy == [], "MUSIQ ran on the oversized image"
        return
    run(host, executor, _iqa_graph(tiny, f"ceil_{case}", image))
    (shape,) = musiq_spy
    assert shape[2] * shape[3] <= ceiling and min(shape[2:]) >= 32
    if scored == "shrunk":
        assert shape[2] * shape[3] > 0.99 * ceiling  # brought to the ceiling, not further
        assert abs(shape[3] / shape[2] - w / h) < 0.01  # aspect kept
        assert "above the 4.2 MP scoring ceiling" in host.ui(executor, "q")["text"][0]
    else:
        assert shape[2:] == scored


def test_iqa_ceiling_logic_at_lowered_limits(pack):
    """The same rules with a 64x64-pixel ceiling (cheap sizes): up to 32 px, down to the ceiling, aspect limits."""
    size = pack("nodes.iqa").scoring_size
    err = pack("nodes.common").PackError
    assert size(40, 56, 64 * 64) == (40, 56)  # within: unchanged
    assert size(10, 20, 64 * 64) == (32, 64)  # up to 32 on the short side
    assert size(128, 128, 64 * 64) == (64, 64)  # down to the ceiling
    h, w = size(100, 300, 64 * 64)
    assert h * w <= 64 * 64 and min(h, w) >= 32 and abs(w / h - 3) < 0.1
    assert size(32, 128, 64 * 64) == (32, 128)  # 4:1 at the ceiling exactly
    for hw in ((32, 129), (8, 40), (1, 300), (300, 1)):
        with pytest.raises(err, match="expected an aspect ratio MUSIQ can score"):
            size(*hw, 64 * 64)


def test_stage1_with_tiles_off_tiles_an_image_the_memory_cannot_hold(host, executor, tiny, pack, files,
                                                                     monkeypatch):
    """tile_size 0 with too little free memory: processed in 512 px tiles (stride 256) instead of one pass."""
    import comfy.model_management as mm

    cleaners = pack("nodes.cleaners")
    calls = []
    real = cleaners.tiled_apply

    def spy(fn, x, tile, stride, **kwargs):
        calls.append((tuple(x.shape[-2:]), tile, stride))
        return real(fn, x, tile, stride, **kwargs)

    monkeypatch.setattr(cleaners, "tiled_apply", spy)
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 1024 ** 2)  # 1 MiB free
    image = torch.rand(1, 600, 520, 3, generator=torch.Generator().manual_seed(3))
    p = {"img": image_node(tiny, "stage1_big", image), **_g_stage1(tiny, pack, ["img", 0])}
    run(host, executor, p)
    assert calls == [((600, 520), 512, 256)]
    assert out(host, executor, "n").shape == (1, 600, 520, 3)


def test_stage1_falls_back_to_tiles_on_the_cpu_allocators_error(host, executor, tiny, pack, files, monkeypatch):
    """On CPU running out of memory is a plain RuntimeError from the allocator: it must take the same fallback to
    smaller tiles as a GPU's OutOfMemoryError, not reach the user as a raw message."""
    swinir = pack("modules.swinir")
    real_forward = swinir.SwinIR.forward
    sizes = []

    def forward(self, x):
        sizes.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > 128:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate "
                               "memory)")
        return real_forward(self, x)

    monkeypatch.setattr(swinir.SwinIR, "forward", forward)
    image = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(4))
    p = {"img": image_node(tiny, "stage1_cpu_oom", image), **_g_stage1(tiny, pack, ["img", 0])}
    run(host, executor, p)
    assert sizes[0] == (256, 256) and all(max(s) <= 128 for s in sizes[1:]) and len(sizes) > 1
    assert out(host, executor, "n").shape == (1, 256, 256, 3)


def test_training_upscale_of_a_thin_image_is_bounded(pack, tmp_path):
    """Thin and tiny images with crop 64 (before: a 1x400 px PNG of a few dozen bytes became a 64 x 25600 px float
    image; with crop 512 an 88-byte PNG asked for 2.4 GB): images that would need more than MAX_UPSCALE x or more
    than 64 crops' worth of pixels are skipped with a DataWarning, a usable thin image is upscaled to the crop on
    its short side only, and a folder of nothing but unusable images is a clear error."""
    import warnings

    from PIL import Image

    data = pack("training.data")
    folder = tmp_path / "thin"
    folder.mkdir()
    Image.new("RGB", (400, 1), (120, 80, 40)).save(folder / "a_thin.png")
    Image.new("RGB", (1, 300), (10, 80, 40)).save(folder / "b_tall.png")
    Image.new("RGB", (200, 40), (90, 20, 140)).save(folder / "c_usable.png")  # 5:1, short side 40 -> 64
    batches = data.CropBatches(str(folder), batch_size=2, crop=64, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [batches._image(i) for i in range(3)]
    assert sorted(batches.skipped) == [0, 1], batches.skipped
    assert sum(issubclass(w.category, data.DataWarning) for w in caught) == 2
    for img in images:  # the skipped files' draws go to the usable one
        assert img.shape == (3, 64, 320), img.shape
    hq, _ = batches.batch(0)
    assert hq.shape == (2, 3, 64, 64)
    only_thin = tmp_path / "only_thin"
    only_thin.mkdir()
    Image.new("RGB", (400, 1)).save(only_thin / "thin.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="data: expected usable images in"):
            data.CropBatches(str(only_thin), batch_size=1, crop=64, seed=0).batch(0)


def test_dual_encoder_with_tiles_off_tiles_an_image_the_cpu_memory_cannot_hold(host, executor, tiny, pack, files,
                                                                               monkeypatch):
    """tile_size 0 on the CPU: when ComfyUI's own estimate exceeds the free memory the pack encodes in 512 px tiles
    (ComfyUI's fallback catches only a GPU's out-of-memory error); with enough memory it encodes in one go."""
    import comfy.model_management as mm
    import comfy.sd

    calls = []
    real_tiled, real_whole = comfy.sd.VAE.encode_tiled, comfy.sd.VAE.encode
    monkeypatch.setattr(comfy.sd.VAE, "encode_tiled",
                        lambda self, x, **kw: calls.append(("tiled", kw.get("tile_x"))) or real_tiled(self, x, **kw))
    monkeypatch.setattr(comfy.sd.VAE, "encode", lambda self, x: calls.append(("whole", None)) or real_whole(self, x))
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    p = {**sources(tiny), "img": image_node(tiny, "dual_cpu", image), **_g_dual(tiny, pack, ["img", 0])}
    run(host, executor, p)
    assert calls == [("whole", None), ("whole", None)]  # k 0.5: both encoders, each in one go
    calls.clear()
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 1024 ** 2)  # 1 MiB free
    p["img"] = image_node(tiny, "dual_cpu_small_memory", image.flip(1))  # another input: not cached
    run(host, executor, p)
    assert calls == [("tiled", 512), ("tiled", 512)]
    assert out(host, executor, "n")["samples"].shape == (1, 4, 8, 8)


def test_guidance_auto_mode_starts_tiled_when_even_checkpointing_does_not_fit(pack):
    """auto: full while it fits half the free memory, then checkpoint, then tiles (fp32, the SD VAE's counts)."""
    g = pack("nodes.guidance")
    gib = 1024 ** 3
    lat = {px: (1, 4, px // 8, px // 8) for px in (512, 1024, 2048, 4096, 8192)}
    free = 13 * gib  # a 16 GB machine
    assert g.auto_memory_mode(lat[512], torch.float32, free) == "full"  # ~5.7 GiB counted
    assert g.auto_memory_mode(lat[1024], torch.float32, free) == "tiled"  # checkpoint ~8.5 GiB > half of 13
    assert g.auto_memory_mode(lat[1024], torch.float32, 24 * gib) == "checkpoint"
    for px in (2048, 4096, 8192):
        assert g.auto_memory_mode(lat[px], torch.float32, free) == "tiled"


@pytest.mark.parametrize("shape,refused_", [((1, 4000, 6000, 3), False), ((1, 4001, 6000, 3), True),
                                            ((3, 2000, 4001, 3), True)])
def test_degrade_image_refuses_beyond_its_ceiling(host, executor, tiny, pack, shape, refused_, monkeypatch):
    """24 MP per run (batch x height x width); checked before any work (the pipeline is a spy here: the ceiling is
    about what reaches it)."""
    degrade = pack("nodes.degrade")
    seen = []

    def spy(x, generator, scale=4.0, per_sample=True):
        seen.append(tuple(x.shape))
        raise ValueError("scale: spy reached")

    monkeypatch.setattr(degrade, "realesrgan_degrade", spy)
    image = torch.zeros(shape[0], 1, 1, 3).expand(shape)  # no 24-MP allocation for the test
    p = {"img": image_node(tiny, f"degrade_{shape}", image), **_g_degrade(tiny, pack, ["img", 0])}
    if refused_:
        refused(host, executor, p, "AdaptBIR_DegradeImage", "image: expected at most 24 MP per run of Degrade Image",
                f"found {shape[0]} x {shape[2]}x{shape[1]}")
        assert seen == []
    else:
        refused(host, executor, p, "AdaptBIR_DegradeImage", "scale: spy reached")
        assert seen == [(1, 3, 4000, 6000)]

@pytest.mark.parametrize(("node_id", "name", "filename", "url"), [
    ("AdaptBIR_FaceDetectorLoader", "detector_name", "detection_Resnet50_Final.pth",
     "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"),
    ("AdaptBIR_FaceParserLoader", "parser_name", "parsing_parsenet.pth",
     "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth"),
])
def test_missing_face_model_is_named_with_where_to_get_it_at_validation(host, node_id, name, filename, url):
    """The face loaders check their file when the prompt is validated (as the other pack loaders do): the error
    names the file, the facedetection folder and the manifest's download link, and nothing runs."""
    prompt = {"1": {"class_type": node_id, "inputs": {name: filename}}, "2": sink(["1", 0])}
    valid, _, _, node_errors = host.validate(prompt)
    assert not valid
    (err,) = node_errors["1"]["errors"]
    assert err["type"] == "custom_validation_failed", err
    assert filename in err["details"] and "'facedetection' model folder" in err["details"] and url in err["details"]

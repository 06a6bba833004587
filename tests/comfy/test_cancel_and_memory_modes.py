"""Cancel, memory modes, dtypes and NaN (issue 9, item 4).

Cancel: every long loop of the pack is interrupted the way ComfyUI's Cancel does it (``interrupt_current_processing
(True)``, here from a step callback or a hook inside the loop) and must stop within one step / tile / image / block.
Memory modes: a DiffBIR/AdaptBIR graph and a SUPIR graph run under ComfyUI's LOW_VRAM and NO_VRAM loading paths.
Dtypes: the pack asks ComfyUI's model management for its dtypes, and no float64 spatial tensor is computed while
sampling. NaN: a decoded image with NaN is refused with a message naming the input and the fix.
"""

import contextlib

import pytest
import torch

from tests.comfy.conftest import image_node, iqa_node, sample_images, write_kohya_lora
from tests.comfy.test_batch import images, tiny_workflow
from tests.comfy.test_cleaners import files, restore_prompt  # noqa: F401 - module fixture reused here
from tests.comfy.test_csft_apply import csft_file, csft_graph  # noqa: F401 - module fixture reused here
from tests.comfy.test_restoration_sampler import sampler_graph
from tests.comfy.test_supir import graph as supir_graph
from tests.comfy.test_supir import supir_files  # noqa: F401 - module fixture reused here
from tests.comfy.test_workflows import write_tiny_files
from tests.support.comfy_host import ExecutionFailed

SUPIR_LORA = "mm_sdxl_lora.safetensors"


@pytest.fixture
def mm():
    """comfy.model_management; the interrupt flag is cleared after the test whatever happened."""
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(False)
    yield comfy.model_management
    comfy.model_management.interrupt_current_processing(False)


def interrupted(e: ExecutionFailed, node_type=None) -> bool:
    """True when the run ended with ComfyUI's "execution_interrupted" (in ``node_type`` if given)."""
    return any(ev == "execution_interrupted" and node_type in (None, d.get("node_type")) for ev, d in e.messages)


@contextlib.contextmanager
def module_calls(class_name: str, on_call=None):
    """Count completed forward calls of modules whose class is ``class_name`` (anywhere, via a global hook);
    ``on_call(count)`` runs after each."""
    calls = []

    def hook(module, args, output):
        if type(module).__name__ == class_name:
            calls.append(1)
            if on_call is not None:
                on_call(len(calls))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def interrupt_at_first_step(monkeypatch, mm):
    """Patch latent_preview.prepare_callback (used by KSampler, SamplerCustom and the pack's sampler) so that the
    first step callback presses Cancel; returns the list of steps whose callback ran."""
    import latent_preview

    real = latent_preview.prepare_callback
    steps = []

    def prepare(model, n, *args, **kwargs):
        inner = real(model, n, *args, **kwargs)

        def callback(step, x0, x, total):
            steps.append(step)
            mm.interrupt_current_processing(True)
            return inner(step, x0, x, total)
        return callback

    monkeypatch.setattr(latent_preview, "prepare_callback", prepare)
    return steps


# --------------------------------------------------------------------------------------------------------- cancel


def test_pack_sampler_with_guidance_stops_within_one_step(host, tiny, irc_file, mm, monkeypatch):
    steps = interrupt_at_first_step(monkeypatch, mm)
    after = []
    with module_calls("UNetModel", lambda n: after.append(n) if steps else None), \
            pytest.raises(ExecutionFailed) as e:
        host.run(sampler_graph(tiny, irc_file, sample_images(1, 64, 64), scale=0.5 / 64, steps=4))
    assert interrupted(e.value, "AdaptBIR_RestorationGuidanceSampler")
    assert steps == [0] and after == []  # no UNet call finished after the cancel


def test_ksampler_with_irc_csft_and_guidance_patches_stops_within_one_step(
        host, tiny, irc_file, csft_file, mm, monkeypatch):  # noqa: F811
    p = csft_graph(tiny, irc_file, csft_file)
    p["8"]["inputs"]["steps"] = 4
    p["40"] = {"class_type": "AdaptBIR_ApplyRestorationGuidance", "inputs": {
        "model": p["8"]["inputs"]["model"], "vae": ["2", 1], "guide_image": ["1", 0], "guidance_scale": 0.5 / 64,
        "g_start": 1001, "g_stop": -1, "g_repeat": 1, "g_space": "rgb", "g_loss": "w_mse", "block_size": 2}}
    p["8"]["inputs"]["model"] = ["40", 0]
    steps = interrupt_at_first_step(monkeypatch, mm)
    after = []
    with module_calls("UNetModel", lambda n: after.append(n) if steps else None), \
            pytest.raises(ExecutionFailed) as e:
        host.run(p)
    assert interrupted(e.value, "KSampler")
    assert steps == [0] and after == []


@pytest.fixture(scope="module")
def guidance_setup(host, tiny, pack):
    import comfy.latent_formats

    g = torch.Generator().manual_seed(5)
    return {"gm": pack("nodes.guidance"), "vae": tiny.tiny_vae(0), "lf": comfy.latent_formats.SD15(),
            "guide": sample_images(1, 192, 256, seed=3).permute(0, 3, 1, 2).contiguous(),
            "x0": torch.randn(1, 4, 24, 32, generator=g), "model": tiny.tiny_model("sd2-eps", 0).model}


def test_guidance_repeats_stop_within_one_repeat(guidance_setup, mm):
    s = guidance_setup
    p = s["gm"].RestorationGuidance(s["vae"], s["guide"], 1.0, repeat=3, space="latent")
    real, done = p.grad, []

    def grad(*args):
        out = real(*args)
        done.append(1)
        mm.interrupt_current_processing(True)  # cancel pressed during the first repeat
        return out

    p.grad = grad
    args = {"denoised": s["x0"], "model": s["model"], "sigma": torch.tensor([1.0]), "model_options": {}}
    with pytest.raises(mm.InterruptProcessingException):
        p(args)
    assert len(done) == 1


def test_guidance_tiles_stop_within_one_tile(guidance_setup, mm):
    s = guidance_setup
    p = s["gm"].RestorationGuidance(s["vae"], s["guide"], 1.0, memory="tiled", precision="fp32", tile_size=128)
    decode_fn, tiles = p._decode_fn, []

    def counting(*args):
        decode = decode_fn(*args)

        def wrapped(z):
            out = decode(z)
            if torch.is_grad_enabled():  # the forward pass of a tile (not the checkpoint recomputation)
                tiles.append(tuple(z.shape[-2:]))
                mm.interrupt_current_processing(True)
            return out
        return wrapped

    p._decode_fn = counting
    with pytest.raises(mm.InterruptProcessingException):
        p.grad(s["x0"], s["lf"])
    assert len(tiles) == 1  # 2 x 2 tiles of 128 px on 192 x 256: stopped after the first


def test_tiled_diffusion_stops_within_one_tile(host, tiny, irc_file, mm):
    p = sampler_graph(tiny, irc_file, sample_images(1, 192, 128), steps=2, cfg=1.0)
    p["30"] = {"class_type": "AdaptBIR_TiledDiffusion", "inputs": {"model": ["2", 0], "tile_size": 128,
                                                                  "tile_stride": 64}}
    p["8"]["inputs"]["model"] = ["30", 0]
    with module_calls("UNetModel", lambda n: mm.interrupt_current_processing(True)) as calls, \
            pytest.raises(ExecutionFailed) as e:
        host.run(p)
    assert interrupted(e.value) and len(calls) == 1  # the first tile of the first step, then stop


def test_stage1_tiles_stop_within_one_tile(host, tiny, files, mm, monkeypatch):  # noqa: F811
    import comfy.utils

    progress = []

    def hook(value, total, *args, **kwargs):
        progress.append((value, total))
        mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    with pytest.raises(ExecutionFailed) as e:
        host.run(restore_prompt(tiny, sample_images(2, 40, 56), tile_size=32, tile_stride=16))
    assert interrupted(e.value) and progress == [(1, 12)]  # 12 tiles in all, stopped after the first


def test_iqa_batch_stops_within_one_image(host, tiny, iqa_files, mm, monkeypatch):
    import comfy.utils

    progress = []

    def hook(value, total, *args, **kwargs):
        progress.append((value, total))
        mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    p = {"1": image_node(tiny, "iqa_cancel", sample_images(4, 32, 32)),
         "2": iqa_node(["1", 0], weights="spread.safetensors"),
         "3": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["2", 0]}}}
    with pytest.raises(ExecutionFailed) as e:
        host.run(p)
    assert interrupted(e.value) and progress == [(1, 4)]


def test_supir_glvcontrol_stops_within_one_block(host, tiny, supir_files, mm):  # noqa: F811
    blocks, done = set(), []

    def pre(module, args):
        if type(module).__name__ == "GLVControl":
            blocks.update(id(b) for b in module.input_blocks)

    def post(module, args, output):
        if id(module) in blocks:
            done.append(1)
            mm.interrupt_current_processing(True)

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post)
    try:
        with pytest.raises(ExecutionFailed) as e:
            host.run(supir_graph(tiny))
    finally:
        h1.remove()
        h2.remove()
    assert interrupted(e.value) and blocks and len(done) == 1  # block 0 ran; the check after it stopped block 1


class TinyTask:
    """A real (small) training task for training.loop.run: a linear layer fitting a fixed target."""

    name = "tiny"

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(8, 8)
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)

    def parameters(self):
        return list(self.net.parameters())

    def trainable_state(self):
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state(self, state):
        self.net.load_state_dict(state)

    def config(self):
        return {"task": "tiny"}

    def loss(self, step):
        return ((self.net(self.x) - self.y) ** 2).mean()

    def validate(self, step, folder):
        return ""

    def export(self, out_dir):
        return ""


def test_training_steps_stop_at_the_step_where_cancel_was_pressed(pack, mm, tmp_path):
    loop = pack("training.loop")
    s = loop.TrainSettings(out_dir=str(tmp_path), steps=6, lr=1e-2, save_every=1000, val_every=0, device="cpu")
    seen = []

    def on_step(step, loss):
        seen.append(step)
        if step == 2:
            mm.interrupt_current_processing(True)

    with pytest.raises(mm.InterruptProcessingException):
        loop.run(TinyTask(), s, on_step=on_step)
    assert seen == [1, 2] and not mm.processing_interrupted()
    assert [p.rsplit("_", 1)[1] for p in loop.checkpoint_paths(str(tmp_path))] == ["00000002.pt"]
    assert loop.run(TinyTask(), s)["start"] == 2  # resumes after the cancelled step


@pytest.fixture(scope="module")
def runner(pack, host, tiny):
    write_tiny_files(host.models_dir, host.workdir / "input", tiny)
    return pack("batch.runner")


def test_batch_runner_stops_between_images(runner, mm, tmp_path, monkeypatch):
    """Cancel pressed after the last check inside image 0 (while its output is saved): ComfyUI's executor clears the
    flag when the next prompt starts, so the runner itself must stop before image 1."""
    import os

    real_replace = os.replace

    def replace_then_cancel(a, b):
        real_replace(a, b)
        mm.interrupt_current_processing(True)

    monkeypatch.setattr(runner.os, "replace", replace_then_cancel)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"img1.png: the batch was interrupted before this image \(1 done\)"):
        runner.run_batch(str(tiny_workflow(tmp_path, steps=1)), str(images(tmp_path / "in")), str(out),
                         progress=False)
    assert sorted(os.listdir(out)) == ["img0.png"] and not mm.processing_interrupted()


# --------------------------------------------------------------------------------------------------- memory modes


@contextlib.contextmanager
def memory_mode(name: str):
    """Run ComfyUI's model loading as under --lowvram / --novram, on this CPU.

    ComfyUI treats a model whose load device is the CPU as VRAMState.DISABLED (always fully loaded), whatever the
    flags, so the flags alone change nothing here. This sets ``vram_state`` and gives ``LoadedModel.model_load``
    the budget ``load_models_gpu`` computes in that state on a small GPU: NO_VRAM = 0.1 bytes (every layer
    offloaded, weights cast per call), LOW_VRAM = half the model's size (a partial load). That is ComfyUI's real
    lowvram machinery (``comfy_cast_weights``, LowVramPatch for LoRA weights). Yields the list of loads made:
    (model class, lowvram used)."""
    import comfy.model_management as mm

    if name == "NORMAL":
        yield None
        return
    state = getattr(mm.VRAMState, name)
    real, old = mm.LoadedModel.model_load, mm.vram_state
    loads = []

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        budget = 0.1 if state == mm.VRAMState.NO_VRAM else max(1, self.model.model_size() // 2)
        out = real(self, budget, force_patch_weights=force_patch_weights)
        loads.append((type(self.model.model).__name__, bool(getattr(self.model.model, "model_lowvram", False))))
        return out

    mm.unload_all_models()
    mm.vram_state, mm.LoadedModel.model_load = state, model_load
    try:
        yield loads
    finally:
        mm.vram_state, mm.LoadedModel.model_load = old, real
        mm.unload_all_models()


def diffbir_graph(tiny, irc_file, csft_file):  # noqa: F811
    """Image -> IRControlNet (+ CSFT) -> guidance patch -> KSampler -> VAE Decode (node 9)."""
    p = csft_graph(tiny, irc_file, csft_file)
    p["40"] = {"class_type": "AdaptBIR_ApplyRestorationGuidance", "inputs": {
        "model": p["8"]["inputs"]["model"], "vae": ["2", 1], "guide_image": ["1", 0], "guidance_scale": 0.5 / 64,
        "g_start": 1001, "g_stop": -1, "g_repeat": 1, "g_space": "rgb", "g_loss": "w_mse", "block_size": 2}}
    p["8"]["inputs"]["model"] = ["40", 0]
    p["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["2", 1]}}
    p["19"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["9", 0]}}
    return p


@pytest.fixture(scope="module")
def supir_lora(host):
    return write_kohya_lora(host, SUPIR_LORA, [("input_blocks_1_0_out_layers_3", 32),
                                               ("output_blocks_8_0_out_layers_3", 32)], seed=11, scale=0.3)


def supir_decode_graph(tiny):
    return supir_graph(tiny, loras=[(SUPIR_LORA, 1.0, 0.5)], decode=True)


class Float64Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that computes a float64 tensor of 3 or more dimensions (an image, latent or feature map;
    1-D schedules and per-image weights are fine)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.ndim >= 3:
                self.ops.append((str(func), tuple(t.shape)))
        return out


@pytest.fixture(scope="module")
def normal_runs(host, tiny, irc_file, csft_file, supir_files, supir_lora):  # noqa: F811
    """Decoded images of both graphs in ComfyUI's normal mode, run under the float64 recorder."""
    rec = Float64Recorder()
    with rec:
        diffbir = host.output(host.run(diffbir_graph(tiny, irc_file, csft_file)), "9", 0)
        supir = host.output(host.run(supir_decode_graph(tiny)), "9", 0)
    return {"diffbir": diffbir, "supir": supir, "float64": rec.ops}


@pytest.mark.parametrize("mode", ["LOW_VRAM", "NO_VRAM"])
def test_graphs_run_under_lowvram_and_novram_and_match_normal_mode(
        host, tiny, irc_file, csft_file, supir_files, supir_lora, normal_runs, mode):  # noqa: F811
    """Same fp32 arithmetic with weights cast per layer (and LoRA merged per call), so the images agree to fp32
    rounding (LoRA: W + dW computed per call instead of once)."""
    with memory_mode(mode) as loads:
        diffbir = host.output(host.run(diffbir_graph(tiny, irc_file, csft_file)), "9", 0)
        supir = host.output(host.run(supir_decode_graph(tiny)), "9", 0)
    lowvram = {name for name, low in loads if low}
    assert {"BaseModel", "SDXL"} <= lowvram, loads  # the UNets really ran in ComfyUI's lowvram mode
    assert any("IRControlNet" in n for n in lowvram) and any("SUPIR" in n for n in lowvram), loads
    assert any("CSFT" in n for n in lowvram), loads
    for got, ref in ((diffbir, normal_runs["diffbir"]), (supir, normal_runs["supir"])):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- dtypes


def test_no_float64_feature_map_on_the_sampling_path(normal_runs):
    assert normal_runs["float64"] == []


def test_dtypes_come_from_comfyui_model_management(host, pack, tiny, irc_file, monkeypatch):
    import comfy.model_management as mm

    calls = []

    def spy(name, answer):
        real = getattr(mm, name)

        def f(*args, **kwargs):
            calls.append(name)
            return answer(real, *args, **kwargs)
        monkeypatch.setattr(mm, name, f)

    cpu = torch.device("cpu")
    # IRControlNet: the weights' dtype is ComfyUI's unet_dtype answer
    spy("unet_dtype", lambda real, *a, **k: torch.bfloat16)
    irc = pack("nodes.ircontrolnet")
    net, _ = irc.build_ircontrolnet(dict(tiny.tiny_ircontrolnet_state_dict(0)), device=cpu)
    assert "unet_dtype" in calls and {p.dtype for p in net.parameters()} == {torch.bfloat16}
    # Stage-1 restorer "auto": bf16 only where ComfyUI's should_use_bf16 says so
    cleaners = pack("nodes.cleaners")
    spy("should_use_bf16", lambda real, *a, **k: False)
    assert cleaners.pick_dtype("auto", cpu) == torch.float32 and "should_use_bf16" in calls
    # guidance decoder "auto" = ComfyUI's vae_dtype; bf16 falls back to fp32 where ComfyUI says it cannot cast
    gm = pack("nodes.guidance")
    spy("vae_dtype", lambda real, *a, **k: torch.bfloat16)
    spy("supports_cast", lambda real, device, dtype: False)
    assert gm.decoder_dtype("auto", cpu, tiny.tiny_vae(0)) == torch.float32
    assert gm.decoder_dtype("bf16", cpu) == torch.float32
    assert {"vae_dtype", "supports_cast"} <= set(calls)
    # training "auto" on a CUDA device: bf16 autocast only where ComfyUI would use bf16
    loop = pack("training.loop")
    settings = loop.TrainSettings(out_dir="unused", steps=1, lr=1e-3)
    assert isinstance(settings.autocast(torch.device("cuda")), contextlib.nullcontext)
    assert calls.count("should_use_bf16") == 2
    assert isinstance(settings.autocast(cpu), contextlib.nullcontext)  # CPU: fp32, nothing to ask


# ------------------------------------------------------------------------------------------------------------- NaN


def nan_image(h=32, w=32):
    img = sample_images(1, h, w).clone()
    img[0, 3, 5, 1] = float("nan")
    return img


def test_colour_fix_refuses_a_decoded_image_with_nan(host, tiny):
    p = {"1": image_node(tiny, "nan_decoded", nan_image()), "2": image_node(tiny, "nan_ref", sample_images(1, 32, 32)),
         "3": {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": ["1", 0], "reference": ["2", 0],
                                                             "method": "wavelet"}},
         "4": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", 0]}}}
    with pytest.raises(ExecutionFailed) as e:
        host.run(p)
    msg = e.value.exception_message
    assert e.value.node_type == "AdaptBIR_ColorFix" and msg.startswith("image: expected finite values")
    assert "--fp32-vae" in msg and "bf16" in msg


def test_crop_to_original_refuses_a_decoded_image_with_nan(pack):
    latent_nodes, common = pack("nodes.latent"), pack("nodes.common")
    latent = {"samples": torch.zeros(1, 4, 4, 4), latent_nodes.CROP_KEY: {"height": 30, "width": 30}}
    with pytest.raises(common.PackError, match=r"^image: expected finite values.*--fp32-vae"):
        latent_nodes.CropToOriginal.execute(image=nan_image(), latent=latent)


def test_guidance_refuses_a_decoder_that_gives_nan_in_fp32(guidance_setup, pack, tiny):
    s = guidance_setup
    vae = tiny.tiny_vae(0)
    with torch.no_grad():
        vae.first_stage_model.decoder.conv_out.weight[0, 0, 0, 0] = float("nan")
    p = s["gm"].RestorationGuidance(vae, s["guide"], 1.0, precision="fp32")
    with pytest.raises(pack("nodes.common").PackError, match=r"^vae: restoration guidance .* NaN or inf even in fp32"):
        p.grad(s["x0"], s["lf"])

"""Stage-1 restorers through ComfyUI's executor: a tiny DiffBIR SwinIR from models/diffbir, a tiny BSRNet through
core's Load Upscale Model, tiling, sizes, refusals of wrong files."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from modules.swinir import SwinIR
from tests.comfy.conftest import image_node, sample_images
from tests.support.comfy_host import ExecutionFailed

# window 4 x unshuffle 2: sizes are padded to multiples of 8 (DiffBIR's real files: 8 x 8 = 64)
TINY = {"embed_dim": 12, "depths": (2, 2), "num_heads": (2, 3), "window_size": 4, "mlp_ratio": 2.0,
        "unshuffle_scale": 2, "in_chans": 3, "num_feat": 16, "img_size": 8}
SWINIR = "tiny_swinir.safetensors"
SWINIR_PTH = "tiny_swinir_wrapped.pth"
BSRNET = "tiny_bsrnet_x4.safetensors"


def tiny_swinir(seed=0) -> SwinIR:
    """Seeded random weights; the last conv is scaled down so the output stays inside [0, 1] (no clamping)."""
    net = SwinIR(**TINY).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_((0.01 if name.startswith("conv_last.") else 0.1) * noise)
    return net


def tiny_bsrnet_state(nf=8, gc=32, seed=0) -> dict:
    """A BSRNet (KAIR RRDBNet, x4) state dict with BSRNet.pth's key names, 1 RRDB block, 8 features."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cout, cin, bias=0.0):
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) / (cin * 9) ** 0.5
        sd[f"{name}.bias"] = torch.full((cout,), bias)

    conv("conv_first", nf, 3)
    for r in (1, 2, 3):
        for k in range(1, 6):
            conv(f"RRDB_trunk.0.RDB{r}.conv{k}", gc if k < 5 else nf, nf + (k - 1) * gc)
    for name in ("trunk_conv", "upconv1", "upconv2", "HRconv"):
        conv(name, nf, nf)
    conv("conv_last", 3, nf, bias=0.5)
    return sd


@pytest.fixture(scope="module")
def files(host):
    import folder_paths

    d = host.models_dir / "diffbir"
    d.mkdir(parents=True, exist_ok=True)
    net = tiny_swinir()
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(d / SWINIR))
    # BasicSR/DataParallel-style .pth without the recomputable buffers: normalised on load
    no_buf = {k: v for k, v in sd.items() if not k.endswith((".attn_mask", ".relative_position_index"))}
    torch.save({"state_dict": {"module." + k: v for k, v in no_buf.items()}, "epoch": 3}, d / SWINIR_PTH)

    up = host.models_dir / "upscale_models"
    up.mkdir(parents=True, exist_ok=True)
    bsr = tiny_bsrnet_state()
    save_file(bsr, str(up / BSRNET))
    folder_paths.add_model_folder_path("upscale_models", str(up), is_default=True)
    return {"dir": d, "net": net, "bsrnet": bsr}


def restore_prompt(tiny, img, *, restorer=SWINIR, upscale=None, connect_restorer=True, **widgets):
    inputs = {"image": ["1", 0], "output_scale": 1.0, "tile_size": 0, "tile_stride": 256}
    inputs.update(widgets)
    p = {"1": image_node(tiny, "stage1", img),
         "3": {"class_type": "AdaptBIR_Stage1Restore", "inputs": inputs},
         "9": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", 0]}}}
    if connect_restorer:
        p["2"] = {"class_type": "AdaptBIR_RestorerLoader", "inputs": {"restorer_name": restorer, "precision": "auto"}}
        inputs["restorer"] = ["2", 0]
    if upscale:
        p["4"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": upscale}}
        inputs["upscale_model"] = ["4", 0]
    return p


def run_restore(host, tiny, img, **kw):
    ex = host.run(restore_prompt(tiny, img, **kw))
    return host.output(ex, "3", 0)


def direct_swinir(net, img, size=None):
    x = img[..., :3].permute(0, 3, 1, 2).float()
    if size is not None:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        return net(x).clamp(0, 1).permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------ SwinIR


def test_swinir_restores_at_the_input_size(host, tiny, files):
    img = sample_images(2, 37, 53)
    out = run_restore(host, tiny, img)
    assert out.shape == (2, 37, 53, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.allclose(out, direct_swinir(files["net"], img), atol=1e-6)
    assert (out - img).abs().mean() > 1e-3  # it did something


def test_wrapped_pth_without_buffers_loads_the_same_network(host, tiny, files):
    img = sample_images(1, 24, 16)
    assert torch.equal(run_restore(host, tiny, img, restorer=SWINIR_PTH), run_restore(host, tiny, img))


def test_single_covering_tile_is_exact_and_smaller_tiles_are_close(host, tiny, files):
    img = sample_images(1, 45, 61)
    untiled = run_restore(host, tiny, img, tile_size=0)
    assert torch.equal(run_restore(host, tiny, img, tile_size=64, tile_stride=32), untiled)
    tiled = run_restore(host, tiny, img, tile_size=32, tile_stride=16)  # rows 0, 13; columns 0, 16, 29
    assert tiled.shape == untiled.shape
    diff = (tiled - untiled).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.25, (diff.mean(), diff.max())
    assert not torch.equal(tiled, untiled)


def test_out_of_memory_retries_with_smaller_tiles(host, tiny, files, pack, monkeypatch, caplog):
    import logging

    cls = pack("modules.swinir").SwinIR
    real = cls.forward

    def starved(self, x):  # a device that holds at most 128-px tiles
        if max(x.shape[-2:]) > 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (test)")
        return real(self, x)

    img = sample_images(1, 256, 256, seed=2)
    want = run_restore(host, tiny, img, tile_size=128, tile_stride=64)
    monkeypatch.setattr(cls, "forward", starved)
    with caplog.at_level(logging.WARNING):
        got = run_restore(host, tiny, img, tile_size=0)  # whole image, then 128-px tiles
    assert "out of memory" in caplog.text and torch.equal(got, want)


def test_interrupt_check_and_progress_once_per_tile(host, tiny, files, monkeypatch):
    import comfy.model_management
    import comfy.utils

    checks, progress = [], []
    real = comfy.model_management.throw_exception_if_processing_interrupted
    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted",
                        lambda: (checks.append(1), real())[1])
    # what the node asks of ComfyUI's ProgressBar (newer hosts throttle what reaches the hook)
    update = comfy.utils.ProgressBar.update_absolute
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", lambda self, value, total=None, *a, **k: (
        progress.append((value, self.total if total is None else total)), update(self, value, total, *a, **k))[1])
    run_restore(host, tiny, sample_images(2, 40, 56), tile_size=32, tile_stride=16)
    tiles = 2 * (2 * 3)  # rows 0, 8; columns 0, 16, 24 - per image
    assert len(checks) >= tiles
    assert progress[-1] == (tiles, tiles) and len(progress) == tiles


def test_interrupt_stops_between_tiles(host, tiny, files, monkeypatch):
    import comfy.model_management

    calls = []

    def interrupt_on_third():
        calls.append(1)
        if len(calls) == 3:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt_on_third)
    with pytest.raises(ExecutionFailed) as e:
        run_restore(host, tiny, sample_images(1, 40, 56), tile_size=32, tile_stride=16)
    assert any(ev == "execution_interrupted" for ev, _ in e.value.messages)
    assert len(calls) == 3


def test_output_scale_resizes_before_swinir(host, tiny, files):
    img = sample_images(1, 20, 30)
    out = run_restore(host, tiny, img, output_scale=2.0)
    assert out.shape == (1, 40, 60, 3)
    assert torch.allclose(out, direct_swinir(files["net"], img, size=(40, 60)), atol=1e-6)


def test_rgba_and_grey_inputs_give_rgb_and_alpha_is_ignored(host, tiny, files):
    rgb = sample_images(1, 16, 24)
    rgba = torch.cat([rgb, torch.rand(1, 16, 24, 1)], -1)
    grey = rgb[..., :1].contiguous()
    out_rgb = run_restore(host, tiny, rgb)
    assert torch.equal(run_restore(host, tiny, rgba), out_rgb)
    out_grey = run_restore(host, tiny, grey)
    assert out_grey.shape == (1, 16, 24, 3)
    assert torch.allclose(out_grey, direct_swinir(files["net"], grey.expand(-1, -1, -1, 3)), atol=1e-6)


def test_batch_is_processed_image_by_image(host, tiny, files):
    img = sample_images(3, 16, 24)
    both = run_restore(host, tiny, img, tile_size=16, tile_stride=8)
    alone = run_restore(host, tiny, img[1:2].contiguous(), tile_size=16, tile_stride=8)
    assert torch.allclose(both[1:2], alone, atol=1e-6)


def test_input_image_is_not_mutated(host, tiny, files):
    img = sample_images(2, 24, 40)
    before = img.clone()
    run_restore(host, tiny, img, tile_size=16, tile_stride=8)
    assert torch.equal(img, before)


# ------------------------------------------------------------------------------------------------ refusals


def _irc_like():
    return {"input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3), "zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1),
            "middle_block_out.0.weight": torch.zeros(4, 4, 1, 1)}


@pytest.mark.parametrize("fname,content,needle", [
    ("irc.safetensors", _irc_like, "IRControlNet"),
    ("sd.safetensors", lambda: {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
     "Stable Diffusion checkpoint"),
    ("lora.safetensors", lambda: {"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 1)}, "LoRA"),
    ("bsrnet_wrong_folder.safetensors", tiny_bsrnet_state, "Load Upscale Model"),
    ("irc_pickle.pth", _irc_like, "IRControlNet"),
])
def test_other_models_are_refused_by_their_keys(host, tiny, files, fname, content, needle):
    path = files["dir"] / fname
    if fname.endswith(".safetensors"):
        save_file(content(), str(path))
    else:
        torch.save(content(), path)
    with pytest.raises(ExecutionFailed) as e:
        run_restore(host, tiny, sample_images(1, 16, 16), restorer=fname)
    msg = e.value.exception_message
    assert e.value.node_type == "AdaptBIR_RestorerLoader"
    assert msg.startswith(f"{fname}: expected a DiffBIR stage-1 SwinIR restorer"), msg
    assert "conv_first.1.weight" in msg and needle in msg, msg


def test_swinir_keys_with_wrong_shapes_are_refused(host, tiny, files):
    sd = {k: v.contiguous() for k, v in files["net"].state_dict().items()}
    sd["layers.0.residual_group.blocks.1.mlp.fc1.weight"] = torch.zeros(24, 7)
    save_file(sd, str(files["dir"] / "bad_shape.safetensors"))
    with pytest.raises(ExecutionFailed, match="bad_shape.safetensors: .*mlp.fc1.weight: expected \\(24, 12\\), "
                                              "found \\(24, 7\\)"):
        run_restore(host, tiny, sample_images(1, 16, 16), restorer="bad_shape.safetensors")


def test_empty_and_truncated_files_are_refused(host, tiny, files):
    (files["dir"] / "empty.pth").write_bytes(b"")
    data = (files["dir"] / SWINIR).read_bytes()
    (files["dir"] / "truncated.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ExecutionFailed, match="empty.pth: expected a DiffBIR stage-1 SwinIR .* empty \\(0-byte\\)"):
        run_restore(host, tiny, sample_images(1, 16, 16), restorer="empty.pth")
    with pytest.raises(ExecutionFailed, match="truncated.safetensors: expected a DiffBIR stage-1 SwinIR .* could not "
                                              "be read safely"):
        run_restore(host, tiny, sample_images(1, 16, 16), restorer="truncated.safetensors")


class _Marker:
    """Unpickling this object would create a file: proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(host, tiny, files, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv_first.1.weight": torch.zeros(1), "payload": _Marker(marker)}, files["dir"] / "evil.pth")
    assert not marker.exists()
    with pytest.raises(ExecutionFailed) as e:
        run_restore(host, tiny, sample_images(1, 16, 16), restorer="evil.pth")
    assert not marker.exists()
    assert "evil.pth: expected a DiffBIR stage-1 SwinIR" in e.value.exception_message
    assert "it was not executed" in e.value.exception_message


# ------------------------------------------------------------------------------------------------ UPSCALE_MODEL


def direct_upscale(sd, img, size):
    import spandrel

    model = spandrel.ModelLoader().load_from_state_dict(dict(sd)).eval()
    with torch.no_grad():
        y = model(img[..., :3].permute(0, 3, 1, 2).float())
    y = F.interpolate(y, size=size, mode="bicubic", antialias=True).clamp(0, 1)
    return y.clamp(0, 1).permute(0, 2, 3, 1)


def test_core_upscale_model_is_run_and_resized_back(host, tiny, files):
    img = sample_images(2, 20, 28)
    out = run_restore(host, tiny, img, connect_restorer=False, upscale=BSRNET)
    assert out.shape == (2, 20, 28, 3)
    assert torch.allclose(out, direct_upscale(files["bsrnet"], img, (20, 28)), atol=1e-5)
    assert out.std() > 0.01
    for scale, size in ((4.0, (80, 112)), (2.0, (40, 56)), (1.5, (30, 42))):
        out = run_restore(host, tiny, img[:1], connect_restorer=False, upscale=BSRNET, output_scale=scale)
        assert out.shape == (1, *size, 3)
        assert torch.allclose(out, direct_upscale(files["bsrnet"], img[:1], size), atol=1e-5)


def test_core_upscale_model_tiled_is_close_to_untiled(host, tiny, files):
    img = sample_images(1, 40, 48)
    untiled = run_restore(host, tiny, img, connect_restorer=False, upscale=BSRNET, output_scale=4.0)
    tiled = run_restore(host, tiny, img, connect_restorer=False, upscale=BSRNET, output_scale=4.0, tile_size=24,
                        tile_stride=16)
    assert tiled.shape == untiled.shape == (1, 160, 192, 3)
    assert (tiled - untiled).abs().mean() < 0.02


def test_upscale_model_with_rgba_input(host, tiny, files):
    rgb = sample_images(1, 12, 12)
    rgba = torch.cat([rgb, torch.zeros(1, 12, 12, 1)], -1)
    a = run_restore(host, tiny, rgba, connect_restorer=False, upscale=BSRNET)
    assert torch.equal(a, run_restore(host, tiny, rgb, connect_restorer=False, upscale=BSRNET))


# ------------------------------------------------------------------------------------------------ wiring


def test_neither_or_both_restorer_inputs_is_a_clear_error(host, tiny, files):
    img = sample_images(1, 16, 16)
    with pytest.raises(ExecutionFailed, match="expected exactly one of them connected .* found neither"):
        run_restore(host, tiny, img, connect_restorer=False)
    with pytest.raises(ExecutionFailed, match="expected exactly one of them connected .* found both"):
        run_restore(host, tiny, img, upscale=BSRNET)


def test_stride_larger_than_tile_is_refused_before_running(host, tiny, files):
    with pytest.raises(AssertionError, match="tile_stride"):
        run_restore(host, tiny, sample_images(1, 16, 16), tile_size=64, tile_stride=128)


def test_restorer_socket_type_and_loader_output(host, files, pack):
    cleaners = pack("nodes.cleaners")
    assert cleaners.Restorer.io_type == "ADAPTBIR_RESTORER"
    patcher = cleaners.load_restorer(SWINIR)
    import comfy.model_management as mm

    assert patcher.load_device == mm.get_torch_device() and patcher.offload_device == mm.unet_offload_device()
    assert next(patcher.model.parameters()).dtype == torch.float32  # CPU host
    assert cleaners.restorer_summary(patcher).startswith("embed_dim 12, 2 groups x 2 blocks, window 4, unshuffle x2")

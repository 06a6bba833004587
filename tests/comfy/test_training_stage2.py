"""Stage II (IRControlNet) training with tiny models on CPU, DiffBIR's v2.pth-layout control in stage III, and
the three training commands on real photographs (scikit-image's sample images) making the files that the
AdaptBIR workflow then runs on, in ComfyUI's executor."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.comfy.conftest import KONIQ_FILE
from tests.comfy.test_csft_apply import csft_graph, sampled
from tests.comfy.test_training import _stop_at, image_folder, settings  # noqa: F401 (a fixture)
from tests.support import tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One CPU thread for this module: on the shared 2-core machine under load, two OpenMP threads made each small
    convolution about 200x slower (89 ms against 0.4 ms measured), and one thread makes runs bit-reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def stage2(pack, tiny, folder, s, control_sd=None):
    data = pack("training.data").CropBatches(folder, s.batch_size, s.crop, s.seed)
    st2 = pack("training.stage2")
    model = tiny.tiny_model("sd2-eps", 0)
    if control_sd is None:
        control_sd = st2.control_from_unet(model.get_model_object("diffusion_model").state_dict())
    return st2.IRControlNetTask(model, tiny.tiny_vae(0), tiny.tiny_vae(1), control_sd,
                                tiny.tiny_conditioning("")[0][0], data, s, val_steps=2, base_model="tiny")


def test_init_from_the_sd_unet_copies_the_encoder_and_starts_without_effect(pack, tiny):
    unet = tiny.tiny_model("sd2-eps", 0).get_model_object("diffusion_model")
    sd = pack("training.stage2").control_from_unet(unet.state_dict())
    ref = tiny.tiny_ircontrolnet_state_dict(0)
    assert set(sd) == set(ref) and all(sd[k].shape == ref[k].shape for k in ref)  # DiffBIR's v2.pth key layout
    w = sd["input_blocks.0.0.weight"]
    assert torch.equal(w[:, :4], unet.state_dict()["input_blocks.0.0.weight"]) and not w[:, 4:].any()
    assert torch.equal(sd["middle_block.1.proj_in.weight"], unet.state_dict()["middle_block.1.proj_in.weight"])
    assert not any(sd[k].any() for k in sd if k.startswith(("zero_convs.", "middle_block_out.")))


def test_stage2_loss_falls_on_a_fixed_batch(pack, tiny, image_folder, tmp_path):  # noqa: F811
    s = settings(pack, tmp_path, 30, overfit_batch=True, lr=3e-3, batch_size=2, val_every=30, val_count=1)
    task = stage2(pack, tiny, image_folder, s)
    result = pack("training.loop").run(task, s)
    losses = result["losses"]
    # The frozen random tiny decoder bounds what the control can reach through the skips: about -5 % in 30 steps,
    # falling at every step (deterministic).
    assert len(losses) == 30 and losses[-1] < 0.97 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert Image.open(result["validation"][0]).size == (3 * 64, 64)
    with safe_open(result["weights"], "pt") as f:
        meta = f.metadata()
    assert meta["adaptbir_kind"] == "ircontrolnet" and meta["hint_convention"] == "adaptbir"
    sd = load_file(result["weights"])
    assert set(sd) == set(tiny.tiny_ircontrolnet_state_dict(0))
    assert sd["zero_convs.0.0.weight"].abs().sum() > 0  # the zero convolutions learned


def test_stage2_stop_and_resume_equals_an_uninterrupted_run(pack, tiny, image_folder, tmp_path):  # noqa: F811
    loop = pack("training.loop")
    s_full = settings(pack, tmp_path / "full", 4, batch_size=1)
    full = loop.run(stage2(pack, tiny, image_folder, s_full), s_full)
    s = settings(pack, tmp_path / "stopped", 4, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        loop.run(stage2(pack, tiny, image_folder, s), s, on_step=_stop_at(2))
    resumed = loop.run(stage2(pack, tiny, image_folder, s), s)
    assert resumed["start"] == 2 and resumed["losses"] == full["losses"][2:], (full["losses"], resumed["losses"])
    a, b = load_file(full["weights"]), load_file(resumed["weights"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_checkpointing_and_bf16_paths(pack, tiny, image_folder, tmp_path):  # noqa: F811
    """The GPU settings on the CPU: gradient checkpointing gives the same training as without (it only recomputes),
    and bf16 autocast trains with finite losses."""
    loop = pack("training.loop")
    runs = {}
    for name, kw in (("off", {"grad_checkpointing": "off"}), ("on", {"grad_checkpointing": "on"}),
                     ("bf16", {"precision": "bf16"})):
        s = settings(pack, tmp_path / name, 2, batch_size=1, **kw)
        runs[name] = loop.run(stage2(pack, tiny, image_folder, s), s)
    assert runs["on"]["losses"] == pytest.approx(runs["off"]["losses"], rel=1e-5)
    a, b = load_file(runs["off"]["weights"]), load_file(runs["on"]["weights"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert all(np.isfinite(runs["bf16"]["losses"])) and runs["bf16"]["losses"] != runs["off"]["losses"]


def test_stage2_file_drives_stage3_and_both_run_in_one_graph(host, pack, tiny, image_folder, tmp_path):  # noqa: F811
    """Stage II's file -> Load IRControlNet's loader -> stage III training; then one executor graph: Load
    IRControlNet (stage II file) + Load CSFT (stage III file) + CSFT Apply + KSampler."""
    loop = pack("training.loop")
    s2 = settings(pack, tmp_path / "s2", 3, batch_size=1)
    irc = loop.run(stage2(pack, tiny, image_folder, s2), s2)["weights"]
    shutil.copy(irc, host.models_dir / "diffbir" / "stage2_irc.safetensors")
    control = pack("nodes.ircontrolnet").load_ircontrolnet(str(host.models_dir / "diffbir" / "stage2_irc.safetensors"),
                                                           "stage2_irc.safetensors")
    assert control.layout == "adaptbir"
    s3 = settings(pack, tmp_path / "s3", 3, batch_size=1, lr=1e-2)
    data = pack("training.data").CropBatches(image_folder, 1, 64, s3.seed)
    task = pack("training.stage3").CSFTTask(tiny.tiny_model("sd2-eps", 0), tiny.tiny_vae(0), tiny.tiny_vae(1),
                                            control, tiny.tiny_conditioning("")[0][0], data, s3, fixed_kw=(0.5, 1.0),
                                            sft_channels=32, val_steps=2, base_model="tiny")
    csft = loop.run(task, s3)["weights"]
    shutil.copy(csft, host.models_dir / "diffbir" / "stage3_csft.safetensors")
    with_csft = sampled(host, csft_graph(tiny, "stage2_irc.safetensors", "stage3_csft.safetensors", w=1.0))
    without = sampled(host, csft_graph(tiny, "stage2_irc.safetensors", "stage3_csft.safetensors", csft=False))
    assert torch.isfinite(with_csft).all() and not torch.allclose(with_csft, without, atol=1e-4)


def test_stage3_feeds_a_diffbir_control_its_own_hint_convention(pack, tiny, image_folder, tmp_path):  # noqa: F811
    """With DiffBIR's v2.pth as the control, stage III's hint is 0.18215 x the dual-encoder latent (what v2.pth
    was trained on), not AdaptBIR's post_quant_conv latent."""
    import comfy.model_management as mm
    import comfy.model_patcher

    irc = pack("nodes.ircontrolnet")
    net, _ = irc.build_ircontrolnet(dict(tiny.tiny_ircontrolnet_state_dict(0)), dtype=torch.float32)
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    s = settings(pack, tmp_path, 1, batch_size=1)
    data = pack("training.data").CropBatches(image_folder, 1, 64, s.seed)
    task = pack("training.stage3").CSFTTask(
        tiny.tiny_model("sd2-eps", 0), tiny.tiny_vae(0), tiny.tiny_vae(1), irc.IRControlNetControl(patcher, "diffbir"),
        tiny.tiny_conditioning("")[0][0], data, s, fixed_kw=(0.3, 1.0), sft_channels=32, base_model="tiny")
    lq = data.validation(1)
    hint, _, _ = task.condition(lq)
    z = pack("nodes.latent").dual_encode(tiny.tiny_vae(1), tiny.tiny_vae(0), lq, torch.tensor([0.3]))
    assert torch.allclose(hint, z * 0.18215, atol=1e-6)
    assert task.config()["hint_convention"] == "diffbir"


# ----------------------------------------------------------------------------------------------- data folders

def test_bad_images_are_skipped_with_a_warning_and_sized_with_bounded_memory(pack, tmp_path):
    data = pack("training.data")
    d = tmp_path / "mixed"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(d / "a_rgb.png")
    Image.fromarray(rng.integers(0, 256, (70, 90, 4), dtype=np.uint8), "RGBA").save(d / "b_rgba.png")
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), "L").save(d / "c_grey_small.png")
    Image.fromarray((rng.integers(0, 65536, (80, 80))).astype(np.uint16)).save(d / "d_grey16.png")
    (d / "e_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "f_tiny.png")
    Image.fromarray(rng.integers(0, 256, (20, 3000, 3), dtype=np.uint8)).save(d / "g_thin.png")
    Image.fromarray(np.zeros((1200, 1000, 3), np.uint8)).save(d / "h_large.jpg")
    src = data.CropBatches(str(d), 8, 64, 0)
    with pytest.warns(data.DataWarning) as caught:
        for step in range(6):
            hq, _ = src.batch(step)
            assert hq.shape == (8, 3, 64, 64) and hq.dtype == torch.float32 and 0 <= hq.min() and hq.max() <= 1
        val = src.validation(8)
    names = sorted(Path(p).name for p in (src.paths[i] for i in src.skipped))
    assert names == ["e_corrupt.jpg", "f_tiny.png", "g_thin.png"], src.skipped
    assert len(caught) == 3 and any("could not read image" in str(w.message) for w in caught)
    assert val.shape == (5, 3, 64, 64)
    large = next(i for i, p in enumerate(src.paths) if p.endswith("h_large.jpg"))
    assert min(src._load(large).shape[1:]) < 8 * 64  # reduced on decode (short side 1000 -> 500)
    grey16 = src._load(next(i for i, p in enumerate(src.paths) if p.endswith("d_grey16.png")))
    assert grey16.float().std() > 30  # 16-bit values scaled to 8 bits, not clipped to white
    for name in ("e_corrupt.jpg", "f_tiny.png", "g_thin.png"):
        (d / name).unlink()
    for f in d.iterdir():
        f.write_bytes(b"broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="expected usable images"):
            data.CropBatches(str(d), 1, 64, 0).batch(0)


# ------------------------------------------------------------------------------- real photographs, commands

def readme_commands() -> list[list[str]]:
    """The `python train.py ...` lines of the README's quick run, as argument lists."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- quick-run -->"):text.index("<!-- /quick-run -->")]
    return [line.split()[2:] for line in block.splitlines() if line.startswith("python train.py ")]


@pytest.fixture(scope="module")
def trained_files(host, pack, tiny, iqa_files, tmp_path_factory):
    """Run the README's quick-run lines (training.cli.main: what train.py calls once it found ComfyUI) in a fresh
    folder: scikit-image photographs, a tiny SD 2.x checkpoint file and a tiny v2.pth-layout control under the
    real names in ComfyUI's model folders."""
    import os

    import folder_paths

    tiny_checkpoint.register(tiny)
    root = tmp_path_factory.mktemp("real_photos")
    for sub in ("checkpoints", "vae"):
        (host.models_dir / sub).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(sub, str(host.models_dir / sub), is_default=True)
    tiny_checkpoint.write_checkpoint(tiny, host.models_dir / "checkpoints" / "v2-1_512-ema-pruned.safetensors")
    torch.save(tiny.tiny_ircontrolnet_state_dict(0), host.models_dir / "diffbir" / "v2.pth")
    cli = pack("training.cli")
    commands = readme_commands()
    assert [c[0] for c in commands] == ["sample-photos", "stage1", "stage2", "stage3", "stage3"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for argv in commands:
            assert cli.main(argv) == 0, argv
    finally:
        os.chdir(cwd)
    runs = root / "runs"
    shutil.copy(runs / "stage1" / "restoration_vae.safetensors",
                host.models_dir / "vae" / "adaptbir_restoration_vae.safetensors")
    shutil.copy(runs / "stage2" / "ircontrolnet.safetensors", host.models_dir / "diffbir" / "stage2_photos.safetensors")
    shutil.copy(runs / "stage3" / "csft.safetensors", host.models_dir / "diffbir" / "stage3_photos.safetensors")
    shutil.copy(runs / "stage3_v2" / "csft.safetensors", host.models_dir / "diffbir" / "adaptbir_csft.safetensors")
    return runs


def test_the_readme_commands_train_all_three_stages_on_real_photos(host, pack, tiny, trained_files):
    for run, name in (("stage1", "restoration_vae"), ("stage2", "ircontrolnet"), ("stage3", "csft"),
                      ("stage3_v2", "csft")):
        d = trained_files / run
        assert (d / f"{name}.safetensors").is_file(), run
        assert list((d / "validation").glob("step_*.png")), run  # validation strips
        m = json.loads((d / "validation" / "metrics.jsonl").read_text().splitlines()[-1])  # PSNR/SSIM vs HQ
        assert m["step"] == 4 and 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1 and m["psnr_lq"] > 10, (run, m)
        assert list((d / "checkpoints").glob("step_*.pt")), run  # resumable
    for run, convention in (("stage3", "adaptbir"), ("stage3_v2", "diffbir")):
        with safe_open(str(trained_files / run / "csft.safetensors"), "pt") as f:
            assert f.metadata()["hint_convention"] == convention, run
    # stage II's file loads in Load IRControlNet and drives stage III's file in CSFT Apply, in one graph
    with_csft = sampled(host, csft_graph(tiny, "stage2_photos.safetensors", "stage3_photos.safetensors", w=1.0))
    without = sampled(host, csft_graph(tiny, "stage2_photos.safetensors", "stage3_photos.safetensors", csft=False))
    assert torch.isfinite(with_csft).all() and not torch.allclose(with_csft, without, atol=1e-5)


def test_the_adaptbir_workflow_runs_on_the_trained_files(host, pack, tiny, trained_files):
    """workflows/adaptbir_sd21.json, converted like the page converts it, with every model file real: the tiny
    SD 2.x checkpoint under the SD 2.1 name, a v2.pth-layout control, and the stage-I VAE and stage-III CSFT
    the commands made. Only the sampling steps are lowered."""
    wf = json.loads((REPO / "workflows" / "adaptbir_sd21.json").read_text())
    prompt = pack("batch.workflow").to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 2
    Image.fromarray((np.random.default_rng(0).random((32, 36, 3)) * 255).astype(np.uint8)).save(
        host.workdir / "input" / "example.png")
    loaders = {v["class_type"]: v["inputs"] for v in prompt.values()}
    assert loaders["CheckpointLoaderSimple"]["ckpt_name"] == "v2-1_512-ema-pruned.safetensors"
    assert loaders["VAELoader"]["vae_name"] == "adaptbir_restoration_vae.safetensors"
    assert loaders["AdaptBIR_IRControlNetLoader"]["control_net_name"] == "v2.pth"
    assert loaders["AdaptBIR_CSFTLoader"]["csft_name"] == "adaptbir_csft.safetensors"
    assert loaders["AdaptBIR_IQAClassifier"]["weights"] in ("auto", KONIQ_FILE)
    ex = host.run(prompt)
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    images = host.ui(ex, save)["images"]
    out = Image.open(host.workdir / "output" / images[0].get("subfolder", "") / images[0]["filename"])
    assert out.size == (72, 64)
    assert np.asarray(out).std() > 0


def test_train_py_stage2_reports_a_missing_checkpoint(image_folder, tmp_path):  # noqa: F811
    """The launcher (a subprocess with ComfyUI found by --comfyui) knows stage2 and names the bad argument."""
    from tests.comfy.test_training import run_train
    from tests.support.comfy_host import comfyui_path

    r = run_train(comfyui_path(), "stage2", "--checkpoint", "no_such_sd21.safetensors", "--restoration-vae", "v.st",
                  "--data", image_folder, "--out", tmp_path, "--steps", 1, "--device", "cpu")
    assert r.returncode == 2 and "train.py stage2: --checkpoint: expected a file path or a name" in r.stderr, r.stderr


def test_stage2_init_from_v2_pth_starts_from_diffbirs_weights(pack, tiny, trained_files, tmp_path):
    """`train.py stage2 --init v2.pth` builds the task on DiffBIR's weights (read by the pack's layout check)."""
    cli = pack("training.cli")
    args = cli.parser().parse_args([
        "stage2", "--checkpoint", "v2-1_512-ema-pruned.safetensors", "--restoration-vae",
        "adaptbir_restoration_vae.safetensors", "--init", "v2.pth", "--data", str(trained_files.parent / "photos"),
        "--out", str(tmp_path), "--steps", "1", "--crop", "64", "--batch-size", "1", "--device", "cpu"])
    task, _ = cli.build_task(args)
    assert task.init == "v2.pth" and task.config() == {"stage": "II", "init": "v2.pth"}
    ref = tiny.tiny_ircontrolnet_state_dict(0)
    assert all(torch.equal(v, ref[k]) for k, v in task.trainable_state().items())
    bad = cli.parser().parse_args([
        "stage2", "--checkpoint", "v2-1_512-ema-pruned.safetensors", "--restoration-vae",
        "adaptbir_restoration_vae.safetensors", "--init", "adaptbir_csft.safetensors", "--data",
        str(trained_files.parent / "photos"), "--out", str(tmp_path / "bad"), "--steps", "1", "--device", "cpu"])
    with pytest.raises(ValueError, match="--init: expected an IRControlNet"):
        cli.build_task(bad)

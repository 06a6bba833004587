"""Training commands on CPU with tiny models: the loss falls on a fixed batch, a stopped run resumes to the same
weights as an uninterrupted one, validation images are written, and the files load in graphs run by ComfyUI."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.comfy.conftest import image_node, sample_images
from tests.comfy.test_csft_apply import csft_graph, sampled
from tests.conftest import musiq_with_level


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_images")
    g = np.random.default_rng(0)
    for i in range(3):
        y, x = np.mgrid[0:80, 0:72]
        img = np.stack([(x * (i + 1)) % 256, (y * 3) % 256, g.integers(0, 256, (80, 72))], -1).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i}.png")
    (d / "notes.txt").write_text("not an image")
    return str(d)


def settings(pack, out, steps, **kw):
    base = dict(out_dir=str(out), steps=steps, lr=1e-3, batch_size=2, crop=64, optimizer="adam", save_every=1000,
                val_every=0, seed=7)
    base.update(kw)
    return pack("training.loop").TrainSettings(**base)


def stage1(pack, tiny, folder, s):
    data = pack("training.data").CropBatches(folder, s.batch_size, s.crop, s.seed)
    return pack("training.stage1").RestorationVAETask(tiny.tiny_vae(0), data, s, base_model="tiny")


def test_stage1_loss_falls_on_a_fixed_batch_and_writes_a_vae(pack, tiny, image_folder, tmp_path):
    s = settings(pack, tmp_path, 30, overfit_batch=True, lr=3e-3, val_every=30, val_count=2)
    result = pack("training.loop").run(stage1(pack, tiny, image_folder, s), s)
    losses = result["losses"]
    # a random tiny decoder bounds what the encoder can reach: about -33 % in 30 steps
    assert len(losses) == 30 and losses[-1] < 0.75 * losses[0] and max(losses[-5:]) < min(losses[:5]), losses
    sd = load_file(result["weights"])
    assert {k.split(".")[0] for k in sd} == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    base = tiny.tiny_vae(0).get_sd()
    assert all(torch.equal(sd[k], base[k]) for k in base if not k.startswith("encoder."))  # decoder frozen
    assert not torch.equal(sd["encoder.conv_in.weight"], base["encoder.conv_in.weight"])
    assert Image.open(result["validation"][0]).size == (3 * 64, 2 * 64)


def _stop_at(step):
    def on_step(done, loss):
        if done == step:
            raise KeyboardInterrupt
    return on_step


def test_stage1_stop_and_resume_equals_an_uninterrupted_run(pack, tiny, image_folder, tmp_path, one_thread):
    loop = pack("training.loop")
    s_full = settings(pack, tmp_path / "full", 6)
    full = loop.run(stage1(pack, tiny, image_folder, s_full), s_full)
    s = settings(pack, tmp_path / "stopped", 6)
    with pytest.raises(KeyboardInterrupt):
        loop.run(stage1(pack, tiny, image_folder, s), s, on_step=_stop_at(3))
    assert [p.rsplit("/", 1)[-1] for p in loop.checkpoint_paths(s.out_dir)] == ["step_00000003.pt"]
    resumed = loop.run(stage1(pack, tiny, image_folder, s), s)
    assert resumed["start"] == 3 and resumed["losses"] == full["losses"][3:]
    a, b = load_file(full["weights"]), load_file(resumed["weights"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    # other settings cannot resume silently
    with pytest.raises(ValueError, match="lr: 0.001 then, 0.002 now"):
        loop.run(stage1(pack, tiny, image_folder, settings(pack, s.out_dir, 8, lr=2e-3)),
                 settings(pack, s.out_dir, 8, lr=2e-3))


def test_stage1_vae_loads_in_comfyui_and_drives_dual_encoder(host, pack, tiny, image_folder, tmp_path):
    """ComfyUI's Load VAE only knows the real KL-f8 sizes, so this run fine-tunes a full-size (random) SD VAE."""
    import comfy.sd
    import folder_paths
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = dict(tiny.VAE_CONFIG["ddconfig"], ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    sd = tiny.seeded_state_dict(AutoencoderKL(ddconfig=ddconfig, embed_dim=4), 0)
    s = settings(pack, tmp_path, 2, batch_size=1)
    data = pack("training.data").CropBatches(image_folder, 1, 64, s.seed)
    task = pack("training.stage1").RestorationVAETask(comfy.sd.VAE(sd=sd), data, s, base_model="random-kl-f8")
    weights = pack("training.loop").run(task, s)["weights"]
    vae_dir = host.models_dir / "vae"
    vae_dir.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("vae", str(vae_dir), is_default=True)
    shutil.copy(weights, vae_dir / "restoration_kl_f8.safetensors")
    vae_dir.joinpath("sd_kl_f8.safetensors").unlink(missing_ok=True)
    from safetensors.torch import save_file

    save_file(sd, str(vae_dir / "sd_kl_f8.safetensors"))
    prompt = {
        "1": image_node(tiny, "train_vae", sample_images(1, 64, 64)),
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "restoration_kl_f8.safetensors"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "sd_kl_f8.safetensors"}},
        "4": {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": {
            "image": ["1", 0], "restoration_vae": ["2", 0], "internal_vae": ["3", 0], "k": 0.0, "pad_multiple": 64,
            "tile_size": 0}},
        "5": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["4", 0]}},
    }
    z_r = host.output(host.run(prompt), "4", 0)["samples"]
    prompt["4"]["inputs"]["k"] = 1.0
    z_i = host.output(host.run(prompt), "4", 0)["samples"]
    assert z_r.shape == (1, 4, 8, 8) and torch.isfinite(z_r).all()
    assert not torch.allclose(z_r, z_i, atol=1e-5)  # the fine-tuned encoder differs from the SD one it started as


# ------------------------------------------------------------------------------------------------------ stage III

@pytest.fixture(scope="module")
def stage3_parts(host, pack, tiny, musiq_random_state):
    import comfy.model_management as mm
    import comfy.model_patcher

    irc = pack("nodes.ircontrolnet")
    net, _ = irc.build_ircontrolnet(dict(tiny.tiny_ircontrolnet_state_dict(0)), dtype=torch.float32)
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    musiq = pack("modules.iqa").build_musiq("musiq", musiq_with_level(musiq_random_state, 85.0)).eval()
    return {"control": irc.IRControlNetControl(patcher, "adaptbir"), "musiq": musiq,
            "context": tiny.tiny_conditioning("")[0][0]}


def stage3(pack, tiny, parts, folder, s, musiq=True):
    data = pack("training.data").CropBatches(folder, s.batch_size, s.crop, s.seed)
    return pack("training.stage3").CSFTTask(
        tiny.tiny_model("sd2-eps", 0), tiny.tiny_vae(0), tiny.tiny_vae(1), parts["control"], parts["context"], data,
        s, musiq=parts["musiq"] if musiq else None, sft_channels=32, val_steps=2, base_model="tiny")


def test_stage3_uses_musiq_on_the_lq_crops(pack, tiny, stage3_parts, image_folder, tmp_path, musiq_random_state):
    task = stage3(pack, tiny, stage3_parts, image_folder, settings(pack, tmp_path, 1))
    lq = sample_images(2, 64, 64).permute(0, 3, 1, 2)
    hint, k, w = task.condition(lq)
    assert k.tolist() == pytest.approx([0.7] * 2) and w.tolist() == [1.0] * 2  # musiq 85 -> mild
    assert hint.shape == (2, 4, 8, 8)
    task.musiq = pack("modules.iqa").build_musiq("musiq", musiq_with_level(musiq_random_state, 55.0)).eval()
    _, k, w = task.condition(lq)
    assert k.tolist() == pytest.approx([0.55] * 2) and w.tolist() == pytest.approx([0.55 / 0.7] * 2)


def test_stage3_loss_falls_and_the_file_drives_csft_apply(host, pack, tiny, stage3_parts, image_folder, tmp_path,
                                                         irc_file):
    s = settings(pack, tmp_path, 30, overfit_batch=True, lr=1e-2, batch_size=1, val_every=30, val_count=1)
    task = stage3(pack, tiny, stage3_parts, image_folder, s)
    result = pack("training.loop").run(task, s)
    losses = result["losses"]
    # The seeded tiny UNet's decoder activations are large next to CSFT's initial shift, so the fall is modest
    # (about -6 % here) but steady and deterministic.
    assert losses[-1] < 0.96 * losses[0] and max(losses[-5:]) < min(losses[:5]), losses
    assert Image.open(result["validation"][0]).size == (3 * 64, 64)
    shutil.copy(result["weights"], host.models_dir / "diffbir" / "trained_csft.safetensors")
    with_csft = sampled(host, csft_graph(tiny, irc_file, "trained_csft.safetensors", w=1.0))
    without = sampled(host, csft_graph(tiny, irc_file, "trained_csft.safetensors", csft=False))
    assert torch.isfinite(with_csft).all() and not torch.allclose(with_csft, without, atol=1e-4)


@pytest.fixture
def one_thread():
    """Multithreaded CPU convolution gradients differ run to run in the last bit (about 2e-9 here, also between two
    uninterrupted runs); one thread makes runs bit-reproducible so resume can be compared exactly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_stage3_stop_and_resume_equals_an_uninterrupted_run(pack, tiny, stage3_parts, image_folder, tmp_path,
                                                           one_thread):
    loop = pack("training.loop")
    # fixed k and w (no MUSIQ, which is the slow part on CPU; MUSIQ's own path is tested above)
    s_full = settings(pack, tmp_path / "full", 4, batch_size=1)
    full = loop.run(stage3(pack, tiny, stage3_parts, image_folder, s_full, musiq=False), s_full)
    s = settings(pack, tmp_path / "stopped", 4, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        loop.run(stage3(pack, tiny, stage3_parts, image_folder, s, musiq=False), s, on_step=_stop_at(2))
    resumed = loop.run(stage3(pack, tiny, stage3_parts, image_folder, s, musiq=False), s)
    assert resumed["start"] == 2 and resumed["losses"] == full["losses"][2:], (full["losses"], resumed["losses"])
    a, b = load_file(full["weights"]), load_file(resumed["weights"])
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------------ command line

def run_train(comfy_dir, *args):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "train.py"
    return subprocess.run([sys.executable, str(script), "--comfyui", str(comfy_dir), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_train_py_stage1_with_comfyuis_vae_loader(tiny, image_folder, tmp_path):
    """The launcher imports ComfyUI and the pack, loads the VAE file with ComfyUI's loader and trains on the CPU."""
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    from tests.support.comfy_host import comfyui_path

    ddconfig = dict(tiny.VAE_CONFIG["ddconfig"], ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    save_file(tiny.seeded_state_dict(AutoencoderKL(ddconfig=ddconfig, embed_dim=4), 1), str(tmp_path / "sd.safetensors"))
    out = tmp_path / "run"
    r = run_train(comfyui_path(), "stage1", "--vae", tmp_path / "sd.safetensors", "--data", image_folder, "--out", out,
                  "--steps", 2, "--crop", 64, "--batch-size", 1, "--device", "cpu", "--val-every", 2, "--val-count", 1,
                  "--lr", 1e-4)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "restoration_vae.safetensors").is_file() and (out / "validation" / "step_00000002.png").is_file()
    assert "loss=" in r.stderr and "2/2" in r.stderr  # the progress bar
    again = run_train(comfyui_path(), "stage1", "--vae", tmp_path / "sd.safetensors", "--data", image_folder, "--out",
                      out, "--steps", 2, "--crop", 64, "--batch-size", 1, "--device", "cpu", "--lr", 2e-4)
    assert again.returncode == 2 and "other settings" in again.stderr


def test_train_py_reports_missing_files(image_folder, tmp_path):
    from tests.support.comfy_host import comfyui_path

    r = run_train(comfyui_path(), "stage3", "--checkpoint", "no_such_sd21.safetensors", "--control", "x.pth",
                  "--restoration-vae", "y.safetensors", "--data", image_folder, "--out", tmp_path, "--steps", 1,
                  "--device", "cpu")
    assert r.returncode == 2 and "--checkpoint: expected a file path or a name in ComfyUI's 'checkpoints'" in r.stderr
    r = run_train(tmp_path, "stage1", "--vae", "v", "--data", image_folder, "--out", tmp_path, "--steps", 1)
    assert r.returncode == 2 and "expected a ComfyUI folder" in r.stderr

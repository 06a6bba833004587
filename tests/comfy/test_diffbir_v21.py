"""DiffBIR v2.1 on its real schedule: the shipped workflow's sampling is zero-terminal-SNR v-prediction, a v2.1
control on another schedule warns, and v2.1's noise augmentation and rescaled CFG act as DiffBIR defines them."""

import json
import math
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def zsnr_sigmas() -> torch.Tensor:
    """SD's scaled-linear schedule rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1), as sigmas; the
    last alpha-bar is ComfyUI's floor (exactly 0 would give an infinite sigma)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sqrt_abar = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar ** 2
    abar[-1] = 4.8973451890853435e-08
    return ((1 - abar) / abar).sqrt()


def test_shipped_v21_workflow_samples_zero_snr_v_prediction(host, tiny):
    import comfy.model_sampling

    wf = json.loads((REPO / "workflows" / "diffbir_v21_zsnr.json").read_text())
    (msd,) = [n for n in wf["nodes"] if n["type"] == "ModelSamplingDiscrete"]
    assert msd["widgets_values"] == ["v_prediction", True]
    links = {link[0]: link for link in wf["links"]}
    ids = {n["id"]: n for n in wf["nodes"]}
    (sampler,) = [n for n in wf["nodes"] if n["type"] == "AdaptBIR_RestorationGuidanceSampler"]
    model_link = next(i["link"] for i in sampler["inputs"] if i["name"] == "model")
    assert ids[links[model_link][1]]["type"] == "ModelSamplingDiscrete"  # the sampler samples through it
    ckpt_link = next(i["link"] for i in msd["inputs"] if i["name"] == "model")
    assert ids[links[ckpt_link][1]]["type"] == "CheckpointLoaderSimple"
    # what the node does with those widgets, on an SD2 model that ComfyUI loaded as eps without zsnr
    (patched,) = host.node_class("ModelSamplingDiscrete")().patch(tiny.tiny_model("sd2-eps"), *msd["widgets_values"])
    ms = patched.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.V_PREDICTION)
    assert torch.allclose(ms.sigmas.double(), zsnr_sigmas(), rtol=1e-4)
    assert float(ms.sigma_max) > 4000  # and not SD's 14.6


def test_v21_control_warns_on_a_schedule_that_is_not_zsnr_v_prediction(host, tiny, pack, irc_file, caplog):
    irc = pack("nodes.ircontrolnet")
    msd = host.node_class("ModelSamplingDiscrete")()
    eps = tiny.tiny_model("sd2-eps").get_model_object("model_sampling")
    v_only = msd.patch(tiny.tiny_model("sd2-eps"), "v_prediction", False)[0].get_model_object("model_sampling")
    right = msd.patch(tiny.tiny_model("sd2-eps"), "v_prediction", True)[0].get_model_object("model_sampling")
    text = irc.zsnr_warning("DiffBIR_v2.1.pt", eps)
    assert "not v-prediction, zsnr off" in text and "ModelSamplingDiscrete (sampling v_prediction, zsnr on)" in text
    assert "v-prediction, zsnr off" in irc.zsnr_warning("DiffBIR_v2.1.pt", v_only)
    assert irc.zsnr_warning("DiffBIR_v2.1.pt", right) is None
    assert irc.zsnr_warning("v2.pth", eps) is None  # v2 runs on SD 2.1-base (eps)
    # in a run: the control warns in the log before the first step
    import logging

    control = irc.load_ircontrolnet(str(host.models_dir / "diffbir" / irc_file), "DiffBIR_v2.1.pt")
    with caplog.at_level(logging.WARNING):
        control.pre_run(tiny.tiny_model("sd2-eps").model, lambda p: p)
    control.cleanup()
    assert any("DiffBIR v2.1 was trained on the zero-terminal-SNR" in r.getMessage() for r in caplog.records)


def test_noise_aug_gives_positive_and_negative_the_same_q_sampled_condition(host, tiny, pack, irc_file):
    irc = pack("nodes.ircontrolnet")
    control = irc.load_ircontrolnet(str(host.models_dir / "diffbir" / irc_file), "DiffBIR_v2.1.pt")
    hint = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    pos, neg = tiny.tiny_conditioning("a"), tiny.tiny_conditioning("b")
    out_pos, out_neg, _ = irc.ApplyIRControlNet.execute(
        pos, neg, control, condition={"samples": hint / 0.18215}, hint_convention="diffbir", noise_aug=200,
        noise_seed=7).args
    model = host.node_class("ModelSamplingDiscrete")().patch(tiny.tiny_model("sd2-eps"), "v_prediction", True)[0]
    ms = model.get_model_object("model_sampling")
    abar = 1.0 / (1.0 + zsnr_sigmas() ** 2)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    want = abar[200].sqrt() * hint.double() + (1 - abar[200]).sqrt() * noise.double()
    got = []
    for cond in (out_pos, out_neg):
        c = cond[0][1]["control"]
        assert (c.noise_aug, c.noise_seed) == (200, 7)
        c = c.copy()  # ComfyUI may copy a control: the copy keeps the augmentation
        c.model_sampling_current = ms
        got.append(c.noisy_hint(c.cond_hint_original))
    assert torch.equal(got[0], got[1])  # the same noisy condition for cond and uncond
    assert torch.allclose(got[0].double(), want, atol=1e-5)
    plain = irc.ApplyIRControlNet.execute(pos, neg, control, condition={"samples": hint / 0.18215},
                                          hint_convention="diffbir").args[0][0][1]["control"]
    assert plain.noise_aug == 0 and plain.noisy_hint(hint) is hint  # default: off, exactly


def test_rescaled_cfg_scales_each_step_by_diffbir_formula(host, tiny, pack):
    sampling = pack("nodes.sampling")
    model = tiny.tiny_model("sd2-eps")
    m = sampling.with_rescaled_cfg(model)
    assert m is not model and "sampler_cfg_function" not in model.model_options
    fn = m.model_options["sampler_cfg_function"]
    ms = model.get_model_object("model_sampling")
    cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in (999, 600, 200, 0):
        sigma = ms.sigmas[t].reshape(1).repeat(2)
        out = fn({"cond": cond, "uncond": uncond, "cond_scale": 4.0, "sigma": sigma, "timestep": sigma})
        scale = 1 + 4.0 * (1 - math.cos(math.pi * ((1000 - t) / 1000) ** 5)) / 2
        assert torch.allclose(out, uncond + (cond - uncond) * scale, atol=1e-5), t
    sigma = ms.sigmas[500].reshape(1)
    out = fn({"cond": cond[:1], "uncond": uncond[:1], "cond_scale": 1.0, "sigma": sigma, "timestep": sigma})
    assert torch.allclose(out, cond[:1], atol=1e-6)  # cfg 1 stays 1, as in DiffBIR

"""DiffBIR sampling in ComfyUI: spaced schedule, guidance patch and sampler node, colour fix; the full chain."""

import pytest
import torch

from modules.guidance import sobel_weight_map
from modules.schedules import scaled_linear_alphas_cumprod, space_timesteps, timesteps_from_sigmas
from tests.comfy.conftest import image_node, sample_images
from tests.support.comfy_host import ExecutionFailed


def sampler_graph(tiny, irc, image, scale=0.0, space="rgb", start="noise", steps=4, sampler="ddpm",
                  scheduler="diffbir_spaced", cfg=4.0, g_loss="w_mse"):
    return {
        "1": image_node(tiny, "guide", image),
        "2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
        "3": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": False}},
        "4": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "low quality", "seed": 0,
                                                                        "sdxl": False}},
        "5": {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": irc}},
        "6": {"class_type": "AdaptBIR_ApplyIRControlNet", "inputs": {
            "positive": ["3", 0], "negative": ["4", 0], "control_net": ["5", 0], "strength": 1.0,
            "start_percent": 0.0, "end_percent": 1.0, "hint_convention": "auto", "image": ["1", 0],
            "vae": ["2", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": image.shape[2], "height": image.shape[1],
                                                          "batch_size": image.shape[0]}},
        "8": {"class_type": "AdaptBIR_RestorationGuidanceSampler", "inputs": {
            "model": ["2", 0], "positive": ["6", 0], "negative": ["6", 1], "vae": ["2", 1], "latent_image": ["7", 0],
            "start": start, "seed": 7, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "guidance_scale": scale, "g_start": 1001, "g_stop": -1, "g_repeat": 1, "g_space": space,
            "g_loss": g_loss, "block_size": 2, "condition": ["6", 2]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["2", 1]}},
        "10": {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": ["9", 0], "reference": ["1", 0],
                                                             "method": "wavelet"}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }


def run(host, prompt):
    ex = host.run(prompt)
    return host.output(ex, "8", 0)["samples"], host.output(ex, "9", 0), ex


def weighted_mse(decoded, guide):
    g = guide.permute(0, 3, 1, 2)
    w = sobel_weight_map(g)
    return float((w * (decoded.permute(0, 3, 1, 2) - g) ** 2).mean())


def test_spaced_scheduler_node_matches_iddpm(host, tiny):
    for steps in (10, 50):
        p = {"1": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
             "2": {"class_type": "AdaptBIR_SpacedDDPMScheduler", "inputs": {"model": ["1", 0], "steps": steps}},
             "3": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["2", 0]}}}
        sigmas = host.output(host.run(p), "2", 0)
        abar = scaled_linear_alphas_cumprod()
        ts = timesteps_from_sigmas(sigmas, abar)
        assert ts.tolist() == sorted(space_timesteps(1000, str(steps)), reverse=True)
        assert len(sigmas) == steps + 1 and sigmas[-1] == 0


def with_cleaner(prompt, restorer):
    """Insert DiffBIR's stage 1 (a SwinIR restorer) between the input image and everything that used it."""
    prompt["30"] = {"class_type": "AdaptBIR_RestorerLoader", "inputs": {"restorer_name": restorer, "precision": "auto"}}
    prompt["31"] = {"class_type": "AdaptBIR_Stage1Restore", "inputs": {
        "image": ["1", 0], "restorer": ["30", 0], "output_scale": 1.0, "tile_size": 0, "tile_stride": 256}}
    for nid in ("6", "10"):
        for key, val in prompt[nid]["inputs"].items():
            if val == ["1", 0]:
                prompt[nid]["inputs"][key] = ["31", 0]
    return prompt


def test_cleaner_irc_guidance_sampler_decode_colourfix_chain(host, tiny, irc_file, swinir_file):
    img = sample_images(1, 64, 64)
    _, decoded, ex = run(host, with_cleaner(sampler_graph(tiny, irc_file, img, scale=0.5 / 64), swinir_file))
    fixed = host.output(ex, "10", 0)
    assert decoded.shape == fixed.shape == (1, 64, 64, 3) and torch.isfinite(fixed).all()
    assert host.ui(ex, "11")["images"]


def test_scale_zero_is_bit_identical_to_plain_sampling(host, tiny, irc_file):
    img = sample_images(1, 64, 64)
    lat0, dec0, ex = run(host, sampler_graph(tiny, irc_file, img, scale=0.0))
    plain = sampler_graph(tiny, irc_file, img)
    plain["8"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["2", 0], "add_noise": True, "noise_seed": 7, "cfg": 4.0, "positive": ["6", 0],
        "negative": ["6", 1], "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["7", 0]}}
    plain["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddpm"}}
    plain["13"] = {"class_type": "AdaptBIR_SpacedDDPMScheduler", "inputs": {"model": ["2", 0], "steps": 4}}
    lat_plain, _, _ = run(host, plain)
    assert torch.equal(lat0, lat_plain)


@pytest.mark.parametrize("space", ["rgb", "latent"])
def test_raising_the_guidance_scale_lowers_the_guided_error(host, tiny, irc_file, space):
    """rgb: the Sobel-weighted MSE of the decoded output to the guide; latent: the MSE of the output latent to the
    guide's latent (what latent-space guidance optimises; a tiny random VAE does not reproduce images).

    DiffBIR's loss is a mean over pixels, so the same scale takes steps (512/64)^2 = 64 times larger at 64 px
    than at DiffBIR's 512 px; the scales 0, 0.5, 1, 2 are divided by 64 to behave as at 512 px."""
    img = sample_images(1, 64, 64)
    target = tiny.tiny_vae(0).encode(img).detach()
    errs = []
    for scale in (0.0, 0.5 / 64, 1.0 / 64, 2.0 / 64):
        latent, decoded, _ = run(host, sampler_graph(tiny, irc_file, img, scale=scale, space=space))
        errs.append(weighted_mse(decoded, img) if space == "rgb" else float(((latent - target) ** 2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_cond_start_and_other_samplers(host, tiny, irc_file):
    img = sample_images(2, 64, 64)
    a, _, _ = run(host, sampler_graph(tiny, irc_file, img, start="cond"))
    b, _, _ = run(host, sampler_graph(tiny, irc_file, img, start="noise"))
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    c, _, _ = run(host, sampler_graph(tiny, irc_file, img, scale=0.5, sampler="euler", scheduler="karras",
                                      g_loss="mse"))
    assert torch.isfinite(c).all()


def test_guidance_without_guide_is_refused(host, tiny, irc_file):
    p = sampler_graph(tiny, irc_file, sample_images(1, 64, 64), scale=1.0)
    del p["8"]["inputs"]["condition"]
    with pytest.raises(ExecutionFailed, match="needs a guide image or a condition"):
        host.run(p)


def test_guide_of_another_size_is_refused(host, tiny, irc_file):
    p = sampler_graph(tiny, irc_file, sample_images(1, 64, 64), scale=1.0)
    tiny.IMAGES["small"] = sample_images(1, 128, 128)
    p["20"] = {"class_type": "AdaptBIRTest_Image", "inputs": {"name": "small"}}
    p["8"]["inputs"]["guide_image"] = ["20", 0]
    with pytest.raises(ExecutionFailed, match="guide_image: expected the size"):
        host.run(p)


def test_the_callers_vae_is_left_as_it_was(host, tiny, irc_file):
    img = sample_images(1, 64, 64)
    ex = host.run(sampler_graph(tiny, irc_file, img, scale=1.0))
    vae = host.output(ex, "2", 1)
    fresh = tiny.tiny_vae(0).first_stage_model
    for (name, p), q in zip(vae.first_stage_model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad, name


def test_colour_fix_takes_low_frequencies_from_the_reference(host, tiny):
    img = sample_images(1, 64, 64)
    ref = torch.full_like(img, 0.25)
    tiny.IMAGES["ref"] = ref
    p = {"1": image_node(tiny, "img", img), "2": {"class_type": "AdaptBIRTest_Image", "inputs": {"name": "ref"}},
         "3": {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": ["1", 0], "reference": ["2", 0],
                                                            "method": "adain"}},
         "4": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", 0]}}}
    out = host.output(host.run(p), "3", 0)
    assert out.shape == img.shape and abs(float(out.mean()) - 0.25) < 0.02


def test_posterior_mean_moves_by_exactly_delta_on_comfyuis_ddpm_step(host):
    """Moving x0 by Δ/c1 moves the mean of ComfyUI's own DDPM step (no noise) by exactly Δ (in x_t units)."""
    from comfy.k_diffusion.sampling import DDPMSampler_step

    from modules.guidance import apply_guidance_step
    from modules.schedules import posterior_mean_coef1, spaced_sigmas

    sig = spaced_sigmas(scaled_linear_alphas_cumprod(), 10).double()
    g = torch.Generator().manual_seed(0)
    for i in (0, 4, 8):
        s, s_next = sig[i], sig[i + 1]
        x0 = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        x = x0 + s * torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)  # ComfyUI's scaled x
        grad = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        c1 = posterior_mean_coef1(s, s_next)
        x0_new = apply_guidance_step(x0, grad, 0.5, c1)
        delta = -(0.5 * 3000) * grad

        def mean(d, x=x, s=s, s_next=s_next):
            return DDPMSampler_step(x / torch.sqrt(1 + s ** 2), s, s_next, (x - d) / s, lambda *a: 0.0)

        shift = mean(x0_new) - mean(x0)
        assert torch.allclose(shift, delta, rtol=1e-9, atol=1e-9 * float(delta.abs().max()))


def test_guidance_patch_works_with_the_stock_ksampler_and_leaves_the_model_alone(host, tiny, irc_file):
    img = sample_images(1, 64, 64)

    def graph(scale):
        p = sampler_graph(tiny, irc_file, img)
        p["20"] = {"class_type": "AdaptBIR_ApplyRestorationGuidance", "inputs": {
            "model": ["2", 0], "vae": ["2", 1], "guide_image": ["1", 0], "guidance_scale": scale, "g_start": 1001,
            "g_stop": -1, "g_repeat": 1, "g_space": "rgb", "g_loss": "w_mse", "block_size": 2}}
        p["8"] = {"class_type": "KSampler", "inputs": {
            "model": ["20", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["7", 0], "seed": 7,
            "steps": 4, "cfg": 4.0, "sampler_name": "ddpm", "scheduler": "simple", "denoise": 1.0}}
        return p

    lat0, dec0, ex0 = run(host, graph(0.0))
    lat1, dec1, ex1 = run(host, graph(1.0 / 64))
    model_in, model_out = host.output(ex1, "2", 0), host.output(ex1, "20", 0)
    assert model_out is not model_in
    assert not model_in.model_options.get("sampler_post_cfg_function")
    assert len(model_out.model_options["sampler_post_cfg_function"]) == 1
    assert weighted_mse(dec1, img) < weighted_mse(dec0, img)


def test_guide_for_the_unpadded_image_is_edge_padded(host, tiny, irc_file):
    img = sample_images(1, 69, 85)  # the sampled latent is 128x128 (padded), the guide is the original image
    p = sampler_graph(tiny, irc_file, img, scale=0.5 / 64)
    p["7"]["inputs"].update(width=128, height=128)
    p["8"]["inputs"]["guide_image"] = ["1", 0]
    lat, dec, _ = run(host, p)
    assert dec.shape == (1, 128, 128, 3) and torch.isfinite(lat).all()

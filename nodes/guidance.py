"""DiffBIR's region-adaptive restoration guidance as a ComfyUI post-CFG model patch.

At every step inside the window the patch takes the predicted x0 (after CFG), measures the (Sobel-weighted) MSE
between the decoded x0 and the guide image, and moves x0 so that the DDPM posterior mean moves by
Δ = -(scale·3000)·∂L/∂x0 (DiffBIR v2.0.0). It works with any ComfyUI sampler; with DDPM over the spaced schedule it
is DiffBIR's spaced sampler with guidance.
"""

from __future__ import annotations

import copy

import torch

from ..modules import guidance as g
from ..modules.schedules import posterior_mean_coef1
from .common import PackError, check_interrupt

SPACES = ["rgb", "latent"]
LOSSES = ["w_mse", "mse"]


class _FrozenDecoder(torch.nn.Module):
    """``post_quant_conv`` + decoder of a VAE: raw latent (B, C, h, w) -> (B, 3, 8h, 8w) in about [-1, 1]."""

    def __init__(self, post_quant_conv: torch.nn.Module, decoder: torch.nn.Module):
        super().__init__()
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z))


def grad_capable_decoder(vae, device, dtype=torch.float32) -> torch.nn.Module:
    """A frozen copy of the VAE's ``post_quant_conv`` + decoder made of normal (non-inference) tensors.

    ComfyUI runs prompts under ``torch.inference_mode()`` and loads weights there, so backpropagating through the
    VAE itself fails; this copy is made once per patch and leaves the caller's VAE untouched.
    """
    import comfy.model_management as mm

    mm.load_models_gpu([vae.patcher])
    fsm = vae.first_stage_model
    with torch.inference_mode(False):
        dec = _FrozenDecoder(copy.deepcopy(getattr(fsm, "post_quant_conv", torch.nn.Identity())),
                             copy.deepcopy(fsm.decoder))
        state = {k: v.detach().clone().to(device=device, dtype=dtype) for k, v in dec.state_dict().items()}
        dec.load_state_dict(state, assign=True)
    return dec.requires_grad_(False).eval()


class RestorationGuidance:
    """Post-CFG function ``fn(args) -> denoised`` applying DiffBIR's guidance (see module docstring).

    Args:
        vae: ComfyUI VAE used to decode x0 (rgb space) or to encode the guide (latent space).
        guide: (B or 1, 3, H, W) float32 in [0, 1]: the sampled image's size, or that size before padding to 64
            (then edge-padded, see :func:`fit_guide`).
        scale: guidance scale (DiffBIR ``g_scale``; Δ uses scale × 3000). 0 = off.
        g_start, g_stop: active while g_stop < t + 1 < g_start, t the model timestep (DiffBIR's window).
        repeat: guidance updates per step. space: "rgb" or "latent". loss: "w_mse" or "mse".
        block_size: Sobel block size of the w_mse weight map.
    """

    def __init__(self, vae, guide, scale, g_start=1001, g_stop=-1, repeat=1, space="rgb", loss="w_mse",
                 block_size=2):
        self.vae, self.raw_guide, self.scale = vae, guide, float(scale)
        self.g_start, self.g_stop, self.repeat = int(g_start), int(g_stop), int(repeat)
        self.space, self.loss, self.block_size = space, loss, int(block_size)
        self._decoder = None
        self._prepared_for = None  # (latent h, w, device) the target and weight below were made for
        self._target = self._weight = None

    def _prepare(self, x0, latent_format):
        """Target and weight map for this latent size and device, made once (not at every step)."""
        h, w = x0.shape[-2:]
        key = (h, w, x0.device)
        if self._prepared_for == key:
            return
        guide = fit_guide(self.raw_guide, h * 8, w * 8)
        if guide.shape[0] not in (1, x0.shape[0]):
            raise PackError(f"guide_image: expected 1 or {x0.shape[0]} images (the latent batch), found "
                            f"{guide.shape[0]}")
        weight = g.sobel_weight_map(guide, self.block_size) if self.loss == "w_mse" else None
        if self.space == "rgb":
            target = guide * 2 - 1
        else:
            target = latent_format.process_in(self.vae.encode(guide.permute(0, 2, 3, 1)).float())
            weight = None if weight is None else g.resize_weight_map(weight, (h, w))
        self._target = target.to(x0.device)
        self._weight = None if weight is None else weight.to(x0.device)
        self._prepared_for = key

    def _decode_fn(self, latent_format, device):
        if self._decoder is None:
            self._decoder = grad_capable_decoder(self.vae, device)
        dec = self._decoder.to(device)

        def decode(x0_scaled):
            return dec(latent_format.process_out(x0_scaled))
        return decode

    def __call__(self, args):
        x0 = args["denoised"]
        if self.scale == 0:
            return x0
        model = args["model"]
        sigma = args["sigma"]
        t = int(round(float(model.model_sampling.timestep(sigma[:1]).item())))
        if not g.guidance_active(t, self.g_start, self.g_stop):
            return x0
        check_interrupt()
        sigma_next = _next_sigma(args, float(sigma[0]))
        coef1 = posterior_mean_coef1(sigma.double().cpu(), torch.full_like(sigma.double().cpu(), sigma_next))
        self._prepare(x0, model.latent_format)
        decode = self._decode_fn(model.latent_format, x0.device) if self.space == "rgb" else _identity
        target, weight = self._target, self._weight
        if target.shape[0] == 1 and x0.shape[0] > 1:
            target = target.expand(x0.shape[0], -1, -1, -1)
            weight = None if weight is None else weight.expand(x0.shape[0], -1, -1, -1)
        out = g.guided_x0(x0.float(), target.float(), decode, self.scale,
                          coef1.to(device=x0.device, dtype=torch.float32), weight=weight, repeat=self.repeat)
        return out.to(x0.dtype)


def _identity(x):
    return x


def fit_guide(guide: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fit a (B,3,h,w) guide to the sampled image size: equal, or smaller by less than 64 px per side (the
    unpadded image), then edge-padded at the bottom/right like Dual Encoder Interpolate pads what it encodes."""
    h, w = guide.shape[-2:]
    if h > height or w > width or height - h >= 64 or width - w >= 64:
        raise PackError(f"guide_image: expected the size of the sampled image ({width}x{height}, or that size "
                        f"before padding to a multiple of 64), found {w}x{h}")
    if (h, w) == (height, width):
        return guide
    return torch.nn.functional.pad(guide, (0, width - w, 0, height - h), mode="replicate")


def _next_sigma(args, sigma: float) -> float:
    """The sigma of the sampler's next step (0 after the last), from the schedule ComfyUI passes to the model."""
    sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return 0.0
    sigmas = sigmas.detach().float().cpu()
    i = int(torch.argmin((sigmas - sigma).abs()))
    return float(sigmas[i + 1]) if i + 1 < len(sigmas) else 0.0


def apply_guidance(model, patch: RestorationGuidance):
    """A clone of ``model`` with the guidance as a post-CFG function (the input model is not modified)."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(patch)
    return m

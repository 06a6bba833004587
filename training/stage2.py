"""Stage II: AdaptBIR's IRControlNet. The SD UNet and both VAEs stay frozen; the control branch (the SD UNet's
encoder with an 8-channel first convolution and 13 zero convolutions) learns with the eps loss, as AdaptBIR's
``stage23_diffusion/cldm/adaptbir_stage2.py`` trains it:

* LQ: Real-ESRGAN second-order degradation at scale 4, resized back to the crop size (per sample, as the
  reference's per-image dataset draws it); HQ: the crop.
* hint = post_quant_conv(mode(quant_conv(E_R(LQ)))): the stage-I restoration encoder, the SD VAE's quant
  convolutions, no 0.18215 factor (the ``adaptbir`` hint convention). LQ is fed in [-1, 1] like stage I and every
  inference path (the reference's stage-II dataset feeds [0, 1]; not reproduced, see docs/adaptbir-control.md).
* an empty prompt, t uniform in [0, 1000), loss = MSE(eps_pred, eps), every control weight trains (AdamW 1e-4).
* init: the SD UNet's encoder with the 4 extra input channels zero and zero convolutions zero (AdaptBIR's
  ``tool_add_control_sd21.py``), or an existing IRControlNet file (DiffBIR's v2.pth, or our own, to continue).

The forward runs through ComfyUI's ``BaseModel.apply_model`` with the control dict the pack's IRControlNet makes,
so what is trained is what Apply IRControlNet runs.
"""

from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import torch
import torch.nn.functional as F

from ..modules.degradations import realesrgan_degrade
from ..nodes.ircontrolnet import IRControlNetControl, build_ircontrolnet, check_unet_fits, hint_from_condition
from ..nodes.latent import encode, post_quant
from .data import CropBatches
from .defaults import STAGE2_DEFAULTS
from .loop import TrainingTask, gradient_checkpointing, record_metrics, save_image_grid

FORMAT_VERSION = "1"
DEFAULTS = STAGE2_DEFAULTS  # training/defaults.py
ENCODER_PREFIXES = ("time_embed.", "input_blocks.", "middle_block.")


def control_from_unet(unet_sd: dict) -> dict:
    """IRControlNet weights initialised from an SD UNet state dict (keys without prefix), as AdaptBIR/DiffBIR do:
    time_embed, input_blocks and middle_block copied, the first convolution widened to 8 input channels with the
    4 new ones zero, the 13 zero convolutions (zero_convs.i.0, middle_block_out.0) zero. float32 CPU tensors."""
    out = {k: v.detach().float().cpu().clone() for k, v in unet_sd.items() if k.startswith(ENCODER_PREFIXES)}
    if "input_blocks.0.0.weight" not in out or "middle_block.0.in_layers.2.weight" not in out:
        raise ValueError("--checkpoint: expected an SD UNet (input_blocks, middle_block) to initialise the "
                         "IRControlNet from, found none")
    w = out["input_blocks.0.0.weight"]
    out["input_blocks.0.0.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    n_in = 1 + max(int(k.split(".")[1]) for k in out if k.startswith("input_blocks."))
    for i in range(n_in):
        c = _block_channels(out, i)
        out[f"zero_convs.{i}.0.weight"] = torch.zeros(c, c, 1, 1)
        out[f"zero_convs.{i}.0.bias"] = torch.zeros(c)
    c = out["middle_block.2.out_layers.3.weight"].shape[0]
    out["middle_block_out.0.weight"] = torch.zeros(c, c, 1, 1)
    out["middle_block_out.0.bias"] = torch.zeros(c)
    return out


def _block_channels(sd: dict, i: int) -> int:
    """Output channels of input block ``i`` (the first convolution, a ResBlock or a Downsample)."""
    for key in (f"input_blocks.{i}.0.out_layers.3.weight", f"input_blocks.{i}.0.op.weight",
                f"input_blocks.{i}.0.weight"):
        if key in sd:
            return sd[key].shape[0]
    raise ValueError(f"--checkpoint: expected an SD UNet input block {i} (ResBlock, Downsample or convolution), "
                     f"found keys {[k for k in sd if k.startswith(f'input_blocks.{i}.')][:3]}")


class IRControlNetTask(TrainingTask):
    """Train an IRControlNet for ``model`` (a ComfyUI ModelPatcher, SD-UNet-shaped) on restoration-VAE hints.

    Args:
        model: the SD 2.1 ModelPatcher (frozen). vae: its SD VAE (quant convolutions, decoder for validation).
            restoration_vae: the stage-I VAE (its encoder makes the hint).
        control_sd: IRControlNet weights to start from (:func:`control_from_unet`, or a loaded file's).
        context: (1, T, D) conditioning of the prompt (AdaptBIR: empty). val_steps: sampling steps of the
            validation images. init: a word for the file's metadata (``sd_unet``, ``v2.pth``, ...).
    """

    name = "stage II (IRControlNet)"

    def __init__(self, model, vae, restoration_vae, control_sd: dict, context, data: CropBatches, settings,
                 val_steps: int = 20, base_model: str = "", init: str = "sd_unet"):
        self.device = settings.torch_device()
        net, _ = build_ircontrolnet(dict(control_sd), device=self.device, dtype=torch.float32)
        unet = model.get_model_object("diffusion_model")
        check_unet_fits(net, unet)
        self.net = net.train().requires_grad_(True)
        self.model, self.unet, self.vae, self.restoration_vae = model, unet, vae, restoration_vae
        model.model.requires_grad_(False)
        self.context = context.to(self.device)
        self.data, self.settings, self.val_steps = data, settings, val_steps
        self.base_model, self.init = base_model, init
        self._fixed = self._patcher = None
        self._ckpt = list(net.input_blocks) + [net.middle_block] + [
            m for blk in unet.output_blocks for m in blk if type(m).__name__ in ("ResBlock", "SpatialTransformer")]

    def parameters(self):
        return list(self.net.parameters())

    def trainable_state(self):
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state(self, state):
        self.net.load_state_dict(state, strict=True)

    def config(self):
        return {"stage": "II", "init": self.init}

    @torch.no_grad()
    def hint(self, lq: torch.Tensor) -> torch.Tensor:
        """AdaptBIR's hint (B, 4, H/8, W/8) float32 for LQ crops (B, 3, H, W) [0, 1]: post_quant_conv of the
        restoration encoder's posterior mode."""
        z = encode(self.restoration_vae, lq, 0)
        return hint_from_condition({"samples": z, "post_quant": post_quant(self.vae, z)}, "adaptbir")

    def _batch(self, step: int):
        """HQ crops, the hint and the step's generator (for noise and timesteps). With ``overfit_batch`` step 0's
        batch is made once and replayed with the same generator state."""
        if self.settings.overfit_batch and self._fixed is not None:
            hq, hint, state = self._fixed
            return hq, hint, torch.Generator().set_state(state)
        hq, g = self.data.batch(0 if self.settings.overfit_batch else step)
        lq, _ = realesrgan_degrade(hq, g, scale=4, per_sample=True)
        hint = self.hint(lq)
        if self.settings.overfit_batch:
            self._fixed = (hq, hint, g.get_state())
        return hq, hint, g

    def loss(self, step):
        hq, hint, g = self._batch(step)
        mm.load_models_gpu([self.model])  # the VAE encodes may have moved it off
        base = self.model.model
        ms = base.model_sampling
        with torch.no_grad():
            z0 = base.process_latent_in(encode(self.vae, hq, 0)).to(self.device)
            t = torch.randint(0, len(ms.sigmas), (hq.shape[0],), generator=g)
            eps = torch.randn(z0.shape, generator=g).to(self.device)
            sigma = ms.sigma(t.float().to(ms.sigmas.device)).to(self.device)
            x = ms.noise_scaling(sigma.view(-1, 1, 1, 1), eps, z0)
            x_in = ms.calculate_input(sigma, x)
        context = self.context.expand(hq.shape[0], -1, -1)
        with gradient_checkpointing(self._ckpt, self.settings.checkpointing(self.device)):
            control = self.net(torch.cat([x_in, hint.to(self.device, x_in.dtype)], dim=1),
                               ms.timestep(sigma).float(), context)
            denoised = base.apply_model(x, sigma, c_crossattn=context, control=control,
                                        transformer_options={"cond_or_uncond": [0]})
        eps_pred = (x - denoised.float()) / sigma.view(-1, 1, 1, 1)
        return F.mse_loss(eps_pred, eps)

    def control(self) -> IRControlNetControl:
        """The network being trained as a ComfyUI control (one patcher whose offload device is the training
        device, so ComfyUI never moves the weights the optimiser holds)."""
        if self._patcher is None:
            self._patcher = comfy.model_patcher.ModelPatcher(self.net, load_device=self.device,
                                                             offload_device=self.device)
        return IRControlNetControl(self._patcher, "adaptbir")

    @torch.no_grad()
    def validate(self, step, folder):
        """Sample the validation crops through ComfyUI's sampler with the current control; LQ | result | HQ."""
        hq = self.data.validation(self.settings.val_count)
        lq, _ = realesrgan_degrade(hq, torch.Generator().manual_seed(self.settings.seed), scale=4, per_sample=True)
        hint = self.hint(lq)
        self.net.eval()
        try:
            control = self.control().set_cond_hint(hint, 1.0, (0.0, 1.0))
            cond = [[self.context.cpu(), {"control": control, "control_apply_to_uncond": False}]]
            latent = torch.zeros(hint.shape, dtype=torch.float32)
            noise = comfy.sample.prepare_noise(latent, self.settings.seed)
            samples = comfy.sample.sample(self.model, noise, self.val_steps, 1.0, "ddpm", "normal", cond, cond,
                                          latent, seed=self.settings.seed, disable_pbar=True)
        finally:
            self.net.train()
        out = self.vae.decode(samples).movedim(-1, 1).float().cpu().clamp(0, 1)
        record_metrics(folder, step, out, hq, lq)
        return save_image_grid([lq, out, hq], os.path.join(folder, f"step_{step:08d}.png"))

    def export(self, out_dir):
        from safetensors.torch import save_file

        meta = {"adaptbir_kind": "ircontrolnet", "format_version": FORMAT_VERSION, "base_model": self.base_model,
                "hint_convention": "adaptbir", "stage": "II", "init": self.init,
                "degradation": "realesrgan_second_order_scale4"}
        path = os.path.join(out_dir, "ircontrolnet.safetensors")
        save_file({k: v.contiguous() for k, v in self.trainable_state().items()}, path + ".tmp", metadata=meta)
        os.replace(path + ".tmp", path)  # atomic: the file is complete or absent
        return path

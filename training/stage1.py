"""Stage I: AdaptBIR's restoration VAE. The SD VAE's encoder is fine-tuned (decoder and quant convolutions frozen)
so that decode(encode(LQ)) matches HQ (pixel L2 in [-1, 1]) on Real-ESRGAN second-order degradations at scale 1.

The result is a whole VAE file (fine-tuned encoder + the original decoder and quant convolutions) that ComfyUI's
Load VAE reads from models/vae, for the ``restoration_vae`` input of Dual Encoder Interpolate.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..modules.degradations import realesrgan_degrade
from .data import CropBatches
from .defaults import STAGE1_DEFAULTS
from .loop import TrainingTask, gradient_checkpointing, record_metrics, save_image_grid

FORMAT_VERSION = "1"
DEFAULTS = STAGE1_DEFAULTS  # training/defaults.py


class RestorationVAETask(TrainingTask):
    """Fine-tune ``vae.first_stage_model.encoder`` of a ComfyUI VAE (KL with quant_conv) on a CropBatches source.

    ``posterior``: ``sample`` (LDM's autoencoder forward, as AdaptBIR trains) or ``mode``.
    """

    name = "stage I (restoration VAE)"

    def __init__(self, vae, data: CropBatches, settings, posterior: str = "sample", base_model: str = ""):
        ae = getattr(vae, "first_stage_model", None)
        if ae is None or not all(hasattr(ae, a) for a in ("encoder", "decoder", "quant_conv", "post_quant_conv")):
            raise ValueError("vae: expected a KL VAE with encoder, decoder, quant_conv and post_quant_conv (the SD "
                             f"1.x/2.x/SDXL VAE), found {type(ae).__name__}")
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior: expected sample or mode, found {posterior!r}")
        self.device = settings.torch_device()
        self.ae = ae.to(device=self.device, dtype=torch.float32).requires_grad_(False).eval()
        self.ae.encoder.requires_grad_(True)
        self.data, self.settings, self.posterior, self.base_model = data, settings, posterior, base_model
        self._ckpt = [m for m in self.ae.modules() if type(m).__name__ in ("ResnetBlock", "AttnBlock")]

    def parameters(self):
        return list(self.ae.encoder.parameters())

    def trainable_state(self):
        return {k: v.detach().cpu().clone() for k, v in self.ae.encoder.state_dict().items()}

    def load_trainable_state(self, state):
        self.ae.encoder.load_state_dict(state, strict=True)

    def config(self):
        return {"stage": "I", "posterior": self.posterior}

    def _pairs(self, step: int):
        hq, g = self.data.batch(0 if self.settings.overfit_batch else step)
        lq, _ = realesrgan_degrade(hq, g, scale=1, per_sample=True)
        return lq, hq, g

    def reconstruct(self, lq: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """decode(encode(lq)) for (B, 3, H, W) [0, 1] images; returns [-1, 1] (B, 3, H, W) on the device."""
        moments = self.ae.quant_conv(self.ae.encoder(lq.to(self.device) * 2 - 1))
        mean, logvar = moments.chunk(2, dim=1)
        z = mean
        if g is not None and self.posterior == "sample":
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            z = mean + std * torch.randn(mean.shape, generator=g).to(self.device, mean.dtype)
        return self.ae.decoder(self.ae.post_quant_conv(z))

    def loss(self, step):
        lq, hq, g = self._pairs(step)
        with gradient_checkpointing(self._ckpt, self.settings.checkpointing(self.device)):
            out = self.reconstruct(lq, g)
        return F.mse_loss(out.float(), hq.to(self.device) * 2 - 1)

    @torch.no_grad()
    def validate(self, step, folder):
        hq = self.data.validation(self.settings.val_count)
        lq, _ = realesrgan_degrade(hq, torch.Generator().manual_seed(self.settings.seed), scale=1, per_sample=True)
        out = ((self.reconstruct(lq).float().cpu() + 1) / 2).clamp(0, 1)
        record_metrics(folder, step, out, hq, lq)
        return save_image_grid([lq, out, hq], os.path.join(folder, f"step_{step:08d}.png"))

    def export(self, out_dir):
        from safetensors.torch import save_file

        sd = {k: v.detach().cpu().contiguous() for k, v in self.ae.state_dict().items()}
        meta = {"adaptbir_kind": "restoration_vae", "format_version": FORMAT_VERSION, "base_model": self.base_model,
                "stage": "I", "degradation": "realesrgan_second_order_scale1"}
        path = os.path.join(out_dir, "restoration_vae.safetensors")
        save_file(sd, path + ".tmp", metadata=meta)
        os.replace(path + ".tmp", path)  # atomic: the file is complete or absent
        return path

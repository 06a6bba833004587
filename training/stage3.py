"""Stage III: AdaptBIR's CSFT layers. The SD UNet, the IRControlNet and both encoders stay frozen; only the CSFT
blocks and upsample layers learn, with AdaptBIR's mild degradations, an empty prompt and the eps loss. Per sample,
MUSIQ scores the LQ crop in [0, 1] (AdaptBIR's code feeds [-1, 1], a bug not reproduced) and the released mapping
gives k (dual-encoder mix of the hint) and w (CSFT strength).

Every piece runs through the same code as inference: Dual Encoder Interpolate's encode/post_quant, the pack's
IRControlNet with its raw features, CSFT Apply's patch (output_block_patch + the out pre-hook) inside ComfyUI's
``BaseModel.apply_model``, so what is trained is what CSFT Apply runs.
"""

from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.patcher_extension
import comfy.sample
import torch
import torch.nn.functional as F

from ..modules.controlnet_layout import LAYOUT_HINT
from ..modules.csft import CSFT, csft_config_from_state_dict
from ..modules.degradations import mild_degrade
from ..modules.iqa import params_from_scores, score_images
from ..nodes.csft import WRAPPER_KEY, CSFTPatch, CSFTWeights, patch_model
from ..nodes.ircontrolnet import FEATURES, hint_from_condition
from ..nodes.latent import dual_encode, encode, post_quant
from .data import CropBatches
from .defaults import STAGE3_DEFAULTS
from .loop import TrainingTask, gradient_checkpointing, record_metrics, save_image_grid

FORMAT_VERSION = "1"
DEFAULTS = STAGE3_DEFAULTS  # training/defaults.py


class CSFTTask(TrainingTask):
    """Train CSFT layers for ``model`` (a ComfyUI ModelPatcher, SD-UNet-shaped) driven by ``control``.

    Args:
        model: the SD 2.1 ModelPatcher (frozen). vae: its SD VAE (internal encoder, decoder); restoration_vae: the
            stage-I VAE (restoration encoder). control: an IRControlNetControl (from Load IRControlNet).
        context: (1, T, D) conditioning of the empty prompt. musiq: a MUSIQ network (modules.iqa.build_musiq) or
            None to use ``fixed_kw`` = (k, w) for every sample. csft_init: a flat CSFT state dict to start from, or
            None for PyTorch's default initialisation (AdaptBIR resumes stage II, which has no CSFT keys).
        sft_channels: trunk width of new CSFT layers (AdaptBIR: 128). val_steps: sampling steps of the validation
            images.
    """

    name = "stage III (CSFT)"

    def __init__(self, model, vae, restoration_vae, control, context, data: CropBatches, settings, musiq=None,
                 fixed_kw=(1.0, 1.0), csft_init=None, sft_channels: int = 128, val_steps: int = 20,
                 base_model: str = ""):
        unet = model.get_model_object("diffusion_model")
        self.device = settings.torch_device()
        mm.load_models_gpu([model, control.patcher])
        model.model.requires_grad_(False)
        self.net = control.patcher.model.requires_grad_(False)
        config = {"model_channels": unet.model_channels, "channel_mult": tuple(unet.channel_mult),
                  "num_res_blocks": unet.num_res_blocks[0], "sft_channels": sft_channels}
        if csft_init is not None:
            config = csft_config_from_state_dict(csft_init)
        with torch.random.fork_rng(devices=[]):  # a reproducible start that leaves the global RNG alone
            torch.manual_seed(settings.seed)
            self.csft = CSFT(**config).to(self.device)
        if csft_init is not None:
            self.csft.load_state_dict(csft_init, strict=True)
        self.csft_config = config
        self.model, self.unet, self.vae, self.restoration_vae, self.control = model, unet, vae, restoration_vae, control
        self.hint_convention = LAYOUT_HINT[control.layout]
        self.context = context.to(self.device)
        self.data, self.settings, self.musiq, self.fixed_kw = data, settings, musiq, tuple(fixed_kw)
        self.val_steps, self.base_model = val_steps, base_model
        self._fixed = None
        self._ckpt = [m for blk in unet.output_blocks for m in blk
                      if type(m).__name__ in ("ResBlock", "SpatialTransformer")] + list(self.csft.cft_blocks)

    def parameters(self):
        return list(self.csft.parameters())

    def trainable_state(self):
        return {k: v.detach().cpu().clone() for k, v in self.csft.state_dict().items()}

    def load_trainable_state(self, state):
        self.csft.load_state_dict(state, strict=True)

    def config(self):
        cfg = {"stage": "III", "csft": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in self.csft_config.items()}, "musiq": self.musiq is not None}
        if self.hint_convention != "adaptbir":  # absent from checkpoints made before DiffBIR controls were accepted
            cfg["hint_convention"] = self.hint_convention
        return cfg

    @torch.no_grad()
    def condition(self, lq: torch.Tensor):
        """The hint (in the control's convention: AdaptBIR's post_quant_conv latent, or 0.18215 x the latent for
        DiffBIR weights such as v2.pth) and per-sample (k, w) for LQ crops (B, 3, H, W) [0, 1]."""
        if self.musiq is not None:
            p = params_from_scores(score_images(self.musiq, lq), mode="adaptbir")
            k, w = torch.tensor(p.k), torch.tensor(p.w, dtype=torch.float64)
        else:
            k = torch.full((lq.shape[0],), float(self.fixed_kw[0]))
            w = torch.full((lq.shape[0],), float(self.fixed_kw[1]), dtype=torch.float64)
        z = dual_encode(self.restoration_vae, self.vae, lq, k)
        hint = hint_from_condition({"samples": z, "post_quant": post_quant(self.vae, z)}, self.hint_convention)
        return hint, k, w

    def _batch(self, step: int):
        """HQ crops, the hint and w for ``step``, and the step's generator for noise and timesteps. With
        ``overfit_batch`` step 0's batch is computed once (MUSIQ is the slow part) and replayed."""
        if self.settings.overfit_batch and self._fixed is not None:
            hq, hint, w, state = self._fixed
            return hq, hint, w, torch.Generator().set_state(state)
        hq, g = self.data.batch(0 if self.settings.overfit_batch else step)
        lq, _ = mild_degrade(hq, g)
        hint, _, w = self.condition(lq)
        if self.settings.overfit_batch:
            self._fixed = (hq, hint, w, g.get_state())
        return hq, hint, w, g

    def loss(self, step):
        hq, hint, w, g = self._batch(step)
        mm.load_models_gpu([self.model, self.control.patcher])  # the VAE encodes may have moved them off
        base = self.model.model
        ms = base.model_sampling
        with torch.no_grad():
            z0 = base.process_latent_in(encode(self.vae, hq, 0)).to(self.device)
            t = torch.randint(0, len(ms.sigmas), (hq.shape[0],), generator=g)
            eps = torch.randn(z0.shape, generator=g).to(self.device)
            sigma = ms.sigma(t.float().to(ms.sigmas.device)).to(self.device)
            x = ms.noise_scaling(sigma.view(-1, 1, 1, 1), eps, z0)
            dtype = self.net.dtype
            x_in = ms.calculate_input(sigma, x).to(dtype)
            context = self.context.expand(hq.shape[0], -1, -1)
            control, features = self.net(torch.cat([x_in, hint.to(self.device, dtype)], dim=1),
                                         ms.timestep(sigma).float(), context.to(dtype), return_features=True)
        patch = CSFTPatch(self.csft, w)
        opts = {"patches": {"output_block_patch": [patch]}, FEATURES: features, "cond_or_uncond": [0],
                "wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {WRAPPER_KEY: [patch.wrap_unet]}}}
        with gradient_checkpointing(self._ckpt, self.settings.checkpointing(self.device)):
            denoised = base.apply_model(x, sigma, c_crossattn=context, control=control, transformer_options=opts)
        eps_pred = (x - denoised.float()) / sigma.view(-1, 1, 1, 1)
        return F.mse_loss(eps_pred, eps)

    def weights(self) -> CSFTWeights:
        return CSFTWeights(self.trainable_state(), self.csft_config, "training", {"adaptbir_kind": "csft"})

    @torch.no_grad()
    def validate(self, step, folder):
        """Sample the validation crops with the current CSFT through ComfyUI's sampler; saves LQ | result | HQ."""
        hq = self.data.validation(self.settings.val_count)
        lq, _ = mild_degrade(hq, torch.Generator().manual_seed(self.settings.seed))
        hint, _, w = self.condition(lq)
        model = patch_model(self.model, self.weights(), w)
        control = self.control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
        cond = [[self.context.cpu(), {"control": control, "control_apply_to_uncond": False}]]
        latent = torch.zeros(hint.shape, dtype=torch.float32)
        noise = comfy.sample.prepare_noise(latent, self.settings.seed)
        samples = comfy.sample.sample(model, noise, self.val_steps, 1.0, "ddpm", "normal", cond, cond, latent,
                                      seed=self.settings.seed, disable_pbar=True)
        out = self.vae.decode(samples).movedim(-1, 1).float().cpu().clamp(0, 1)
        record_metrics(folder, step, out, hq, lq)
        return save_image_grid([lq, out, hq], os.path.join(folder, f"step_{step:08d}.png"))

    def export(self, out_dir):
        from safetensors.torch import save_file

        meta = {"adaptbir_kind": "csft", "format_version": FORMAT_VERSION, "base_model": self.base_model,
                "hint_convention": self.hint_convention, "stage": "III", "degradation": "adaptbir_mild"}
        path = os.path.join(out_dir, "csft.safetensors")
        save_file({k: v.contiguous() for k, v in self.trainable_state().items()}, path + ".tmp", metadata=meta)
        os.replace(path + ".tmp", path)  # atomic: the file is complete or absent
        return path

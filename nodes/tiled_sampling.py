"""Tiled diffusion: the model is evaluated on overlapping latent tiles blended with Gaussian weights.

DiffBIR's ``--cldm_tiled`` (mixture-of-diffusers): at every step each latent tile of x_t is denoised on its own,
with the matching crop of the control condition, and the model outputs (cond and uncond) are blended with a
Gaussian per tile (sigma = 0.1 x tile). The sampler step itself, CFG, restoration guidance and SUPIR's restore_cfg
then act on the whole latent, so any ComfyUI sampler works.

Mechanism: a ComfyUI ``CALC_COND_BATCH`` wrapper (the hook ComfyUI's own EasyCache uses) runs ComfyUI's
cond/uncond batching once per tile on the cropped latent, with crops of any noise-shaped model conditioning; it
puts the :class:`~modules.tiling.Tile` into ``transformer_options[TILE_KEY]`` so that tile-aware controls and
patches (IRControlNet, SUPIR) crop their condition latent to the same window. Controls that are not tile-aware
(ComfyUI's ControlNets resize their hint to the input instead) and area/mask conditioning are refused with a
clear error instead of giving a silently wrong result.

The same wrapper gives the pack's sampling nodes their out-of-memory fallback: in ``auto`` mode it evaluates the
whole latent at once and only on out-of-memory switches to tiles (512 px, then halving down to 128 px), with a
warning in the log; the tile that worked is kept for the following steps.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..modules.tiling import Tile, count_tiles, tiled_apply
from .aliases import aliases_for
from .common import PackError, check_interrupt, is_oom, widget_bounds_error

log = logging.getLogger(__name__)

TILE_KEY = "adaptbir_tile"  # transformer_options entry during one tile's model call: a modules.tiling.Tile
WRAPPER_KEY = "adaptbir_tiles"
FALLBACK_TILE_PX = 512
MIN_TILE_PX = 128
CAT_SAMPLING = "restoration/sampling"


def current_tile(transformer_options: dict | None) -> Tile | None:
    """The tile a model call covers (None when untiled), for controls and patches that crop their condition."""
    return None if transformer_options is None else transformer_options.get(TILE_KEY)


def crop_condition(t: torch.Tensor, x: torch.Tensor, tile: Tile | None, what: str) -> torch.Tensor:
    """A condition latent (B, C, H, W) fitted to a model call on ``x`` (B', C', h, w): cropped to ``tile`` when the
    call is one tile of a tiled step, else returned as is. PackError naming ``what`` when the condition does not
    have the sampled latent's size."""
    full = (tile.full_height, tile.full_width) if tile is not None else tuple(x.shape[-2:])
    if tuple(t.shape[-2:]) != full:
        raise PackError(f"{what}: expected a condition latent of the sampled latent's size {full}, found "
                        f"{tuple(t.shape[-2:])}; encode the same (padded) image you sample")
    return t if tile is None else tile.crop(t, what)


def _control_chain(control):
    """The control and the ones it chains to (``previous_controlnet``)."""
    while control is not None:
        yield control
        control = control.previous_controlnet


def _crop_conds(conds: list, tile: Tile) -> list:
    """Copies of ComfyUI's processed conds for one tile: noise-shaped model conditioning (e.g. c_concat) cropped."""
    import comfy.conds

    out = []
    for cond in conds:
        if cond is None:
            out.append(None)
            continue
        tiled = []
        for c in cond:
            if "area" in c or "mask" in c:
                raise PackError("Tiled Diffusion: expected conditioning without area or mask (ComfyUI's area "
                                "composition), found one; remove the area/mask or the tiling")
            chain = list(_control_chain(c.get("control")))
            if not all(getattr(ctrl, "supports_latent_tiles", False) for ctrl in chain):
                raise PackError(f"Tiled Diffusion: expected only tile-aware controls (Apply IRControlNet) on the "
                                f"conditioning, found {', '.join(type(ctrl).__name__ for ctrl in chain)}; ComfyUI's "
                                f"ControlNets resize their hint to each tile and would give a wrong result. Sample "
                                f"without tiling")
            d = dict(c)
            mc = d.get("model_conds")
            if mc:
                d["model_conds"] = {k: (v._copy_with(tile.crop(v.cond, f"conditioning {k}"))
                                        if isinstance(v, comfy.conds.CONDNoiseShape) else v) for k, v in mc.items()}
            tiled.append(d)
        out.append(tiled)
    return out


class LatentTiler:
    """The ``CALC_COND_BATCH`` wrapper. ``tile_px``/``stride_px``: tile side and distance between tiles in image
    pixels (0 = ``auto``: untiled until memory runs out). ``__deepcopy__`` returns itself so model clones share the
    tile size an out-of-memory fallback settled on."""

    def __init__(self, tile_px: int = 0, stride_px: int = 0):
        self.tile_px, self.stride_px = int(tile_px), int(stride_px)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        while True:
            try:
                if self.tile_px <= 0:
                    return executor(model, conds, x_in, timestep, model_options)
                return self._tiled(executor, model, conds, x_in, timestep, model_options)
            except Exception as e:
                if not is_oom(e):
                    raise
                self._smaller_tiles(x_in)

    def _smaller_tiles(self, x_in):
        import comfy.model_management as mm

        mm.soft_empty_cache()
        tile = FALLBACK_TILE_PX if self.tile_px <= 0 else self.tile_px // 2
        tile -= tile % 64
        if tile < MIN_TILE_PX:
            raise PackError(f"Tiled Diffusion: out of memory even with {MIN_TILE_PX} px tiles at a latent of "
                            f"{tuple(x_in.shape[-2:])}; free VRAM (smaller batch, --lowvram) or use a smaller "
                            f"image") from None
        log.warning("AdaptBIR sampling: out of memory %s; retrying this and the following steps in %d px tiles "
                    "(stride %d px)", "untiled" if self.tile_px <= 0 else f"with {self.tile_px} px tiles",
                    tile, tile // 2)
        self.tile_px, self.stride_px = tile, tile // 2

    def _tiled(self, executor, model, conds, x_in, timestep, model_options):
        ratio = int(getattr(model.latent_format, "spacial_downscale_ratio", 8))
        tile, stride = max(1, self.tile_px // ratio), max(1, min(self.stride_px, self.tile_px) // ratio)
        h, w = x_in.shape[-2:]
        if count_tiles(h, w, tile, stride) == 1:
            return executor(model, conds, x_in, timestep, model_options)
        n = len(conds)

        def one_tile(part, t: Tile):
            opts = dict(model_options)
            opts["transformer_options"] = {**model_options.get("transformer_options", {}), TILE_KEY: t}
            outs = executor(model, _crop_conds(conds, t), part, timestep, opts)
            return torch.cat(list(outs), dim=1)

        blended = tiled_apply(one_tile, x_in, tile, stride, weight="gaussian", check=check_interrupt,
                              pass_tile=True, acc_dtype=torch.float32)
        return list(blended.to(x_in.dtype).chunk(n, dim=1))


def set_tiling(m, tile_px: int = 0, stride_px: int = 0, replace: bool = True):
    """Give the already cloned model ``m`` latent tiles (``tile_px`` > 0) or untiled sampling with the
    out-of-memory fallback (``tile_px`` = 0); returns ``m``. ``replace=False`` keeps a tiling ``m`` already has
    (how the pack's sampling and patch nodes add the fallback without undoing a Tiled Diffusion node)."""
    import comfy.patcher_extension as pe

    if m.get_wrappers(pe.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY):
        if not replace:
            return m
        m.remove_wrappers_with_key(pe.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY)
    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, LatentTiler(tile_px, stride_px))
    return m


class TiledDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_TiledDiffusion",
            **aliases_for("AdaptBIR_TiledDiffusion"),
            display_name="Tiled Diffusion (latent tiles)",
            category=CAT_SAMPLING,
            description=(
                "Restores large photos piece by piece, so they fit in memory. "
                "Samples large images in overlapping latent tiles blended with Gaussian weights (DiffBIR's tiled "
                "sampling), so memory stays that of one tile at any size. Each tile sees its own crop of the "
                "IRControlNet / SUPIR condition; CFG, restoration guidance and the sampler act on the whole image. "
                "Works with any sampler. If the image fits in one tile the result is exactly the untiled one. "
                "Tiling saves memory, not time: overlapping tiles cost more model passes."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample (after CSFT Apply / SUPIR Apply / guidance)."),
                io.Int.Input("tile_size", default=512, min=128, max=8192, step=64, tooltip=(
                    "Tile side in image pixels (a multiple of 64; DiffBIR: 512). Smaller tiles need less memory.")),
                io.Int.Input("tile_stride", default=256, min=64, max=8192, step=64, tooltip=(
                    "Distance between tiles in image pixels (at most tile_size; DiffBIR: 256). tile_size - "
                    "tile_stride is the blended overlap; more overlap hides seams better and costs more passes.")),
            ],
            outputs=[io.Model.Output("tiled_model", display_name="model", tooltip=(
                "A copy of the model that is evaluated in tiles; the input model is not changed."))],
        )

    @classmethod
    def validate_inputs(cls, tile_size=512, tile_stride=256, **kwargs):
        bad = widget_bounds_error(cls, {"tile_size": tile_size, "tile_stride": tile_stride, **kwargs})
        if bad:
            return bad
        if isinstance(tile_size, int) and tile_size % 64:
            return f"tile_size: expected a multiple of 64 pixels, found {tile_size}"
        if isinstance(tile_size, int) and isinstance(tile_stride, int) and not 64 <= tile_stride <= tile_size:
            return f"tile_stride: expected 64 .. tile_size ({tile_size}) pixels, found {tile_stride}"
        return True

    @classmethod
    def execute(cls, model, tile_size=512, tile_stride=256) -> io.NodeOutput:
        if tile_size % 64 or tile_size < MIN_TILE_PX:
            raise PackError(f"tile_size: expected a multiple of 64 of at least {MIN_TILE_PX} pixels, found "
                            f"{tile_size}")
        if not 64 <= tile_stride <= tile_size:
            raise PackError(f"tile_stride: expected 64 .. tile_size ({tile_size}) pixels, found {tile_stride}")
        return io.NodeOutput(set_tiling(model.clone(), tile_size, tile_stride))


NODES = [TiledDiffusion]

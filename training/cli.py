"""Command line of the training stages (started by ``train.py`` at the pack root, with ComfyUI importable).

Models are loaded with ComfyUI's own loaders: ``comfy.sd.load_checkpoint_guess_config`` for the SD checkpoint,
``comfy.sd.VAE`` for VAE files, the pack's IRControlNet and MUSIQ loaders. File arguments are paths, or names in
ComfyUI's model folders (checkpoints, vae, diffbir, iqa).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import loop
from .defaults import STAGE1_DEFAULTS, STAGE2_DEFAULTS, STAGE3_DEFAULTS


def _common(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--data", required=True, help="folder of high-quality training images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, validation/ and the weights file")
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps (a resumed run continues to it)")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    p.add_argument("--crop", type=int, default=defaults["crop"], help="training crop size in pixels")
    p.add_argument("--lr", type=float, default=defaults["lr"])
    p.add_argument("--optimizer", choices=["adam", "adamw"], default=defaults["optimizer"])
    p.add_argument("--betas", type=float, nargs=2, default=list(defaults["betas"]))
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000, help="checkpoint interval (steps)")
    p.add_argument("--val-every", type=int, default=500, help="validation image interval (steps, 0 = never)")
    p.add_argument("--val-count", type=int, default=4, help="validation images (centre crops of the first files)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto = bf16 autocast on CUDA GPUs that support bf16 (ComfyUI decides), fp32 elsewhere")
    p.add_argument("--grad-checkpointing", choices=["auto", "on", "off"], default="auto", help="auto = on for CUDA")
    p.add_argument("--device", default="auto", help="auto (ComfyUI's choice), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue from checkpoints in --out")
    p.add_argument("--overfit-batch", action="store_true", help="debug: train on step 0's batch only")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description=(
        "Train AdaptBIR's weights: stage1 (restoration VAE), stage2 (IRControlNet), stage3 (CSFT layers)."))
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else the folder above custom_nodes)")
    sub = ap.add_subparsers(dest="stage", required=True)
    ph = sub.add_parser("sample-photos", help="write scikit-image's sample photographs to a folder (a first run)")
    ph.add_argument("folder", help="folder to write the PNG files to (created)")
    s1 = sub.add_parser("stage1", help="restoration VAE: fine-tune the SD VAE encoder on Real-ESRGAN degradations")
    src = s1.add_mutually_exclusive_group(required=True)
    src.add_argument("--vae", help="SD VAE file (models/vae)")
    src.add_argument("--checkpoint", help="SD checkpoint whose VAE is fine-tuned (models/checkpoints)")
    s1.add_argument("--posterior", choices=["sample", "mode"], default="sample")
    _common(s1, STAGE1_DEFAULTS)
    s2 = sub.add_parser("stage2", help="IRControlNet on a frozen SD 2.1, hints from the stage-I restoration encoder")
    s2.add_argument("--checkpoint", required=True, help="SD 2.1 checkpoint (models/checkpoints)")
    s2.add_argument("--restoration-vae", required=True, help="stage-I restoration VAE (models/vae)")
    s2.add_argument("--init", help="IRControlNet to start from (models/diffbir), e.g. DiffBIR's v2.pth; default: "
                                   "the SD UNet's encoder, as AdaptBIR starts")
    s2.add_argument("--prompt", default="", help="training prompt (AdaptBIR: empty)")
    s2.add_argument("--val-steps", type=int, default=20, help="sampling steps of the validation images")
    _common(s2, STAGE2_DEFAULTS)
    s3 = sub.add_parser("stage3", help="CSFT layers on a frozen SD 2.1 + IRControlNet, mild degradations")
    s3.add_argument("--checkpoint", required=True, help="SD 2.1 checkpoint (models/checkpoints)")
    s3.add_argument("--control", required=True, help=(
        "IRControlNet (models/diffbir): stage II's ircontrolnet.safetensors, or DiffBIR's v2.pth (fed its own "
        "hint convention, 0.18215 x the latent)"))
    s3.add_argument("--restoration-vae", required=True, help="stage-I restoration VAE (models/vae)")
    iqa = s3.add_mutually_exclusive_group()
    iqa.add_argument("--musiq", default="musiq_koniq_ckpt-e95806b9.pth", help="MUSIQ KonIQ weights (models/iqa)")
    iqa.add_argument("--fixed-kw", type=float, nargs=2, metavar=("K", "W"), help="use these k, w instead of MUSIQ")
    s3.add_argument("--csft-init", help="CSFT weights to start from (models/diffbir), e.g. to fine-tune further")
    s3.add_argument("--sft-channels", type=int, default=128)
    s3.add_argument("--prompt", default="", help="training prompt (AdaptBIR: empty)")
    s3.add_argument("--val-steps", type=int, default=20, help="sampling steps of the validation images")
    _common(s3, STAGE3_DEFAULTS)
    return ap


def resolve(name: str, folder: str, what: str) -> str:
    """A path as given, or a file in ComfyUI's model folder ``folder``; ValueError naming both when missing."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise ValueError(f"{what}: expected a file path or a name in ComfyUI's '{folder}' model folder, found no "
                         f"file '{name}' (searched the current folder and {', '.join(folder_paths.get_folder_paths(folder))})")
    return path


def settings_from(args) -> loop.TrainSettings:
    return loop.TrainSettings(
        out_dir=args.out, steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop=args.crop,
        optimizer=args.optimizer, betas=tuple(args.betas), weight_decay=args.weight_decay, seed=args.seed,
        save_every=args.save_every, val_every=args.val_every, val_count=args.val_count, resume=not args.no_resume,
        precision=args.precision, grad_checkpointing=args.grad_checkpointing, overfit_batch=args.overfit_batch,
        device=args.device)


def _load_vae(path: str):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(path, safe_load=True))


def build_task(args):
    from .data import CropBatches

    s = settings_from(args)
    data = CropBatches(args.data, s.batch_size, s.crop, s.seed)
    if args.stage == "stage1":
        import comfy.sd

        if args.vae:
            path = resolve(args.vae, "vae", "--vae")
            vae = _load_vae(path)
        else:
            path = resolve(args.checkpoint, "checkpoints", "--checkpoint")
            vae = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=False)[2]
        from . import stage1

        return stage1.RestorationVAETask(vae, data, s, posterior=args.posterior, base_model=os.path.basename(path)), s
    import comfy.sd

    from ..nodes.common import load_weights
    from ..nodes.csft import load_csft
    from ..nodes.ircontrolnet import load_ircontrolnet

    ckpt = resolve(args.checkpoint, "checkpoints", "--checkpoint")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
    if model is None or vae is None or clip is None:
        raise ValueError(f"--checkpoint: expected an SD 2.1 checkpoint with UNet, VAE and text encoder, found "
                         f"{os.path.basename(ckpt)} without some of them")
    context = clip.encode_from_tokens(clip.tokenize(args.prompt))
    restoration_vae = _load_vae(resolve(args.restoration_vae, "vae", "--restoration-vae"))
    if args.stage == "stage2":
        return _stage2_task(args, s, data, model, vae, restoration_vae, context, os.path.basename(ckpt)), s
    control = load_ircontrolnet(resolve(args.control, "diffbir", "--control"), args.control)
    musiq = None
    if args.fixed_kw is None:
        from ..modules.iqa import build_musiq

        musiq_path = resolve(args.musiq, "iqa", "--musiq")
        musiq = build_musiq("musiq", load_weights(musiq_path, "pyiqa MUSIQ KonIQ weights")).eval()
        musiq.to(s.torch_device())
    csft_init = None
    if args.csft_init:
        path = resolve(args.csft_init, "diffbir", "--csft-init")
        sd, meta = load_weights(path, "AdaptBIR CSFT weights", with_metadata=True)
        csft_init = load_csft(sd, meta, args.csft_init).state_dict
    from . import stage3

    task = stage3.CSFTTask(model, vae, restoration_vae, control, context, data, s, musiq=musiq,
                           fixed_kw=tuple(args.fixed_kw or (1.0, 1.0)), csft_init=csft_init,
                           sft_channels=args.sft_channels, val_steps=args.val_steps,
                           base_model=os.path.basename(ckpt))
    return task, s


def _stage2_task(args, s, data, model, vae, restoration_vae, context, base_model):
    from ..modules.controlnet_layout import extract_ircontrolnet
    from ..nodes.common import load_weights
    from . import stage2

    if args.init:
        path = resolve(args.init, "diffbir", "--init")
        sd, meta = load_weights(path, "IRControlNet weights (DiffBIR/AdaptBIR)", with_metadata=True)
        try:
            _, control_sd = extract_ircontrolnet(sd, meta)
        except ValueError as e:
            raise ValueError(f"--init: {e}") from None
        init = os.path.basename(path)
    else:
        unet_sd = model.get_model_object("diffusion_model").state_dict()
        control_sd, init = stage2.control_from_unet(unet_sd), "sd_unet"
    return stage2.IRControlNetTask(model, vae, restoration_vae, control_sd, context, data, s,
                                   val_steps=args.val_steps, base_model=base_model, init=init)


SAMPLE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "hubble_deep_field",
                 "immunohistochemistry", "rocket")


def sample_photos(folder: str) -> list[str]:
    """Write scikit-image's bundled photographs (no download; RGB and grey, 300 to 1000 px) as PNGs to
    ``folder``; returns the paths. Needs the ``scikit-image`` package (the pack's ``train`` extra)."""
    try:
        import skimage.data
    except ImportError:
        raise ValueError("expected the scikit-image package (pip install scikit-image), found it missing") from None
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in SAMPLE_PHOTOS:
        path = os.path.join(folder, f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.stage == "sample-photos":
        try:
            paths = sample_photos(args.folder)
        except (ValueError, OSError) as e:
            print(f"train.py sample-photos: {e}", file=sys.stderr)
            return 2
        print(f"sample-photos: wrote {len(paths)} photographs to {args.folder}")
        return 0
    try:
        task, s = build_task(args)
        result = loop.run(task, s)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FloatingPointError) as e:
        print(f"train.py {args.stage}: {e}", file=sys.stderr)
        return 2
    print(f"{task.name}: wrote {result['weights']}")
    return 0

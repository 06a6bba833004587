"""The training loop both stages share: optimiser, mixed precision, gradient checkpointing, checkpoints with exact
resume (from the newest intact one), a progress bar with loss and ETA, periodic validation images, and Ctrl-C or
any error that saves before it stops."""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.utils.checkpoint

CHECKPOINT_FORMAT = 1
# settings that must not change when a run is resumed (they decide the batches and the optimiser's path)
RESUME_KEYS = ("batch_size", "crop", "seed", "lr", "optimizer", "betas", "weight_decay", "overfit_batch")


@dataclass
class TrainSettings:
    """Settings common to both stages.

    ``precision``: ``auto`` (bf16 autocast on CUDA GPUs where ComfyUI would use bf16, float32 elsewhere),
    ``bf16`` or ``fp32``.
    ``grad_checkpointing``: ``auto`` (on for CUDA), ``on`` or ``off``.
    ``overfit_batch``: reuse step 0's batch, degradations, noise and timesteps at every step (a debugging aid: the
    loss must then fall steadily).
    """

    out_dir: str
    steps: int
    lr: float
    batch_size: int = 1
    crop: int = 512
    optimizer: str = "adamw"
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 1000
    val_every: int = 500
    val_count: int = 4
    keep_checkpoints: int = 2
    resume: bool = True
    precision: str = "auto"
    grad_checkpointing: str = "auto"
    overfit_batch: bool = False
    device: str = "auto"

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"steps/lr/batch_size: expected >= 1, > 0, >= 1, found {self.steps}, {self.lr}, "
                             f"{self.batch_size}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer: expected adam or adamw, found {self.optimizer!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision: expected auto, bf16 or fp32, found {self.precision!r}")
        if self.grad_checkpointing not in ("auto", "on", "off"):
            raise ValueError(f"grad_checkpointing: expected auto, on or off, found {self.grad_checkpointing!r}")
        self.betas = tuple(float(b) for b in self.betas)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            import comfy.model_management as mm

            return mm.get_torch_device()
        return torch.device(self.device)

    def autocast(self, device: torch.device):
        bf16 = self.precision == "bf16"
        if self.precision == "auto" and device.type == "cuda":
            import comfy.model_management as mm

            bf16 = bool(mm.should_use_bf16(device, prioritize_performance=False))  # fp32 where bf16 is unsupported
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def checkpointing(self, device: torch.device) -> bool:
        return self.grad_checkpointing == "on" or (self.grad_checkpointing == "auto" and device.type == "cuda")


@contextlib.contextmanager
def gradient_checkpointing(modules, enabled: bool = True):
    """Run each module's forward under ``torch.utils.checkpoint`` (non-reentrant) inside the block; the modules
    are the training's own copies, and their original forward is restored on exit."""
    swapped = []
    if enabled:
        for m in modules:
            own = m.__dict__.get("forward")
            original = m.forward

            def forward(*args, _f=original, **kwargs):
                return torch.utils.checkpoint.checkpoint(_f, *args, use_reentrant=False, **kwargs)

            m.forward = forward
            swapped.append((m, own))
    try:
        yield
    finally:
        for m, own in swapped:
            if own is None:
                del m.forward
            else:
                m.forward = own


def make_optimizer(settings: TrainSettings, params):
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)


def checkpoint_paths(out_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, "checkpoints", "step_*.pt")))


def newest_intact_checkpoint(paths: list[str]):
    """``(path, checkpoint dict)`` of the newest readable checkpoint of ``paths`` (sorted oldest first). A newer
    one that cannot be read (truncated by a crash or a full disk) is renamed to ``<name>.unreadable`` (kept, never
    deleted, and out of the rotation) with a message saying which one is used instead. ValueError when none can
    be read."""
    bad = []
    for path in reversed(paths):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(ckpt, dict) or not {"step", "trainable", "optimizer", "config"} <= set(ckpt):
                raise ValueError("not a checkpoint of this training loop")
        except Exception as e:  # noqa: BLE001 - any unreadable file: fall back to the previous one
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            bad.append(f"{os.path.basename(path)} ({type(e).__name__}: {reason})")
            os.replace(path, path + ".unreadable")
            print(f"resume: {path} cannot be read; it was renamed to {os.path.basename(path)}.unreadable and the "
                  f"previous checkpoint is tried", file=sys.stderr)
            continue
        return path, ckpt
    raise ValueError(f"resume: expected an intact checkpoint in {os.path.dirname(paths[0])}, found only unreadable "
                     f"ones ({'; '.join(bad)}); they were renamed to *.unreadable. Start again with --no-resume "
                     f"or another output folder")


def _resume_config(settings: TrainSettings, task_config: dict) -> dict:
    s = asdict(settings)
    cfg = {k: s[k] for k in RESUME_KEYS}
    cfg["betas"] = list(cfg["betas"])
    cfg.update(task_config)
    return cfg


class TrainingTask:
    """What a stage provides to :func:`run`. Subclasses implement every method."""

    name = "training"

    def parameters(self) -> list:  # the trainable parameters
        raise NotImplementedError

    def trainable_state(self) -> dict:  # CPU copies of the trainable tensors
        raise NotImplementedError

    def load_trainable_state(self, state: dict) -> None:
        raise NotImplementedError

    def config(self) -> dict:  # what must match on resume besides RESUME_KEYS (JSON-like values)
        raise NotImplementedError

    def loss(self, step: int) -> torch.Tensor:  # scalar; the batch is a pure function of step
        raise NotImplementedError

    def validate(self, step: int, folder: str) -> str:  # writes an image, returns its path
        raise NotImplementedError

    def export(self, out_dir: str) -> str:  # writes the final weights file, returns its path
        raise NotImplementedError


def _comfy_interrupted() -> bool:
    """True when ComfyUI is loaded in this process and its interrupt flag (Cancel) is set."""
    mm = sys.modules.get("comfy.model_management")
    return mm is not None and mm.processing_interrupted()


def run(task: TrainingTask, settings: TrainSettings, on_step=None) -> dict:
    """Train ``task`` to ``settings.steps`` steps, resuming from the newest checkpoint in ``out_dir``.

    ``on_step(step, loss)`` is called after each optimiser step (``step`` counts from 1). Ctrl-C (or any
    KeyboardInterrupt, also from ``on_step``) saves a checkpoint of the last finished step and re-raises; so does
    ComfyUI's interrupt flag (checked after every step), which raises ComfyUI's InterruptProcessingException, and
    so does any other exception (a corrupt image, a non-finite loss, a full disk): the same exception is re-raised
    with a note saying which step was saved. Resuming reads the newest intact checkpoint
    (:func:`newest_intact_checkpoint`) and says which on stderr.

    Returns ``{"losses": [...] (this call's steps), "start": first step, "weights": exported file, "validation":
    [paths], "resumed_from": the checkpoint resumed from or None}``.
    """
    from tqdm import tqdm

    os.makedirs(os.path.join(settings.out_dir, "checkpoints"), exist_ok=True)
    opt = make_optimizer(settings, task.parameters())
    config = _resume_config(settings, task.config())
    start = 0
    existing = checkpoint_paths(settings.out_dir)
    resumed_from = None
    if existing and settings.resume:
        resumed_from, ckpt = newest_intact_checkpoint(existing)
        print(f"{task.name}: resuming from {resumed_from} (step {int(ckpt['step'])})", file=sys.stderr)
        differ = {k: (ckpt["config"].get(k), v) for k, v in config.items() if ckpt["config"].get(k) != v}
        if differ:
            raise ValueError(f"resume: the checkpoint {resumed_from} was made with other settings "
                             f"({', '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in differ.items())}); use "
                             f"the same settings, another output folder, or --no-resume")
        task.load_trainable_state(ckpt["trainable"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
    elif existing:
        raise ValueError(f"out_dir: {settings.out_dir} already holds checkpoints; resume, or choose another folder")

    def save(step: int) -> None:
        path = os.path.join(settings.out_dir, "checkpoints", f"step_{step:08d}.pt")
        torch.save({"format": CHECKPOINT_FORMAT, "step": step, "trainable": task.trainable_state(),
                    "optimizer": opt.state_dict(), "config": config}, path + ".tmp")
        os.replace(path + ".tmp", path)
        for old in checkpoint_paths(settings.out_dir)[:-max(1, settings.keep_checkpoints)]:
            os.remove(old)

    device = settings.torch_device()
    losses, validation = [], []
    done = saved = start
    bar = tqdm(total=settings.steps, initial=start, desc=task.name, unit="step", dynamic_ncols=True)
    try:
        for step in range(start, settings.steps):
            opt.zero_grad(set_to_none=True)
            with settings.autocast(device):
                loss = task.loss(step)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"loss: expected a finite value, found {loss.item()} at step {step + 1}; "
                                         f"lower the learning rate or use fp32")
            loss.backward()
            opt.step()
            done = step + 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.5g}")
            bar.update(1)
            if done % settings.save_every == 0 or done == settings.steps:
                save(done)
                saved = done
            if settings.val_every and done % settings.val_every == 0:
                validation.append(task.validate(done, os.path.join(settings.out_dir, "validation")))
            if on_step is not None:
                on_step(done, losses[-1])
            if _comfy_interrupted():  # ComfyUI's Cancel (training inside a ComfyUI process): stop like Ctrl-C
                if done > saved:
                    save(done)
                    saved = done
                bar.write(f"{task.name}: cancelled at step {done}; run the same command again to resume")
                import comfy.model_management as mm

                mm.throw_exception_if_processing_interrupted()  # raises InterruptProcessingException, clears it
    except KeyboardInterrupt:
        if done > saved:
            save(done)
        bar.write(f"{task.name}: stopped at step {done}; run the same command again to resume")
        raise
    except Exception as e:  # any error that stops the run: keep the finished steps, then report the cause
        note = f"{task.name}: stopped at step {done} by this error"
        if done > saved:
            try:
                save(done)
                note += f"; step {done} was saved, fix the cause and run the same command again to resume"
            except Exception as save_error:  # noqa: BLE001 - the original error is the one to report
                note += (f"; saving step {done} failed too ({type(save_error).__name__}: {save_error}), the newest "
                         f"checkpoint is step {saved}")
        else:
            note += f"; step {done} is already saved, run the same command again to resume"
        bar.write(note)
        e.add_note(note)
        raise
    finally:
        bar.close()
    return {"losses": losses, "start": start, "weights": task.export(settings.out_dir), "validation": validation,
            "resumed_from": resumed_from}


def save_image_grid(rows: list, path: str) -> str:
    """Save rows of (N, 3, H, W) [0, 1] tensors side by side (one row per image) as a PNG."""
    import numpy as np
    from PIL import Image

    grid = torch.cat([torch.cat(list(r), dim=2) for r in zip(*rows)], dim=1)
    arr = (grid.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def record_metrics(folder: str, step: int, out: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor) -> dict:
    """PSNR/SSIM of the validation results ``out`` and of the degraded inputs ``lq`` against the originals ``hq``
    ((N, 3, H, W) [0, 1]); appended as one JSON line to ``folder/metrics.jsonl``, printed, and returned."""
    import json

    from tqdm import tqdm

    from ..modules.metrics import psnr, ssim

    m = {"step": step, "psnr": float(psnr(out, hq).mean()), "ssim": float(ssim(out, hq).mean()),
         "psnr_lq": float(psnr(lq, hq).mean()), "ssim_lq": float(ssim(lq, hq).mean())}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(m) + "\n")
    tqdm.write(f"validation at step {step}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} (degraded input: "
               f"{m['psnr_lq']:.2f} dB, {m['ssim_lq']:.4f})")
    return m

"""Peak memory of the nodes whose cost grows with the image, at default settings on CPU (issue 20, item 1).

Run with the venv's Python from the repository root::

    python scripts/memory_ceilings.py                       # every row at 4096 and 8192 px (minutes; heavy)
    python scripts/memory_ceilings.py --rows degrade --sizes 512   # one row, quick

Each row runs in a fresh subprocess (so one row's peak is not another's), with ComfyUI 0.3.75 imported in-process
and the pack loaded by ComfyUI's own loader (tests/support/comfy_host.py), and drives the node through ComfyUI's
executor with its default widget values on a square smooth RGB image of the given side. Reported per row:

* ``peak RSS``: the subprocess's peak resident memory (``getrusage``), everything included (Python, ComfyUI,
  weights, the input image);
* ``working``: that peak minus the resident memory just before the graph ran (what the node itself added).

Networks are built from their configs with random, seeded weights (no weights files exist here). Rows:

* ``iqa``: IQA Classifier, pyiqa's real MUSIQ (27 M parameters) from a weights file in models/iqa;
* ``stage1``: Stage-1 Restore (tile 512, stride 256) with the tests' tiny SwinIR over the whole image: the image
  buffers, tiles and blending of the real code path. ``stage1_tile``: one 512-px tile through DiffBIR's real
  SwinIR size (embed 180, 8x6 blocks): what a real restorer adds per tile. The two add up to the real cost (a real
  SwinIR over a whole 8k image at 512-px tiles takes hours on CPU);
* ``dual``: Dual Encoder Interpolate (k 0, pad 64, tile 0) with the tests' tiny VAEs over the whole image, which
  ComfyUI's estimate sends to the CPU tile fallback; ``dual_tile``: one 512-px tile through the real SD VAE
  encoder (the same split as stage1);
* ``degrade``: Degrade Image (realesrgan, scale 4), no network;
* ``guidance``: one restoration-guidance gradient through the real SD VAE decoder in the mode ``auto`` picks on
  this machine, counted on the meta device by scripts/benchmark.py's LiveBytes (fp32; peak live bytes of
  activations, weights excluded): a real 8k decode and backward would take hours on CPU.

Writes a Markdown table (``--markdown``) and JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
ROWS = ("iqa", "stage1", "stage1_tile", "dual", "dual_tile", "degrade", "guidance")
LABELS = {
    "iqa": "IQA Classifier (real MUSIQ)",
    "stage1": "Stage-1 Restore, whole image (tiny SwinIR)",
    "stage1_tile": "Stage-1 Restore, one 512 px tile (real SwinIR)",
    "dual": "Dual Encoder Interpolate, whole image (tiny VAEs)",
    "dual_tile": "Dual Encoder Interpolate, one 512 px tile (real SD VAE encoder)",
    "degrade": "Degrade Image (realesrgan, x4)",
    "guidance": "Restoration guidance, one gradient (real SD VAE decoder, meta count)",
}
FIXED_SIZE = {"stage1_tile": 512, "dual_tile": 512}  # rows measured at one tile whatever --sizes says


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------- one row (child)


def child(row: str, size: int) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark as bm

    torch.set_grad_enabled(False)
    work = Path(tempfile.mkdtemp(prefix="memceil_"))
    host = bm.start_host("cpu", work)
    pack = bm.Pack(host)
    tiny = pack.tiny
    image = bm.smooth_image(size, 1).permute(0, 2, 3, 1).contiguous()  # (1, H, W, 3)
    tiny.IMAGES["memceil"] = image
    img = {"class_type": "AdaptBIRTest_Image", "inputs": {"name": "memceil"}}
    sink = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["n", 0]}}
    note = ""
    if row == "guidance":
        return guidance_count(bm, host, pack, size)
    if row == "iqa":
        from safetensors.torch import save_file

        torch.manual_seed(0)
        net = pack("modules.iqa").build_musiq("musiq")
        (host.models_dir / "iqa").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(host.models_dir / "iqa" / "memceil_musiq.safetensors"))
        del net
        prompt = {"img": img, "n": {"class_type": "AdaptBIR_IQAClassifier", "inputs": {
            "image": ["img", 0], "metric": "musiq", "weights": "memceil_musiq.safetensors", "mode": "adaptbir",
            "low_threshold": 40.0, "high_threshold": 70.0, "k_max": 0.7, "w_max": 1.0, "score_max_side": 0}},
            "s": sink}
    elif row in ("stage1", "stage1_tile"):
        from safetensors.torch import save_file

        swinir = pack("modules.swinir")
        cfg = {"embed_dim": 12, "depths": (2, 2), "num_heads": (2, 3), "window_size": 4, "mlp_ratio": 2.0,
               "unshuffle_scale": 2, "in_chans": 3, "num_feat": 16, "img_size": 8} if row == "stage1" else {}
        net = bm.randomize_(swinir.SwinIR(**cfg), 0)
        (host.models_dir / "diffbir").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(host.models_dir / "diffbir" / "memceil_swinir.safetensors"))
        del net
        prompt = {"img": img, "r": {"class_type": "AdaptBIR_RestorerLoader", "inputs": {
            "restorer_name": "memceil_swinir.safetensors", "precision": "auto"}},
            "n": {"class_type": "AdaptBIR_Stage1Restore", "inputs": {
                "image": ["img", 0], "restorer": ["r", 0], "output_scale": 1.0, "tile_size": 512,
                "tile_stride": 256}}, "s": sink}
    elif row == "dual":
        prompt = {"img": img,
                  "v1": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": 0, "latent_channels": 4}},
                  "v2": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": 1, "latent_channels": 4}},
                  "n": {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": {
                      "image": ["img", 0], "restoration_vae": ["v1", 0], "internal_vae": ["v2", 0], "k": 0.0,
                      "pad_multiple": 64, "tile_size": 0}}, "s": sink}
    elif row == "dual_tile":  # the real SD VAE's encoder on one tile, as the tiled fallback runs it
        vae = bm.Builder(pack, "real", torch.float32).vae()
        x = image
        base = rss_bytes()
        t0 = time.perf_counter()
        vae.encode(x)
        return {"row": row, "size": size, "peak_rss": peak_rss_bytes(), "base_rss": base,
                "seconds": time.perf_counter() - t0, "outcome": "ran", "note": "vae.encode of one 512 px tile"}
    elif row == "degrade":
        prompt = {"img": img, "n": {"class_type": "AdaptBIR_DegradeImage", "inputs": {
            "image": ["img", 0], "pipeline": "realesrgan", "seed": 0, "scale": 4.0}}, "s": sink}
    else:
        raise SystemExit(f"unknown row {row}")
    import execution

    executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    base = rss_bytes()
    t0 = time.perf_counter()
    outcome = "ran"
    try:
        host.run(prompt, executor=executor)
        if row == "iqa":
            note = host.ui(executor, "n")["text"][0].splitlines()[0]
    except Exception as e:  # noqa: BLE001 - a clear refusal is a valid outcome; report its text
        outcome = "refused"
        note = f"{type(e).__name__}: {getattr(e, 'exception_message', str(e))}"[:300]
    return {"row": row, "size": size, "peak_rss": peak_rss_bytes(), "base_rss": base,
            "seconds": time.perf_counter() - t0, "outcome": outcome, "note": note}


def guidance_count(bm, host, pack, size: int) -> dict:
    """Meta-device count of one rgb guidance gradient in the mode ``auto`` picks here (fp32, CPU)."""
    import comfy.latent_formats
    import comfy.model_management as mm
    import torch

    builder = bm.Builder(pack, "real", torch.float32)
    vae = bm.with_attention(builder.vae(), bm.efficient_attention)  # torch's memory-efficient attention (SDPA)
    g = pack("nodes.guidance")
    lat = (1, 4, size // 8, size // 8)
    free = mm.get_free_memory(torch.device("cpu"))
    auto = g.auto_memory_mode(lat, torch.float32, free) if hasattr(g, "auto_memory_mode") else (
        "checkpoint" if g.full_guidance_bytes(lat, torch.float32) > free / 2 else "full")
    run = argparse.Namespace(pack=pack)
    t0 = time.perf_counter()
    lb, why = bm.count_guidance_bytes(run, vae, size, auto, torch.float32, 512, comfy.latent_formats.SD15())
    base = rss_bytes()
    if lb is None:
        return {"row": "guidance", "size": size, "outcome": "failed", "note": why, "peak_rss": None,
                "base_rss": base, "seconds": time.perf_counter() - t0}
    return {"row": "guidance", "size": size, "outcome": "counted", "mode": auto, "counted_bytes": lb.peak,
            "peak_rss": None, "base_rss": base, "seconds": time.perf_counter() - t0,
            "note": f"auto picks '{auto}' with {free / GIB:.1f} GiB free; activations counted, weights excluded"}


# ------------------------------------------------------------------------------------------------------ parent


def fmt(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def table(results: list) -> str:
    lines = ["| Row | Size | Peak RSS (process) | Working (node) | Time | Outcome |", "|---|---|---|---|---|---|"]
    for r in results:
        if r.get("error"):
            lines.append(f"| {LABELS[r['row']]} | {r['size']} px | - | - | - | failed: {r['error'][:200]} |")
            continue
        working = r.get("counted_bytes") if r["row"] == "guidance" else (r["peak_rss"] - r["base_rss"])
        lines.append(f"| {LABELS[r['row']]} | {r['size']} px | {fmt(r['peak_rss'])} | {fmt(working)} | "
                     f"{r['seconds']:.0f} s | {r['outcome']}{': ' + r['note'] if r.get('note') else ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--sizes", nargs="+", type=int, default=[4096, 8192])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(REPO / "test-artifacts" / "memory_ceilings.json"))
    p.add_argument("--markdown", default=str(REPO / "test-artifacts" / "memory_ceilings.md"))
    p.add_argument("--child", nargs=2, metavar=("ROW", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print("MEMCEIL " + json.dumps(child(args.child[0], int(args.child[1]))), flush=True)
        return 0
    results = []
    for row in args.rows:
        for size in sorted({FIXED_SIZE.get(row, s) for s in args.sizes}):
            cmd = [sys.executable, __file__, "--child", row, str(size), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMCEIL ")), None)
            if line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                res = {"row": row, "size": size, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
            else:
                res = json.loads(line[len("MEMCEIL "):])
            results.append(res)
            print(table([res]).splitlines()[-1], flush=True)
    md = table(results)
    for path, text in ((args.json, json.dumps(results, indent=2)), (args.markdown, md + "\n")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

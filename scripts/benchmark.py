"""Benchmark of the pack's per-step costs on ComfyUI's real sampling path (dev tool, issue 8 items 3 and 4).

Run with the venv's Python from the repository root::

    python scripts/benchmark.py                    # CPU: tiny suite + real architectures at 256 px, fp32
    python scripts/benchmark.py                    # CUDA: real architectures at 512/1024/2048 px, bf16
    python scripts/benchmark.py --suite tiny --quick --size 64 --threads 1   # seconds
    python scripts/benchmark.py --only hypir --suite tiny --size 128   # HYPIR 1 step vs DiffBIR 50 steps

It prints a table and writes the same rows as JSON (``--json``). ComfyUI 0.3.75 is imported in-process with the
pack loaded by ComfyUI's own custom-node loader (tests/support/comfy_host.py, as in the tests). Every network is
built from its config with ComfyUI's no-init layers and random, seeded weights (no files are read): ``tiny``
uses the test models' configs, ``real`` the real SD 2.1-base UNet, DiffBIR IRControlNet, AdaptBIR CSFT, ComfyUI's
own ControlNet, SD VAE, SDXL-base UNet and SUPIR adapter (parameter counts go to the JSON), and the pack's MUSIQ (pyiqa's architecture).

What is measured (all ratios come from one run: same process, same size, rows of a size timed in interleaved
rounds):

* ms/step: ``comfy.sample.sample_custom`` (euler, CFG 4, so a step is one batch-2 UNet call = 2 passes) with the
  pack's patches and conditioning, under ``torch.inference_mode()`` like ComfyUI's executor. Step times are the
  intervals between the sampler's per-step callbacks; the first step of every run (model loading, first calls)
  is dropped; the median of the rest is reported (the minimum goes to the JSON). On CUDA the callback
  synchronises first.
* FLOPs: torch's FLOP formulas (``torch.utils.flop_counter``, as ``FlopCounterMode`` counts) over one more
  one-step sampling call (forward and, for guidance, backward). On CUDA also MFU, the fraction of the device's
  dense bf16 peak.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before (the step's working memory; weights excluded). On CPU the same quantity from the c10 CPU
  allocator as ``torch.profiler`` (``profile_memory=True``) records it: the peak of bytes allocated during the
  step and not yet freed. Rows marked ``meta count`` are not run: the pack's guidance gradient
  (``RestorationGuidance.grad``) runs on the ``meta`` device while a dispatch mode adds up the bytes of every
  tensor it creates and subtracts them when the storage is freed (peak live bytes, weights excluded), with the
  attention kernel a GPU uses; ``checks`` in the JSON put the count next to a measurement of the same gradient.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import inspect
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
import weakref
from pathlib import Path

import torch
import torch.utils._python_dispatch
import torch.utils.flop_counter

REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
MIB = 1024 ** 2

# --- configs --------------------------------------------------------------------------------------------------

SD21_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SD_VAE = {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}
CSFT_SD21 = {"model_channels": 320, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 2, "sft_channels": 128}
SD_TOKENS, SD_CONTEXT = 77, 1024
SDXL_TOKENS, SDXL_CONTEXT, SDXL_POOLED = 77, 2048, 1280

CFG = 4.0
SAMPLER = "euler"
GUIDANCE_SCALE = 0.5
GUIDANCE_MODES = ("full", "checkpoint", "tiled")

# Dense bf16 tensor-core peaks (TFLOP/s) by device name, for MFU = FLOPs / time / peak. First match wins.
DEVICE_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("RTX 4090", 165.0), ("A10", 125.0),
]

# Targets of issue 8 item 4. kind "ratio": ms/step over the baseline row at the same size; "bytes": guidance
# working memory; "seconds": a whole 50-step sampling. applies: (suite, size px or None = any, dtype or None).
TARGETS = {
    "unet_irc_csft": {"kind": "ratio", "max": 1.45, "arith": 1.33, "size": None, "dtype": None,
                      "text": "<= 1.45x UNet (arith. 1.33x)"},
    "unet_comfy_cn": {"kind": "reference", "text": "ComfyUI ControlNet, ~same FLOPs as IRControlNet"},
    "guided_rgb_full": {"kind": "ratio", "max": 3.5, "arith": 3.35, "size": 512, "dtype": None,
                        "text": "<= 3.5x unguided @512 (arith. 3.35x)"},
    "guided_latent": {"kind": "ratio", "max": 1.1, "size": 512, "dtype": None, "text": "<= 1.1x unguided @512"},
    "guidance_mem_full": {"kind": "reference", "text": "naive: ~11.2 GiB @1024, ~45 GiB @2048 (bf16)"},
    "guidance_mem_checkpoint": {"kind": "bytes", "max": 4.5 * GIB, "size": 1024, "dtype": "bfloat16",
                                "text": "<= 4.5 GiB @1024 bf16"},
    "guidance_mem_tiled": {"kind": "bytes", "max": 8.0 * GIB, "size": 2048, "dtype": "bfloat16",
                           "text": "<= 8 GiB @2048 bf16"},
    "diffbir_50_steps": {"kind": "seconds", "max": 1.0, "size": 512, "dtype": "bfloat16",
                         "text": "< 1 s @512 bf16 (GPU)"},
}

ROW_LABELS = {
    "unet": "UNet (CFG step, 2 passes)",
    "unet_irc": "UNet + IRControlNet",
    "unet_irc_csft": "UNet + IRControlNet + CSFT",
    "unet_comfy_cn": "UNet + ComfyUI ControlNet",
    "guided_rgb_full": "guided step, rgb full",
    "guided_rgb_checkpoint": "guided step, rgb checkpoint",
    "guided_rgb_tiled": "guided step, rgb tiled",
    "guided_latent": "guided step, latent",
    "sdxl": "SDXL (CFG step)",
    "sdxl_supir": "SDXL + SUPIR",
    "musiq": "MUSIQ (per image)",
    "guidance_mem_full": "guidance memory, full",
    "guidance_mem_checkpoint": "guidance memory, checkpoint",
    "guidance_mem_tiled": "guidance memory, tiled",
    "diffbir_50_steps": "DiffBIR 50 steps + CFG",
    "diffbir_50_whole": "DiffBIR 50 steps (UNet+IRC, CFG), whole",
    "hypir_one_step": "HYPIR one step (1 UNet pass), whole",
}
BASELINES = {"unet_irc": "unet", "unet_irc_csft": "unet", "unet_comfy_cn": "unet", "guided_rgb_full": "unet_irc",
             "guided_rgb_checkpoint": "unet_irc", "guided_rgb_tiled": "unet_irc", "guided_latent": "unet_irc",
             "sdxl_supir": "sdxl", "hypir_one_step": "diffbir_50_whole"}


# --- ComfyUI host and the pack ---------------------------------------------------------------------------------

def start_host(device: str, workdir: Path):
    """Import ComfyUI in-process (tests/support/comfy_host.py) with the pack loaded by ComfyUI's loader.

    The test host always passes ``--cpu``; for a GPU run ComfyUI's arguments are parsed first without it (they are
    parsed once, when ``comfy.cli_args`` is first imported).
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.comfy_host import InProcessHost, comfyui_path

    if device != "cpu":
        path = str(comfyui_path())
        if path not in sys.path:
            sys.path.insert(0, path)
        argv = sys.argv
        sys.argv = ["main.py", "--preview-method", "none"]
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # (parses sys.argv now)
        sys.argv = argv
    return InProcessHost(workdir)


class Pack:
    """The pack's submodules as ComfyUI loaded them, and the test nodes' tiny model configs."""

    def __init__(self, host):
        self.host = host
        self.tiny = sys.modules[next(m for m in sys.modules if m.endswith("adaptbir_test_nodes.tiny"))]

    def __call__(self, sub: str):
        return importlib.import_module(f"{self.host.pack_module_name}.{sub}")


# --- building networks with random weights ---------------------------------------------------------------------

def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter in place (no second copy): norm layers 1/0, weights N(0, 1/fan_in), biases 0."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if not p.is_floating_point() or p.numel() == 0:
                    continue
                if isinstance(m, norms):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.ndim >= 2:
                    p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
                elif name == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02, generator=g)
    return module


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


class Builder:
    """Builds the ComfyUI objects of one suite (``tiny`` or ``real``) in ``dtype`` with random, seeded weights."""

    def __init__(self, pack: Pack, suite: str, dtype: torch.dtype, weight_dtype: torch.dtype | None = None):
        self.pack, self.suite, self.dtype = pack, suite, dtype
        self.weight_dtype = weight_dtype or dtype  # storage dtype (CPU may keep SDXL in bf16, computing in fp32)
        t = pack.tiny
        self.sd_cfg = dict(t.SD2_UNET) if suite == "tiny" else dict(SD21_UNET)
        self.sdxl_cfg = dict(t.SDXL_UNET) if suite == "tiny" else dict(SDXL_UNET)
        self.vae_cfg = t.vae_config(4) if suite == "tiny" else SD_VAE
        self.csft_cfg = dict(t.TINY_CSFT) if suite == "tiny" else dict(CSFT_SD21)

    def _patcher(self, net):
        import comfy.model_management as mm
        import comfy.model_patcher

        return comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                                offload_device=mm.unet_offload_device())

    def _manual_cast(self, weight_dtype):
        return None if weight_dtype == self.dtype else self.dtype

    def sd_model(self, seed=0):
        """SD 2.x (eps) ModelPatcher: ComfyUI's SD20 config around the suite's UNet."""
        import comfy.model_base
        import comfy.supported_models

        mc = comfy.supported_models.SD20(dict(self.sd_cfg))
        mc.set_inference_dtype(self.dtype, None)
        base = comfy.model_base.BaseModel(mc, model_type=comfy.model_base.ModelType.EPS)
        randomize_(base.diffusion_model, seed).requires_grad_(False)
        return self._patcher(base.eval())

    def sdxl_model(self, seed=1):
        import comfy.model_base
        import comfy.supported_models

        mc = comfy.supported_models.SDXL(dict(self.sdxl_cfg))
        mc.unet_config["num_head_channels"] = self.sdxl_cfg["num_head_channels"]
        mc.set_inference_dtype(self.weight_dtype, self._manual_cast(self.weight_dtype))
        base = comfy.model_base.SDXL(mc, model_type=comfy.model_base.ModelType.EPS)
        randomize_(base.diffusion_model, seed).requires_grad_(False)
        return self._patcher(base.eval())

    def vae(self, seed=2):
        import comfy.sd
        from comfy.ldm.models.autoencoder import AutoencoderKL

        ae = randomize_(AutoencoderKL(**self.vae_cfg), seed)  # ComfyUI's layers: no init pass
        sd = ae.state_dict()
        del ae
        return comfy.sd.VAE(sd=sd, config={"params": self.vae_cfg}, dtype=self.dtype)

    def _control_cfg(self, in_channels):
        import comfy.supported_models

        cfg = {k: v for k, v in self.sd_cfg.items() if k not in ("out_channels", "dtype")}
        cfg["in_channels"] = in_channels
        cfg.update(comfy.supported_models.SD20.unet_extra_config)
        return cfg

    def _ops(self):
        import comfy.ops

        return comfy.ops.pick_operations(self.dtype, None, disable_fast_fp8=True)

    def ircontrolnet(self, seed=3):
        """The pack's IRControlNet control (DiffBIR hint convention) around a random IRControlNetModel."""
        irc = self.pack("nodes.ircontrolnet")
        net = irc.IRControlNetModel(**self._control_cfg(8), dtype=self.dtype, operations=self._ops())
        randomize_(net, seed).eval().requires_grad_(False)
        return irc.IRControlNetControl(self._patcher(net), "diffbir")

    def comfy_controlnet(self, seed=4):
        """ComfyUI's own ControlNet (cldm, with the image hint block) for the same UNet."""
        import comfy.cldm.cldm
        import comfy.controlnet
        import comfy.model_management as mm

        net = comfy.cldm.cldm.ControlNet(hint_channels=3, **self._control_cfg(4), dtype=self.dtype,
                                         operations=self._ops())
        randomize_(net, seed).eval().requires_grad_(False)
        return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device(), manual_cast_dtype=None)

    def csft(self, seed=5):
        import comfy.ops

        mod = self.pack("modules.csft")
        net = randomize_(mod.CSFT(**self.csft_cfg, operations=comfy.ops.disable_weight_init), seed)
        sd = net.state_dict()
        del net
        return self.pack("nodes.csft").CSFTWeights(sd, dict(self.csft_cfg), "benchmark (random weights)")

    def supir(self, sdxl, vae, seed=6):
        """The pack's SUPIR adapter (GLVControl + connectors) for ``sdxl``'s UNet, random weights."""
        import comfy.ops

        sm = self.pack("nodes.supir_model")
        layout_of = self.pack("modules.supir").supir_layout
        unet_config = sdxl.model.model_config.unet_config
        cfg = {k: v for k, v in unet_config.items() if k not in ("out_channels", "dtype", "device", "operations")}
        layout = layout_of(cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"])
        net = sm.SUPIRAdapterModule(cfg, layout, None, self.weight_dtype, comfy.ops.manual_cast)
        randomize_(net, seed).eval().requires_grad_(False)
        adapter = self.pack("nodes.supir").SUPIRAdapter(self._patcher(net), vae, None, "benchmark (random weights)",
                                                         sm.unet_signature(unet_config))
        return adapter

    def conditioning(self, sdxl: bool, size: int, seed: int):
        if self.suite == "tiny":
            return self.pack.tiny.tiny_conditioning(f"c{seed}", seed=seed, sdxl=sdxl, size=size)
        g = torch.Generator().manual_seed(100 + seed)
        if not sdxl:
            return [[torch.randn(1, SD_TOKENS, SD_CONTEXT, generator=g), {}]]
        opts = {"pooled_output": torch.randn(1, SDXL_POOLED, generator=g), "width": size, "height": size,
                "crop_w": 0, "crop_h": 0, "target_width": size, "target_height": size}
        return [[torch.randn(1, SDXL_TOKENS, SDXL_CONTEXT, generator=g), opts]]


def efficient_attention(q, k, v):
    """ComfyUI's VAE ``pytorch_attention`` with the kernel CUDA's SDPA runs for the SD VAE's 512-wide single head
    in bf16 (memory-efficient attention: saves the output and the log-sum-exp, never the N x N matrix) spelled out,
    because SDPA on the meta device falls back to the math path. For meta counts only."""
    shape = q.shape
    b, c = shape[0], shape[1]
    q, k, v = (t.view(b, 1, c, -1).transpose(2, 3).contiguous() for t in (q, k, v))
    out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, q.requires_grad)[0]
    return out.transpose(2, 3).reshape(shape)


def math_attention(q, k, v):
    """softmax(q k^T / sqrt(c)) v written out (the N x N matrix is kept for the backward pass): runs the same way on
    CPU and on meta, so a meta count can be checked against a CPU allocator measurement."""
    shape = q.shape
    b, c = shape[0], shape[1]
    q, k, v = (t.reshape(b, c, -1) for t in (q, k, v))
    attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=-1)
    return torch.bmm(v, attn.transpose(1, 2)).reshape(shape)


def with_attention(vae, fn):
    """``vae`` with every decoder attention block calling ``fn`` (a VAE built for counting, never a user's)."""
    from comfy.ldm.modules.diffusionmodules.model import AttnBlock

    for m in vae.first_stage_model.modules():
        if isinstance(m, AttnBlock):
            m.optimized_attention = fn
    return vae


def attach_control(conditioning, control):
    """Conditioning with ``control`` attached, as Apply IRControlNet / ComfyUI's Apply ControlNet do."""
    out = []
    for cond, opts in conditioning:
        d = opts.copy()
        d["control"] = control
        d["control_apply_to_uncond"] = False
        out.append([cond, d])
    return out


def smooth_image(size: int, seed: int) -> torch.Tensor:
    """(1, 3, size, size) float32 in [0, 1]: bilinearly upsampled coarse noise (edges and flat areas)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def release():
    """Drop everything ComfyUI's model management holds (after the caller dropped its references)."""
    import comfy.model_management as mm

    gc.collect()
    mm.unload_all_models()
    mm.cleanup_models()
    gc.collect()
    mm.soft_empty_cache(True)


# --- measuring -------------------------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class Device:
    def __init__(self):
        import comfy.model_management as mm

        self.torch_device = mm.get_torch_device()
        self.cuda = self.torch_device.type == "cuda"
        self.name = torch.cuda.get_device_name(self.torch_device) if self.cuda else cpu_name()
        self.peak_tflops = None
        if self.cuda:
            for key, tflops in DEVICE_PEAK_TFLOPS:
                if key in self.name:
                    self.peak_tflops = tflops
                    break

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)

    @property
    def mem_method(self):
        return "cuda peak allocated" if self.cuda else "cpu allocator peak"


def cpu_allocator_peak(prof) -> int:
    """Peak bytes allocated and not yet freed during a ``torch.profiler`` run with ``profile_memory=True`` (c10 CPU
    allocator; frees of blocks allocated before the run are not reported by the profiler, so this is an upper
    bound of the net peak)."""
    from torch._C._profiler import _EventType

    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def runs_decomposed(func, args) -> bool:
    """Whether ``func`` has no kernel of its own for its tensors' device and runs as its composite decomposition
    anyway (e.g. ``linear`` under inference mode). A mode decomposes exactly these, so that counting neither
    misses what they are made of nor changes how anything else runs (ops with their own kernel stay whole)."""
    name = func.name()
    if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd"):
        return False
    dev = next((t.device.type for t in torch.utils._pytree.tree_leaves(args) if isinstance(t, torch.Tensor)), "cpu")
    return not torch._C._dispatch_has_kernel_for_dispatch_key(name, {"cuda": "CUDA", "meta": "Meta"}.get(dev, "CPU"))


class FlopCount(torch.utils._python_dispatch.TorchDispatchMode):
    """FLOPs of the ops run under it, by torch's own per-op formulas (``torch.utils.flop_counter.flop_registry``,
    the ones ``FlopCounterMode`` applies). ``FlopCounterMode`` itself also tracks modules (hooks that keep
    activations alive) and decomposes unregistered ops, which would change the memory measured in the same run;
    this mode only counts (composite ops without a kernel are decomposed, see runs_decomposed). ``total``: int FLOPs (2 per multiply-add)."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.by_op = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = torch.utils.flop_counter.flop_registry.get(func._overloadpacket)
        if formula is None and runs_decomposed(func, args):  # e.g. linear under inference mode
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        if formula is not None:
            n = int(formula(*args, **kwargs, out_val=out))
            self.total += n
            name = str(func._overloadpacket)
            self.by_op[name] = self.by_op.get(name, 0) + n
        return out


def instrumented(fn, dev: Device):
    """Run ``fn`` once counting FLOPs and measuring peak working memory; returns (result, flops, peak bytes)."""
    dev.sync()
    with FlopCount() as fc:
        if dev.cuda:
            before = torch.cuda.memory_allocated(dev.torch_device)
            torch.cuda.reset_peak_memory_stats(dev.torch_device)
            out = fn()
            dev.sync()
            peak = torch.cuda.max_memory_allocated(dev.torch_device) - before
        else:
            from torch.profiler import ProfilerActivity, profile

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    out = fn()
            peak = cpu_allocator_peak(prof)
    return out, fc.total, int(peak)


class LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the bytes of tensors created under it that are alive at the same time (peak live bytes).

    A storage is added when an op returns it and subtracted when it is freed (weakref callback on the storage);
    outputs that share a storage with one of the op's inputs (views, in-place ops, also of tensors made before
    the count started, such as weights) are not counted. Works on the ``meta`` device, where nothing is
    allocated: there it counts what a real device would have to hold. A data-dependent read of a meta scalar
    (``bool(t)``, ``t.item()``: e.g. a finiteness check) answers True / 1, as a healthy run would.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs = {}
        self.bytes_by_dtype = {}

    def _freed(self, key, nbytes):
        self._refs.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool else 1
        if runs_decomposed(func, args):  # so that its intermediates are seen
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in inputs or (key in self._refs and self._refs[key]() is st):
                continue
            n = st.nbytes()
            self._refs[key] = weakref.ref(st, lambda _r, k=key, n=n: self._freed(k, n))
            self.live += n
            self.peak = max(self.peak, self.live)
            name = str(t.dtype).replace("torch.", "")
            self.bytes_by_dtype[name] = self.bytes_by_dtype.get(name, 0) + n
        return out


def sample(model, positive, negative, latent, sigmas, callback=None, seed=0):
    """One ``comfy.sample.sample_custom`` call as a sampler node makes it (inference mode, euler, CFG)."""
    import comfy.sample
    import comfy.samplers

    noise = comfy.sample.prepare_noise(latent, seed)
    sampler = comfy.samplers.sampler_object(SAMPLER)
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, CFG, sampler, sigmas, positive, negative, latent,
                                          callback=callback, disable_pbar=True, seed=seed)


def step_times(model, positive, negative, latent, steps: int, dev: Device):
    """Step times (ms) of one sampling run of ``steps`` steps, the first step dropped; and whether the result is
    finite."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    stamps = []

    def callback(i, x0, x, total):
        dev.sync()
        stamps.append(time.perf_counter())

    out = sample(model, positive, negative, latent, sigmas, callback)
    return [(b - a) * 1000.0 for a, b in itertools.pairwise(stamps)], bool(torch.isfinite(out).all())


def measure_sampling(cases, latent, steps: int, rounds: int, dev: Device) -> dict:
    """For each case (row id, model, positive, negative): ms per step, FLOPs and peak memory.

    The cases are timed in ``rounds`` interleaved rounds (each round samples every case once), so that a change
    of machine load affects every row alike; ms = median of all step times of all rounds (the first step of each
    run dropped). FLOPs and memory come from one more one-step run per case.
    """
    import comfy.samplers

    out = {row_id: {"ms_samples": [], "finite": True} for row_id, *_ in cases}
    for _ in range(rounds):
        for row_id, model, pos, neg in cases:
            times, finite = step_times(model, pos, neg, latent, steps, dev)
            out[row_id]["ms_samples"] += times
            out[row_id]["finite"] &= finite
    for row_id, model, pos, neg in cases:
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
        _, flops, peak = instrumented(lambda m=model, p=pos, n=neg, s=sigmas: sample(m, p, n, latent, s[:2]), dev)
        res = out[row_id]
        res.update(ms=statistics.median(res["ms_samples"]), ms_min=min(res["ms_samples"]), flops=flops,
                   peak_bytes=peak)
    return out


def measure_call(fn, repeats: int, dev: Device) -> dict:
    """ms per call of ``fn`` (one warm-up call, then the median of ``repeats``), FLOPs and peak memory."""
    fn()
    times = []
    for _ in range(repeats):
        dev.sync()
        t0 = time.perf_counter()
        fn()
        dev.sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    _, flops, peak = instrumented(fn, dev)
    return {"ms": statistics.median(times), "ms_samples": times, "flops": flops, "peak_bytes": peak}


# --- the rows --------------------------------------------------------------------------------------------------

class Run:
    """Collects rows; every row is measured in this one process."""

    def __init__(self, args, dev: Device, pack: Pack):
        self.args, self.dev, self.pack = args, dev, pack
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.checks: list[dict] = []
        self.params: dict = {}
        self.rounds = 1
        self.t0 = time.perf_counter()

    def log(self, msg):
        if not self.args.silent:
            print(f"{time.perf_counter() - self.t0:7.1f}s {msg}", file=sys.stderr, flush=True)

    def add(self, row_id, suite, size, dtype, result=None, method=None, notes="", **extra):
        row = {"row": row_id, "label": ROW_LABELS[row_id], "suite": suite, "size": size,
               "dtype": str(dtype).replace("torch.", ""), "device": self.dev.name,
               "mem_method": method or self.dev.mem_method, "notes": notes}
        row.update(result or {})
        row.update(extra)
        if row.get("finite") is False:
            row["notes"] = (notes + "; " if notes else "") + "non-finite latent (random weights)"
        self.rows.append(row)
        ms = row.get("ms")
        self.log(f"  {row_id:24s} {size:5d}px  " + (f"{ms:10.1f} ms" if ms is not None else " " * 13)
                 + f"  {fmt_flops(row.get('flops'))}  {fmt_bytes(row.get('peak_bytes'))}  {notes}")
        return row

    def skip(self, row_id, suite, size, reason):
        self.skipped.append({"row": row_id, "suite": suite, "size": size, "reason": reason})
        self.log(f"  {row_id:24s} {size:5d}px  skipped: {reason}")


def guidance_api(pack: Pack):
    """(RestorationGuidance class, accepts memory/precision/tile_size, has grad())."""
    cls = pack("nodes.guidance").RestorationGuidance
    params = inspect.signature(cls.__init__).parameters
    return cls, all(p in params for p in ("memory", "precision", "tile_size")), hasattr(cls, "grad")


def guidance_patch(pack, vae, guide, space, mode, precision, tile_size):
    cls, has_modes, _ = guidance_api(pack)
    kwargs = {}
    if has_modes:
        kwargs = {"memory": mode, "precision": precision, "tile_size": tile_size}
    elif mode != "full":
        return None
    return cls(vae, guide, GUIDANCE_SCALE, space=space, **kwargs)


def default_tile_size(pack: Pack) -> int:
    """RestorationGuidance's default tile size in px (512 when this pack version has none)."""
    p = inspect.signature(pack("nodes.guidance").RestorationGuidance.__init__).parameters.get("tile_size")
    return p.default if p is not None and isinstance(p.default, int) else 512


def precision_name(dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def sd_phase(run: Run, suite: str, sizes, dtype, steps: int, tile_size: int):
    """UNet / IRControlNet / CSFT / ComfyUI ControlNet rows and the guided steps, for SD 2.x."""
    b = Builder(run.pack, suite, dtype)
    run.log(f"[{suite}] building SD 2.x UNet, IRControlNet, ComfyUI ControlNet, CSFT, VAE ({b.dtype})")
    model = b.sd_model()
    irc = b.ircontrolnet()
    ccn = b.comfy_controlnet()
    csft = b.csft()
    vae = b.vae()
    params = {"unet": param_count(model.model.diffusion_model), "ircontrolnet": param_count(irc.patcher.model),
              "comfy_controlnet": param_count(ccn.control_model), "vae_decoder": param_count(
                  vae.first_stage_model.decoder) + param_count(vae.first_stage_model.post_quant_conv),
              "csft": sum(v.numel() for v in csft.state_dict.values())}
    run.params.setdefault(suite, {}).update(params)
    run.log(f"  parameters: {params}")
    nodes_csft = run.pack("nodes.csft")
    nodes_guidance = run.pack("nodes.guidance")
    csft_model = nodes_csft.patch_model(model, csft, torch.tensor([1.0], dtype=torch.float64))
    pos, neg = b.conditioning(False, 0, 0), b.conditioning(False, 0, 1)
    for size in sizes:
        h = size // 8
        latent = torch.zeros(1, 4, h, h)
        g = torch.Generator().manual_seed(size)
        hint = torch.randn(1, 4, h, h, generator=g) * 0.18215 * 5.0  # DiffBIR hint: 0.18215 x a VAE latent
        control = irc.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
        ipos, ineg = attach_control(pos, control), attach_control(neg, control)
        cn = ccn.copy().set_cond_hint(smooth_image(size, 1), 1.0, (0.0, 1.0))
        cpos, cneg = attach_control(pos, cn), attach_control(neg, cn)
        guide = smooth_image(size, 2)
        cases = [("unet", model, pos, neg), ("unet_irc", model, ipos, ineg), ("unet_irc_csft", csft_model, ipos, ineg),
                 ("unet_comfy_cn", model, cpos, cneg)]
        notes, patches = {}, {}
        for space, mode, row_id in (("rgb", "full", "guided_rgb_full"), ("rgb", "checkpoint", "guided_rgb_checkpoint"),
                                    ("rgb", "tiled", "guided_rgb_tiled"), ("latent", "full", "guided_latent")):
            patch = guidance_patch(run.pack, vae, guide, space, mode, precision_name(b.dtype), tile_size)
            if patch is None:
                run.skip(row_id, suite, size, "this pack version's RestorationGuidance has no memory modes")
                continue
            cases.append((row_id, nodes_guidance.apply_guidance(model, patch), ipos, ineg))
            notes[row_id] = f"tile {tile_size} px" if mode == "tiled" else ""
            patches[row_id] = (patch, mode)
        results = measure_sampling(cases, latent, steps, run.rounds, run.dev)
        for row_id, *_ in cases:
            note = notes.get(row_id, "") + (fallback_note(*patches[row_id]) if row_id in patches else "")
            run.add(row_id, suite, size, b.dtype, results[row_id], notes=note)
        if run.dev.cuda and suite == "real" and size == 512 and not run.args.quick:
            diffbir_50(run, model, ipos, ineg, latent, b.dtype)
        guidance_memory_measured(run, suite, size, vae, guide, b.dtype, tile_size, model.model.latent_format)
    del model, irc, ccn, csft, csft_model, cases, control, cn, ipos, ineg, cpos, cneg
    return vae


def diffbir_50(run: Run, model, pos, neg, latent, dtype):
    """A whole 50-step DiffBIR sampling (UNet + IRControlNet, CFG) at 512 px, warm: wall time."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 50)
    sample(model, pos, neg, latent, sigmas)
    times = []
    for _ in range(3):
        run.dev.sync()
        t0 = time.perf_counter()
        sample(model, pos, neg, latent, sigmas)
        run.dev.sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    run.add("diffbir_50_steps", "real", 512, dtype, {"ms": statistics.median(times), "ms_samples": times},
            notes="whole sampling, 50 steps, ms per image")


def hypir_phase(run: Run, suite: str, sizes, dtype):
    """HYPIR's one-step restoration beside DiffBIR's 50-step sampling, both whole (ms per image, VAE excluded),
    at the same size in this run: HYPIR Restore's UNet call (nodes.hypir.one_step at model_t = coeff_t = 200;
    HYPIR's LoRA is merged into the weights by ComfyUI, so it costs nothing per pass) vs 50 euler steps of UNet +
    IRControlNet with CFG. ``ratio`` on the HYPIR row = its time over DiffBIR's; FLOPs of each whole call."""
    import comfy.samplers

    b = Builder(run.pack, suite, dtype)
    run.log(f"[{suite}] HYPIR one step vs DiffBIR 50 steps ({b.dtype})")
    model, irc = b.sd_model(), b.ircontrolnet()
    one_step = run.pack("nodes.hypir").one_step
    pos, neg = b.conditioning(False, 0, 0), b.conditioning(False, 0, 1)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 50)
    repeats = 1 if run.args.quick else 3
    for size in sizes:
        h = size // 8
        g = torch.Generator().manual_seed(size)
        latent = torch.randn(1, 4, h, h, generator=g) * 5.0
        control = irc.copy().set_cond_hint(latent * 0.18215, 1.0, (0.0, 1.0))
        ipos, ineg = attach_control(pos, control), attach_control(neg, control)

        def hypir(lat=latent):
            with torch.inference_mode():
                return one_step(model, pos, lat, 200, 200)

        slow = measure_call(lambda lat=latent, p=ipos, n=ineg: sample(model, p, n, lat, sigmas), repeats, run.dev)
        fast = measure_call(hypir, repeats, run.dev)
        run.add("diffbir_50_whole", suite, size, b.dtype, slow, notes="50 euler steps, CFG 4: 100 UNet + 100 IRC "
                "passes; ms per image")
        run.add("hypir_one_step", suite, size, b.dtype, fast, notes="1 UNet pass; ms per image; ratio = HYPIR / "
                "DiffBIR 50 steps, same run")
    del model, irc, control, ipos, ineg


def _guidance(run: Run, vae, guide, mode, dtype, tile_size):
    cls, has_modes, has_grad = guidance_api(run.pack)
    if not (has_modes and has_grad):
        return None
    return cls(vae, guide, GUIDANCE_SCALE, space="rgb", memory=mode, precision=precision_name(dtype),
               tile_size=tile_size)


def guidance_memory_measured(run: Run, suite, size, vae, guide, dtype, tile_size, latent_format):
    """Time and working memory of one rgb guidance gradient (RestorationGuidance.grad) per memory mode."""
    x0 = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(7)).to(
        run.dev.torch_device)
    for mode in GUIDANCE_MODES:
        patch = _guidance(run, vae, guide, mode, dtype, tile_size)
        if patch is None:
            run.skip(f"guidance_mem_{mode}", suite, size, "this pack version has no RestorationGuidance.grad")
            continue
        res = measure_call(lambda p=patch: _grad(p, x0, latent_format), 1 if run.args.quick else 2, run.dev)
        res["ms_grad"] = res.pop("ms")
        res["ms_grad_samples"] = res.pop("ms_samples")
        run.add(f"guidance_mem_{mode}", suite, size, dtype, res,
                notes="one gradient" + (f", tile {tile_size} px" if mode == "tiled" else "") + fallback_note(patch, mode))


def fallback_note(patch, mode) -> str:
    """A note when the guidance ran out of memory and went on with smaller tiles (so the row measured those)."""
    tile = getattr(patch, "tile_px", None)
    if tile is None or (mode == "tiled" and tile == getattr(patch, "tile_size", tile)):
        return ""
    return f"; out of memory: fell back to {tile} px tiles"


def _grad(patch, x0, latent_format):
    with torch.inference_mode():  # as in a sampler node
        return patch.grad(x0, latent_format)


def count_guidance_bytes(run: Run, vae, size, mode, dtype, tile_size, latent_format):
    """(LiveBytes, "") for one rgb guidance gradient run on the meta device, or (None, reason)."""
    patch = _guidance(run, vae, smooth_image(size, 2), mode, dtype, tile_size)
    if patch is None:
        return None, "this pack version has no RestorationGuidance.grad"
    x0 = torch.zeros(1, 4, size // 8, size // 8, device="meta")
    try:
        with LiveBytes():
            _grad(patch, x0, latent_format)  # builds the decoder copy and the target (not counted)
        with LiveBytes() as lb:
            _grad(patch, x0, latent_format)
    except Exception as e:  # noqa: BLE001  (a pack version whose guidance cannot run on meta tensors)
        where = traceback.extract_tb(e.__traceback__)[-1]
        return None, f"meta count failed: {type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"
    return lb, ""


def guidance_memory_counted(run: Run, suite, sizes, builder, dtype, tile_size, latent_format):
    """Working memory of one rgb guidance gradient per memory mode at ``sizes``, counted on the meta device with
    the suite's VAE decoder and CUDA's memory-efficient attention kernel."""
    vae = with_attention(builder.vae(), efficient_attention)
    for size in sizes:
        for mode in GUIDANCE_MODES:
            lb, why = count_guidance_bytes(run, vae, size, mode, dtype, tile_size, latent_format)
            if lb is None:
                run.skip(f"guidance_mem_{mode}", suite, size, why)
                continue
            main_dtype = max(lb.bytes_by_dtype, key=lb.bytes_by_dtype.get) if lb.bytes_by_dtype else "?"
            run.add(f"guidance_mem_{mode}", suite, size, dtype, {"peak_bytes": lb.peak}, method="meta count",
                    notes=f"one gradient, activations mostly {main_dtype}"
                    + (f", tile {tile_size} px" if mode == "tiled" else ""))


def check_meta_count(run: Run, suite, builder, size, tile_size, latent_format):
    """The meta count next to a measurement of the same gradient on this device (same decoder, same attention
    written out; device dtype), per memory mode: how far the count can be trusted."""
    vae = with_attention(builder.vae(), math_attention)
    dtype = builder.dtype
    x0 = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(7)).to(
        run.dev.torch_device)
    for mode in GUIDANCE_MODES:
        patch = _guidance(run, vae, smooth_image(size, 2), mode, dtype, tile_size)
        if patch is None:
            return
        _grad(patch, x0, latent_format)
        _, _, measured = instrumented(lambda p=patch: _grad(p, x0, latent_format), run.dev)
        lb, why = count_guidance_bytes(run, vae, size, mode, dtype, tile_size, latent_format)
        counted = lb.peak if lb is not None else None
        run.checks.append({"what": "guidance memory, meta count vs measured", "suite": suite, "size": size,
                           "mode": mode, "dtype": str(dtype).replace("torch.", ""), "measured_bytes": measured,
                           "measure": run.dev.mem_method, "counted_bytes": counted,
                           "counted_over_measured": counted / measured if counted and measured else None,
                           "note": why})
        run.log(f"  check {mode:10s} {size}px: counted {fmt_bytes(counted)} vs measured {fmt_bytes(measured)} "
                f"{why}")


def sdxl_phase(run: Run, suite, sizes, dtype, steps, vae):
    import psutil

    weight_dtype = dtype
    need = (2.57e9 + 1.30e9) * torch.finfo(dtype).bits / 8 if suite == "real" else 0
    if not run.dev.cuda and need and psutil.virtual_memory().available < 1.15 * need:
        weight_dtype = torch.bfloat16  # keep the weights in bf16, compute in fp32 (ComfyUI's manual cast)
    b = Builder(run.pack, suite, dtype, weight_dtype)
    run.log(f"[{suite}] building SDXL UNet and SUPIR adapter (weights {weight_dtype}, compute {dtype})")
    sdxl = b.sdxl_model()
    supir = b.supir(sdxl, vae)
    params = {"sdxl_unet": param_count(sdxl.model.diffusion_model), "supir_adapter": param_count(supir.patcher.model)}
    run.params.setdefault(suite, {}).update(params)
    run.log(f"  parameters: {params}")
    patch_model = run.pack("nodes.supir").patch_model
    note = "" if weight_dtype == dtype else f"weights {precision_name(weight_dtype)}, manual cast to {dtype}"
    for size in sizes:
        h = size // 8
        latent = torch.zeros(1, 4, h, h)
        pos, neg = b.conditioning(True, size, 0), b.conditioning(True, size, 1)
        hint = sdxl.model.latent_format.process_in(
            torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(size)) * 5.0)
        supir_model = patch_model(sdxl, supir, hint, 1.0, 1.0, 0.0, -1.0, 0.05, None)
        cases = [("sdxl", sdxl, pos, neg), ("sdxl_supir", supir_model, pos, neg)]
        results = measure_sampling(cases, latent, steps, run.rounds, run.dev)
        for row_id, *_ in cases:
            run.add(row_id, suite, size, dtype, results[row_id], notes=note)
        del supir_model, cases


def musiq_phase(run: Run, suite, sizes):
    iqa = run.pack("modules.iqa")
    torch.manual_seed(0)
    net = iqa.build_musiq("musiq").to(run.dev.torch_device)  # the pack's MUSIQ (modules/musiq.py), random weights
    for size in sizes:
        img = smooth_image(size, 3)
        res = measure_call(lambda i=img, n=net: iqa.score_images(n, i), 1 if run.args.quick else 3, run.dev)
        run.params.setdefault(suite, {})["musiq"] = param_count(net)
        run.add("musiq", suite, size, torch.float32, res, notes="ms per image (float32)")


def run_suite(run: Run, suite: str, sizes, dtype, steps: int, tile_size: int, mem_sizes, mem_dtype):
    """All rows of one suite: SD 2.x phase, SDXL phase, meta counts, MUSIQ; every phase frees its models."""
    import comfy.latent_formats

    latent_format = comfy.latent_formats.SD15()  # SD 2.x's latent format
    try:
        vae = sd_phase(run, suite, sizes, dtype, steps, tile_size)
        release()
        sdxl_phase(run, suite, sizes, dtype, steps, vae)
        del vae
        release()
        if mem_sizes:
            builder = Builder(run.pack, suite, dtype)
            mem_tile = run.args.tile_size or default_tile_size(run.pack)  # the node's g_tile_size default
            run.log(f"[{suite}] counting guidance memory on the meta device at {list(mem_sizes)} px ({mem_dtype}, "
                    f"tiles {mem_tile} px)")
            guidance_memory_counted(run, suite, mem_sizes, builder, mem_dtype, mem_tile, latent_format)
            if not run.args.quick:
                run.log(f"[{suite}] checking the meta count against a measurement at {min(sizes)} px")
                check_meta_count(run, suite, builder, min(sizes), tile_size, latent_format)
            release()
        musiq_phase(run, suite, sizes)
    finally:
        release()


# --- targets, table, JSON --------------------------------------------------------------------------------------

def evaluate(rows, dev: Device):
    """Attach ratio, FLOP ratio, throughput/MFU, target and status to every row."""
    by_key = {(r["row"], r["suite"], r["size"], r["mem_method"]): r for r in rows}
    for r in rows:
        base_id = BASELINES.get(r["row"])
        base = by_key.get((base_id, r["suite"], r["size"], r["mem_method"])) if base_id else None
        r["baseline"] = base_id
        r["ratio"] = r["ms"] / base["ms"] if base and r.get("ms") and base.get("ms") else None
        r["ratio_of_min"] = r["ms_min"] / base["ms_min"] if base and r.get("ms_min") and base.get("ms_min") else None
        r["flop_ratio"] = (r["flops"] / base["flops"] if base and r.get("flops") and base.get("flops") else None)
        if r.get("flops") and r.get("ms"):
            r["tflops_per_s"] = r["flops"] / (r["ms"] / 1000.0) / 1e12
            r["mfu"] = r["tflops_per_s"] / dev.peak_tflops if dev.peak_tflops else None
        t = TARGETS.get(r["row"])
        r["target"] = dict(t) if t else None
        r["status"] = status(r, t)


def status(r, t) -> str:
    if not t or t["kind"] == "reference":
        return "n/a"
    if r["suite"] != "real":
        return "n/a (tiny configs)"
    if t.get("size") is not None and r["size"] != t["size"]:
        return f"n/a (target at {t['size']} px)"
    if t.get("dtype") is not None and r["dtype"] != t["dtype"]:
        return f"n/a (target in {t['dtype']})"
    if t["kind"] == "ratio":
        value = r.get("ratio")
    elif t["kind"] == "bytes":
        value = r.get("peak_bytes")
    else:
        value = r["ms"] / 1000.0 if r.get("ms") else None
    if value is None:
        return "n/a"
    return "pass" if value <= t["max"] else "fail"


def fmt_bytes(n):
    if n is None:
        return "-"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def fmt_flops(n):
    if not n:
        return "-"
    return f"{n / 1e12:.3f} TFLOP" if n >= 1e11 else f"{n / 1e9:.2f} GFLOP"


def table(rows, cuda: bool) -> str:
    head = ["row", "suite", "px", "dtype", "ms/step", "ratio", "FLOP ratio", "target", "status", "FLOPs",
            "MFU" if cuda else "TFLOP/s", "peak mem", "memory method"]
    lines = []
    for r in rows:
        ms = r.get("ms") if r.get("ms") is not None else r.get("ms_grad")
        perf = r.get("mfu") if cuda else r.get("tflops_per_s")
        lines.append([
            r["label"], r["suite"], str(r["size"]), r["dtype"].replace("float", "fp").replace("bfp16", "bf16"),
            f"{ms:.1f}" + ("*" if r.get("ms") is None and ms is not None else "") if ms is not None else "-",
            f"{r['ratio']:.2f}x" if r.get("ratio") else "-",
            f"{r['flop_ratio']:.2f}x" if r.get("flop_ratio") else "-",
            r["target"]["text"] if r.get("target") else "-", r["status"], fmt_flops(r.get("flops")),
            ("-" if perf is None else (f"{perf:.1%}" if cuda else f"{perf:.3f}")),
            fmt_bytes(r.get("peak_bytes")), r["mem_method"]])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join(out)


# --- entry points ----------------------------------------------------------------------------------------------

def default_sizes(suite: str, cuda: bool):
    if suite == "tiny":
        return [256]
    return [512, 1024, 2048] if cuda else [256]


def run_one_suite(run: Run, suite: str, args):
    dev = run.dev
    sizes = args.size or default_sizes(suite, dev.cuda)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if dev.cuda else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    steps = args.steps or (2 if args.quick else 3 if not dev.cuda else 6)
    run.rounds = args.rounds or (1 if args.quick else 2)
    tile = args.tile_size or (128 if suite == "tiny" or not dev.cuda else default_tile_size(run.pack))
    if args.mem_size is not None:
        mem_sizes = args.mem_size
    elif args.quick:
        mem_sizes = [max(sizes)]
    else:
        mem_sizes = [1024, 2048] if suite == "real" else [512]
    run.log(f"== suite {suite}: sizes {sizes}, {dtype}, {run.rounds} x {steps} steps per row, device {dev.name}")
    if suite == "real" and not dev.cuda and args.only != "hypir":
        run.skip("diffbir_50_steps", suite, 512, "a GPU target (512 px, bf16): runs only on CUDA")
    if args.only != "hypir":
        run_suite(run, suite, sizes, dtype, steps, tile, mem_sizes, getattr(torch, args.mem_dtype))
    if args.only == "hypir" or not args.quick:  # 50 whole sampling runs: not in the quick smoke run
        try:
            hypir_phase(run, suite, sizes, dtype)
        finally:
            release()


def run_benchmark(host, args) -> dict:
    """Run the benchmark in a process where ``host`` (tests/support/comfy_host.InProcessHost) is up."""
    pack = Pack(host)
    dev = Device()
    run = Run(args, dev, pack)
    suites = ["tiny", "real"] if args.suite == "all" else [args.suite]
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        with torch.random.fork_rng(devices=[dev.torch_device] if dev.cuda else []):
            for suite in suites:
                run_one_suite(run, suite, args)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    evaluate(run.rows, dev)
    from tests.support.comfy_host import comfyui_path

    comfy_version = (comfyui_path() / "comfyui_version.py").read_text().split('"')[1]
    return {
        "command": " ".join(["python", "scripts/benchmark.py", *args.argv]),
        "device": dev.name, "cuda": dev.cuda, "peak_tflops_bf16": dev.peak_tflops,
        "torch": torch.__version__, "comfyui": comfy_version, "threads": used_threads,
        "cpu_count": os.cpu_count(), "sampler": SAMPLER, "cfg": CFG, "seconds": time.perf_counter() - t0,
        "parameters": run.params, "rows": run.rows, "skipped": run.skipped, "checks": run.checks,
        "gpu_measured": dev.cuda,
        "note": (f"CUDA run on {dev.name}" if dev.cuda else
                 "CPU run: no GPU figures (512/1024/2048 px, bf16, MFU, the 50-step target); they are pending a run "
                 "on a GPU (python scripts/benchmark.py on a machine with CUDA)"),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=["tiny", "real", "all"], default=None,
                   help="tiny configs, real architectures (random weights), or both (default: all on CPU, real on "
                        "CUDA)")
    p.add_argument("--size", type=int, nargs="+", help="image sizes in px (multiples of 64)")
    p.add_argument("--steps", type=int, help="sampling steps per timing run (the first is dropped as warm-up)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds over the rows of one size")
    p.add_argument("--tile-size", type=int, help="tile size in px for tiled guidance")
    p.add_argument("--mem-size", type=int, nargs="*", help="sizes (px) for the meta-device guidance memory count")
    p.add_argument("--mem-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=str(REPO / "test-artifacts" / "benchmark.json"),
                   help="where to write the results (default: test-artifacts/benchmark.json, git-ignored)")
    p.add_argument("--quick", action="store_true",
                   help="one round of 2 steps, fewer repeats, meta count at the run size only, no meta-count check")
    p.add_argument("--only", default="all", choices=["all", "hypir"],
                   help="hypir: only HYPIR's one step vs DiffBIR's 50 steps (whole sampling, same size, one run)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's default)")
    p.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for s in args.size or []:
        if s % 64:
            p.error(f"--size: expected multiples of 64 px, found {s}")
    return args


def report(result: dict, json_path) -> str:
    """The table and notes as printed, and the JSON written to ``json_path``."""
    legend = ("ms/step: median per sampling step (CFG: one batch-2 UNet call); * = ms per guidance gradient; "
              "MUSIQ: ms per image. ratio = ms over the baseline row's ms (same size, same run); FLOP ratio likewise.")
    lines = [table(result["rows"], result["cuda"]), legend]
    lines += [f"skipped: {s['row']} ({s['suite']}, {s['size']} px): {s['reason']}" for s in result["skipped"]]
    lines += [f"check: {c['what']} ({c['mode']}, {c['size']} px, {c['dtype']}): counted {fmt_bytes(c['counted_bytes'])}"
              f", measured {fmt_bytes(c['measured_bytes'])} ({c['measure']})" for c in result["checks"]]
    lines.append(result["note"])
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=1, default=str))
    lines.append(f"wrote {json_path} ({result['seconds']:.0f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.suite is None:
        args.suite = "real" if device == "cuda" else "all"
    with tempfile.TemporaryDirectory(prefix="adaptbir-bench-") as tmp:
        host = start_host(device, Path(tmp))
        logging.getLogger().setLevel(logging.WARNING)
        result = run_benchmark(host, args)
    print(report(result, args.json))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

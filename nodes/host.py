"""The seam between the pack and the ComfyUI versions it runs on: schema fields, patcher classes and weight access.

Every difference is detected by feature (an attribute, a parameter), never by a version string, and only here.
Tested on ComfyUI 0.3.75 and 0.12.1 (scripts/test.sh runs the host-dependent tests on both).

Patcher classes. Newer ComfyUI holds core models in ``comfy.model_patcher.CoreModelPatcher``: plain
``ModelPatcher`` by default, ``ModelPatcherDynamic`` once ``main.py`` enables ``--fast dynamic_vram`` on a GPU
(weights stay on the offload device and every ``comfy.ops`` layer streams its weights per call through a
comfy_aimdo allocation, ``_v``, kept on the module; on a CPU load device it falls back to ``ModelPatcher``).
On a CPU, ``--fast dynamic_vram`` gives no dynamic patcher: ``main.py`` asks comfy_aimdo for device ``None``
(checked on 0.12.1: with comfy-aimdo 0.6.0, the index's newest, ComfyUI stops at start-up with a TypeError
there; an aimdo that answers False falls back to ``ModelPatcher``), so the tests build a
``ModelPatcherDynamic`` object directly.
Code that reads a core model's weights must therefore neither assume they are on the load device with patches
written in place nor deep-copy modules (which would copy those allocations and weight functions).
:func:`patched_weights` reads them through ComfyUI's own ``get_key_patches`` + ``comfy.lora.calculate_weight``
and :func:`plain_module_copy` copies a module's structure without tensors or patcher state.

The pack's own patchers stay ``ModelPatcher`` on every host (decision per network, 2026-12):

* MUSIQ (pyiqa) and SwinIR: plain torch layers (pyiqa's; ``modules/`` is pure torch). A dynamic patcher moves
  only ``comfy.ops`` layers and parameters read through ``comfy.model_management.cast_to``; plain layers would
  keep their weights on the CPU while the input is on the GPU. Never ``CoreModelPatcher``.
* IRControlNet, CSFT, SUPIR adapter: built with ComfyUI's ops (``pick_operations`` / ``manual_cast``), like core's
  ControlNet, which newer hosts hold in ``CoreModelPatcher``. They stay ``ModelPatcher`` until the dynamic-VRAM
  path has run on a GPU (issue 23's check): ``ModelPatcherDynamic`` rejects ``patch_model(load_weights=True)``,
  forced patching and weight hooks, and the same network must never be held by both kinds; a legacy patcher
  next to dynamic core models is supported by ComfyUI's model management. :func:`core_patcher_class` is the one
  switch to use when that check passes.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

# Per-module state ComfyUI's patchers attach to comfy.ops layers (lowvram weight functions, dynamic VRAM
# allocations and signatures, the saved cast flag). A copy made by plain_module_copy carries none of it.
PATCHER_MODULE_STATE = ("weight_function", "bias_function", "weight_lowvram_function", "bias_lowvram_function",
                        "_v", "_v_signature", "prev_comfy_cast_weights", "comfy_patched_weights")
_ATOMIC = (bool, int, float, str, bytes, type(None))


def search_aliases(words) -> dict:
    """``{"search_aliases": [...]}`` for ``io.Schema(**...)`` where the host's V3 schema has that field (newer
    ComfyUI: node search also matches these words), else ``{}`` (ComfyUI 0.3.75 has no such field and would
    refuse the argument)."""
    from comfy_api.latest import io

    fields = {f.name for f in dataclasses.fields(io.Schema)} if dataclasses.is_dataclass(io.Schema) else set()
    return {"search_aliases": list(words)} if "search_aliases" in fields else {}


def core_patcher_class():
    """The class the host uses for core models' patchers: ``CoreModelPatcher`` where it exists (read at call time:
    ``main.py`` swaps it at start-up), else ``ModelPatcher``."""
    import comfy.model_patcher as mp

    return getattr(mp, "CoreModelPatcher", mp.ModelPatcher)


def is_dynamic(patcher) -> bool:
    """True when ``patcher`` streams its weights (dynamic VRAM); False on hosts without the notion."""
    fn = getattr(patcher, "is_dynamic", None)
    return bool(fn()) if callable(fn) else False


def patched_weights(patcher, prefixes, device, dtype: torch.dtype) -> dict:
    """The state of ``patcher.model`` under ``prefixes`` (keys as in ``patcher.model.state_dict()``), with the
    patcher's weight patches applied once, as new normal (non-inference) tensors on ``device``; floating tensors in
    ``dtype``, others keep theirs.

    Reads through ComfyUI's ``get_key_patches`` (the unpatched weight, from the patcher's backup when it wrote
    patches in place, and the patch list) and ``comfy.lora.calculate_weight`` (float32 arithmetic), the calls core
    uses to merge and save models. So it is right for a model that is not loaded, fully loaded with patches written
    in place, partly loaded (lowvram weight functions) or held by a dynamic patcher, and it loads nothing.
    """
    import comfy.lora

    out = {}
    with torch.inference_mode(False):
        for prefix in prefixes:
            for key, entries in patcher.get_key_patches(prefix).items():
                (weight, convert), patches = entries[0], entries[1:]
                if not weight.is_floating_point():
                    out[key] = weight.detach().to(device=device, copy=True)
                    continue
                w = weight.detach().to(device=device, dtype=torch.float32, copy=True)
                w = convert(w, inplace=True)
                if patches:
                    w = comfy.lora.calculate_weight(patches, w, key)
                out[key] = w.to(dtype=dtype)
    return out


def plain_module_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s structure (same classes and configuration) whose parameters and buffers are
    meta-device placeholders, without the state patchers attach (see ``PATCHER_MODULE_STATE``) and with
    ``comfy_cast_weights`` off, so each ``comfy.ops`` layer runs as the plain torch layer on the weights it is given.
    Fill it with ``load_state_dict(..., assign=True)``. ``module`` is not changed and no tensor data is copied."""
    memo = {}
    for m in module.modules():
        for name, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None:
                meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
                memo[id(t)] = torch.nn.Parameter(meta, requires_grad=False) if name in m._parameters else meta
        for name in PATCHER_MODULE_STATE:
            value = m.__dict__.get(name)
            if name in m.__dict__ and not isinstance(value, _ATOMIC):
                memo[id(value)] = None  # never copied: weight functions hold the patch lists, _v the allocation
    out = copy.deepcopy(module, memo)
    for m in out.modules():
        for name in PATCHER_MODULE_STATE:
            m.__dict__.pop(name, None)
        if hasattr(m, "comfy_cast_weights"):
            m.comfy_cast_weights = False
    return out

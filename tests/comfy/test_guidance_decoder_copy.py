"""The guidance decoder copy from whatever patcher class holds the VAE and however it is loaded: ComfyUI's
ModelPatcher not loaded, fully loaded (patches written in place), partly loaded (lowvram weight functions), and
the dynamic-VRAM ModelPatcherDynamic where the host has it (0.12.1). The copy must carry the VAE's weight patches
exactly once, none of the patcher's per-module state, and leave the VAE as it was."""

import pytest
import torch

PATCHED = "decoder.conv_out.weight"
STATES = ["unloaded", "loaded", "lowvram", "dynamic"]


class _Allocation:
    """Stands in for the comfy_aimdo allocation (``_v``) a dynamic patcher keeps on each layer on a GPU: it cannot
    be copied, so a copy that deep-copies the VAE's modules fails."""

    def __deepcopy__(self, memo):
        raise AssertionError("the decoder copy deep-copied a dynamic VRAM allocation")

    def __reduce_ex__(self, protocol):
        raise AssertionError("the decoder copy copied a dynamic VRAM allocation")


def delta_for(vae) -> torch.Tensor:
    w = vae.first_stage_model.decoder.conv_out.weight
    return torch.randn(w.shape, generator=torch.Generator().manual_seed(7)) * 0.05


def held_vae(tiny, state):
    """The tiny VAE with a weight patch on decoder.conv_out, its patcher in ``state``."""
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    cpu = torch.device("cpu")
    vae = tiny.tiny_vae(0)
    if state == "dynamic":
        if not hasattr(mp, "ModelPatcherDynamic"):
            pytest.skip("this host has no ModelPatcherDynamic (dynamic VRAM came after ComfyUI 0.3.75)")
        # ModelPatcherDynamic.__new__ hands CPU load devices a ModelPatcher; build the GPU kind of object here
        patcher = object.__new__(mp.ModelPatcherDynamic)
        patcher.__init__(vae.first_stage_model, load_device=cpu, offload_device=cpu)
        vae.patcher = patcher
    vae.patcher.add_patches({PATCHED: ("diff", (delta_for(vae),))}, 1.0)
    conv_out = vae.first_stage_model.decoder.conv_out
    if state == "loaded":
        mm.load_models_gpu([vae.patcher])
        assert PATCHED in vae.patcher.backup  # the patch is written into the weight itself
    elif state == "lowvram":
        vae.patcher.load(cpu, lowvram_model_memory=1)
        assert conv_out.comfy_cast_weights and (conv_out.weight_function or
                                                getattr(conv_out, "weight_lowvram_function", None))
    elif state == "dynamic":
        vae.patcher.load(cpu)
        assert vae.patcher.is_dynamic() and conv_out.comfy_cast_weights
        for m in vae.first_stage_model.modules():
            if hasattr(m, "comfy_cast_weights"):
                m._v = _Allocation()
    return vae


def reference(tiny, z):
    """The decoder with the patch added by hand to a fresh copy of the seeded weights."""
    fsm = tiny.tiny_vae(0).first_stage_model
    with torch.no_grad():
        fsm.decoder.conv_out.weight += delta_for(tiny.tiny_vae(0))
        return fsm.decoder(fsm.post_quant_conv(z))


@pytest.mark.parametrize("state", STATES)
def test_decoder_copy_has_the_patch_once_and_no_patcher_state(pack, tiny, state):
    gm, host_mod = pack("nodes.guidance"), pack("nodes.host")
    vae = held_vae(tiny, state)
    before = {k: v.detach().clone() for k, v in vae.first_stage_model.state_dict().items()}
    z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # as inside a ComfyUI prompt
        dec = gm.grad_capable_decoder(vae, torch.device("cpu"), torch.float32)
    seeded = tiny.tiny_vae(0).first_stage_model.decoder.conv_out.weight
    assert torch.allclose(dec.decoder.conv_out.weight, seeded + delta_for(vae), atol=1e-6)
    x = z.clone().requires_grad_(True)
    out = dec(x)
    assert torch.allclose(out, reference(tiny, z), atol=1e-5)
    out.square().mean().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    vae_ptrs = {t.data_ptr() for t in vae.first_stage_model.state_dict().values()}
    for m in dec.modules():
        assert not set(host_mod.PATCHER_MODULE_STATE) & set(m.__dict__), type(m).__name__
        assert not getattr(m, "comfy_cast_weights", False)
    for q in dec.parameters():
        assert not q.requires_grad and not q.is_inference() and q.data_ptr() not in vae_ptrs
    after = vae.first_stage_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the VAE is as it was
    assert PATCHED in vae.patcher.patches


def test_copy_in_bf16_and_checkpointed_shares_its_weights(pack, tiny):
    gm = pack("nodes.guidance")
    vae = held_vae(tiny, "unloaded")
    dec = gm.grad_capable_decoder(vae, torch.device("cpu"), torch.bfloat16)
    assert {q.dtype for q in dec.parameters()} == {torch.bfloat16}
    ck = gm.checkpointed_copy(dec)
    assert {q.data_ptr() for q in ck.parameters()} == {q.data_ptr() for q in dec.parameters()}


def test_plain_module_copy_copies_no_tensor_data(pack, tiny):
    host_mod = pack("nodes.host")
    fsm = tiny.tiny_vae(0).first_stage_model
    out = host_mod.plain_module_copy(fsm.decoder)
    assert all(t.is_meta for t in list(out.parameters()) + list(out.buffers()))
    assert [n for n, _ in out.named_parameters()] == [n for n, _ in fsm.decoder.named_parameters()]
    assert type(out) is type(fsm.decoder) and out is not fsm.decoder
    assert not any(t.is_meta for t in fsm.decoder.parameters())

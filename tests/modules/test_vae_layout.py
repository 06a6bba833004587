"""Restoration encoder extraction: the key layouts of full-size AdaptBIR / SUPIR checkpoints (meta tensors, built
from ComfyUI's own AutoencoderKL with the SD KL-f8 config) become exactly ComfyUI's VAE layout; foreign weights,
missing parts and mismatched latent spaces are refused with messages that say why."""

import pytest
import torch

from modules.vae_layout import kl_vae_config, restoration_vae_state_dict

SD_KL = {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}


def kl_config(z=4, embed=None):
    cfg = {"embed_dim": embed or z, "ddconfig": dict(SD_KL["ddconfig"])}
    cfg["ddconfig"]["z_channels"] = z
    return cfg


def meta_autoencoder(cfg=SD_KL):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(**cfg)


def meta_vae_sd(cfg=SD_KL) -> dict:
    """A fresh set of meta tensors (distinct objects per call) with the KL VAE's keys and shapes."""
    return dict(meta_autoencoder(cfg).state_dict())


def prefixed(prefix: str, sd: dict, only: str = "") -> dict:
    return {f"{prefix}{k[len(only):]}": v for k, v in sd.items() if k.startswith(only)}


def junk(sdxl=False) -> dict:
    m = "meta"
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3, device=m),
          "control_model.input_blocks.0.0.weight": torch.empty(320, 8, 3, 3, device=m),
          "control_model.zero_convs.0.0.weight": torch.empty(320, 320, 1, 1, device=m),
          "cond_stage_model.model.positional_embedding": torch.empty(77, 1024, device=m),
          "musiq_model.conv_root.weight": torch.empty(64, 3, 7, 7, device=m)}
    if sdxl:
        sd = {"model.diffusion_model.label_emb.0.0.weight": torch.empty(1280, 2816, device=m),
              "model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3, device=m),
              "model.control_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3, device=m),
              "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.empty(768, device=m)}
    return sd


@pytest.fixture(scope="module")
def layout(host):
    """Keys and shapes of ComfyUI's SD KL-f8 AutoencoderKL (the target of every extraction)."""
    sd = meta_vae_sd()
    return {k: tuple(v.shape) for k, v in sd.items()}


def assert_vae_layout(out: dict, layout: dict):
    assert set(out) == set(layout)
    assert {k: tuple(v.shape) for k, v in out.items()} == layout
    net = meta_autoencoder()
    net.load_state_dict(out, strict=True, assign=True)  # raises on any missing, unexpected or mis-shaped key


def test_target_layout_is_the_sd_kl_f8_vae(layout):
    assert layout["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert layout["encoder.conv_out.weight"] == (8, 512, 3, 3)
    assert layout["quant_conv.weight"] == (8, 8, 1, 1) and layout["post_quant_conv.weight"] == (4, 4, 1, 1)
    assert layout["decoder.conv_in.weight"] == (512, 4, 3, 3) and layout["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert all(k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv") for k in layout)
    assert kl_vae_config(meta_vae_sd()) == SD_KL


def test_adaptbir_lightning_checkpoint(layout):
    pre, fsm = meta_vae_sd(), meta_vae_sd()
    inner = {**prefixed("preprocess_model.", pre), **prefixed("first_stage_model.", fsm), **junk()}
    wrapped = {"state_dict": {f"module.{k}": v for k, v in inner.items()}}
    out, found = restoration_vae_state_dict(wrapped)
    assert_vae_layout(out, layout)
    assert "AdaptBIR restoration encoder (preprocess_model.encoder)" in found
    assert "quant_conv, post_quant_conv and decoder from first_stage_model" in found
    # the restoration encoder is the stage-1 one; everything after it is the SD VAE's (AdaptBIR's E_R); no copies
    assert all(out[k] is pre[k] for k in out if k.startswith("encoder."))
    assert all(out[k] is fsm[k] for k in out if not k.startswith("encoder."))


def test_adaptbir_checkpoint_with_denoise_encoder_and_without_sd_vae(layout):
    pre, den = meta_vae_sd(), meta_vae_sd()
    sd = {**prefixed("preprocess_model.", pre), **prefixed("denoise_encoder.", den, "encoder."), **junk()}
    out, found = restoration_vae_state_dict(sd)
    assert_vae_layout(out, layout)
    assert found.startswith("AdaptBIR denoise_encoder") and "from preprocess_model" in found
    assert all(out[k] is den[k] for k in out if k.startswith("encoder."))
    assert all(out[k] is pre[k] for k in out if not k.startswith("encoder."))


def test_denoise_encoder_only_with_the_connected_vae(layout):
    den, base = meta_vae_sd(), meta_vae_sd()
    out, found = restoration_vae_state_dict(prefixed("denoise_encoder.", den, "encoder."), base=base)
    assert_vae_layout(out, layout)
    assert found == "AdaptBIR denoise_encoder; quant_conv, post_quant_conv and decoder from the connected VAE"
    assert all(out[k] is den[k] for k in out if k.startswith("encoder."))
    assert all(out[k] is base[k] for k in out if not k.startswith("encoder."))


def test_supir_checkpoint(layout):
    fsm, den, base = meta_vae_sd(), meta_vae_sd(), meta_vae_sd()
    sd = {**prefixed("first_stage_model.", fsm), **prefixed("first_stage_model.denoise_encoder.", den, "encoder."),
          **junk(sdxl=True)}
    out, found = restoration_vae_state_dict(sd, base=base)  # the file's own parts win over the connected VAE
    assert_vae_layout(out, layout)
    assert found.startswith("SUPIR denoise_encoder") and "from first_stage_model" in found
    assert all(out[k] is den[k] for k in out if k.startswith("encoder."))  # not the SDXL VAE's own encoder
    assert all(out[k] is fsm[k] for k in out if not k.startswith("encoder."))


def test_parts_are_taken_one_by_one(layout):
    # a file with the SD VAE's quant convs only: the decoder comes from the stage-1 VAE
    pre, fsm = meta_vae_sd(), meta_vae_sd()
    sd = {**prefixed("preprocess_model.", pre), **prefixed("first_stage_model.quant_conv.", fsm, "quant_conv."),
          **prefixed("first_stage_model.post_quant_conv.", fsm, "post_quant_conv.")}
    out, found = restoration_vae_state_dict(sd)
    assert_vae_layout(out, layout)
    assert out["quant_conv.weight"] is fsm["quant_conv.weight"] and out["decoder.conv_in.weight"] is pre[
        "decoder.conv_in.weight"]
    assert "quant_conv and post_quant_conv from first_stage_model; decoder from preprocess_model" in found


def test_real_tensors_are_returned_as_they_are(host):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from tests.comfy_test_nodes.tiny import VAE_CONFIG

    torch.manual_seed(0)
    sd = AutoencoderKL(**VAE_CONFIG).state_dict()
    out, _ = restoration_vae_state_dict(prefixed("denoise_encoder.", sd, "encoder."), base=sd)
    assert all(out[k] is sd[k] for k in out) and set(out) == set(sd)
    assert kl_vae_config(out) == VAE_CONFIG


@pytest.mark.parametrize("kind,needle", [
    ("swinir", "found a DiffBIR stage-1 SwinIR restorer"),
    ("controlnet", "found a full DiffBIR/AdaptBIR checkpoint"),
    ("plain_vae", "found a VAE .* load it with ComfyUI's Load VAE"),
    ("empty", "found no tensors"),
])
def test_weights_without_a_restoration_encoder_are_refused(host, kind, needle):
    m = "meta"
    if kind == "swinir":
        sd = {"conv_first.1.weight": torch.empty(180, 192, 3, 3, device=m),
              "layers.0.residual_group.blocks.0.norm1.weight": torch.empty(180, device=m)}
    elif kind == "controlnet":
        sd = {"state_dict": {"module.control_model.zero_convs.0.0.weight": torch.empty(320, 320, 1, 1, device=m),
                             **prefixed("module.preprocess_model.", {
                                 "conv_first.1.weight": torch.empty(180, 192, 3, 3, device=m)})}}
    elif kind == "plain_vae":
        sd = meta_vae_sd()
    else:
        sd = {}
    with pytest.raises(ValueError, match=f"expected a restoration encoder .*{needle}"):
        restoration_vae_state_dict(sd)


def test_encoder_only_without_the_vae_names_the_missing_parts(host):
    sd = prefixed("denoise_encoder.", meta_vae_sd(), "encoder.")
    with pytest.raises(ValueError, match=r"AdaptBIR denoise_encoder but no quant_conv, post_quant_conv and "
                                         r"decoder in the file.*to the vae input"):
        restoration_vae_state_dict(sd)
    # a connected VAE without quant convs (e.g. a VAE ComfyUI built without them) cannot complete it either
    base = {k: v for k, v in meta_vae_sd().items() if "quant_conv" not in k}
    with pytest.raises(ValueError, match=r"no quant_conv and post_quant_conv, neither in the file nor in the VAE"):
        restoration_vae_state_dict(sd, base=base)


def test_truncated_encoder_is_refused(host):
    sd = {k: v for k, v in prefixed("denoise_encoder.", meta_vae_sd(), "encoder.").items()
          if not k.startswith("denoise_encoder.conv_out.")}
    with pytest.raises(ValueError, match="lacks encoder.conv_out.weight"):
        restoration_vae_state_dict(sd, base=meta_vae_sd())


def test_mismatched_latent_channels_are_refused(host):
    # a 4-channel SD restoration encoder next to a 16-channel VAE (SD3/Flux-like latent space)
    den = prefixed("first_stage_model.denoise_encoder.", meta_vae_sd(), "encoder.")
    wide = prefixed("first_stage_model.", meta_vae_sd(kl_config(16)))
    with pytest.raises(ValueError, match=r"the encoder outputs 8 channels .* 2 x 16 = 32 were expected.*"
                                         r"quant_conv takes 32 channels"):
        restoration_vae_state_dict({**wide, **den})
    # the same through the connected VAE
    with pytest.raises(ValueError, match=r"latent space .*decoder takes 16 latent channels"):
        restoration_vae_state_dict(prefixed("denoise_encoder.", meta_vae_sd(), "encoder."),
                                   base=meta_vae_sd(kl_config(16)))
    # quant convs that disagree with each other (embed_dim 4 vs 8)
    sd = {**prefixed("preprocess_model.", meta_vae_sd()),
          **prefixed("first_stage_model.post_quant_conv.", meta_vae_sd(kl_config(4, embed=8)), "post_quant_conv.")}
    with pytest.raises(ValueError, match=r"quant_conv outputs 8 channels .* post_quant_conv takes 8, so 2 x 8 = 16"):
        restoration_vae_state_dict(sd)

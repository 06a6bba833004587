"""Robustness at size: odd sizes round-trip exactly, small images are upscaled like DiffBIR and scaled back.

Pure checks on modules/image_ops.py first, then Dual Encoder Interpolate -> VAE Decode -> Crop To Original graphs
through ComfyUI's executor with the tiny VAEs (only a few 512-px cases: they cost seconds each).
"""

import pytest
import torch
import torch.nn.functional as F

from modules.image_ops import (
    check_resized_size,
    pad_to_multiple,
    resize_bchw,
    restore_size_bhwc,
    short_side_size,
)
from tests.comfy.conftest import image_node, sample_images
from tests.support.comfy_host import ExecutionFailed

R_SEED, I_SEED = 11, 22
SENTINEL = 7.0  # a value no real pixel has: written into the padding to prove the crop removes exactly it


def rand_image(b, h, w, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def reference_resize_bhwc(image, h, w):
    """What the pack must do, written out independently: bicubic, antialiased, clamped, on (B,H,W,C)."""
    x = F.interpolate(image.permute(0, 3, 1, 2).float(), size=(h, w), mode="bicubic", align_corners=False,
                      antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


# --- modules/image_ops.py -------------------------------------------------------------------------------------

SIZES = [1, 2, 7, 8, 9, 31, 63, 64, 65, 100, 127, 128, 130]


@pytest.mark.parametrize("multiple", [8, 64])
def test_pad_then_crop_returns_the_very_same_pixels(multiple):
    """For every size, the pad is the smallest one reaching the multiple and the crop removes exactly it."""
    for i, h in enumerate(SIZES):
        for j, w in enumerate(SIZES[::-1]):
            c = (1, 3, 4)[(i + j) % 3]
            x = rand_image(2, h, w, c, seed=i * 100 + j)
            padded, (pb, pr) = pad_to_multiple(x.permute(0, 3, 1, 2), multiple)
            assert padded.shape[-2:] == (h + pb, w + pr) and 0 <= pb < multiple and 0 <= pr < multiple
            assert (h + pb) % multiple == 0 and (w + pr) % multiple == 0
            marked = padded.permute(0, 2, 3, 1).clone()
            marked[:, h:] = SENTINEL
            marked[:, :, w:] = SENTINEL
            for out in (restore_size_bhwc(marked, h, w, h, w), restore_size_bhwc(marked, h, w)):  # new, old record
                assert out.shape == x.shape and torch.equal(out, x), (h, w, multiple)


@pytest.mark.parametrize("size,min_side,want", [
    ((1, 1), 0, (512, 512)),
    ((7, 9), 0, (512, 658)),  # 9 * 512 / 7 = 658.3
    ((9, 7), 0, (658, 512)),
    ((63, 65), 0, (512, 528)),  # 65 * 512 / 63 = 528.25
    ((3, 2), 0, (768, 512)),
    ((5, 7), 0, (512, 717)),  # 716.8: rounded to the nearest pixel
    ((2, 3), 100, (512, 768)),  # the small-image rule wins over a smaller min_side
    ((10, 30), 600, (600, 1800)),  # ... and a larger min_side over it
    ((64, 64), 0, (64, 64)),  # 64 px is enough: untouched
    ((65, 130), 0, (65, 130)),
    ((65, 130), 96, (96, 192)),
    ((130, 65), 96, (192, 96)),
    ((64, 100), 80, (80, 125)),
    ((96, 97), 96, (96, 97)),  # already at min_side
    ((200, 300), 96, (200, 300)),  # never made smaller
    ((4, 6), 0, (512, 768)),
    ((2, 5), 0, (512, 1280)),  # 2.5 x 512 exactly
    ((4, 5), 0, (512, 640)),
    ((6, 5), 0, (614, 512)),  # 614.4
    ((8, 3), 0, (1365, 512)),  # 1365.33
])
def test_short_side_size(size, min_side, want):
    assert short_side_size(*size, min_side) == want


def test_long_side_rounds_half_up():
    assert short_side_size(64, 67, 96) == (96, 101)  # 100.5 -> 101 (not to even)
    assert short_side_size(67, 64, 96) == (101, 96)
    assert short_side_size(64, 65, 96) == (96, 98)  # 97.5 -> 98


@pytest.mark.parametrize("h,w", [(1, 300), (8, 200), (200, 8), (1, 17), (40, 1000)])
def test_too_thin_sizes_are_refused(h, w):
    nh, nw = short_side_size(h, w, 0)
    assert max(nh, nw) > 8192
    with pytest.raises(ValueError, match=rf"found {w}x{h} \(width x height\), which would become {nw}x{nh}"):
        check_resized_size(h, w, nh, nw)


def test_long_side_of_exactly_8192_is_accepted():
    assert short_side_size(1, 16, 0) == (512, 8192)
    check_resized_size(1, 16, 512, 8192)


@pytest.mark.parametrize("c", [1, 3, 4])
def test_resize_back_keeps_batch_and_channels(c):
    x = rand_image(3, 40, 52, c, seed=c)
    out = restore_size_bhwc(x, 9, 11, 37, 50)
    assert out.shape == (3, 9, 11, c)
    assert torch.equal(out, reference_resize_bhwc(x[:, :37, :50], 9, 11))
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # each channel is resized on its own: the alpha plane comes back as the resized alpha plane
    assert torch.equal(out[..., -1:], reference_resize_bhwc(x[:, :37, :50, -1:], 9, 11))


def test_resize_is_antialiased_and_clamped():
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    small = resize_bchw(x, 8, 10)
    aa = F.interpolate(x, size=(8, 10), mode="bicubic", align_corners=False, antialias=True)
    plain = F.interpolate(x, size=(8, 10), mode="bicubic", align_corners=False)
    assert torch.equal(small, aa.clamp(0, 1)) and not torch.allclose(small, plain.clamp(0, 1), atol=1e-3)
    # antialiasing averages noise away when shrinking by 8: far less spread than point-sampling bicubic
    assert float(small.std()) < 0.5 * float(plain.std())
    # a sharp edge upscaled overshoots with bicubic: the result is clamped to [0, 1]
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1.0
    raw = F.interpolate(edge, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    assert float(raw.min()) < 0 or float(raw.max()) > 1
    up = resize_bchw(edge, 32, 32)
    assert torch.equal(up, raw.clamp(0, 1))
    # no resize asked: the very same tensor back
    assert resize_bchw(x, 64, 80) is x


# --- graphs -----------------------------------------------------------------------------------------------------


def add_branch(p, tiny, key, image, pad_multiple=64, min_side=None, k=0.0):
    """Image -> Dual Encoder Interpolate -> VAE Decode (internal VAE) -> Crop To Original (from the latent) and
    Crop To Original (from the condition), under node ids ``key``0..``key``5."""
    p[f"{key}0"] = image_node(tiny, f"sizes_{key}", image)
    dual = {"image": [f"{key}0", 0], "restoration_vae": ["r", 0], "internal_vae": ["i", 0], "k": k,
            "pad_multiple": pad_multiple, "tile_size": 0}
    if min_side is not None:
        dual["min_side"] = min_side
    p[f"{key}1"] = {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": dual}
    p[f"{key}2"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{key}1", 0], "vae": ["i", 0]}}
    p[f"{key}3"] = {"class_type": "AdaptBIR_CropToOriginal",
                    "inputs": {"image": [f"{key}2", 0], "latent": [f"{key}1", 0]}}
    p[f"{key}4"] = {"class_type": "AdaptBIR_CropToOriginal",
                    "inputs": {"image": [f"{key}2", 0], "condition": [f"{key}1", 1]}}
    p[f"{key}5"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": [f"{key}3", 0]}}
    p[f"{key}6"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": [f"{key}4", 0]}}


def vaes():
    return {"r": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": R_SEED, "latent_channels": 4}},
            "i": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": I_SEED, "latent_channels": 4}}}


def branch(host, ex, key):
    """(latent, condition, decoded, cropped via latent, cropped via condition) of a branch."""
    return (host.output(ex, f"{key}1", 0), host.output(ex, f"{key}1", 1), host.output(ex, f"{key}2", 0),
            host.output(ex, f"{key}3", 0), host.output(ex, f"{key}4", 0))


def encode_direct(tiny, seed, bchw, multiple=64):
    x, _ = pad_to_multiple(bchw, multiple)
    return tiny.tiny_vae(seed).encode(x.permute(0, 2, 3, 1)).float()


ODD = [("a", (65, 130), 64), ("b", (67, 201), 64), ("c", (65, 130), 8), ("d", (64, 71), 8), ("e", (129, 64), 64)]


def test_odd_sizes_come_back_at_exactly_their_size(host, tiny):
    """No resize (every side >= 64): the latent is the padded image's, the crop removes exactly the padding."""
    p = vaes()
    images = {}
    for key, (h, w), m in ODD:
        images[key] = rand_image(2, h, w, seed=h * w + m)
        add_branch(p, tiny, key, images[key], pad_multiple=m)
    ex = host.run(p)
    for key, (h, w), m in ODD:
        lat, cond, decoded, out, out_c = branch(host, ex, key)
        ph, pw = h + (-h) % m, w + (-w) % m
        assert lat["samples"].shape == (2, 4, ph // 8, pw // 8) and decoded.shape == (2, ph, pw, 3)
        assert torch.equal(lat["samples"], encode_direct(tiny, R_SEED, images[key].permute(0, 3, 1, 2), m))
        assert out.shape == (2, h, w, 3) and torch.equal(out, decoded[:, :h, :w]) and torch.equal(out, out_c)
        record = {"height": h, "width": w, "pad_bottom": ph - h, "pad_right": pw - w, "resized_height": h,
                  "resized_width": w}
        assert lat["adaptbir_crop"] == record and cond["crop"] == record


def test_min_side_0_is_the_previous_behaviour_bit_for_bit(host, tiny):
    """min_side 0, min_side left out (a workflow saved before it existed) and min_side below the short side give
    the same latent, bit for bit, as encoding the padded image directly."""
    image = sample_images(2, 70, 90)
    p = vaes()
    add_branch(p, tiny, "z", image, min_side=0, k=0.3)
    add_branch(p, tiny, "n", image, k=0.3)
    add_branch(p, tiny, "s", image, min_side=64, k=0.3)
    ex = host.run(p)
    want = 0.7 * encode_direct(tiny, R_SEED, image.permute(0, 3, 1, 2)) + \
        0.3 * encode_direct(tiny, I_SEED, image.permute(0, 3, 1, 2))
    z = branch(host, ex, "z")
    assert torch.allclose(z[0]["samples"], want, atol=1e-6)
    for key in ("n", "s"):
        other = branch(host, ex, key)
        assert torch.equal(other[0]["samples"], z[0]["samples"]) and torch.equal(other[3], z[3])
        assert torch.equal(other[1]["image"], z[1]["image"])
    assert z[3].shape == (2, 70, 90, 3) and torch.equal(z[3], z[2][:, :70, :90])


def test_min_side_upscales_before_padding_and_crop_scales_back(host, tiny):
    image = rand_image(1, 65, 130, seed=5)
    p = vaes()
    add_branch(p, tiny, "m", image, min_side=96)
    ex = host.run(p)
    lat, cond, decoded, out, out_c = branch(host, ex, "m")
    resized = reference_resize_bhwc(image, 96, 192)
    assert torch.allclose(cond["image"][:, :96, :192], resized, atol=1e-6)  # then edge-padded to 128 x 192
    assert torch.equal(cond["image"][:, 96:], cond["image"][:, 95:96].expand(-1, 32, -1, -1))
    assert lat["samples"].shape == (1, 4, 16, 24)
    assert torch.allclose(lat["samples"], encode_direct(tiny, R_SEED, resized.permute(0, 3, 1, 2)), atol=1e-5)
    assert lat["adaptbir_crop"] == {"height": 65, "width": 130, "pad_bottom": 32, "pad_right": 0,
                                    "resized_height": 96, "resized_width": 192} == cond["crop"]
    assert out.shape == (1, 65, 130, 3) and torch.equal(out, out_c)
    assert torch.equal(out, reference_resize_bhwc(decoded[:, :96, :192], 65, 130))


def test_tiny_images_are_brought_to_512_and_come_back_at_their_size(host, tiny):
    """The two 512-px cases: a 1x1 grey image and a 7x9 RGBA image, whatever min_side says (0 here)."""
    grey = torch.full((1, 1, 1, 1), 0.25)
    rgba = rand_image(1, 7, 9, 4, seed=9)
    p = vaes()
    add_branch(p, tiny, "g", grey, min_side=0)
    add_branch(p, tiny, "r", rgba, min_side=0)
    ex = host.run(p)

    lat, cond, decoded, out, out_c = branch(host, ex, "g")
    assert lat["samples"].shape == (1, 4, 64, 64) and decoded.shape == (1, 512, 512, 3)
    assert torch.allclose(cond["image"], torch.full((1, 512, 512, 3), 0.25), atol=1e-6)  # grey -> RGB, flat
    assert lat["adaptbir_crop"]["resized_height"] == 512 and lat["adaptbir_crop"]["height"] == 1
    assert out.shape == (1, 1, 1, 3) and torch.equal(out, out_c)
    assert torch.equal(out, reference_resize_bhwc(decoded, 1, 1))  # the whole 512x512 image, filtered

    lat, cond, decoded, out, out_c = branch(host, ex, "r")
    resized = reference_resize_bhwc(rgba[..., :3], 512, 658)  # alpha dropped for encoding
    assert torch.allclose(cond["image"][:, :, :658], resized, atol=1e-6)
    assert lat["samples"].shape == (1, 4, 64, 88)  # 658 padded to 704
    assert lat["adaptbir_crop"] == {"height": 7, "width": 9, "pad_bottom": 0, "pad_right": 46,
                                    "resized_height": 512, "resized_width": 658}
    assert out.shape == (1, 7, 9, 3) and torch.equal(out, out_c)
    assert torch.equal(out, reference_resize_bhwc(decoded[:, :512, :658], 7, 9))

    # Crop To Original on an RGBA/grey image of the padded size keeps the alpha/grey channel and the batch
    crop = pack_latent_module(host).CropToOriginal
    for c in (4, 1):
        padded = rand_image(2, 512, 704, c, seed=c)
        back = crop.execute(padded, latent=lat).result[0]
        assert back.shape == (2, 7, 9, c)
        assert torch.equal(back, reference_resize_bhwc(padded[:, :512, :658], 7, 9))


def pack_latent_module(host):
    import importlib

    return importlib.import_module(f"{host.pack_module_name}.nodes.latent")


def test_old_records_without_the_resized_size_only_crop(host):
    latent_mod = pack_latent_module(host)
    image = rand_image(2, 64, 128, 4)
    old = {"samples": torch.zeros(2, 4, 8, 16),
           latent_mod.CROP_KEY: {"height": 37, "width": 100, "pad_bottom": 27, "pad_right": 28}}
    out = latent_mod.CropToOriginal.execute(image, latent=old).result[0]
    assert torch.equal(out, image[:, :37, :100])
    cond = {"crop": {"height": 37, "width": 100, "pad_bottom": 27, "pad_right": 28}}
    assert torch.equal(latent_mod.CropToOriginal.execute(image, condition=cond).result[0], out)


@pytest.mark.parametrize("h,w,min_side,extra", [(1, 300, 0, ""), (8, 200, 0, ""), (200, 8, 0, ""),
                                                (100, 3000, 512, " or lower min_side")])
def test_too_thin_image_is_refused_with_its_size(host, tiny, h, w, min_side, extra):
    nh, nw = short_side_size(h, w, min_side)
    p = vaes()
    add_branch(p, tiny, "t", torch.rand(1, h, w, 3), min_side=min_side)
    with pytest.raises(ExecutionFailed) as err:
        host.run(p)
    msg = err.value.exception_message
    assert err.value.node_type == "AdaptBIR_DualEncoderInterpolate"
    assert f"found {w}x{h} (width x height), which would become {nw}x{nh}" in msg and "8192" in msg
    assert msg.rstrip().endswith("less extreme aspect ratio first" + extra)


def test_too_thin_image_is_refused_before_any_encoding(host, tiny):
    """The refusal comes before the VAEs are even checked: mismatched VAEs would give another error."""
    p = vaes()
    p["r"]["inputs"]["latent_channels"] = 8
    add_branch(p, tiny, "t", torch.rand(1, 1, 300, 3))
    with pytest.raises(ExecutionFailed, match="would become 153600x512"):
        host.run(p)


def test_condition_image_path_applies_the_same_rule(host, tiny):
    """encode_condition_image (Apply IRControlNet's and SUPIR Apply's image input) shares the rule; the caller's
    image is left alone."""
    latent_mod = pack_latent_module(host)
    vae = tiny.tiny_vae(I_SEED)
    with pytest.raises(latent_mod.PackError, match=r"found 300x1 \(width x height\), which would become 153600x512"):
        latent_mod.encode_condition_image(torch.rand(1, 1, 300, 3), vae)
    image = rand_image(1, 60, 64, seed=3)
    before = image.clone()
    cond = latent_mod.encode_condition_image(image, vae, pad_multiple=64)
    assert torch.equal(image, before)
    assert cond["crop"] == {"height": 60, "width": 64, "pad_bottom": 0, "pad_right": 30,  # 64 * 512 / 60 = 546.1
                            "resized_height": 512, "resized_width": 546}
    resized = reference_resize_bhwc(image, 512, 546)
    assert torch.allclose(cond["image"][:, :, :546], resized, atol=1e-6) and cond["image"].shape == (1, 512, 576, 3)
    assert torch.allclose(cond["samples"], encode_direct(tiny, I_SEED, resized.permute(0, 3, 1, 2)), atol=1e-5)
    same = latent_mod.encode_condition_image(rand_image(1, 64, 70, seed=3), vae)  # sides >= 64: untouched
    assert same["crop"]["resized_height"] == 64 and same["image"].shape == (1, 64, 128, 3)

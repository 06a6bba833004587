"""The pack's RetinaFace against facexlib's (key layout at full size on the meta device, identical outputs, anchors),
and the alignment / warp / paste helpers against OpenCV's conventions."""

import math

import numpy as np
import pytest
import torch

from modules import face_align
from modules.retinaface import (
    RetinaFace,
    build_retinaface,
    is_retinaface_keys,
    normalize_retinaface_state_dict,
    priors,
    retinaface_config_from_state_dict,
)


@pytest.fixture(scope="module")
def facexlib_retinaface():
    pytest.importorskip("facexlib")
    import warnings

    from facexlib.detection.retinaface import RetinaFace as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference("resnet50", device="cpu").eval()


def test_full_size_layout_is_facexlibs(facexlib_retinaface):
    """detection_Resnet50_Final.pth loads into facexlib's RetinaFace('resnet50') strictly: same keys and shapes."""
    mine = RetinaFace(device="meta").state_dict()
    ref = facexlib_retinaface.state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert all(t.is_meta for t in mine.values())
    assert tuple(mine["body.layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(mine["LandmarkHead.2.conv1x1.weight"].shape) == (20, 256, 1, 1)
    assert retinaface_config_from_state_dict(mine) == {"width": 64, "blocks": (3, 4, 6, 3), "out_channels": 256}
    assert sum(v.numel() for k, v in mine.items() if "running" not in k and "num_batches" not in k) == 27_293_600


def test_outputs_and_anchors_equal_facexlibs(facexlib_retinaface):
    from facexlib.detection.retinaface_utils import PriorBox

    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in facexlib_retinaface.state_dict().items()}
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    ref = facexlib_retinaface
    ref.load_state_dict(sd)
    # facexlib's file format: DataParallel prefix, no BatchNorm counters
    mine = build_retinaface(normalize_retinaface_state_dict(
        {"module." + k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}))
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        loc, conf, landm = ref(x.flip(1) * 255 - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1))
        loc2, score, landm2 = mine(x)
    assert torch.allclose(loc, loc2, atol=1e-5) and torch.allclose(landm, landm2, atol=1e-5)
    assert torch.allclose(conf[..., 1], score, atol=1e-6)
    want = PriorBox(ref.cfg, image_size=(40, 56)).forward() * torch.tensor([56.0, 40.0, 56.0, 40.0])
    assert torch.allclose(priors(40, 56), want, atol=1e-4)


def test_wrong_files_are_refused_by_layout():
    sd = RetinaFace(width=4, blocks=(1, 1, 1, 1), out_channels=16).state_dict()
    assert is_retinaface_keys(sd) and not is_retinaface_keys({"conv_first.1.weight": 0})
    with pytest.raises(ValueError, match="missing 'ssh3.conv3X3.0.weight'"):
        build_retinaface({k: v for k, v in sd.items() if not k.startswith("ssh3.")})
    with pytest.raises(ValueError, match="expected ClassHead.0.conv1x1.weight of shape"):
        build_retinaface(dict(sd, **{"ClassHead.0.conv1x1.weight": torch.zeros(6, 16, 1, 1)}))


# ------------------------------------------------------------------------------------------------ alignment


def test_similarity_recovers_a_known_transform_and_inverts():
    t = face_align.face_template(512).float()
    angle, scale, shift = 0.3, 0.4, torch.tensor([50.0, 80.0])
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = (t @ rot.T) * scale + shift  # the template seen in a photo
    m = face_align.similarity_to_template(pts[None], 512)
    assert torch.allclose(face_align.apply_affine(m, pts[None])[0], t, atol=1e-3)
    back = face_align.apply_affine(face_align.invert_affine(m), t[None])[0]
    assert torch.allclose(back, pts, atol=1e-3)
    assert face_align.similarity_to_template(torch.zeros(0, 5, 2), 512).shape == (0, 2, 3)


def test_warp_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.random((60, 80, 3)).astype(np.float32)
    pts = torch.tensor([[[30.0, 25], [48, 26], [39, 35], [32, 44], [47, 45]]])
    m = face_align.similarity_to_template(pts, 64)
    border = face_align.BORDER_RGB
    ref = cv2.warpAffine(img, m[0].numpy().astype(np.float64), (64, 64), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    ours = face_align.warp_affine(torch.from_numpy(img).permute(2, 0, 1)[None], m, 64, 64, border=border)
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - ref).max() < 0.02


def test_paste_keeps_the_background_outside_the_mask_and_the_face_inside():
    g = torch.Generator().manual_seed(0)
    bg = torch.nn.functional.interpolate(torch.rand(1, 3, 9, 12, generator=g), size=(90, 120), mode="bilinear")[0]
    pts = torch.tensor([[[40.0, 40], [62, 41], [51, 52], [42, 62], [61, 63]]])
    m = face_align.similarity_to_template(pts, 64)
    crop = face_align.warp_affine(bg[None], m, 64, 64)
    same, w = face_align.paste_faces(bg, crop, m, 64, 0.1)
    assert torch.equal(same[:, w[0] == 0], bg[:, w[0] == 0]) and float(w.max()) == 1.0
    inside = w[0] == 1
    assert inside.sum() > 100 and (same[:, inside] - bg[:, inside]).abs().max() < 0.05  # warped there and back
    red = torch.zeros_like(crop)
    red[:, 0] = 1.0
    out, w = face_align.paste_faces(bg, torch.nn.functional.interpolate(red, size=128), m, 64, 0.0)
    hard = out[:, w[0] == 1]  # feather 0: the restored face (red, given at 128 px) replaces the background
    assert hard.shape[1] > 100 and torch.allclose(hard, torch.tensor([[1.0], [0.0], [0.0]]), atol=1e-5)
    hw = face_align.scale_affine(m.double(), (90, 120), (180, 240)).float()
    _, w2 = face_align.paste_faces(torch.nn.functional.interpolate(bg[None], scale_factor=2)[0], red, hw, 64,
                                     0.1)
    assert 3.5 < float(w2.sum() / w.sum()) < 4.5  # the same face, twice the size


# ------------------------------------------------------------------------------------------------ parsing


def test_parsenet_layout_and_outputs_are_facexlibs():
    pytest.importorskip("facexlib")
    from facexlib.parsing.parsenet import ParseNet as Reference

    from modules.parsenet import (
        ParseNet,
        build_parsenet,
        parsenet_blocks_from_state_dict,
    )

    with torch.device("meta"):
        meta = Reference(in_size=512, out_size=512, parsing_ch=19).state_dict()  # facexlib's parsing_parsenet.pth
    blocks = parsenet_blocks_from_state_dict(meta)
    assert blocks["encoder"] == [(64, 128), (128, 256), (256, 256), (256, 256)] and len(blocks["body"]) == 10
    mine = ParseNet(blocks, device="meta").state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in meta.items()}
    torch.manual_seed(0)
    ref = Reference(in_size=64, out_size=64, min_feat_size=16, base_ch=32, parsing_ch=19, res_depth=2).eval()
    sd = ref.state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
    net = build_parsenet(sd)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ref(x * 2 - 1)[0], net(x), atol=1e-5)


def test_parse_mask_keeps_face_classes_and_clears_the_border():
    from modules.parsenet import face_mask

    logits = torch.zeros(1, 19, 128, 128)
    logits[:, 1, :, :64] = 5.0  # skin on the left
    logits[:, 17, :, 64:] = 5.0  # hair (not pasted) on the right
    m = face_mask(logits)
    assert m.shape == (1, 128, 128) and float(m[0, 64, 20]) > 0.99 and float(m[0, 64, 110]) < 0.01
    assert float(m[0, :2].abs().max()) == 0.0 and float(m[0, :, -2:].abs().max()) == 0.0

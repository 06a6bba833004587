"""Faces in the wild through ComfyUI's executor: Load Face Detector -> Detect & Align Faces -> restore the crops
with the pack's Stage-1 Restore -> Paste Faces onto a background restored at x2.

The detector is a real RetinaFace (the pack's network, facexlib's key layout) at a tiny width whose weights are set
by hand so that it responds to image content: the stem measures red minus green (averaged over 7x7), the backbone,
FPN and SSH pass that map through at stride 8, and the heads turn it into a face score and, relative to the anchor
that fires, the box and the 5 landmarks of a face of the synthetic photo's size. A face is a warm radial "blush"
(red > green) centred on its nose; the background has red = green, so nothing fires there. Move the blush and the
detection moves with it (tested); remove it and no face is found.
"""

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy.conftest import image_node, iqa_node
from tests.support.comfy_host import ExecutionFailed

DETECTOR = "tiny_retinaface.safetensors"
DETECTOR_PTH = "tiny_retinaface_module.pth"
PARSER = "tiny_parsenet.safetensors"
FACE_SCALE = 0.25  # face size relative to FFHQ's 512 template (eye distance ~31 px)
H, W = 256, 320
NOSES = ((88.0, 120.0), (232.0, 136.0))  # on the stride-8 grid of the tiny detector's first level
TINY = {"width": 4, "blocks": (1, 1, 1, 1), "out_channels": 16}  # R50 has (3, 4, 6, 3)
FACE_SIZE = 128


def landmarks_at(nose, scale=FACE_SCALE) -> torch.Tensor:
    """(5, 2) landmarks of a synthetic face: FFHQ's template scaled by ``scale`` around its nose point."""
    from modules.face_align import FFHQ_TEMPLATE_512

    t = torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64)
    return (t - t[2]) * scale + torch.tensor(nose, dtype=torch.float64)


def tiny_detector_state_dict() -> dict:
    """A tiny-width RetinaFace whose weights detect the synthetic faces of :func:`photo` (see the module doc)."""
    from modules.retinaface import VARIANCE, RetinaFace

    net = RetinaFace(**TINY)
    sd = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.fill_(1.0 - 1e-5)  # BatchNorm = identity
        elif k.endswith(".weight") and v.ndim == 1:
            v.fill_(1.0)
    sd["body.conv1.weight"][0, 2] = 1.0 / (49 * 255)  # red (the input is BGR, 0..255, minus the mean)
    sd["body.conv1.weight"][0, 1] = -1.0 / (49 * 255)  # minus green
    for name in list(sd):  # every bottleneck's residual branch is 0 (conv3 = 0); shortcuts carry channel 0
        if name.endswith("downsample.0.weight"):
            sd[name][0, 0] = 1.0
    sd["fpn.output1.0.weight"][0, 0] = 1.0
    sd["fpn.merge1.0.weight"][0, 0, 1, 1] = 1.0
    sd["ssh1.conv3X3.0.weight"][0, 0, 1, 1] = 1.0
    for i in range(3):  # anchor 0 everywhere and all of levels 2, 3: background
        sd[f"ClassHead.{i}.conv1x1.bias"][0] = 10.0
        sd[f"ClassHead.{i}.conv1x1.bias"][2] = 10.0
    sd["ClassHead.0.conv1x1.bias"][2] = 6.0  # anchor 1 of level 1 (size 32): face logit 25 * map - 6
    sd["ClassHead.0.conv1x1.weight"][3, 0] = 25.0
    # relative to the anchor that fires: its centre is 4 px right of and below the map's peak (stride 8)
    unit = VARIANCE[0] * 32
    off = landmarks_at((0.0, 0.0)) - 4.0
    sd["LandmarkHead.0.conv1x1.bias"][10:20] = (off / unit).flatten().float()
    sd["BboxHead.0.conv1x1.bias"][4:6] = -4.0 / unit
    sd["BboxHead.0.conv1x1.bias"][6:8] = float(torch.log(torch.tensor(80.0 / 32)) / VARIANCE[1])
    return sd


def tiny_parser_state_dict() -> dict:
    """A tiny ParseNet (facexlib's key layout: 1 down block, 1 body block, 1 up block, 19 classes) that labels every
    pixel as skin (class 1): the parsed paste mask then covers the whole crop but its cleared, blurred border."""
    from modules.parsenet import ParseNet

    net = ParseNet({"base": 8, "encoder": [(8, 16)], "body": [16], "decoder": [(16, 8)], "classes": 19})
    sd = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    for k, v in sd.items():
        if k.endswith(("running_var", "norm.weight")):
            v.fill_(1.0)
    sd["out_mask_conv.conv2d.bias"][1] = 5.0
    return sd


def photo(noses=NOSES, seed=0) -> torch.Tensor:
    """(1, H, W, 3) synthetic photo: textured background (red = green), a face per nose point (a warm blush of
    radius 24 px, and dark blue dots on its 5 landmarks)."""
    g = torch.Generator().manual_seed(seed)
    base = 0.2 + 0.3 * torch.rand(H, W, generator=g)
    img = torch.stack([base, base, 0.2 + 0.3 * torch.rand(H, W, generator=g)], -1)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    for nose in noses:
        r = ((xs - nose[0]) ** 2 + (ys - nose[1]) ** 2).sqrt()
        img[..., 0] += 0.5 * (1 - r / 24).clamp(min=0)
        for x, y in landmarks_at(nose).tolist():
            img[..., 2][((xs - x) ** 2 + (ys - y) ** 2) <= 9] = 0.05
    return img.clamp(0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def detector_files(host):
    d = host.models_dir / "facedetection"
    d.mkdir(exist_ok=True)
    sd = tiny_detector_state_dict()
    save_file(sd, str(d / DETECTOR))
    save_file(tiny_parser_state_dict(), str(d / PARSER))
    # facexlib's release format: a plain .pth with DataParallel's module. prefix, no BatchNorm counters
    torch.save({"module." + k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, d / DETECTOR_PTH)
    return d


@pytest.fixture(scope="module")
def restorer(host, swinir_file):
    return swinir_file


def faces_graph(tiny, img, *, detector=DETECTOR, cheap=True, **detect_widgets):
    """Detect on the photo (node 3), restore the crops (node 4), paste them (node 6) onto a background (node 5).

    ``cheap=False``: the crops and the background (x2) are restored by the pack's Stage-1 Restore with a tiny
    SwinIR. ``cheap=True`` (faster): the crops are "restored" by core's Invert Image and the background is the photo
    as it is."""
    widgets = {"face_size": FACE_SIZE, "threshold": 0.97, "detect_size": 0, "min_eye_distance": 5.0, "max_faces": 0}
    widgets.update(detect_widgets)
    stage1 = {"tile_size": 0, "tile_stride": 256}
    p = {"1": image_node(tiny, "faces_photo", img),
         "2": {"class_type": "AdaptBIR_FaceDetectorLoader", "inputs": {"detector_name": detector}},
         "3": {"class_type": "AdaptBIR_DetectFaces", "inputs": {"image": ["1", 0], "face_detector": ["2", 0],
                                                                **widgets}},
         "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
         "5": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                        "scale_by": 1.0}},
         "6": {"class_type": "AdaptBIR_PasteFaces", "inputs": {"background": ["5", 0], "faces": ["3", 1],
                                                               "restored_faces": ["4", 0], "feather": 0.1}},
         "9": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["6", 0]}},
         "10": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", 2]}},
         "11": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    if not cheap:
        p["7"] = {"class_type": "AdaptBIR_RestorerLoader", "inputs": {"restorer_name": "tiny_swinir.safetensors",
                                                                      "precision": "fp32"}}
        p["4"] = {"class_type": "AdaptBIR_Stage1Restore", "inputs": {"image": ["3", 0], "restorer": ["7", 0],
                                                                     "output_scale": 1.0, **stage1}}
        p["5"] = {"class_type": "AdaptBIR_Stage1Restore", "inputs": {"image": ["1", 0], "restorer": ["7", 0],
                                                                     "output_scale": 2.0, **stage1}}
    return p


def test_detect_restore_paste_with_two_faces(host, tiny, pack, detector_files, restorer):
    from modules.face_align import apply_affine, face_template, invert_affine

    img = photo()
    ex = host.run(faces_graph(tiny, img, cheap=False))
    crops, faces, crop_masks, count = (host.output(ex, "3", i) for i in range(4))
    assert count == 2 and crops.shape == (2, FACE_SIZE, FACE_SIZE, 3) and crop_masks.shape == (2, FACE_SIZE,
                                                                                                FACE_SIZE)
    # the crops' template points warp back onto the known landmarks (within 1 px), in the photo's pixels
    back = apply_affine(invert_affine(faces.affines.double()), face_template(FACE_SIZE).expand(2, 5, 2))
    known = torch.stack([landmarks_at(n) for n in NOSES])
    order = back[:, 2, 0].argsort()  # left face first
    assert (back[order] - known).abs().max() < 1.0, (back[order] - known).abs().max()
    assert (faces.landmarks[order].double() - known).abs().max() < 1.0

    restored, bg = host.output(ex, "4", 0), host.output(ex, "5", 0)
    out, mask = host.output(ex, "6", 0), host.output(ex, "6", 1)
    assert out.shape == bg.shape == (1, 2 * H, 2 * W, 3) and mask.shape == (1, 2 * H, 2 * W)
    outside = mask[0] == 0
    assert torch.equal(out[0][outside], bg[0][outside])  # the background untouched outside the masks
    assert 0.05 < float(outside.logical_not().float().mean()) < 0.5
    # inside, the restored face is there: at each pasted nose point (x2 background) the result is the crop's
    # restored nose pixel, and the masks sit on the two faces
    tn = face_template(FACE_SIZE)[2].round().long()
    for k, i in enumerate(order.tolist()):
        nx, ny = (round(c * 2 + 0.5) for c in NOSES[k])
        assert float(mask[0, ny, nx]) == pytest.approx(1.0)
        assert torch.allclose(out[0, ny, nx], restored[i, tn[1], tn[0]], atol=0.06)
        assert not torch.allclose(out[0, ny, nx], bg[0, ny, nx], atol=1e-3)


def test_one_face_and_max_faces(host, tiny, detector_files):
    ex = host.run(faces_graph(tiny, photo(NOSES[:1])))
    assert host.output(ex, "3", 3) == 1 and host.output(ex, "4", 0).shape[0] == 1
    ex = host.run(faces_graph(tiny, photo(), max_faces=1))
    assert host.output(ex, "3", 3) == 1


def test_no_face_returns_the_background_and_skips_the_face_restore(host, tiny, detector_files):
    ex = host.run(faces_graph(tiny, photo(noses=())))
    assert host.output(ex, "3", 3) == 0 and len(host.output(ex, "3", 1)) == 0
    assert type(host.output(ex, "3", 0)).__name__ == "ExecutionBlocker"  # the crops' consumers are skipped
    assert ex.caches.outputs.get("4") is None  # the crops' restore never ran
    assert torch.equal(host.output(ex, "6", 0), host.output(ex, "5", 0))
    assert float(host.output(ex, "6", 1).abs().max()) == 0.0


def test_detection_follows_the_content(host, tiny, detector_files):
    """Moved faces are found where they are, and an image batch keeps each face with its image."""
    moved = ((56.0, 64.0), (200.0, 184.0))
    batch = torch.cat([photo(), photo(moved, seed=1)])
    ex = host.run(faces_graph(tiny, batch, detector=DETECTOR_PTH))
    faces = host.output(ex, "3", 1)
    assert len(faces) == 4 and faces.image_index.tolist() == [0, 0, 1, 1]
    for img_i, noses in ((0, NOSES), (1, moved)):
        got = sorted(faces.landmarks[faces.image_index == img_i][:, 2].tolist())
        for (gx, gy), (nx, ny) in zip(got, sorted(noses)):
            assert abs(gx - nx) < 1 and abs(gy - ny) < 1
    assert host.output(ex, "6", 0).shape == (2, H, W, 3)


def test_detect_size_maps_landmarks_back(host, tiny, detector_files):
    """Detection on the photo at 2x (detect_size = 2 x the short side) finds the faces of the 2x-drawn photo at the
    photo's own pixels: scale the image, not the detector."""
    import torch.nn.functional as F

    img = photo()
    small = F.interpolate(img.permute(0, 3, 1, 2), scale_factor=0.5, mode="bilinear", antialias=True,
                          align_corners=False).permute(0, 2, 3, 1)
    ex = host.run(faces_graph(tiny, small, detect_size=H))
    faces = host.output(ex, "3", 1)
    assert len(faces) == 2
    got = sorted(faces.landmarks[:, 2].tolist())
    for (gx, gy), (nx, ny) in zip(got, sorted(NOSES)):
        assert abs(gx - ((nx + 0.5) / 2 - 0.5)) < 1.5 and abs(gy - ((ny + 0.5) / 2 - 0.5)) < 1.5


def test_iqa_scores_each_face(host, tiny, detector_files, iqa_files):
    """The IQA Classifier takes the crops batch and gives every face its own score and k/w."""
    p = faces_graph(tiny, photo(), face_size=64)
    p["8"] = iqa_node(["3", 0], weights="spread.safetensors")
    p = {k: v for k, v in p.items() if k in ("1", "2", "3", "8")}
    ex = host.run(p)
    params = host.output(ex, "8", 0)
    assert len(params.scores) == 2 and len(params.k) == 2 and params.scores[0] != params.scores[1]


def test_face_masks_replace_the_ellipse_and_counts_are_checked(host, tiny, detector_files):
    cls = host.node_class("AdaptBIR_PasteFaces")
    ex = host.run(faces_graph(tiny, photo()))
    faces, crops = host.output(ex, "3", 1), host.output(ex, "3", 0)
    bg = torch.rand(1, H, W, 3)
    square = torch.zeros(1, FACE_SIZE, FACE_SIZE)
    square[:, 32:96, 32:96] = 1.0
    out, mask = cls.execute(bg, faces, crops, 0.1, square).args
    assert 0 < float(mask.mean()) < 0.1 and torch.equal(out[0][mask[0] == 0], bg[0][mask[0] == 0])
    with pytest.raises(ValueError, match="restored_faces: expected 2 restored crops"):
        cls.execute(bg, faces, crops[:1], 0.1)
    with pytest.raises(ValueError, match=r"background: expected 1 image\(s\)"):
        cls.execute(torch.cat([bg, bg]), faces, crops, 0.1)


def test_wrong_detector_socket_is_refused(host, tiny):
    cls = host.node_class("AdaptBIR_DetectFaces")
    with pytest.raises(ValueError, match="face_detector: expected a RetinaFace"):
        cls.execute(photo(), object())


def test_detector_file_with_wrong_shapes_is_refused(host, tiny, detector_files):
    sd = tiny_detector_state_dict()
    sd["fpn.merge1.0.weight"] = torch.zeros(16, 16, 1, 1)
    save_file(sd, str(detector_files / "bad_shapes.safetensors"))
    p = {"2": {"class_type": "AdaptBIR_FaceDetectorLoader", "inputs": {"detector_name": "bad_shapes.safetensors"}},
         "9": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["2", 0]}}}
    with pytest.raises(ExecutionFailed) as e:
        host.run(p)
    assert "bad_shapes.safetensors: expected fpn.merge1.0.weight of shape" in e.value.exception_message


def test_crops_go_through_the_diffbir_nodes_as_one_batch(host, tiny, detector_files, restorer, irc_file):
    """Aligned crops are ordinary images for the DiffBIR nodes: Stage-1 Restore -> Apply IRControlNet (tiny SD2,
    DiffBIR key layout) -> sampler -> decode -> colour fix, the two faces as one batch, then pasted."""
    p = faces_graph(tiny, photo(), face_size=64)
    p["4"] = {"class_type": "AdaptBIR_Stage1Restore", "inputs": {"image": ["3", 0], "restorer": ["7", 0],
                                                                 "output_scale": 1.0, "tile_size": 0,
                                                                 "tile_stride": 256}}
    p["7"] = {"class_type": "AdaptBIR_RestorerLoader", "inputs": {"restorer_name": restorer, "precision": "fp32"}}
    p.update({
        "20": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
        "21": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": False}},
        "22": {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": irc_file}},
        "23": {"class_type": "AdaptBIR_ApplyIRControlNet", "inputs": {
            "positive": ["21", 0], "negative": ["21", 0], "control_net": ["22", 0], "strength": 1.0,
            "start_percent": 0.0, "end_percent": 1.0, "hint_convention": "auto", "image": ["4", 0],
            "vae": ["20", 1]}},
        "24": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["20", 1]}},
        "25": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0], "positive": ["23", 0], "negative": ["23", 1], "latent_image": ["24", 0], "seed": 5,
            "steps": 2, "cfg": 1.0, "sampler_name": "ddpm", "scheduler": "simple", "denoise": 1.0}},
        "26": {"class_type": "VAEDecode", "inputs": {"samples": ["25", 0], "vae": ["20", 1]}},
        "27": {"class_type": "AdaptBIR_ColorFix", "inputs": {"image": ["26", 0], "reference": ["4", 0],
                                                             "method": "wavelet"}},
    })
    p["6"]["inputs"]["restored_faces"] = ["27", 0]
    ex = host.run(p)
    restored = host.output(ex, "27", 0)
    assert restored.shape == (2, 64, 64, 3) and torch.isfinite(restored).all()
    out, mask, bg = host.output(ex, "6", 0), host.output(ex, "6", 1), host.output(ex, "5", 0)
    assert torch.equal(out[0][mask[0] == 0], bg[0][mask[0] == 0]) and float(mask.max()) == pytest.approx(1.0)


def test_face_parser_mask_replaces_the_ellipse(host, tiny, detector_files):
    """With Load Face Parser connected, the paste mask is the parsed face (here: the whole crop but its border), so
    crop corners that the ellipse leaves out are pasted too; the background outside stays exact."""
    from modules.face_align import apply_affine, invert_affine

    plain = host.run(faces_graph(tiny, photo()))
    p = faces_graph(tiny, photo())
    p["12"] = {"class_type": "AdaptBIR_FaceParserLoader", "inputs": {"parser_name": PARSER}}
    p["6"]["inputs"]["face_parser"] = ["12", 0]
    parsed = host.run(p)
    faces = host.output(parsed, "3", 1)
    corner = apply_affine(invert_affine(faces.affines.double()), torch.tensor([[[24.0, 24.0]]]).double().expand(
        2, 1, 2))[:, 0].round().long()
    for x, y in corner.tolist():
        assert float(host.output(plain, "6", 1)[0, y, x]) == 0.0
        assert float(host.output(parsed, "6", 1)[0, y, x]) > 0.9
    out, mask, bg = host.output(parsed, "6", 0), host.output(parsed, "6", 1), host.output(parsed, "5", 0)
    assert torch.equal(out[0][mask[0] == 0], bg[0][mask[0] == 0]) and float((mask[0] == 0).float().mean()) > 0.3


def test_v1_face_checkpoint_holds_both_face_models_at_full_size(host, pack):
    """DiffBIR v1's face_full_v1.ckpt (control_model.* + preprocess_model.*, at full size on the meta device): Load
    IRControlNet's layout check finds the face control, Load Stage-1 Restorer's finds the face SwinIR. The separate
    files (v1_face.pth, face_swinir_v1.ckpt) have exactly these layouts without the prefixes."""
    from modules.controlnet_layout import extract_ircontrolnet
    from modules.swinir import (
        SwinIR,
        is_diffbir_swinir_keys,
        normalize_swinir_state_dict,
    )
    from tests.comfy.test_ircontrolnet import meta_controlnet

    control = meta_controlnet()
    swinir = SwinIR(device="meta").state_dict()
    full = {f"control_model.{k}": v for k, v in control.items()}
    full.update({f"preprocess_model.{k}": v for k, v in swinir.items()})
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 4, 3, 3, device="meta")
    full["first_stage_model.encoder.conv_in.weight"] = torch.empty(128, 3, 3, 3, device="meta")
    layout, irc = extract_ircontrolnet({"state_dict": full})
    assert layout == "diffbir_full" and set(irc) == set(control)
    _, cfg = pack("nodes.ircontrolnet").build_ircontrolnet(irc, device="meta", dtype=torch.float16)
    assert cfg["model_channels"] == 320 and tuple(irc["input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)
    restorer = normalize_swinir_state_dict({"state_dict": full})
    assert is_diffbir_swinir_keys(restorer) and set(restorer) == set(swinir)

"""Faces in the wild (DiffBIR's "unaligned faces"): a RetinaFace loader, a node that detects faces and aligns them
to 512 crops (FFHQ 5-point template), and a node that pastes the restored crops back with a soft mask.

The crops are restored with the pack's usual nodes (Stage-1 Restore with face_swinir_v1.ckpt, IRControlNet,
sampler...), independently of the background; the IQA Classifier scores them per face."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..modules import face_align, parsenet, retinaface
from ..modules.weights_kind import describe_weights
from .aliases import aliases_for
from .common import (
    CATEGORY_ROOT,
    PackError,
    check_interrupt,
    file_fingerprint,
    input_image,
    load_weights,
    missing_file_error,
    model_file_path,
    widget_bounds_error,
)
from .file_lists import loader_options

CAT_FACES = f"{CATEGORY_ROOT}/faces"
DETECTOR_FOLDER = "facedetection"
# Socket types; the names are stored in saved workflows: never rename them.
FaceDetector = io.Custom("ADAPTBIR_FACE_DETECTOR")
Faces = io.Custom("ADAPTBIR_FACES")
FaceParser = io.Custom("ADAPTBIR_FACE_PARSER")
WHAT = "RetinaFace-R50 face detector weights (facexlib's detection_Resnet50_Final.pth)"
WHAT_PARSER = "ParseNet face parsing weights (facexlib's parsing_parsenet.pth)"
PARSE_SIZE = 512  # facexlib parses every restored face at 512 x 512
NMS_IOU = 0.4  # facexlib's default


@dataclass(frozen=True)
class FaceSet:
    """Faces found in an image batch.

    ``image_index`` (N,) int64: the batch image of each face; ``affines`` (N, 2, 3) float32: image -> crop points of
    each face, for images of ``image_size`` (H, W); ``landmarks`` (N, 5, 2) and ``boxes`` (N, 4) (x1, y1, x2, y2) in
    image pixels; ``scores`` (N,) detection probabilities; ``face_size``: the crop side; ``batch``: images in the
    batch the faces were found in."""

    image_index: torch.Tensor
    affines: torch.Tensor
    landmarks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    image_size: tuple[int, int]
    face_size: int
    batch: int

    def __len__(self) -> int:
        return int(self.image_index.shape[0])


# ------------------------------------------------------------------------------------------------ loading


def load_detector(name: str):
    """RetinaFace from ``models/facedetection`` in a ModelPatcher (fp32, on the offload device). PackError naming
    the file, what was expected and what was found for anything else."""
    import comfy.model_management as mm
    import comfy.model_patcher

    path = model_file_path(DETECTOR_FOLDER, name)
    sd = load_weights(path, WHAT)
    flat = retinaface.normalize_retinaface_state_dict(sd)
    if not retinaface.is_retinaface_keys(flat):
        raise PackError(f"{name}: expected {WHAT} with keys such as 'body.conv1.weight' and "
                        f"'LandmarkHead.0.conv1x1.weight'; found {describe_weights(flat or sd)}")
    offload = mm.unet_offload_device()
    try:
        net = retinaface.build_retinaface(flat, device=offload, dtype=torch.float32)
    except ValueError as e:
        raise PackError(f"{name}: {e}") from None
    return comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(), offload_device=offload)


def _detector_options() -> list[str]:
    return loader_options(DETECTOR_FOLDER, "face_detector")


def _parser_options() -> list[str]:
    return loader_options(DETECTOR_FOLDER, "face_parser")


class FaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_FaceDetectorLoader",
            **aliases_for("AdaptBIR_FaceDetectorLoader"),
            display_name="Load Face Detector (RetinaFace)",
            category=CAT_FACES,
            description=(
                "Finds the faces in your photos so they can be restored on their own, sharper than the rest. "
                "Loads the RetinaFace-R50 face detector that DiffBIR uses for faces in whole photos "
                "(detection_Resnet50_Final.pth from facexlib's releases, MIT licence) from "
                "ComfyUI/models/facedetection. The network is the pack's own (no facexlib needed); only tensors "
                "are read from the file, nothing is downloaded. Connect it to Detect & Align Faces."),
            inputs=[io.Combo.Input("detector_name", options=_detector_options(), tooltip=(
                "Weights file in ComfyUI/models/facedetection, e.g. detection_Resnet50_Final.pth (recognised by "
                "its weights, not its name)."))],
            outputs=[FaceDetector.Output("face_detector", display_name="face_detector", tooltip=(
                "The RetinaFace detector (loaded to the GPU only while it runs)."))],
        )

    @classmethod
    def validate_inputs(cls, detector_name=None):
        # checked when the prompt is queued: every missing file of a graph is named at once, with where to get it
        return missing_file_error(DETECTOR_FOLDER, detector_name) or True

    @classmethod
    def fingerprint_inputs(cls, detector_name):
        return (detector_name, file_fingerprint(DETECTOR_FOLDER, detector_name))

    @classmethod
    def execute(cls, detector_name) -> io.NodeOutput:
        return io.NodeOutput(load_detector(detector_name))


def load_parser(name: str):
    """ParseNet from ``models/facedetection`` in a ModelPatcher (fp32). PackError naming the file, what was
    expected and what was found for anything else."""
    import comfy.model_management as mm
    import comfy.model_patcher

    path = model_file_path(DETECTOR_FOLDER, name)
    sd = load_weights(path, WHAT_PARSER)
    flat = retinaface.normalize_retinaface_state_dict(sd)  # same unwrapping: state_dict/model/params, module.
    if not all(k in flat for k in parsenet.SIGNATURE_KEYS):
        raise PackError(f"{name}: expected {WHAT_PARSER} with keys such as 'encoder.0.conv2d.weight' and "
                        f"'out_mask_conv.conv2d.weight'; found {describe_weights(flat or sd)}")
    offload = mm.unet_offload_device()
    try:
        net = parsenet.build_parsenet(flat, device=offload, dtype=torch.float32)
    except ValueError as e:
        raise PackError(f"{name}: {e}") from None
    return comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(), offload_device=offload)


class FaceParserLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_FaceParserLoader",
            **aliases_for("AdaptBIR_FaceParserLoader"),
            display_name="Load Face Parser (ParseNet)",
            category=CAT_FACES,
            description=(
                "Makes restored faces blend into the photo along the face's own outline (skin, hair line, ears). "
                "Loads the face parsing network DiffBIR uses for its paste masks (ParseNet, "
                "parsing_parsenet.pth from facexlib's releases) from ComfyUI/models/facedetection. Connect it to "
                "Paste Faces' face_parser: each restored face is then blended in over the skin, eyes, brows, nose, "
                "mouth and ears the parser finds, instead of a fixed ellipse. The network is the pack's own; only "
                "tensors are read from the file."),
            inputs=[io.Combo.Input("parser_name", options=_parser_options(), tooltip=(
                "Weights file in ComfyUI/models/facedetection, e.g. parsing_parsenet.pth (recognised by its "
                "weights, not its name)."))],
            outputs=[FaceParser.Output("face_parser", display_name="face_parser", tooltip=(
                "The ParseNet face parser (loaded to the GPU only while it runs)."))],
        )

    @classmethod
    def validate_inputs(cls, parser_name=None):
        return missing_file_error(DETECTOR_FOLDER, parser_name) or True

    @classmethod
    def fingerprint_inputs(cls, parser_name):
        return (parser_name, file_fingerprint(DETECTOR_FOLDER, parser_name))

    @classmethod
    def execute(cls, parser_name) -> io.NodeOutput:
        return io.NodeOutput(load_parser(parser_name))


def parse_masks(patcher, faces: torch.Tensor) -> torch.Tensor:
    """(N, 512, 512) paste masks in [0, 1] of (N, 3, s, s) restored crops, as facexlib makes them: each crop resized
    to 512 (bilinear), parsed, face classes blurred with the borders cleared."""
    import comfy.model_management as mm

    net: parsenet.ParseNet = patcher.model
    mm.load_models_gpu([patcher], force_full_load=True)
    out = []
    for i in range(faces.shape[0]):
        check_interrupt()
        x = F.interpolate(faces[i:i + 1].float(), size=(PARSE_SIZE, PARSE_SIZE), mode="bilinear",
                          align_corners=False)
        with torch.no_grad():
            logits = net(x.to(patcher.load_device, torch.float32))
        out.append(parsenet.face_mask(logits).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ detection


def detect(patcher, x: torch.Tensor, threshold: float, detect_size: int, min_eye_distance: float):
    """Faces of (B, 3, H, W) float [0, 1] images: per image (boxes, scores, landmarks) in input pixels, best first.
    ``detect_size`` > 0: each image is resized (bicubic, antialiased) so its short side is that many pixels first,
    as DiffBIR does (640); faces whose eye distance is under ``min_eye_distance`` pixels are dropped."""
    import comfy.model_management as mm

    net: retinaface.RetinaFace = patcher.model
    mm.load_models_gpu([patcher], force_full_load=True)
    device = patcher.load_device
    out = []
    for i in range(x.shape[0]):
        check_interrupt()
        img = x[i:i + 1]
        h, w = img.shape[-2:]
        scale = 1.0
        if detect_size > 0 and min(h, w) != detect_size:
            scale = min(h, w) / detect_size
            size = (max(1, round(h / scale)), max(1, round(w / scale)))
            img = F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        with torch.no_grad():
            loc, conf, landm = net(img.to(device=device, dtype=torch.float32))
        anchors = retinaface.priors(img.shape[-2], img.shape[-1], device=device)
        boxes, scores, points = retinaface.decode(loc[0], conf[0], landm[0], anchors, threshold, NMS_IOU)
        boxes, points = boxes.cpu() * scale, points.cpu() * scale
        eye = (points[:, 0] - points[:, 1]).norm(dim=-1)
        keep = eye >= min_eye_distance
        out.append((boxes[keep], scores.cpu()[keep], points[keep]))
    return out


class DetectFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_DetectFaces",
            **aliases_for("AdaptBIR_DetectFaces"),
            display_name="Detect & Align Faces",
            category=CAT_FACES,
            description=(
                "Finds the faces in a photo (RetinaFace, 5 landmarks) and cuts each one out as a square crop "
                "aligned to the FFHQ template that DiffBIR's face models were trained on (eyes level, same place "
                "in every crop). Restore the crops with the usual nodes (e.g. Stage-1 Restore with "
                "face_swinir_v1.ckpt and the DiffBIR sampler, with its own settings), then connect them and "
                "'faces' to Paste Faces. Run it on the image the background is restored from (e.g. the upscaled "
                "photo). With no face found, crops and crop_masks are blocked (the nodes they feed are skipped) "
                "and Paste Faces returns the background."),
            inputs=[
                io.Image.Input("image", tooltip="The photo(s) to find faces in (RGB, RGBA or grey)."),
                FaceDetector.Input("face_detector", tooltip="RetinaFace from Load Face Detector."),
                io.Int.Input("face_size", default=512, min=64, max=2048, step=64, tooltip=(
                    "Side of each aligned crop in pixels. DiffBIR's face models work at 512.")),
                io.Float.Input("threshold", default=0.97, min=0.05, max=1.0, step=0.01, tooltip=(
                    "Minimum detection confidence (DiffBIR: 0.97). Lower it to find blurred or small faces, raise "
                    "it if non-faces are found.")),
                io.Int.Input("detect_size", default=640, min=0, max=4096, step=32, tooltip=(
                    "The detector sees the photo resized so its short side is this many pixels (DiffBIR: 640); 0 = "
                    "as it is. Landmarks are mapped back to the photo's own pixels.")),
                io.Float.Input("min_eye_distance", default=5.0, min=0.0, max=1000.0, step=1.0, tooltip=(
                    "Skip faces whose eyes are closer than this many pixels (side views, tiny faces); DiffBIR: 5.")),
                io.Int.Input("max_faces", default=0, min=0, max=256, tooltip=(
                    "Keep at most this many faces per image (the most confident); 0 = all.")),
            ],
            outputs=[
                io.Image.Output("crops", display_name="crops", tooltip=(
                    "One aligned face_size x face_size crop per face (all images' faces, most confident first per "
                    "image); restore them and connect the result to Paste Faces' restored_faces. Blocked (nodes "
                    "fed by it are skipped) when no face is found.")),
                Faces.Output("faces", display_name="faces", tooltip=(
                    "Where each face came from (image, landmarks, alignment); connect it to Paste Faces.")),
                io.Mask.Output("crop_masks", display_name="crop_masks", tooltip=(
                    "The soft paste mask (feathered ellipse, feather 0.1) of each crop, in crop pixels.")),
                io.Int.Output("count", display_name="count", tooltip="How many faces were found."),
            ],
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return widget_bounds_error(cls, kwargs) or True

    @classmethod
    def execute(cls, image, face_detector, face_size=512, threshold=0.97, detect_size=640, min_eye_distance=5.0,
                max_faces=0) -> io.NodeOutput:
        if not isinstance(getattr(face_detector, "model", None), retinaface.RetinaFace):
            raise PackError(f"face_detector: expected a RetinaFace from Load Face Detector, found "
                            f"{type(getattr(face_detector, 'model', face_detector)).__name__}")
        x = input_image(image, "image")
        found = detect(face_detector, x, threshold, detect_size, min_eye_distance)
        idx, boxes, scores, points = [], [], [], []
        for i, (b, s, p) in enumerate(found):
            if max_faces > 0:
                b, s, p = b[:max_faces], s[:max_faces], p[:max_faces]
            idx.append(torch.full((b.shape[0],), i, dtype=torch.long))
            boxes.append(b)
            scores.append(s)
            points.append(p)
        idx, boxes, scores, points = (torch.cat(idx), torch.cat(boxes).float(), torch.cat(scores).float(),
                                      torch.cat(points).float())
        affines = face_align.similarity_to_template(points, face_size)
        h, w = x.shape[-2:]
        faces = FaceSet(idx, affines, points, boxes, scores, (int(h), int(w)), int(face_size), int(x.shape[0]))
        if not len(faces):
            # nothing to restore: the nodes fed by the crops are skipped (blocked), Paste Faces does not ask for them
            from comfy_execution.graph_utils import ExecutionBlocker

            return io.NodeOutput(ExecutionBlocker(None), faces, ExecutionBlocker(None), 0)
        # face by face, so a large photo is never copied once per face
        crops = torch.cat([face_align.warp_affine(x[int(i):int(i) + 1].float(), affines[j:j + 1], face_size,
                                                  face_size, border=face_align.BORDER_RGB)
                           for j, i in enumerate(idx)]).clamp(0, 1)
        masks = face_align.crop_masks(len(faces), face_size, 0.1)
        return io.NodeOutput(crops.permute(0, 2, 3, 1).contiguous(), faces, masks, len(faces))


# ------------------------------------------------------------------------------------------------ pasting


class PasteFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_PasteFaces",
            **aliases_for("AdaptBIR_PasteFaces"),
            display_name="Paste Faces",
            category=CAT_FACES,
            description=(
                "Puts restored face crops back into the (restored) photo: each crop is turned back with the "
                "inverse of its alignment and blended in with a soft mask (a feathered ellipse over the face, or "
                "the face_masks you connect, e.g. from a face-parsing node). Pixels outside the masks stay exactly "
                "as in 'background'. The background may be larger than the image the faces were found in (e.g. "
                "restored at x2): the positions are scaled to it. With no faces the background is returned and the "
                "face restoration nodes are not run."),
            inputs=[
                io.Image.Input("background", tooltip=(
                    "The restored photo(s) to paste into: the batch Detect & Align Faces looked at, at any scale.")),
                Faces.Input("faces", tooltip="'faces' from Detect & Align Faces."),
                io.Image.Input("restored_faces", lazy=True, tooltip=(
                    "The restored crops, one per face in the order of 'crops' (any square size). Not evaluated when "
                    "no face was found.")),
                io.Float.Input("feather", default=0.1, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Width of the ellipse mask's soft edge, as a fraction of its radius; 0 = hard edge.")),
                io.Mask.Input("face_masks", optional=True, tooltip=(
                    "Optional masks in crop pixels, one per face (or one for all), e.g. a face-parsing mask of "
                    "each restored crop; they replace the ellipse.")),
                FaceParser.Input("face_parser", optional=True, tooltip=(
                    "Optional ParseNet from Load Face Parser: each restored face is parsed and blended in over "
                    "the face it finds (DiffBIR's mask), instead of the ellipse. face_masks win when both are "
                    "connected.")),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The background with the faces pasted in."),
                io.Mask.Output("mask", display_name="mask", tooltip=(
                    "Where faces were pasted (the strongest face weight at each pixel), background size.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return widget_bounds_error(cls, kwargs) or True

    @classmethod
    def check_lazy_status(cls, background=None, faces=None, restored_faces=None, feather=0.1, face_masks=None,
                          face_parser=None):
        if isinstance(faces, FaceSet) and len(faces) == 0:
            return []
        return ["restored_faces"] if restored_faces is None else []

    @classmethod
    def execute(cls, background, faces, restored_faces=None, feather=0.1, face_masks=None,
                face_parser=None) -> io.NodeOutput:
        if not isinstance(faces, FaceSet):
            raise PackError(f"faces: expected the faces output of Detect & Align Faces, found {type(faces).__name__}")
        bg = input_image(background, "background")
        b, _, h, w = bg.shape
        if b != faces.batch:
            raise PackError(f"background: expected {faces.batch} image(s) (the batch the faces were found in), "
                            f"found {b}")
        n = len(faces)
        if n == 0:
            return io.NodeOutput(bg.permute(0, 2, 3, 1).contiguous(), bg.new_zeros(b, h, w))
        restored = input_image(restored_faces, "restored_faces").clamp(0, 1)
        if restored.shape[0] != n:
            raise PackError(f"restored_faces: expected {n} restored crops (one per face found), found "
                            f"{restored.shape[0]}")
        if restored.shape[-1] != restored.shape[-2]:
            raise PackError(f"restored_faces: expected square crops, found {restored.shape[-2]}x"
                            f"{restored.shape[-1]}")
        masks = None
        if face_masks is not None:
            masks = face_masks if face_masks.ndim == 3 else face_masks.reshape(-1, *face_masks.shape[-2:])
            if masks.shape[0] == 1:
                masks = masks.expand(n, -1, -1)
            if masks.shape[0] != n:
                raise PackError(f"face_masks: expected 1 or {n} masks (one per face found), found "
                                f"{masks.shape[0]}")
            masks = masks.float()
        elif face_parser is not None:
            if not isinstance(getattr(face_parser, "model", None), parsenet.ParseNet):
                raise PackError(f"face_parser: expected a ParseNet from Load Face Parser, found "
                                f"{type(getattr(face_parser, 'model', face_parser)).__name__}")
            masks = parse_masks(face_parser, restored)
        affines = face_align.scale_affine(faces.affines.double(), faces.image_size, (h, w)).float()
        out, union = bg.clone(), bg.new_zeros(b, h, w)
        for i in range(b):
            sel = (faces.image_index == i).nonzero().flatten()
            if sel.numel() == 0:
                continue
            check_interrupt()
            img, weights = face_align.paste_faces(bg[i], restored[sel], affines[sel], faces.face_size, feather,
                                                  None if masks is None else masks[sel])
            out[i] = img
            union[i] = weights.amax(0)
        return io.NodeOutput(out.permute(0, 2, 3, 1).contiguous(), union)


NODES = [FaceDetectorLoader, FaceParserLoader, DetectFaces, PasteFaces]

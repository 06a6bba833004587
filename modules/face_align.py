"""Face alignment to the FFHQ 5-point template, affine warps, soft paste masks and pasting back.

Conventions (those of OpenCV's ``warpAffine``, which facexlib and DiffBIR use): a point (x, y) is in pixel
indices, the centre of the top-left pixel is (0, 0); an affine ``M`` (2, 3) maps image points to crop points,
``[u, v] = M @ [x, y, 1]``; a warped image is sampled bilinearly at ``M^-1`` of each output pixel.

- Template: FFHQ's 5 points for a 512 crop (left eye, right eye, nose, left and right mouth corner, as seen in the
  image), scaled by ``face_size / 512`` (facexlib's ``FaceRestoreHelper``).
- Alignment: the least-squares similarity (rotation, uniform scale, translation) from the detected points to the
  template. facexlib uses OpenCV's ``estimateAffinePartial2D`` with LMEDS (a robust fit): the same transform for
  consistent points, slightly different when one landmark is far off.
- Crops outside the image are filled with facexlib's grey (135, 133, 132) / 255.
- Paste masks: a feathered ellipse over the face in crop coordinates (or a mask given in crop coordinates, e.g.
  a face-parsing mask), evaluated at each image pixel's crop point, so the mask is exactly 0 outside the face and
  the background there is returned unchanged.

Tensors: images (B, C, H, W) float in [0, 1]; points (N, 5, 2) float (x, y); affines (N, 2, 3) float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FFHQ_TEMPLATE_512 = ((192.98138, 239.94708), (318.90277, 240.1936), (256.63416, 314.01935),
                     (201.26117, 371.41043), (313.08905, 371.15118))
BORDER_RGB = (135 / 255, 133 / 255, 132 / 255)
# The paste ellipse in crop units (fractions of the crop side): centre and semi-axes around FFHQ's face.
ELLIPSE_CENTRE = (0.5, 0.54)
ELLIPSE_RADII = (0.38, 0.45)  # the ellipse stays inside the crop


def face_template(face_size: int) -> torch.Tensor:
    """(5, 2) float64 FFHQ points for a ``face_size`` square crop."""
    return torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64) * (face_size / 512.0)


def similarity_to_template(points: torch.Tensor, face_size: int) -> torch.Tensor:
    """(N, 2, 3) float32 least-squares similarities mapping each face's (5, 2) points onto the template."""
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise ValueError(f"points: expected (N, 5, 2) landmarks, found {tuple(points.shape)}")
    n = points.shape[0]
    if n == 0:
        return torch.zeros(0, 2, 3)
    src = points.double()
    dst = face_template(face_size).to(src.device).expand(n, 5, 2)
    x, y = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    # u = a x - b y + tx ; v = b x + a y + ty  -> unknowns (a, b, tx, ty)
    rows_u = torch.stack([x, -y, one, zero], -1)
    rows_v = torch.stack([y, x, zero, one], -1)
    a_mat = torch.cat([rows_u, rows_v], 1)  # (N, 10, 4)
    rhs = torch.cat([dst[..., 0], dst[..., 1]], 1).unsqueeze(-1)
    sol = torch.linalg.lstsq(a_mat, rhs).solution.squeeze(-1)
    a, b, tx, ty = sol.unbind(-1)
    m = torch.stack([torch.stack([a, -b, tx], -1), torch.stack([b, a, ty], -1)], 1)
    return m.float()


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) inverses of (N, 2, 3) affines."""
    full = torch.cat([m.double(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64,
                                               device=m.device).expand(m.shape[0], 1, 3)], 1)
    return torch.linalg.inv(full)[:, :2].to(m.dtype)


def apply_affine(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, K, 2) points mapped by (N, 2, 3) affines."""
    return points @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def _source_points(m: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """(N, out_h, out_w, 2) source points (x, y) sampled for each output pixel of a warp by ``m``."""
    inv = invert_affine(m)
    ys, xs = torch.meshgrid(torch.arange(out_h, device=m.device, dtype=torch.float32),
                            torch.arange(out_w, device=m.device, dtype=torch.float32), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(m.shape[0], -1, 2)
    return apply_affine(inv.float(), grid).reshape(m.shape[0], out_h, out_w, 2)


def _sample(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (N, C, H, W) at (N, h, w, 2) pixel points; 0 outside."""
    h, w = img.shape[-2:]
    norm = torch.stack([pts[..., 0] * (2.0 / max(w - 1, 1)) - 1.0, pts[..., 1] * (2.0 / max(h - 1, 1)) - 1.0], -1)
    return F.grid_sample(img, norm.to(img.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def warp_affine(img: torch.Tensor, m: torch.Tensor, out_h: int, out_w: int, border=None) -> torch.Tensor:
    """(N, C, out_h, out_w): each image warped by its affine (``out(p) = img(M^-1 p)``), bilinear; pixels that
    sample outside the image blend towards ``border`` (a per-channel value, None = 0), as OpenCV's constant border
    does."""
    pts = _source_points(m, out_h, out_w)
    out = _sample(img, pts)
    if border is not None:
        inside = _sample(torch.ones_like(img[:, :1]), pts)
        fill = torch.tensor(border, dtype=img.dtype, device=img.device).view(1, -1, 1, 1)
        out = out + (1.0 - inside) * fill
    return out


def ellipse_mask(u: torch.Tensor, v: torch.Tensor, face_size: int, feather: float) -> torch.Tensor:
    """Soft face mask at crop points (u, v): 1 inside the face ellipse, a smooth fall-off over the outer
    ``feather`` fraction of its radius, exactly 0 on and outside the ellipse."""
    cx, cy = (c * face_size for c in ELLIPSE_CENTRE)
    rx, ry = (r * face_size for r in ELLIPSE_RADII)
    r = torch.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    if feather <= 0:
        return (r < 1).to(u.dtype)
    t = ((1.0 - r) / feather).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def crop_masks(n: int, face_size: int, feather: float, device=None) -> torch.Tensor:
    """(n, face_size, face_size) paste masks in crop coordinates (the feathered ellipse)."""
    ys, xs = torch.meshgrid(torch.arange(face_size, dtype=torch.float32, device=device),
                            torch.arange(face_size, dtype=torch.float32, device=device), indexing="ij")
    return ellipse_mask(xs, ys, face_size, feather).expand(n, face_size, face_size).clone()


def scale_affine(m: torch.Tensor, from_hw, to_hw) -> torch.Tensor:
    """Affines of points of an image of size ``from_hw`` re-expressed for the same picture at ``to_hw`` (pixel
    centres kept: x_to = (x_from + 0.5) * s - 0.5)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    if sx == 1 and sy == 1:
        return m
    # x_from = (x_to + 0.5) / s - 0.5
    to_from = torch.tensor([[1 / sx, 0.0, 0.5 / sx - 0.5], [0.0, 1 / sy, 0.5 / sy - 0.5], [0.0, 0.0, 1.0]],
                           dtype=m.dtype, device=m.device)
    return m @ to_from


def paste_faces(background: torch.Tensor, faces: torch.Tensor, affines: torch.Tensor, face_size: int,
                feather: float, masks: torch.Tensor | None = None):
    """Paste restored faces into one image.

    Args:
        background: (C, H, W) float image.
        faces: (N, C, s, s) restored crops; any square size s (treated as the ``face_size`` crop rescaled).
        affines: (N, 2, 3) image -> crop (``face_size``) affines for this image's size.
        face_size: the crop size the affines map to.
        feather: fall-off of the ellipse mask (fraction of its radius); unused where ``masks`` is given.
        masks: optional (N, s_m, s_m) masks in crop coordinates in [0, 1] (e.g. face parsing), replacing the
            ellipse.

    Returns:
        (image (C, H, W), mask (N, H, W) of each face's paste weight in the image).
    """
    _, h, w = background.shape
    out = background.clone()
    weights = background.new_zeros(faces.shape[0], h, w)
    inv = invert_affine(affines.double())
    corners = torch.tensor([[0.0, 0.0], [face_size - 1.0, 0.0], [0.0, face_size - 1.0],
                            [face_size - 1.0, face_size - 1.0]], dtype=torch.float64, device=affines.device)
    for i in range(faces.shape[0]):
        # only the pixels whose crop point can be inside the crop (its footprint's box, 1 px margin)
        foot = apply_affine(inv[i:i + 1], corners[None])[0]
        x0, y0 = (int(max(0, min(float(foot[:, k].min()) - 1, n))) for k, n in ((0, w), (1, h)))
        x1, y1 = (int(max(0, min(float(foot[:, k].max()) + 2, n))) for k, n in ((0, w), (1, h)))
        if x1 <= x0 or y1 <= y0:
            continue
        # crop points of the box's pixels: M applied to (x + x0, y + y0)
        m = affines[i:i + 1].double().clone()
        m[:, :, 2] += m[:, :, 0] * x0 + m[:, :, 1] * y0
        pts = _source_points(invert_affine(m).float(), y1 - y0, x1 - x0)
        s = faces.shape[-1]
        face = _sample(faces[i:i + 1].to(out.dtype), (pts + 0.5) * (s / face_size) - 0.5)[0]
        if masks is None:
            wgt = ellipse_mask(pts[0, ..., 0], pts[0, ..., 1], face_size, feather)
        else:
            sm = masks.shape[-1]
            wgt = _sample(masks[i:i + 1, None].to(out.dtype), (pts + 0.5) * (sm / face_size) - 0.5)[0, 0]
            wgt = wgt.clamp(0.0, 1.0)
        wgt = wgt.to(out.dtype)
        region = out[:, y0:y1, x0:x1]
        out[:, y0:y1, x0:x1] = torch.where(wgt > 0, wgt * face + (1.0 - wgt) * region, region)
        weights[i, y0:y1, x0:x1] = wgt
    return out, weights

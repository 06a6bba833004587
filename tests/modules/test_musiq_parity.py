"""The pack's MUSIQ (modules/musiq.py) against pyiqa's own MUSIQ: same weights files, same images, same scores.

pyiqa is the reference (a test requirement, not a runtime one). Each variant gets its own seeded random weights in
pyiqa's layout, saved as a raw state dict like pyiqa's released files and loaded on each side by its own loader
(pyiqa: ``load_pretrained_network``; the pack: weights-only ``torch.load`` + ``build_musiq``). Images go through the
IQA Classifier's preprocessing (``score_max_side`` downscale, 32-pixel minimum side) first, as in the node.
"""

import pytest
import torch

from modules.image_ops import downscale_max_side, upscale_min_side
from modules.iqa import MUSIQ_VARIANTS, build_musiq, score_images

pyiqa_musiq = pytest.importorskip("pyiqa.archs.musiq_arch", reason="pyiqa (a test requirement) is the reference")

# variant -> [(batch, height, width, score_max_side), ...]: sizes below, at and above both fixed scales (224, 384),
# square, wide, tall and extreme aspect ratios, and the node's score_max_side settings.
CASES = {
    "musiq": [(2, 32, 32, 0), (1, 250, 170, 200)],
    "musiq-spaq": [(1, 61, 97, 0), (1, 400, 90, 64)],
    "musiq-paq2piq": [(1, 40, 300, 0), (1, 97, 61, 64)],
    "musiq-ava": [(1, 224, 224, 0), (1, 130, 385, 200)],
}


def pyiqa_num_class(variant: str) -> int:
    """The head size pyiqa gives the variant: MUSIQ(pretrained=<key>) uses 10 classes for 'ava', else 1."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    key = DEFAULT_CONFIGS[variant]["metric_opts"]["pretrained"]
    return 10 if key == "ava" else 1


def test_variant_table_matches_pyiqa():
    """Our variant table (pretrained key, published file, score scale, head size) is pyiqa's."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    for variant, (key, filename, scale, num_class) in MUSIQ_VARIANTS.items():
        assert DEFAULT_CONFIGS[variant]["metric_opts"] == {"type": "MUSIQ", "pretrained": key}
        assert pyiqa_musiq.default_model_urls[key].endswith("/" + filename)
        assert num_class == pyiqa_num_class(variant)
        top = DEFAULT_CONFIGS[variant]["score_range"].split(",")[1].strip().lstrip("~")
        assert float(top) == scale


def reference_weights(variant: str, path) -> "torch.nn.Module":
    """pyiqa's MUSIQ with seeded random weights (heads widened so scores spread), saved raw to ``path`` like
    pyiqa's released files and loaded back through pyiqa's own loader."""
    torch.manual_seed(sorted(MUSIQ_VARIANTS).index(variant))
    num_class = pyiqa_num_class(variant)
    net = pyiqa_musiq.MUSIQ(pretrained=False, pretrained_model_path=None, num_class=num_class)
    sd = net.state_dict()
    head = "head.0" if num_class > 1 else "head"
    if num_class == 1:  # scores around 50 that move with the image
        sd["head.weight"] = sd["head.weight"] * 20.0
        sd["head.bias"] = torch.full_like(sd["head.bias"], 50.0)
    else:  # a rating distribution that is neither uniform nor one-hot
        sd["head.0.weight"] = sd["head.0.weight"] * 2.0
    torch.save(sd, path)
    ref = pyiqa_musiq.MUSIQ(pretrained=False, pretrained_model_path=None, num_class=num_class)
    pyiqa_musiq.load_pretrained_network(ref, str(path), True)
    return ref.eval()


@pytest.mark.parametrize("variant", sorted(CASES))
def test_scores_match_pyiqa(variant, tmp_path):
    path = tmp_path / MUSIQ_VARIANTS[variant][1]
    ref = reference_weights(variant, path)
    ours = build_musiq(variant, torch.load(path, map_location="cpu", weights_only=True))
    g = torch.Generator().manual_seed(1)
    scores = []
    for batch, h, w, max_side in CASES[variant]:
        x = upscale_min_side(downscale_max_side(torch.rand(batch, 3, h, w, generator=g), max_side), 32)
        with torch.no_grad():
            expected = ref(x).reshape(-1).tolist()
        got = score_images(ours, x)
        assert got == pytest.approx(expected, abs=1e-4), (variant, h, w, max_side)
        scores += got
        if variant == "musiq-ava":
            assert all(1.0 <= s <= 10.0 for s in got)
    # the scores depend on the image: a constant network would pass the comparison above trivially
    assert max(scores) - min(scores) > 1e-3, scores


def test_parameter_names_and_shapes_are_pyiqas():
    for num_class in (1, 10):
        ref = pyiqa_musiq.MUSIQ(pretrained=False, pretrained_model_path=None, num_class=num_class).state_dict()
        ours = build_musiq("musiq-ava" if num_class == 10 else "musiq").state_dict()
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}

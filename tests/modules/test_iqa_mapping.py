import math

import pytest
import torch

from modules.iqa import MUSIQ_VARIANTS, RestorationParams, build_musiq, map_score, params_from_scores


@pytest.mark.parametrize("score,cls,k,w", [
    (39.99, "severe", 0.0, 0.0),
    (40.0, "severe", 0.0, 0.0),
    (40.01, "medium", 0.4001, 0.4001 / 0.7),
    (55.0, "medium", 0.55, 0.55 / 0.7),
    (70.0, "medium", 0.7, 1.0),
    (70.01, "mild", 0.7, 1.0),
    (100.0, "mild", 0.7, 1.0),
])
def test_adaptbir_mapping_boundaries(score, cls, k, w):
    got = map_score(score)
    assert got[0] == cls
    assert got[1] == pytest.approx(k, abs=1e-12)
    assert got[2] == pytest.approx(w, abs=1e-12)


@pytest.mark.parametrize("score,cls", [(39.99, "severe"), (40.0, "severe"), (40.01, "medium"), (70.0, "medium"),
                                       (70.01, "mild")])
def test_classes_mapping_boundaries(score, cls):
    c, k, w = map_score(score, mode="classes")
    assert c == cls
    assert (k, w) == pytest.approx({"severe": (0.0, 0.0), "medium": (0.55, 0.55 / 0.7), "mild": (0.7, 1.0)}[cls])


def test_mapping_is_continuous_at_high_threshold_and_jumps_at_low():
    # released code: continuous at 70 (k=0.7, w=1 on both sides), a jump at 40 (0 -> 0.4)
    below, above = map_score(70.0 - 1e-9), map_score(70.0 + 1e-9)
    assert below[1] == pytest.approx(above[1], abs=1e-9) and below[2] == pytest.approx(above[2], abs=1e-9)
    assert map_score(40.0)[1] == 0.0 and map_score(40.0 + 1e-9)[1] == pytest.approx(0.4)


def test_custom_thresholds_and_caps():
    assert map_score(50, t_low=0.5, t_high=0.8)[0] == "severe"
    cls, k, w = map_score(60, t_low=0.5, t_high=0.8, k_max=0.5, w_max=2.0)
    assert cls == "medium" and k == 0.5 and w == pytest.approx(2.0 * 0.6 / 0.8)
    assert map_score(9.0, score_scale=10.0)[0] == "mild"  # AVA scale


@pytest.mark.parametrize("kwargs,needle", [
    ({"mode": "nope"}, "mode"), ({"t_low": 0.8, "t_high": 0.7}, "thresholds"), ({"k_max": 1.5}, "k_max"),
    ({"w_max": -1}, "w_max"), ({"score_scale": 0}, "score_scale")])
def test_mapping_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        map_score(50.0, **kwargs)
    with pytest.raises(ValueError, match="score"):
        map_score(math.nan)


def test_per_image_params_in_a_mixed_batch():
    p = params_from_scores([20.0, 55.0, 90.0])
    assert p.classes == ("severe", "medium", "mild")
    assert torch.allclose(p.k_tensor(3), torch.tensor([0.0, 0.55, 0.7]))
    assert torch.allclose(p.w_tensor(3), torch.tensor([0.0, 0.55 / 0.7, 1.0]))
    assert "#1 musiq=55.00 medium" in p.summary()
    with pytest.raises(ValueError, match="3 per-image values but the batch has 2"):
        p.k_tensor(2)
    single = params_from_scores([55.0])
    assert single.k_tensor(4).tolist() == pytest.approx([0.55] * 4)
    with pytest.raises(ValueError, match="empty"):
        params_from_scores([])
    with pytest.raises(ValueError, match="classes"):
        RestorationParams(scores=(1.0,), classes=(), k=(0.0,), w=(0.0,))


def test_musiq_builds_offline_with_random_weights_and_scores_images():
    net = build_musiq("musiq")  # the pack's MUSIQ (modules/musiq.py), random weights
    assert sum(p.numel() for p in net.parameters()) > 20_000_000
    with torch.no_grad():
        out = net(torch.rand(1, 3, 48, 64))
    assert out.shape == (1, 1) and torch.isfinite(out).all()
    ava = build_musiq("musiq-ava")
    assert ava.head[0].out_features == MUSIQ_VARIANTS["musiq-ava"][3] if isinstance(ava.head, torch.nn.Sequential) \
        else ava.head.out_features == 10


def test_musiq_rejects_wrong_weights():
    sd = build_musiq("musiq").state_dict()
    with pytest.raises(ValueError, match="missing"):
        build_musiq("musiq", {k: v for k, v in sd.items() if not k.startswith("head")})
    with pytest.raises(ValueError, match="other shapes"):
        build_musiq("musiq-ava", sd)  # 1-output head where AVA needs 10
    wrapped = {"params": {"module." + k: v for k, v in sd.items()}}
    assert build_musiq("musiq", wrapped) is not None

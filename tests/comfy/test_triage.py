"""Route By Quality through ComfyUI's executor: IQA Classifier classes split the batch, empty branches are blocked."""

import pytest
import torch

from tests.comfy.conftest import image_node, iqa_node, sample_images
from tests.support.comfy_host import ExecutionFailed

NODE_ID = "AdaptBIR_RouteByQuality"
CLASSES = ("severe", "medium", "mild")


@pytest.fixture
def sink_calls(host, monkeypatch):
    """The values that AdaptBIRTest_Sink nodes received in the execute() calls that actually ran."""
    calls = []
    sink = host.node_class("AdaptBIRTest_Sink")
    original = sink.execute

    def execute(cls, value):
        calls.append(value)
        return original(value)

    monkeypatch.setattr(sink, "execute", classmethod(execute))
    return calls


def route_graph(tiny, image, weights, score_image=None):
    """Image -> IQA Classifier (on ``score_image`` or the same image) -> Route By Quality (node 3); a Sink on each
    image branch (4 severe, 5 medium, 6 mild) and one on the summary (7)."""
    p = {"1": image_node(tiny, "route", image),
         "2": iqa_node(["1", 0], weights=weights),
         "3": {"class_type": NODE_ID, "inputs": {"image": ["1", 0], "params": ["2", 0]}}}
    if score_image is not None:
        p["8"] = image_node(tiny, "route_score", score_image)
        p["2"] = iqa_node(["8", 0], weights=weights)
    for j in range(4):
        p[str(4 + j)] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", j]}}
    return p


def routed(host, ex):
    return [host.output(ex, "3", j) for j in range(3)], host.output(ex, "3", 3)


def is_blocked(value):
    from comfy_execution.graph_utils import ExecutionBlocker

    return isinstance(value, ExecutionBlocker) and value.message is None


def test_all_severe_goes_to_severe_and_other_branches_do_not_run(host, tiny, iqa_files, sink_calls):
    img = sample_images(3)
    ex = host.run(route_graph(tiny, img, "level30.safetensors"))
    (severe, medium, mild), summary = routed(host, ex)
    assert torch.equal(severe, img)
    assert is_blocked(medium) and is_blocked(mild)
    # the Sinks on the blocked branches were skipped (silently: the prompt succeeded), the others ran
    assert len(sink_calls) == 2
    assert any(v is severe for v in sink_calls) and summary in sink_calls
    assert not any(is_blocked(v) for v in sink_calls)
    assert not any(e == "execution_error" for e, _ in ex.status_messages)
    assert summary.splitlines() == [f"#{i} musiq=30.00 severe" for i in range(3)]


def test_blocked_output_node_shows_nothing(host, tiny, iqa_files):
    # a real output node (PreviewImage) on a blocked branch leaves no UI output; the live branch does
    p = route_graph(tiny, sample_images(2), "level85.safetensors")
    for j in range(3):
        p[str(4 + j)] = {"class_type": "PreviewImage", "inputs": {"images": ["3", j]}}
    ex = host.run(p)
    assert host.ui(ex, "6") is not None and len(host.ui(ex, "6")["images"]) == 2
    assert host.ui(ex, "4") is None and host.ui(ex, "5") is None


def test_spread_batch_splits_by_class_in_input_order(host, tiny, iqa_files, sink_calls):
    img = sample_images(5, seed=3)
    ex = host.run(route_graph(tiny, img, "spread.safetensors"))
    params = host.output(ex, "2", 0)
    outs, summary = routed(host, ex)
    assert len(set(params.classes)) >= 2, params.classes
    for cls, out in zip(CLASSES, outs):
        idx = [i for i, c in enumerate(params.classes) if c == cls]
        if idx:
            assert torch.equal(out, img[idx]), cls
        else:
            assert is_blocked(out), cls
    assert len(sink_calls) == 1 + sum(not is_blocked(o) for o in outs)
    assert summary.splitlines() == [f"#{i} musiq={s:.2f} {c}"
                                    for i, (s, c) in enumerate(zip(params.scores, params.classes))]


def test_one_params_entry_applies_to_the_whole_batch_channels_kept(host, tiny, iqa_files):
    img = torch.rand(3, 24, 32, 4, generator=torch.Generator().manual_seed(2))  # RGBA: alpha must survive
    ex = host.run(route_graph(tiny, img, "level85.safetensors", score_image=sample_images(1)))
    (severe, medium, mild), summary = routed(host, ex)
    assert is_blocked(severe) and is_blocked(medium)
    assert torch.equal(mild, img) and mild.shape[-1] == 4
    assert summary.splitlines() == [f"#{i} musiq=85.00 mild" for i in range(3)]


def test_params_count_mismatch_is_refused(host, tiny, iqa_files):
    with pytest.raises(ExecutionFailed) as e:
        host.run(route_graph(tiny, sample_images(3), "level30.safetensors", score_image=sample_images(2)))
    assert e.value.node_type == NODE_ID
    msg = e.value.exception_message
    assert "params" in msg and "1 or 3" in msg and "found 2" in msg

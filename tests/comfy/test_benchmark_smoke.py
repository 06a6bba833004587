"""scripts/benchmark.py: the tiny suite runs in-process on the test host (CPU) and its JSON has every row with
positive times, FLOPs, memory and the targets attached; the memory and FLOP counters it relies on agree with torch's
own measurements."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SAMPLING_ROWS = ["unet", "unet_irc", "unet_irc_csft", "unet_comfy_cn", "guided_rgb_full", "guided_rgb_checkpoint",
                 "guided_rgb_tiled", "guided_latent", "sdxl", "sdxl_supir"]
GRAD_ROWS = ["guidance_mem_full", "guidance_mem_checkpoint", "guidance_mem_tiled"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("adaptbir_benchmark", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def result(host, bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    args = bench.parse_args(["--suite", "tiny", "--quick", "--size", "64", "--threads", "1", "--silent", "--json",
                             str(path)])
    text = bench.report(bench.run_benchmark(host, args), path)
    return json.loads(path.read_text()), text


def rows_of(data, row_id, method):
    return [r for r in data["rows"] if r["row"] == row_id and r["mem_method"] == method]


def test_tiny_suite_json_has_every_row_with_positive_times_and_targets(bench, result):
    data, text = result
    print(f"benchmark (tiny, quick): {data['seconds']:.1f} s")
    assert data["skipped"] == [] and not data["cuda"] and "pending a run on a GPU" in data["note"]
    cpu = "cpu allocator peak"
    for row_id in SAMPLING_ROWS + ["musiq"]:
        (r,) = rows_of(data, row_id, cpu)
        assert r["ms"] > 0 and all(t > 0 for t in r["ms_samples"]) and r["flops"] > 0 and r["peak_bytes"] > 0, r
        assert (r["label"] in text) and r["size"] == 64 and r["suite"] == "tiny"
    for row_id in GRAD_ROWS:
        (measured,) = rows_of(data, row_id, cpu)
        (counted,) = rows_of(data, row_id, "meta count")
        assert measured["ms_grad"] > 0 and measured["flops"] > 0 and measured["peak_bytes"] > 0
        assert counted["peak_bytes"] > 0 and "bfloat16" in counted["notes"]
    for r in data["rows"]:  # every row the issue sets a target for carries it, next to its ratio or memory
        assert (r["target"] is not None) == (r["row"] in bench.TARGETS)
        if r["target"] is not None and r["target"]["kind"] != "reference":
            assert r["status"] == "n/a (tiny configs)" and r["target"]["text"] in text
        if r["row"] in bench.BASELINES:
            assert r["ratio"] > 0 and r["flop_ratio"] > 0 and r["baseline"] == bench.BASELINES[r["row"]]


def test_tiny_suite_figures_are_consistent(result):
    data, _ = result
    cpu = "cpu allocator peak"
    flops = {r["row"]: r["flops"] for r in data["rows"] if r["mem_method"] == cpu and r.get("flops")}
    assert flops["unet"] < flops["unet_irc"] < flops["unet_irc_csft"]  # each adds work
    assert flops["guided_latent"] == flops["unet_irc"]  # latent guidance has no network pass
    assert flops["guided_rgb_full"] - flops["unet_irc"] == flops["guidance_mem_full"]  # the step's extra = one grad
    assert flops["guided_rgb_checkpoint"] > flops["guided_rgb_full"]  # recomputation
    assert flops["sdxl_supir"] > flops["sdxl"]
    peak = {(r["row"], r["mem_method"]): r["peak_bytes"] for r in data["rows"]}
    for method in (cpu, "meta count"):  # checkpointing stores fewer activations than the plain backward
        assert peak[("guidance_mem_checkpoint", method)] < peak[("guidance_mem_full", method)]


def test_status_against_targets(bench):
    t = bench.TARGETS
    real = {"suite": "real", "size": 512, "dtype": "float32"}
    assert bench.status({**real, "ratio": 3.4}, t["guided_rgb_full"]) == "pass"
    assert bench.status({**real, "ratio": 3.6}, t["guided_rgb_full"]) == "fail"
    assert bench.status({**real, "size": 256, "ratio": 3.4}, t["guided_rgb_full"]) == "n/a (target at 512 px)"
    mem = {"suite": "real", "size": 1024, "dtype": "bfloat16"}
    assert bench.status({**mem, "peak_bytes": 4.4 * 2 ** 30}, t["guidance_mem_checkpoint"]) == "pass"
    assert bench.status({**mem, "peak_bytes": 4.6 * 2 ** 30}, t["guidance_mem_checkpoint"]) == "fail"
    assert bench.status({**mem, "dtype": "float32", "peak_bytes": 1}, t["guidance_mem_checkpoint"]).startswith("n/a")
    assert bench.status({**real, "ratio": 1.3}, t["unet_irc_csft"]) == "pass"


def test_live_byte_count_matches_the_cpu_allocator_and_the_meta_device(bench):
    """The meta-device count is the CPU allocator's peak for the same work (a small frozen conv stack, backward to
    the input, with and without gradient checkpointing); FLOPs equal FlopCounterMode's."""
    from torch.utils.checkpoint import checkpoint
    from torch.utils.flop_counter import FlopCounterMode

    def work(device, ckpt):
        g = torch.Generator().manual_seed(0)
        convs = [torch.nn.Conv2d(16, 16, 3, padding=1).requires_grad_(False) for _ in range(4)]
        if device == "meta":
            convs = [c.to("meta") for c in convs]
        x = (torch.randn(1, 16, 64, 64, generator=g) if device == "cpu" else torch.empty(1, 16, 64, 64,
                                                                                            device="meta"))

        def run():
            leaf = x.detach().requires_grad_(True)
            h = leaf * 1.0
            for c in convs:
                h = checkpoint(lambda t, c=c: torch.nn.functional.silu(c(t)), h, use_reentrant=False) if ckpt \
                    else torch.nn.functional.silu(c(h))
            (grad,) = torch.autograd.grad(h.square().mean(), leaf)
            return grad
        return run

    class _Dev:
        cuda = False

        def sync(self):
            pass

    for ckpt in (False, True):
        run_cpu = work("cpu", ckpt)
        run_cpu()
        with bench.LiveBytes() as on_cpu:
            _, flops, measured = bench.instrumented(run_cpu, _Dev())
        run_meta = work("meta", ckpt)
        with bench.LiveBytes() as on_meta:
            run_meta()
        with FlopCounterMode(display=False) as fc:
            run_cpu()
        assert on_meta.peak == on_cpu.peak > 0
        assert abs(measured - on_cpu.peak) <= 0.05 * measured  # kernels' own scratch buffers are not tensors
        assert flops == fc.get_total_flops() > 0

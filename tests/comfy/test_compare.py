"""The paper's protocol (batch/compare.py) with tiny models: three ground-truth images degraded with Degrade Image
(fixed seeds), restored by SUPIR with and without its LoRAs through the batch runner, and the table of PSNR / SSIM /
LPIPS / MUSIQ; the batch runner's --metrics-gt option writes the same per-image CSV."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.comfy.conftest import write_kohya_lora
from tests.comfy.test_metrics_node import lpips_files  # noqa: F401  (module fixture)
from tests.comfy.test_workflows import REPO, write_tiny_files

GT_SIZE = 32
pytestmark = pytest.mark.slow


def tiny_supir_workflow(path):
    """workflows/supir_lora.json with the tiny SDXL in place of the checkpoint (same outputs)."""
    wf = json.loads((REPO / "workflows" / "supir_lora.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["type"] = "AdaptBIRTest_TinyCheckpointLoader"
            node["widgets_values"] = ["sdxl", 0]
            node["properties"].pop("models", None)
    path.write_text(json.dumps(wf))
    return str(path)


@pytest.fixture(scope="module")
def protocol(host, pack, tiny, sm, sdxl, iqa_files, lpips_files, tmp_path_factory):  # noqa: F811
    # MUSIQ: the session's KonIQ file (iqa_files); rewriting it here would change other modules' scores
    write_tiny_files(host.models_dir, host.workdir / "input", tiny, sm, sdxl)
    write_kohya_lora(host, "your_sdxl_face_lora.safetensors", [("input_blocks_1_0_out_layers_3", 32)], 1, 0.5)
    write_kohya_lora(host, "your_sdxl_landscape_lora.safetensors", [("output_blocks_8_0_out_layers_3", 32)], 2, 0.5)
    root = tmp_path_factory.mktemp("compare")
    gt = root / "gt"
    gt.mkdir()
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:GT_SIZE, 0:GT_SIZE] / GT_SIZE
    for i in range(3):
        smooth = np.stack([xx, yy, (xx * yy) ** 0.5], -1) * (0.5 + 0.2 * i)
        img = np.clip(smooth + 0.3 * rng.random((GT_SIZE, GT_SIZE, 3)), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(gt / f"photo{i}.png")
    wf = tiny_supir_workflow(root / "supir_tiny.json")
    compare = pack("batch.compare")
    fast = "BasicScheduler.steps=2"
    pipelines = [f"SUPIR+LoRA={wf}@{fast}", f"SUPIR={wf}@{fast},AdaptBIR_SUPIRLoRA.strength_model=0.0"]
    rows, text = compare.run_compare(str(gt), str(root / "work"), pipelines, degradation="codeformer_diffbir",
                                     seed=10, musiq_weights="none", progress=False)  # MUSIQ: the runner test
    return {"rows": rows, "text": text, "gt": gt, "work": root / "work", "wf": wf, "pipelines": pipelines}


def test_table_of_two_pipelines_on_three_degraded_images(protocol, pack, capsys):
    """The command's main() on the same folders: the degraded set comes out the same (fixed seeds), so the
    finished results are kept and only measured again; it prints the table run_compare returned."""
    argv = [str(protocol["gt"]), str(protocol["work"]), *protocol["pipelines"], "--degradation",
            "codeformer_diffbir", "--seed", "10", "--musiq-weights", "none"]
    assert pack("batch.compare").main(argv) == 0
    out = capsys.readouterr().out
    assert out.strip() == protocol["text"].strip()
    lines = out.splitlines()
    assert lines[0].startswith("3 ground-truth images") and "codeformer_diffbir" in lines[0]
    assert lines[1].split() == ["pipeline", "PSNR↑", "SSIM↑", "PSNR_Y↑", "SSIM_Y↑", "LPIPS↓"]
    assert lines[2].split()[0] == "SUPIR+LoRA" and lines[3].split()[0] == "SUPIR"
    a, b = protocol["rows"]
    assert a["images"] == b["images"] == 3
    assert all(isinstance(r[c], float) for r in (a, b) for c in ("psnr", "ssim", "psnr_y", "ssim_y", "lpips"))
    assert a["musiq"] is None  # skipped here (costly on the CPU); measured in the batch runner test below
    assert a["psnr"] != pytest.approx(b["psnr"], abs=1e-6)  # the LoRA changes the restorations
    assert any("resized to their ground truth" in ln for ln in lines)  # SUPIR's workflow restores at x2


def test_numbers_are_the_metrics_of_the_saved_results(protocol):
    """Recompute PSNR-Y of one pipeline from the files: the results resized to the ground truth, then modules."""
    from modules import metrics

    vals = []
    for i in range(3):
        gt = torch.from_numpy(np.asarray(Image.open(protocol["gt"] / f"photo{i}.png"), np.float32) / 255)
        res = torch.from_numpy(np.asarray(Image.open(protocol["work"] / "SUPIR" / f"photo{i}.png"), np.float32) / 255)
        assert res.shape[:2] == (2 * GT_SIZE, 2 * GT_SIZE)
        res = torch.nn.functional.interpolate(res.permute(2, 0, 1)[None], size=(GT_SIZE, GT_SIZE), mode="bicubic",
                                              antialias=True, align_corners=False).clamp(0, 1)
        vals.append(float(metrics.psnr(res, gt.permute(2, 0, 1)[None], y_channel=True)))
    assert protocol["rows"][1]["psnr_y"] == pytest.approx(sum(vals) / 3, abs=1e-6)
    with open(protocol["work"] / "SUPIR" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["photo0.png", "photo1.png", "photo2.png", "mean"]
    assert float(rows[1]["psnr_y"]) == pytest.approx(vals[1], abs=1e-5)


def test_degraded_set_is_degrade_image_with_fixed_seeds(protocol, host):
    node = host.node_class("AdaptBIR_DegradeImage")
    gt = torch.from_numpy(np.asarray(Image.open(protocol["gt"] / "photo2.png"), np.float32) / 255)[None]
    want = node.execute(gt, pipeline="codeformer_diffbir", seed=12, scale=4.0).args[0][0]
    got = np.asarray(Image.open(protocol["work"] / "lq" / "photo2.png"))
    assert np.array_equal(got, (want.numpy() * 255).round().astype(np.uint8))


def test_batch_runner_metrics_option_writes_the_csv(protocol, pack, capsys):
    runner = pack("batch.runner")
    out = protocol["work"] / "SUPIR+LoRA"
    (out / "metrics.csv").unlink()
    # every result exists, so the runner skips them and only measures
    rc = runner.main([protocol["wf"], str(protocol["work"] / "lq"), str(out), "--metrics-gt", str(protocol["gt"])])
    assert rc == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["psnr"]) == pytest.approx(protocol["rows"][0]["psnr"], abs=1e-5)
    assert float(rows[-1]["lpips"]) == pytest.approx(protocol["rows"][0]["lpips"], abs=1e-5)
    assert float(rows[-1]["musiq"]) == pytest.approx(55.0, abs=1e-3)  # the session KonIQ file predicts 55 always
    assert "mean" in capsys.readouterr().out
    rc = runner.main([protocol["wf"], str(protocol["work"] / "lq"), str(out), "--metrics-gt", str(out.parent / "lq"
                                                                                                  / "missing")])
    assert rc == 2


def test_command_line_help():
    """compare.py is wired to batch/compare.py's parser (no ComfyUI needed for --help)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(REPO / "compare.py"), "--help"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0 and "label=workflow.json" in res.stdout and "--lq-scale" in res.stdout


def test_bad_pipeline_specs_are_named(pack, host):
    compare = pack("batch.compare")
    with pytest.raises(compare.WorkflowError, match="expected label=workflow.json"):
        compare.parse_pipeline("workflows/supir_lora.json")
    wf = json.loads((REPO / "workflows" / "supir_lora.json").read_text())
    with pytest.raises(compare.WorkflowError, match="has no widget 'stepz'"):
        compare.apply_overrides(wf, [("BasicScheduler", "stepz", 2)], host.nodes.NODE_CLASS_MAPPINGS, "x")
    with pytest.raises(compare.WorkflowError, match="expected a KSampler node"):
        compare.apply_overrides(wf, [("KSampler", "steps", 2)], host.nodes.NODE_CLASS_MAPPINGS, "x")

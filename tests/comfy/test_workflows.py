"""The example workflows against the real page and the executor.

* Static: every node type exists, every widget value of a pack node fits its schema (count, type, range/options).
* Browser (real ComfyUI 0.3.75 server + headless Chromium): each workflow loads with no missing node and no error,
  the template browser lists them, and the page's own ``graphToPrompt`` converts each to the API format.
* Executor: each converted prompt, with tiny models in place of the real files, runs in ComfyUI's executor.
* One workflow is queued from the page with tiny models and its output image appears on its Save Image node.
Screenshots go to ``tests/artifacts/``.
"""

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.comfy.conftest import KONIQ_FILE, write_kohya_lora
from tests.conftest import musiq_with_level
from tests.support.browser import (
    chromium_path,
    close_dialogs,
    comfy_page,
    comfy_server,
    http_json,
    page_problems,
)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
ARTIFACTS = REPO / "tests" / "artifacts"
CHECKPOINT_KIND = {"v2-1_512-ema-pruned.safetensors": "sd2-eps", "sd2.1-base-zsnr-laionaes5.ckpt": "sd2-v-zsnr",
                   "sd_xl_base_1.0_0.9vae.safetensors": "sdxl"}
FAST = {"steps": 2}  # fewer sampling steps for the tiny runs


def load(path):
    return json.loads(path.read_text())


# What the page shows of a loaded workflow: every pair of overlapping node boxes (title bar included), the pack
# nodes' output labels, the notes' text and ModelSamplingDiscrete's widgets.
LAYOUT_JS = """() => {
  const H = LiteGraph.NODE_TITLE_HEIGHT;
  const box = n => [n.pos[0], n.pos[1] - H, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
  const nodes = app.graph._nodes, overlaps = [];
  for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {
    const a = box(nodes[i]), b = box(nodes[j]);
    if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) overlaps.push([nodes[i].title, nodes[j].title]);
  }
  return {
    overlaps,
    labels: nodes.filter(n => n.type.startsWith("AdaptBIR_"))
      .map(n => [n.type, (n.outputs || []).map(o => o.label || o.localized_name || o.name)]),
    notes: nodes.filter(n => n.type === "MarkdownNote").map(n => n.widgets[0].value),
    msd: nodes.filter(n => n.type === "ModelSamplingDiscrete").map(n => n.widgets.map(w => w.value)),
  };
}"""


def test_workflows_exist():
    assert {p.stem for p in WORKFLOWS} >= {"adaptbir_sd21", "diffbir_v2_guidance", "diffbir_v21_zsnr", "supir_lora",
                                           "quality_triage"}


def _widget_inputs(cls):
    """[(name, spec)] of the inputs the page shows as widgets, in its order, with the extra seed-control widget."""
    types = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                out.append((name, spec))
                if opts.get("control_after_generate"):
                    out.append(("control_after_generate", (["fixed", "increment", "decrement", "randomize"],)))
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_node_types_exist_and_pack_widgets_fit_their_schema(host, path):
    wf = load(path)
    for node in wf["nodes"]:
        if node["type"] == "MarkdownNote":  # the page's own note node (no backend class)
            continue
        assert node["type"] in host.nodes.NODE_CLASS_MAPPINGS, (path.name, node["type"])
        if not node["type"].startswith("AdaptBIR"):
            continue
        cls = host.node_class(node["type"])
        widgets = _widget_inputs(cls)
        values = node.get("widgets_values") or []
        assert len(values) == len(widgets), (node["type"], values, [w[0] for w in widgets])
        for (name, spec), value in zip(widgets, values):
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list) or kind == "COMBO":
                assert isinstance(value, str), (node["type"], name, value)
                options = kind if isinstance(kind, list) else opts.get("options", [])
                # file lists depend on the user's folders; fixed option lists must contain the value
                if not name.endswith("_name") and name not in ("weights",):
                    assert value in options, (node["type"], name, value, options)
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (node["type"], name, value)
                assert opts.get("min", -1e30) <= value <= opts.get("max", 1e30), (node["type"], name, value)
                if kind == "INT":
                    assert float(value).is_integer(), (node["type"], name, value)
            elif kind == "STRING":
                assert isinstance(value, str)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)


def test_loaders_carry_download_info():
    for path in WORKFLOWS:
        for node in load(path)["nodes"]:
            for m in node.get("properties", {}).get("models", []):
                assert m["url"].startswith("https://") and m["name"] in m["url"] and m["directory"], m
                assert m["name"] in (node.get("widgets_values") or []) or node["type"] == "AdaptBIR_IQAClassifier"


# ----------------------------------------------------------------------------------------------------------------
# tiny stand-ins under the real file names
# ----------------------------------------------------------------------------------------------------------------

def write_tiny_files(models: Path, inputs: Path, tiny, sm_module=None, sdxl=None, musiq_state=None):
    """Tiny weights with the workflows' file names; returns nothing. ``models`` is a ComfyUI models folder."""
    from tests.comfy.test_cleaners import tiny_swinir

    from tests.comfy.test_hypir import tiny_hypir_state_dict

    for sub in ("diffbir", "iqa", "supir", "loras", "hypir"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    torch.save(tiny_hypir_state_dict(tiny), models / "hypir" / "HYPIR_sd2.pth")
    irc = tiny.tiny_ircontrolnet_state_dict(0)
    for name in ("v2.pth", "DiffBIR_v2.1.pt"):
        torch.save(irc, models / "diffbir" / name)
    for name in ("realesrgan_s4_swinir_100k.pth", "face_swinir_v1.ckpt"):
        torch.save({k: v.contiguous() for k, v in tiny_swinir().state_dict().items()}, models / "diffbir" / name)
    from tests.comfy.test_faces import tiny_detector_state_dict, tiny_parser_state_dict

    (models / "facedetection").mkdir(parents=True, exist_ok=True)
    torch.save(tiny_detector_state_dict(), models / "facedetection" / "detection_Resnet50_Final.pth")
    torch.save(tiny_parser_state_dict(), models / "facedetection" / "parsing_parsenet.pth")
    meta = {"adaptbir_kind": "csft", "format_version": "1", "base_model": "tiny-sd2", "hint_convention": "adaptbir"}
    save_file(tiny.tiny_csft_state_dict(0), str(models / "diffbir" / "adaptbir_csft.safetensors"), metadata=meta)
    if musiq_state is not None:
        # the level of the session's KonIQ file (conftest iqa_files): rewriting it here changes no other test's score
        torch.save({"params": musiq_with_level(musiq_state, 55.0)}, models / "iqa" / KONIQ_FILE)
    if sm_module is not None:
        from tests.comfy.test_supir import tiny_adapter_sd

        sd = {"model." + k if k.startswith("control_model.") else "model.diffusion_model." + k: v
              for k, v in tiny_adapter_sd(sm_module, sdxl, tiny, 7).items()}
        sd.update({"first_stage_model.denoise_encoder." + k[len("encoder."):]: v
                   for k, v in tiny._vae_weights(3, 4).items() if k.startswith("encoder.")})
        save_file({k: v.contiguous() for k, v in sd.items()}, str(models / "supir" / "SUPIR-v0Q_fp16.safetensors"))
    rng = np.random.default_rng(0)
    for name in ("example.png", "example2.png", "example3.png"):
        Image.fromarray((rng.random((32, 36, 3)) * 255).astype(np.uint8)).save(inputs / name)


def tiny_prompt(prompt: dict) -> dict:
    """The API prompt with tiny stand-ins for the model files the tests cannot download, and fewer steps."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = "AdaptBIRTest_TinyCheckpointLoader"
            node["inputs"] = {"kind": CHECKPOINT_KIND[inputs["ckpt_name"]], "seed": 0}
        elif node["class_type"] == "VAELoader":
            node["class_type"] = "AdaptBIRTest_TinyVAE"
            node["inputs"] = {"seed": 1, "latent_channels": 4}
        elif node["class_type"] == "AdaptBIR_HYPIRRestore":  # 64 px tiles: the tiny images stay tiny
            inputs.update(tile_size=64, tile_stride=32)
        for key, value in FAST.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return out


@pytest.fixture(scope="module")
def page_results(tmp_path_factory, tiny, musiq_random_state, sm, sdxl):
    """Load every workflow in the real page: node/widget errors, template list, converted prompts, screenshots,
    and one workflow queued from the page with tiny models."""
    if chromium_path() is None:
        pytest.fail("Chromium not found: install the distribution's package (apt-get install chromium)")
    root = tmp_path_factory.mktemp("page")
    models = root / "models"
    (root / "input").mkdir()
    write_tiny_files(models, root / "input", tiny)
    folders = {"diffbir": "models/diffbir", "iqa": "models/iqa"}
    ARTIFACTS.mkdir(exist_ok=True)
    res = {"prompts": {}, "errors": {}, "problems": {}, "layout": {}, "thumbnails": {}}
    with comfy_server(root, folders) as base, comfy_page(base) as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        res["templates"] = http_json(f"{base}/workflow_templates")
        res["object_info"] = http_json(f"{base}/object_info")
        for path in WORKFLOWS:
            dialogs.clear()
            # the file as the template browser fetches it (and its card picture from the same folder)
            url = f"{base}/api/workflow_templates/ComfyUI-AdaptBIR/{path.stem}"
            with urllib.request.urlopen(url + ".jpg", timeout=10) as r:
                res["thumbnails"][path.stem] = (r.headers.get("Content-Type"), len(r.read()))
            page.evaluate("async (url) => app.loadGraphData(await (await fetch(url)).json())", url + ".json")
            page.wait_for_timeout(500)
            res["layout"][path.stem] = page.evaluate(LAYOUT_JS)
            res["problems"][path.stem] = page.evaluate("""() => app.graph._nodes
                .filter(n => !LiteGraph.registered_node_types[n.type] || n.has_errors)
                .map(n => n.type)""")
            res["errors"][path.stem] = list(dialogs) + page_problems(page)
            res["prompts"][path.stem] = page.evaluate("async () => (await app.graphToPrompt()).output")
            close_dialogs(page, settle_ms=400)  # the missing-models dialog, before the screenshot
            page.evaluate("() => document.querySelectorAll('.p-toast-message-content button').forEach(b => b.click())")
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / f"workflow_{path.stem}.png"))
        # queue DiffBIR v2 from the page with the tiny checkpoint: its image must appear on the Save Image node
        name = "diffbir_v2_guidance"
        page.evaluate("(wf) => app.loadGraphData(wf)", load(REPO / "workflows" / f"{name}.json"))
        page.wait_for_timeout(500)
        # swap the checkpoint loader for the tiny one (same outputs) and queue from the page itself
        page.evaluate("""() => {
            const old = app.graph._nodes.find(n => n.type === "CheckpointLoaderSimple");
            const tiny = LiteGraph.createNode("AdaptBIRTest_TinyCheckpointLoader");
            app.graph.add(tiny);
            tiny.pos = [old.pos[0], old.pos[1]];
            old.outputs.forEach((out, slot) => (out.links || []).slice().forEach(id => {
                const link = app.graph.links[id] ?? app.graph.links.get?.(id);
                tiny.connect(slot, app.graph.getNodeById(link.target_id), link.target_slot);
            }));
            app.graph.remove(old);
            for (const n of app.graph._nodes) {
                const steps = (n.widgets || []).find(w => w.name === "steps");
                if (steps) steps.value = 2;
            }
        }""")
        page.evaluate("() => app.queuePrompt(0, 1)")
        save_id = next(k for k, v in res["prompts"][name].items() if v["class_type"] == "SaveImage")
        # the page draws a node's images when the node is on screen: show the Save Image node
        page.evaluate(f"() => {{ app.canvas.centerOnNode(app.graph.getNodeById({save_id})); app.canvas.setDirty(true, true); }}")
        page.wait_for_function(f"""() => {{
            const out = app.nodeOutputs && app.nodeOutputs["{save_id}"];
            const n = app.graph.getNodeById({save_id});
            return out && out.images && out.images.length === 1 && n.imgs && n.imgs.length > 0 && n.imgs[0].complete;
        }}""", timeout=300_000)  # a tiny 2-step run took 120 s on a loaded 2-core machine
        res["shown"] = page.evaluate(f"() => app.graph.getNodeById({save_id}).imgs[0].src")
        close_dialogs(page, settle_ms=400)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"queued_{name}.png"))
        # the template browser itself: Templates -> EXTENSIONS -> ComfyUI-AdaptBIR
        page.get_by_text("Templates", exact=True).first.click()
        page.locator(".p-dialog").get_by_text("ComfyUI-AdaptBIR", exact=True).first.click()
        page.wait_for_timeout(1500)
        res["template_dialog"] = page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog'))"
                                               ".map(d => d.innerText).join('\\n')")
        # the cards below the dialog's fold load their pictures when scrolled to: scroll down step by step and
        # keep every picture seen (by card), so a workflow added past the first rows is checked too
        seen = {}
        for _ in range(6):
            for alt, src, w in page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog img'))"
                                             ".map(i => [i.alt, i.src, i.naturalWidth])"):
                if w or alt not in seen:
                    seen[alt] = [alt, src, w]
            page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog *'))"
                          ".filter(e => e.scrollHeight > e.clientHeight + 4 && "
                          "['auto', 'scroll'].includes(getComputedStyle(e).overflowY))"
                          ".forEach(e => { e.scrollTop += 400; })")
            page.wait_for_timeout(700)
        res["template_images"] = list(seen.values())
        page.screenshot(path=str(ARTIFACTS / "template_browser.png"))
        close_dialogs(page, settle_ms=400)
    return res


@pytest.mark.browser
def test_page_loads_every_workflow_without_missing_nodes_or_errors(page_results):
    for name in (p.stem for p in WORKFLOWS):
        assert page_results["problems"][name] == [], name
        shown = page_results["errors"][name]
        # the only dialog allowed is the page's missing-models dialog, listing the loaders' properties.models
        assert all(t.startswith("Missing Models") for t in shown), (name, shown)
        # the page's server has tiny files for models/diffbir only: the other loaders' files (those chosen in a
        # widget; the page matches properties.models against widget values) are reported missing
        wanted = {m["name"] for n in load(REPO / "workflows" / f"{name}.json")["nodes"]
                  for m in n.get("properties", {}).get("models", [])
                  if m["directory"] != "diffbir" and m["name"] in (n.get("widgets_values") or [])}
        assert all(any(m in t for t in shown) for m in wanted), (name, wanted, shown)
        assert bool(wanted) == bool(shown), (name, shown)
        assert (ARTIFACTS / f"workflow_{name}.png").stat().st_size > 10_000


@pytest.mark.browser
def test_each_workflow_explains_itself_in_the_page(page_results):
    """Loaded as the template browser loads it: outputs show their display names, a note says what the workflow
    does and which files it needs (with links), no two nodes overlap, and a thumbnail sits beside the file."""
    info = page_results["object_info"]
    # supir_lora_training is laid out for ComfyUI 0.3.75's Train LoRA node; newer hosts changed that core node
    # (0.12.1: no MODEL output, two more widgets, so the node is taller there): its layout is checked on 0.3.75 only
    core_train_changed = info.get("TrainLoraNode", {}).get("output", ["MODEL"])[0] != "MODEL"
    for name in (p.stem for p in WORKFLOWS):
        layout = page_results["layout"][name]
        if not (core_train_changed and name == "supir_lora_training"):
            assert layout["overlaps"] == [], (name, layout["overlaps"])
        # one label row per pack node in the file (supir_lora_training uses only core's training nodes: none)
        pack_nodes = [n for n in json.loads((REPO / "workflows" / f"{name}.json").read_text())["nodes"]
                      if n["type"].startswith("AdaptBIR_")]
        assert len(layout["labels"]) == len(pack_nodes), (name, layout["labels"])
        assert layout["labels"] or name == "supir_lora_training", name
        for node_type, shown in layout["labels"]:
            assert shown == info[node_type]["output_name"], (name, node_type, shown)
            assert not set(shown) & set(info[node_type]["output"]), (name, node_type, shown)  # not type names
        (note,) = layout["notes"]
        assert note.startswith("## ") and "### Files" in note and "### Tweak first" in note, (name, note)
        assert "https://" in note and "Licence" in note, (name, note)
        kind, size = page_results["thumbnails"][name]
        assert kind == "image/jpeg" and size > 5_000, (name, kind, size)
    assert page_results["layout"]["diffbir_v21_zsnr"]["msd"] == [["v_prediction", True]]
    assert all(not page_results["layout"][p.stem]["msd"] for p in WORKFLOWS if p.stem != "diffbir_v21_zsnr")
    # the template browser shows each card's picture: the page fetches <stem>.jpg and shows it as a blob; each
    # loaded picture has the thumbnails' width (a missing one would not load: natural width 0)
    width = Image.open(WORKFLOWS[0].with_suffix(".jpg")).size[0]
    loaded = [w for _, _, w in page_results["template_images"] if w == width]
    assert len(loaded) >= len(WORKFLOWS), page_results["template_images"]


@pytest.mark.browser
def test_template_browser_lists_the_pack_workflows(page_results):
    listed = page_results["templates"].get("ComfyUI-AdaptBIR", [])
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)
    shown = page_results["template_dialog"]
    assert f"Showing {len(WORKFLOWS)} of {len(WORKFLOWS)} templates" in shown
    assert all(p.stem in shown for p in WORKFLOWS), shown


@pytest.mark.browser
def test_queued_workflow_shows_its_image_in_the_page(page_results):
    assert "/view?" in page_results["shown"] and "diffbir" in page_results["shown"]
    assert (ARTIFACTS / "queued_diffbir_v2_guidance.png").is_file()


@pytest.mark.browser
@pytest.mark.parametrize("name", [p.stem for p in WORKFLOWS])
def test_each_converted_workflow_runs_in_the_executor(host, tiny, musiq_random_state, sm, sdxl, page_results, name):
    write_tiny_files(host.models_dir, host.workdir / "input", tiny, sm, sdxl, musiq_random_state)
    write_kohya_lora(host, "your_sdxl_face_lora.safetensors", [("input_blocks_1_0_out_layers_3", 32)], 1, 0.2)
    write_kohya_lora(host, "your_sdxl_landscape_lora.safetensors", [("output_blocks_8_0_out_layers_3", 32)], 2, 0.2)
    prompt = tiny_prompt(page_results["prompts"][name])
    if name == "supir_lora_training":  # core's training nodes: small crops, and the LoRA file is the output
        from tests.comfy.test_lora_training import check_training_run

        check_training_run(host, prompt)
        return
    ex = host.run(prompt)
    for k in (k for k, v in prompt.items() if v["class_type"] == "AdaptBIR_RestorationMetrics"):
        assert host.ui(ex, k)["text"][0].split()[:3] == ["image", "PSNR↑", "SSIM↑"]  # its table on the node
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    images = [im for k in saves for im in (host.ui(ex, k) or {}).get("images", [])]
    if name == "quality_triage":  # three images routed to the branches of their classes
        assert len(images) == 3
        return
    assert len(images) == 1
    out = Image.open(host.workdir / "output" / images[0].get("subfolder", "") / images[0]["filename"])
    scale = 4 if name.startswith("diffbir") and name != "diffbir_faces" else 1 if name.startswith("hypir") else 2
    assert out.size == (36 * scale, 32 * scale)


@pytest.mark.browser
@pytest.mark.parametrize("name", [p.stem for p in WORKFLOWS])
def test_batch_runner_conversion_equals_the_page(host, pack, page_results, name):
    """batch/workflow.py's UI -> API conversion gives exactly what the page's graphToPrompt gives."""
    to_prompt = pack("batch.workflow").to_prompt
    ours = to_prompt(load(REPO / "workflows" / f"{name}.json"), host.nodes.NODE_CLASS_MAPPINGS)
    page = page_results["prompts"][name]
    assert {k: (v["class_type"], v["inputs"]) for k, v in ours.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in page.items()}


def test_workflows_saved_before_a_node_gained_widgets_still_convert(host, pack):
    """A saved workflow stores fewer widget values than a node that later gained (trailing) widgets: the batch
    runner fills in their defaults like the page does; extra values are still refused."""
    workflow = pack("batch.workflow")
    wf = load(REPO / "workflows" / "adaptbir_sd21.json")
    node = next(n for n in wf["nodes"] if n["type"] == "AdaptBIR_DualEncoderInterpolate")
    full = workflow.to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS)[str(node["id"])]["inputs"]
    node["widgets_values"] = node["widgets_values"][:3]  # k, pad_multiple, tile_size: as saved before min_side
    old = workflow.to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS)[str(node["id"])]["inputs"]
    assert old["min_side"] == 0 and old == {**full, "min_side": 0}
    node["widgets_values"] = node["widgets_values"] + [0, 0]
    with pytest.raises(workflow.WorkflowError, match="widget values"):
        workflow.to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS)


# All five are kept; two are run (each costs a tiny run): the IQA 'auto' widget with the old triage images, and
# DiffBIR v2.1 without ModelSamplingDiscrete (its control now warns, and it must still run)
BEFORE = [REPO / "tests" / "fixtures" / "workflows_before_i15" / f"{name}.json"
          for name in ("quality_triage", "diffbir_v21_zsnr")]


@pytest.mark.parametrize("path", BEFORE, ids=lambda p: p.stem)
def test_workflows_saved_before_issue_15_still_run(host, pack, tiny, musiq_random_state, sm, sdxl, path):
    """The shipped workflows as saved at main before the outputs got display names, the IQA widget a file name and
    the loaders their validation (IQA weights 'auto', links by slot): converted like the page does (the batch
    runner's conversion, which the browser test pins to the page's) and run with tiny models."""
    write_tiny_files(host.models_dir, host.workdir / "input", tiny, sm, sdxl, musiq_random_state)
    write_kohya_lora(host, "your_sdxl_face_lora.safetensors", [("input_blocks_1_0_out_layers_3", 32)], 1, 0.2)
    write_kohya_lora(host, "your_sdxl_landscape_lora.safetensors", [("output_blocks_8_0_out_layers_3", 32)], 2, 0.2)
    wf = load(path)
    prompt = tiny_prompt(pack("batch.workflow").to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS))
    if path.stem == "quality_triage":
        assert any(v["inputs"].get("weights") == "auto" for v in prompt.values())
    ex = host.run(prompt)
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    images = [im for k in saves for im in (host.ui(ex, k) or {}).get("images", [])]
    assert len(images) == (3 if path.stem == "quality_triage" else 1), path.stem

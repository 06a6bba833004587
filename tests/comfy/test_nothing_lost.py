"""Nothing lost (issue 9, item 5): the batch runner never replaces an input and never leaves a partial output;
training checkpoints survive a crash in the middle of writing the next one; ComfyUI's cache re-runs a pack node
exactly when one of its inputs or its model file changes."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.comfy.conftest import write_kohya_lora
from tests.comfy.test_batch import images, tiny_workflow
from tests.comfy.test_cancel_and_memory_modes import TinyTask
from tests.comfy.test_workflows import write_tiny_files


@pytest.fixture(scope="module")
def runner(pack, host, tiny):
    write_tiny_files(host.models_dir, host.workdir / "input", tiny)
    return pack("batch.runner")


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------------------------------- batch runner


def test_batch_refuses_to_write_into_the_input_folder(runner, tmp_path):
    src = images(tmp_path / "in", 2)
    before = snapshot(src)
    for out in (src, tmp_path / "link"):
        if out.name == "link":
            out.symlink_to(src, target_is_directory=True)  # the same folder under another name
        with pytest.raises(runner.WorkflowError, match="output folder: expected a folder other than the input"):
            runner.run_batch(str(tiny_workflow(tmp_path, steps=1)), str(src), str(out), progress=False)
    assert snapshot(src) == before  # no input replaced, nothing added


def test_batch_refuses_two_inputs_with_the_same_output_name(runner, tmp_path):
    src = images(tmp_path / "in", 1)
    Image.open(src / "img0.png").convert("RGB").save(src / "img0.jpg")
    with pytest.raises(runner.WorkflowError, match=r"img0.jpg and img0.png that would both be saved as img0.png"):
        runner.run_batch(str(tiny_workflow(tmp_path, steps=1)), str(src), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_crash_while_saving_leaves_no_partial_output(runner, tmp_path, monkeypatch):
    """The PNG write dies half way (a partial file is on disk when it fails): no file under the output name, no
    work folder, an existing unrelated file untouched; a re-run then finishes the image."""
    wf, src, out = tiny_workflow(tmp_path, steps=1), images(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    real_save = Image.Image.save

    def crashing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)  # a partial PNG on disk
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Image.Image, "save", crashing_save)
    with pytest.raises(RuntimeError, match="img0.png: SaveImage: disk full"):
        runner.run_batch(str(wf), str(src), str(out), progress=False)
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "kept"
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert runner.run_batch(str(wf), str(src), str(out), progress=False) == {"done": ["img0.png"], "skipped": []}
    with Image.open(out / "img0.png") as im:
        im.load()  # complete and readable


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(pack, tmp_path, monkeypatch):
    loop = pack("training.loop")

    def settings(steps):
        return loop.TrainSettings(out_dir=str(tmp_path / "run"), steps=steps, lr=1e-2, save_every=2, val_every=0,
                                  device="cpu", keep_checkpoints=1)

    full = loop.run(TinyTask(), loop.TrainSettings(out_dir=str(tmp_path / "full"), steps=6, lr=1e-2, save_every=2,
                                                   val_every=0, device="cpu"))
    loop.run(TinyTask(), settings(2))  # step 2 saved
    real_save = torch.save

    def dies_half_way(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04" + b"\0" * 64)  # the start of a zip archive, then the process dies
        raise KeyboardInterrupt("killed while writing (simulated)")

    monkeypatch.setattr(loop.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        loop.run(TinyTask(), settings(6))  # dies writing step 4 (and again in its Ctrl-C save)
    monkeypatch.setattr(loop.torch, "save", real_save)
    paths = loop.checkpoint_paths(str(tmp_path / "run"))
    assert [os.path.basename(p) for p in paths] == ["step_00000002.pt"]  # the partial file is not a checkpoint
    ckpt = torch.load(paths[0], map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2
    resumed = loop.run(TinyTask(), settings(6))
    assert resumed["start"] == 2 and resumed["losses"] == full["losses"][2:]


def test_exported_weights_are_written_atomically(pack, tiny, tmp_path, monkeypatch):
    """Stage III's final csft.safetensors: a crash while writing leaves the previous file intact."""
    import safetensors.torch

    stage3 = pack("training.stage3")
    task = stage3.CSFTTask.__new__(stage3.CSFTTask)  # export() needs only these three attributes
    sd = dict(tiny.tiny_csft_state_dict(0))
    task.trainable_state = lambda: sd
    task.base_model = "tiny-sd2"
    task.hint_convention = "adaptbir"
    path = task.export(str(tmp_path))
    before = (tmp_path / "csft.safetensors").read_bytes()

    def dies(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 10)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(OSError):
        task.export(str(tmp_path))
    assert (tmp_path / "csft.safetensors").read_bytes() == before and path.endswith("csft.safetensors")


# ------------------------------------------------------------------------------------------------------- caching


def executed(host, prompt) -> set:
    """The nodes of ``prompt`` the last run executed (ComfyUI reports the cached ones)."""
    cached = {n for ev, d in host.last_executor.status_messages if ev == "execution_cached" for n in d["nodes"]}
    return set(prompt) - cached


def touch(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_cache_reruns_a_node_exactly_when_an_input_or_its_file_changes(host, tiny, irc_file):
    import execution

    ex = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                  cache_args={"lru": 0, "ram": 0})
    lora = write_kohya_lora(host, "cache_lora.safetensors", [("input_blocks_1_0_out_layers_3", 32)], seed=2,
                            scale=0.1)

    def prompt(steps):
        return {
            "1": {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": irc_file}},
            "2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
            "3": {"class_type": "AdaptBIR_SpacedDDPMScheduler", "inputs": {"model": ["2", 0], "steps": steps}},
            "4": {"class_type": "AdaptBIR_SUPIRLoRA", "inputs": {
                "lora_name": lora, "strength_model": 1.0, "strength_clip": 0.0, "strength_adapter": 0.0}},
            "11": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["1", 0]}},
            "13": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", 0]}},
            "14": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["4", 0]}},
        }

    host.run(prompt(4), executor=ex)
    assert {"1", "2", "3", "4"} <= executed(host, prompt(4))
    host.run(prompt(4), executor=ex)
    assert executed(host, prompt(4)) & {"1", "2", "3", "4"} == set()  # nothing changed: everything cached
    host.run(prompt(5), executor=ex)
    assert executed(host, prompt(4)) & {"1", "2", "3", "4"} == {"3"}  # a widget changed: that node only
    touch(host.models_dir / "diffbir" / irc_file)
    host.run(prompt(5), executor=ex)
    assert executed(host, prompt(4)) & {"1", "2", "3", "4"} == {"1"}  # its model file changed: the loader only
    touch(host.models_dir / "loras" / lora)
    host.run(prompt(5), executor=ex)
    assert executed(host, prompt(4)) & {"1", "2", "3", "4"} == {"4"}  # a LoRA file changed: SUPIR LoRA (and what follows)
    host.run(prompt(5), executor=ex)
    assert executed(host, prompt(4)) & {"1", "2", "3", "4"} == set()


# ------------------------------------------------------------------------------------- issue 20: nothing lost

class FailingTask(TinyTask):
    """TinyTask whose data breaks at step ``fail_at`` (0-based), like a corrupt image met in the middle of a run."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at = fail_at

    def loss(self, step):
        if step == self.fail_at:
            raise ValueError("data: could not read image broken.png (UnidentifiedImageError: simulated)")
        return super().loss(step)


def test_an_error_mid_run_saves_the_finished_steps_then_reraises_the_cause(pack, tmp_path, capsys):
    loop = pack("training.loop")

    def settings(steps):
        return loop.TrainSettings(out_dir=str(tmp_path / "run"), steps=steps, lr=1e-2, save_every=1000,
                                  val_every=0, device="cpu")

    full = loop.run(TinyTask(), loop.TrainSettings(out_dir=str(tmp_path / "full"), steps=6, lr=1e-2,
                                                   save_every=1000, val_every=0, device="cpu"))
    with pytest.raises(ValueError, match="could not read image broken.png") as e:
        loop.run(FailingTask(fail_at=3), settings(6))  # steps 1..3 done, none saved by save_every
    assert any("step 3 was saved" in n for n in getattr(e.value, "__notes__", [])), e.value
    paths = loop.checkpoint_paths(str(tmp_path / "run"))
    assert [os.path.basename(p) for p in paths] == ["step_00000003.pt"]
    resumed = loop.run(TinyTask(), settings(6))
    assert resumed["start"] == 3 and resumed["losses"] == full["losses"][3:]  # exactly the uninterrupted run


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_which(pack, tmp_path, capsys):
    loop = pack("training.loop")

    def settings(steps):
        return loop.TrainSettings(out_dir=str(tmp_path / "run"), steps=steps, lr=1e-2, save_every=2, val_every=0,
                                  device="cpu", keep_checkpoints=3)

    full = loop.run(TinyTask(), loop.TrainSettings(out_dir=str(tmp_path / "full"), steps=8, lr=1e-2, save_every=2,
                                                   val_every=0, device="cpu"))
    loop.run(TinyTask(), settings(6))  # steps 2, 4, 6 saved
    newest = loop.checkpoint_paths(str(tmp_path / "run"))[-1]
    data = Path(newest).read_bytes()
    Path(newest).write_bytes(data[: len(data) // 2])  # truncated (a crash or a full disk while copying)
    capsys.readouterr()
    resumed = loop.run(TinyTask(), settings(8))
    err = capsys.readouterr().err
    assert resumed["start"] == 4 and resumed["resumed_from"].endswith("step_00000004.pt")
    assert resumed["losses"] == full["losses"][4:]
    assert "step_00000006.pt cannot be read" in err and "resuming from" in err and "step_00000004.pt" in err
    assert os.path.exists(newest + ".unreadable")  # kept for the user, out of the rotation


def test_resume_with_no_intact_checkpoint_is_refused_clearly(pack, tmp_path):
    loop = pack("training.loop")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000002.pt").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    s = loop.TrainSettings(out_dir=str(tmp_path / "run"), steps=4, lr=1e-2, val_every=0, device="cpu")
    with pytest.raises(ValueError, match="resume: expected an intact checkpoint in .* found only unreadable ones"):
        loop.run(TinyTask(), s)


def test_batch_never_removes_a_folder_it_did_not_create(runner, tmp_path):
    """A user folder named like the old fixed work folder (.batch-work) inside the output folder survives a run
    (before, the runner removed it with everything in it)."""
    wf, src, out = tiny_workflow(tmp_path, steps=1), images(tmp_path / "in", 1), tmp_path / "out"
    (out / ".batch-work").mkdir(parents=True)
    (out / ".batch-work" / "mine.txt").write_text("user file")
    assert runner.run_batch(str(wf), str(src), str(out), progress=False)["done"] == ["img0.png"]
    assert (out / ".batch-work" / "mine.txt").read_text() == "user file"
    assert sorted(os.listdir(out)) == [".batch-work", "img0.png"]  # this run's own work folder is gone


@pytest.mark.parametrize("how", ["output_inside_input", "input_inside_output"])
def test_batch_refuses_input_and_output_folders_nested_either_way(runner, tmp_path, how):
    if how == "output_inside_input":
        src = images(tmp_path / "in", 2)
        out = src / "results"
    else:
        out = tmp_path / "out"
        src = images(out / "in", 2)
    before = snapshot(src)
    with pytest.raises(runner.WorkflowError, match="neither inside the other"):
        runner.run_batch(str(tiny_workflow(tmp_path, steps=1)), str(src), str(out), progress=False)
    assert snapshot(src) == before
    assert how == "input_inside_output" or not out.exists()

"""Faults: Ctrl-C and SIGKILL during `vqrt build` and during checkpoint writes, a full disk
while training or writing outputs. Nothing half-written is left where a bundle or checkpoint
is read from, a resumed run starts from the last complete checkpoint, and a full disk is one
line naming the file. Complements test_export_bundle_errors.py (a simulated crash, Ctrl-C and
a full disk inside build_bundle, in process)."""
import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from torch_threads import one_torch_thread
from train_helpers import image_subset, needs_data, tiny_vqgan_config
from vqrt.cli import main
from vqrt.runtime import image_io
from vqrt.trainer.training import CHECKPOINTS_DIR, latest_checkpoint
from shared_data import GOLDEN

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"golden data not found at {GOLDEN}")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def default_sigint() -> None:
    """Run in each child before exec: a job started in the background by a non-interactive
    shell (a CI runner's nohup'd job) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt; with the default disposition it does, as at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited early ({process.returncode}): "
                                 f"{process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# --- vqrt build, interrupted --------------------------------------------------------------------

@needs_golden
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_build_interrupted_leaves_no_bundle(tmp_path, signal_number):
    out = tmp_path / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-m", "vqrt", "build", str(GOLDEN / "model.ckpt"), "--config",
         str(GOLDEN / "transformer.yaml"), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=default_sigint)
    staging = lambda: list(tmp_path.glob(".bundle.partial-*"))  # noqa: E731
    wait_for(lambda: any(p.iterdir() for p in staging()), 120, process)  # mid-write
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    assert not out.exists()
    if signal_number in (signal.SIGINT, signal.SIGTERM):  # cleaned up, reported in one line
        # TERM is what timeout, docker stop and a CI cancel send: handled as a Ctrl-C.
        code, word = (130, "interrupted") if signal_number == signal.SIGINT else (143, "terminated")
        assert process.returncode == code and err.strip().splitlines()[-1] == f"vqrt: {word}"
        assert "Traceback" not in err and staging() == []
    else:  # nothing ran after the kill: only the hidden staging folder can remain
        assert process.returncode == -signal.SIGKILL
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


# --- checkpoints, killed while written ----------------------------------------------------------

CHECKPOINT_LOOP = textwrap.dedent("""
    import sys, torch, yaml
    from pathlib import Path
    from vqrt.trainer.model_config import parse_model_config
    from vqrt.trainer.models.vqgan import VQModel
    from vqrt.trainer.training import TrainingState, save_training_checkpoint
    torch.set_num_threads(1)
    run, config = Path(sys.argv[1]), yaml.safe_load(open(sys.argv[2]))["model"]
    model = VQModel(parse_model_config(config).config)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 3, 32, 32))[0].mean().backward()
    optimizer.step()  # Adam has state to save
    for step in range(1, 10000):
        save_training_checkpoint(run, step, 0, model, config, TrainingState(
            {"autoencoder": optimizer}, {}), keep=3)
""")


def assert_checkpoints_complete(run: Path, config: Path) -> int:
    """Every checkpoint folder loads (weights, optimizer, step); -> the newest step."""
    import yaml
    from vqrt.trainer.model_config import parse_model_config
    from vqrt.trainer.models.vqgan import VQModel
    from vqrt.trainer.training import TrainingState, load_training_checkpoint
    section = yaml.safe_load(config.read_text())["model"]
    folders = sorted((run / CHECKPOINTS_DIR).glob("step_*"))
    assert folders, "no checkpoint was written"
    for folder in folders:
        with one_torch_thread():
            model = VQModel(parse_model_config(section).config)
            state = TrainingState({"autoencoder": torch.optim.Adam(model.parameters())}, {})
            assert load_training_checkpoint(folder, model, state) == int(folder.name[5:])
    assert latest_checkpoint(run) == folders[-1]
    return int(folders[-1].name[5:])


@pytest.mark.parametrize("signal_number, delay", [(signal.SIGKILL, 0.3), (signal.SIGINT, 0.2)])
def test_checkpoint_killed_mid_write(tmp_path, signal_number, delay):
    """Kills a process that writes checkpoints back to back: whatever it was writing, every
    checkpoint folder present is complete and the newest is what a resume would read."""
    run, config = tmp_path / "run", tiny_vqgan_config(tmp_path / "tiny.yaml")
    process = subprocess.Popen([sys.executable, "-c", CHECKPOINT_LOOP, str(run), str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV, preexec_fn=default_sigint)
    wait_for(lambda: latest_checkpoint(run) is not None, 120, process)
    time.sleep(delay)
    process.send_signal(signal_number)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert_checkpoints_complete(run, config)
    hidden = [p.name for p in (run / CHECKPOINTS_DIR).iterdir() if p.name.startswith(".")]
    if signal_number == signal.SIGINT:  # Ctrl-C removes the folder being written
        assert hidden == []


@needs_data
def test_full_disk_while_training_then_resume(tmp_path, capsys, monkeypatch):
    """The disk fills while the second checkpoint is written: one line naming the file, the
    first checkpoint intact, no half-written folder; --resume continues from step 1."""
    config, data, run = tiny_vqgan_config(tmp_path / "tiny.yaml"), tmp_path / "photos", \
        tmp_path / "run"
    image_subset(data, 4)
    real_save = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if "step_0000002" in str(filename) and str(filename).endswith("state.safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    argv = ["train", "vqgan", "--data", str(data), "--config", str(config), "--out", str(run),
            "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1", "--sample-every",
            "100", "--size", "32"]
    with one_torch_thread():
        assert main(argv) == 2
    err = capsys.readouterr().err  # the progress bar's updates around the error
    errors = re.findall(r"vqrt: error: [^\r\n]*", err)
    assert len(errors) == 1 and errors[0].endswith(
        "state.safetensors: cannot write (No space left on device)"), err
    assert "Traceback" not in err
    assert [p.name for p in (run / CHECKPOINTS_DIR).iterdir()] == ["step_0000001"]
    assert assert_checkpoints_complete(run, config) == 1
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    with one_torch_thread():
        assert main(["train", "vqgan", "--out", str(run), "--resume"]) == 0
    assert sorted(p.name for p in (run / CHECKPOINTS_DIR).iterdir()) == [
        "step_0000001", "step_0000002"]


# --- outputs of generate on a full disk ---------------------------------------------------------

def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fails", ["tokens", "image"])
def test_full_disk_while_writing_outputs_leaves_none(golden_bundle, tmp_path, capsys,
                                                     monkeypatch, fails):
    if fails == "tokens":
        monkeypatch.setattr(image_io.np, "save", full_disk)
    else:
        from PIL import Image
        monkeypatch.setattr(Image.Image, "save", full_disk)
    out, tokens = tmp_path / "out.png", tmp_path / "tokens.npy"
    code = main([str(a) for a in ("generate", golden_bundle, "-o", out, "--class", 1,
                                  "--size", "16x16", "--save-tokens", tokens)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    assert list(tmp_path.iterdir()) == []  # neither output, nor a temporary file


def test_interrupted_output_write_leaves_no_temporary(tmp_path):
    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        image_io.write_atomically(tmp_path / "a.npy", interrupted)
    assert list(tmp_path.iterdir()) == []
    np.save(tmp_path / "keep.npy", np.arange(3))
    with pytest.raises(KeyboardInterrupt):
        image_io.write_atomically(tmp_path / "keep.npy", interrupted)
    assert np.load(tmp_path / "keep.npy").tolist() == [0, 1, 2]  # the old content stays

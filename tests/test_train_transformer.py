"""Stage 2 training on the codes of a small trained VQGAN: the loss falls, the held-out NLL
is logged, resume is exact (with pkeep and dropout drawing random numbers), and every
conditioning mode either trains or says why not."""
import json
import os
import shutil

import pytest
import torch

from train_helpers import (
    assert_same_tensors, depth_subset, image_subset, metrics, needs_data, needs_native_bf16,
    segmentation_subset, tiny_depth_config, tiny_segmentation_config, tiny_vqgan_config, weights)
from vqrt.cli import main
from vqrt.trainer.checkpoints import load_checkpoint

torch.set_num_threads(1)
SMALL_GPT = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--batch-size", "8",
             "--lr", "1e-3", "--warmup-steps", "10", "--views", "2"]


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    """A VQGAN trained for 60 steps on 12 photos: (run folder, its data folder)."""
    root = tmp_path_factory.mktemp("first_stage")
    data = image_subset(root / "photos", 12)
    config = tiny_vqgan_config(root / "tiny.yaml", disc_start=1000)
    run = root / "vqgan"
    assert main(["train", "vqgan", "--data", str(data), "--config", str(config), "--out",
                 str(run), "--steps", "60", "--batch-size", "4", "--lr", "1e-3"]) == 0
    return run, data


def train(first_stage, out, steps, *extra, data=None):
    run, photos = first_stage
    return main(["train", "transformer", "--first-stage", str(run), "--data",
                 str(data or photos), "--out", str(out), "--steps", str(steps), *SMALL_GPT,
                 *extra])


@needs_data
def test_unconditional_loss_falls(first_stage, tmp_path, capsys):
    run = tmp_path / "gpt"
    assert train(first_stage, run, 80, "--log-every", "20", "--sample-every", "80") == 0
    loss = metrics(run, "loss")
    assert loss[-1] < 0.7 * loss[0], loss
    held_out = metrics(run, "held_out")[-1]
    assert held_out["nll_nats_per_token"] > 0 and held_out["bits_per_dim"] > 0
    assert metrics(run, "code_histogram_entropy_nats")
    assert (run / "samples" / "step_0000080.png").is_file()
    loaded = load_checkpoint(run)
    assert loaded.kind == "net2net" and loaded.conditioning == "unconditional"
    assert main(["inspect", str(run)]) == 0
    assert "unconditional, start token 0" in capsys.readouterr().out


@needs_data
@needs_native_bf16
def test_bf16_mixed_precision_loss_falls(first_stage, tmp_path):
    run = tmp_path / "gpt"
    assert train(first_stage, run, 80, "--precision", "bf16", "--log-every", "20",
                 "--sample-every", "80") == 0
    loss = metrics(run, "loss")
    assert loss[-1] < 0.7 * loss[0], loss  # as in fp32 above
    assert {t.dtype for t in weights(run / "model.safetensors").values()} == {torch.float32}
    assert metrics(run, "held_out")[-1]["nll_nats_per_token"] > 0  # measured in fp32


@needs_data
def test_resume_gives_the_same_weights(first_stage, tmp_path):
    whole = tmp_path / "whole"
    extra = ["--checkpoint-every", "6", "--pkeep", "0.8", "--dropout", "0.1"]
    assert train(first_stage, whole, 12, *extra) == 0
    stopped = tmp_path / "stopped"
    shutil.copytree(whole, stopped)
    shutil.rmtree(stopped / "checkpoints" / "step_0000012")
    assert main(["train", "transformer", "--out", str(stopped), "--resume"]) == 0
    for name in ("model.safetensors", "state.safetensors"):
        assert_same_tensors(weights(whole / "checkpoints" / "step_0000012" / name),
                            weights(stopped / "checkpoints" / "step_0000012" / name))


@needs_data
def test_class_labels_come_from_sub_folders(first_stage, tmp_path, capsys):
    data = tmp_path / "classes"
    for name, offset in (("cats", 0), ("dogs", 6)):
        folder = data / name
        folder.mkdir(parents=True)
        for photo in sorted(first_stage[1].iterdir())[offset:offset + 6]:
            os.symlink(photo.resolve(), folder / photo.name)
    run = tmp_path / "gpt"
    assert train(first_stage, run, 4, "--cond", "class", data=data) == 0
    assert json.loads((run / "train.json").read_text())["class_names"] == ["cats", "dogs"]
    assert main(["inspect", str(run)]) == 0
    assert "class-conditional, 2 classes" in capsys.readouterr().out


@needs_data
def test_segmentation_conditioning(first_stage, tmp_path, capsys):
    data = segmentation_subset(tmp_path / "ade", 6)
    seg = tmp_path / "seg"
    assert main(["train", "vqgan", "--data", str(data), "--config",
                 str(tiny_segmentation_config(tmp_path / "seg.yaml", 151)), "--out", str(seg),
                 "--steps", "4", "--batch-size", "4", "--n-labels", "151"]) == 0
    run = tmp_path / "gpt"
    assert train(first_stage, run, 4, "--cond", "segmentation", "--cond-stage", str(seg),
                 data=data) == 0
    loaded = load_checkpoint(run)
    assert loaded.conditioning == "vq"
    assert loaded.transformer.cfg.block_size == 64 + 64  # 8 x 8 cond + 8 x 8 image tokens


@needs_data
def test_depth_conditioning(first_stage, tmp_path, capsys):
    data = depth_subset(tmp_path / "depth", 6)
    cond = tmp_path / "depth_stage"
    assert main(["train", "vqgan", "--data", str(data), "--config",
                 str(tiny_depth_config(tmp_path / "depth.yaml")), "--out", str(cond),
                 "--steps", "4", "--batch-size", "4"]) == 0
    run = tmp_path / "gpt"
    assert train(first_stage, run, 4, "--cond", "depth", "--cond-stage", str(cond),
                 data=data) == 0
    loaded = load_checkpoint(run)
    assert loaded.conditioning == "vq" and loaded.spec.raw["params"]["cond_stage_key"] == "depth"
    assert loaded.model.cond_stage_model.cfg.ddconfig.in_channels == 1
    assert loaded.transformer.cfg.block_size == 64 + 64  # 8 x 8 cond + 8 x 8 image tokens


@needs_data
def test_a_cond_stage_of_the_other_kind_is_refused(first_stage, tmp_path, capsys):
    assert train(first_stage, tmp_path / "gpt", 4, "--cond", "depth") == 2
    assert "--cond depth needs --cond-stage RUN" in capsys.readouterr().err
    # The photo VQGAN is a VQModel too, but it reads photos, not depth maps.
    assert train(first_stage, tmp_path / "gpt", 4, "--cond", "depth", "--cond-stage",
                 str(first_stage[0])) == 2
    assert "reads photos, not depth maps" in capsys.readouterr().err

"""Stage 1 training on the sample photos: the loss falls, resume is exact, the run loads,
`vqrt inspect` and `vqrt eval` read it, and the loss pieces behave as upstream's."""
import json
import math
import shutil

import pytest
import torch
import yaml

from train_helpers import (
    DATA, assert_same_tensors, depth_subset, image_subset, metrics, needs_data,
    needs_native_bf16,
    records_without_timing, segmentation_subset, tiny_depth_config, tiny_segmentation_config,
    tiny_vqgan_config, tiny_vqgan_variant, weights)
from vqrt.cli import main
from vqrt.trainer.checkpoints import load_checkpoint
from vqrt.trainer.evaluate import psnr
from vqrt.trainer.losses import LPIPS, NLayerDiscriminator, adaptive_weight, load_lpips, \
    pixel_loss
from vqrt.trainer.train_vqgan import VQGANSettings, learning_rate, train_vqgan
from vqrt.trainer import training
from vqrt.trainer.training import TrainingError, check_precision

torch.set_num_threads(1)


def train(tmp_path, out, steps, *extra, disc_start=10):
    config = tiny_vqgan_config(tmp_path / "tiny.yaml", disc_start)
    data = tmp_path / "photos"
    if not data.exists():
        image_subset(data, 12)
    return main(["train", "vqgan", "--data", str(data), "--config", str(config), "--out",
                 str(out), "--steps", str(steps), "--batch-size", "4", "--lr", "1e-3", *extra])


@needs_data
def test_loss_falls_and_the_run_loads(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tmp_path, run, 120, "--sample-every", "120", "--checkpoint-every", "60",
                 "--log-every", "20", disc_start=100) == 0
    l1 = metrics(run, "l1")  # means over 20 steps
    assert l1[4] < 0.8 * l1[0], l1  # steps 1-20 against 81-100, before the discriminator
    assert metrics(run, "d")  # the discriminator trained from step 100 on
    assert "perceptual loss off" in capsys.readouterr().out
    assert (run / "samples" / "step_0000120.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000060", "step_0000120"]
    loaded = load_checkpoint(run)
    assert loaded.kind == "vqgan" and loaded.weights_format == "vqrt"
    assert main(["inspect", str(run)]) == 0
    assert "taming.models.vqgan.VQModel" in capsys.readouterr().out
    assert main(["eval", "vqgan", str(run), "--data", str(tmp_path / "photos")]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "SSIM" in out and "codes used" in out


@needs_data
def test_resume_gives_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    # The learning rate decays over steps 6-16, across the resume at step 8.
    assert train(tmp_path, whole, 16, "--checkpoint-every", "8", "--restart-dead-codes", "5",
                 "--lr-decay-from", "6", disc_start=4) == 0
    assert metrics(whole, "restarted_codes")  # its usage counts are checkpoint state too
    # A run killed mid-write at step 16, after its step-8 checkpoint, then resumed: its
    # metrics.jsonl holds records of steps 9-16 and a torn line, which the resume drops.
    stopped = tmp_path / "stopped"
    shutil.copytree(whole, stopped)
    shutil.rmtree(stopped / "checkpoints" / "step_0000016")
    for name in ("model.safetensors", "config.json"):
        (stopped / name).unlink()
    with (stopped / "metrics.jsonl").open("a") as f:
        f.write('{"step": 16, "l1": 0.')
    assert main(["train", "vqgan", "--out", str(stopped), "--resume"]) == 0
    for name in ("model.safetensors", "state.safetensors"):
        assert_same_tensors(weights(whole / "checkpoints" / "step_0000016" / name),
                            weights(stopped / "checkpoints" / "step_0000016" / name))
    # The same records, step by step. Loss means over the first logging interval after the
    # resume cover fewer steps (the running means are not checkpoint state); the held-out
    # scores of the same weights are equal.
    resumed, uninterrupted = records_without_timing(stopped), records_without_timing(whole)
    assert [(r["step"], sorted(r)) for r in resumed] == \
        [(r["step"], sorted(r)) for r in uninterrupted]
    scores = [r for r in uninterrupted if "held_out" in r]
    assert scores and [r for r in resumed if "held_out" in r] == scores


@needs_data
@needs_native_bf16
def test_bf16_mixed_precision_trains_with_fp32_weights(tmp_path):
    run = tmp_path / "run"
    # The discriminator starts at step 100: the adaptive weight's gradients and the
    # discriminator's own step run under autocast too.
    assert train(tmp_path, run, 120, "--precision", "bf16", "--log-every", "20",
                 "--sample-every", "120", disc_start=100) == 0
    l1 = metrics(run, "l1")  # means over 20 steps
    assert l1[4] < 0.8 * l1[0], l1  # steps 1-20 against 81-100, as in fp32 above
    assert metrics(run, "d") and metrics(run, "d_weight")
    assert json.loads((run / "train.json").read_text())["precision"] == "bf16"
    assert {t.dtype for t in weights(run / "model.safetensors").values()} == {torch.float32}
    assert metrics(run, "held_out")[-1]["psnr_db"] > 10  # measured in fp32


def test_bf16_autocast_leaves_the_code_search_in_fp32(tmp_path):
    """Under autocast, VQModel.forward quantizes the fp32 latent with fp32 distances: its codes
    are those an fp32 search picks for the same latent."""
    from vqrt.trainer.model_config import parse_model_config
    from vqrt.trainer.models.vqgan import VQModel
    section = yaml.safe_load(tiny_vqgan_config(tmp_path / "tiny.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = VQModel(parse_model_config(section).config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    quantized = []
    model.post_quant_conv.register_forward_hook(lambda m, args, out: quantized.append(args[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latent = model.encode_latent(x)  # bf16
        model(x)
    (quant,) = quantized
    assert latent.dtype == torch.bfloat16 and quant.dtype == torch.float32
    expected = model.quantize.lookup(model.quantize.indices(latent.float()))
    # Equal up to the rounding of the straight-through estimator's z + (z_q - z); another code
    # would be off by a code spacing.
    torch.testing.assert_close(quant, expected, rtol=0, atol=1e-5)


def test_an_unknown_precision_is_refused():
    # The command line offers fp32 and bf16 only; the Python entry point checks as well.
    with pytest.raises(TrainingError, match="--precision fp16: choose one of fp32, bf16"):
        check_precision("fp16", torch.device("cpu"))


@needs_data
def test_bf16_is_refused_on_a_cpu_that_would_emulate_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    run = tmp_path / "run"
    assert train(tmp_path, run, 2, "--precision", "bf16") == 2
    assert "--precision bf16: this CPU has no native bfloat16 arithmetic" in \
        capsys.readouterr().err
    assert not run.exists()


def test_learning_rate_is_constant_then_a_cosine_to_zero():
    settings = VQGANSettings(data="", config="", out="", steps=8, lr=1e-3, lr_decay_from=4)
    rates = [learning_rate(settings, step) for step in range(8)]
    assert rates[:5] == [1e-3] * 5  # constant up to and including the decay's first step
    assert rates[6] == pytest.approx(0.5e-3)  # halfway down the cosine
    assert all(a > b for a, b in zip(rates[4:], rates[5:])) and rates[7] < 0.15e-3
    settings.lr_decay_from = None  # upstream: constant throughout
    assert [learning_rate(settings, step) for step in range(8)] == [1e-3] * 8


@needs_data
def test_a_resumed_run_may_set_the_decay_but_not_past_its_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tmp_path, run, 2) == 0
    assert main(["train", "vqgan", "--out", str(run), "--resume", "--steps", "4",
                 "--lr-decay-from", "4"]) == 2
    assert "--lr-decay-from 4 must be at least 0 and below --steps 4" in capsys.readouterr().err
    assert main(["train", "vqgan", "--out", str(run), "--resume", "--steps", "4",
                 "--lr-decay-from", "2"]) == 0
    assert json.loads((run / "train.json").read_text())["lr_decay_from"] == 2


@needs_data
def test_adam_betas_reach_the_optimizer_and_bad_ones_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tmp_path, run, 2, "--adam-betas", "0.9", "0.999") == 0
    assert json.loads((run / "train.json").read_text())["adam_betas"] == [0.9, 0.999]
    state = json.loads((run / "checkpoints" / "step_0000002" / "state.json").read_text())
    groups = {name: [g["betas"] for g in s["param_groups"]]
              for name, s in state["optimizers"].items()}
    # The discriminator keeps upstream's betas: the option is for runs without the GAN term.
    assert groups == {"autoencoder": [[0.9, 0.999]], "discriminator": [[0.5, 0.9]]}
    assert train(tmp_path, tmp_path / "bad", 2, "--adam-betas", "0.9", "1") == 2
    assert "--adam-betas must lie in [0, 1), got 0.9 1.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_log_mse_pixel_loss_is_the_mean_psnr_up_to_sign_and_scale():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1
    # Three images reconstructed with very different errors: the mean of ln(MSE) is not ln of
    # the mean MSE, so a batch-wide MSE would fail this.
    noise = torch.randn(3, 3, 16, 16, generator=generator) * torch.tensor([0.02, 0.1, 0.5])[
        :, None, None, None]
    reconstruction = x + noise
    psnr_db = psnr((x + 1) / 2, (reconstruction + 1) / 2)  # pixels in [0, 1], (3,)
    expected = math.log(4) - math.log(10) / 10 * psnr_db.double().mean()
    torch.testing.assert_close(pixel_loss(x, reconstruction, "log-mse").double(), expected,
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(pixel_loss(x, reconstruction, "l1"), noise.abs().mean())
    with pytest.raises(ValueError, match="unknown pixel loss 'l2'"):
        pixel_loss(x, reconstruction, "l2")


@needs_data
def test_log_mse_pixel_loss_trains_and_bad_names_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tmp_path, run, 2, "--pixel-loss", "log-mse", "--log-every", "1") == 0
    assert json.loads((run / "train.json").read_text())["pixel_loss"] == "log-mse"
    # ln(MSE) of a reconstruction within the data range is below ln(4); an L1 loss is above 0.
    assert all(loss < math.log(4) and loss != l1
               for loss, l1 in zip(metrics(run, "loss"), metrics(run, "l1")))
    with pytest.raises(TrainingError, match="--pixel-loss must be one of l1, log-mse, got 'l2'"):
        train_vqgan({"data": str(tmp_path / "photos"), "out": str(tmp_path / "bad"),
                     "steps": 1, "pixel_loss": "l2"}, resume=False)
    assert not (tmp_path / "bad").exists()


@needs_data
def test_resume_refuses_to_change_what_is_trained(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tmp_path, run, 2) == 0
    assert main(["train", "vqgan", "--out", str(run), "--resume", "--batch-size", "2"]) == 2
    assert "cannot change it" in capsys.readouterr().err
    assert train(tmp_path, run, 2) == 2  # a second fresh run into the same folder
    assert "already holds a training run" in capsys.readouterr().err


@needs_data
def test_init_from_starts_at_a_trained_first_stage_with_its_config(tmp_path):
    first = tmp_path / "first"
    assert train(tmp_path, first, 4) == 0
    second = tmp_path / "second"
    # No --config: the model is --init-from's. At a rate of 1e-12 one step leaves the weights
    # where they started, so they must equal the first run's (a fresh start is far off).
    assert main(["train", "vqgan", "--init-from", str(first), "--data", str(tmp_path / "photos"),
                 "--out", str(second), "--steps", "1", "--batch-size", "4", "--lr", "1e-12"]) == 0
    before, after = weights(first / "model.safetensors"), weights(second / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    assert json.loads((second / "config.json").read_text()) == \
        json.loads((first / "config.json").read_text())


@needs_data
def test_init_partial_grows_a_trained_first_stage_by_a_level(tmp_path, capsys):
    first = tmp_path / "first"
    assert train(tmp_path, first, 4) == 0
    grown_config = tiny_vqgan_variant(tmp_path / "grown.yaml",
                                      ddconfig={"ch_mult": [1, 1, 2, 2]})  # f = 4 -> 8
    grown = tmp_path / "grown"
    command = ["train", "vqgan", "--init-from", str(first), "--init-partial", "--data",
               str(tmp_path / "photos"), "--out", str(grown), "--steps", "1", "--batch-size",
               "4", "--lr", "1e-12"]
    assert main(command) == 2  # which model to grow into?
    assert "--init-partial needs --init-from (the trained first stage) and --config" in \
        capsys.readouterr().err
    assert not grown.exists()
    assert main(command + ["--config", str(grown_config)]) == 0
    before, after = weights(first / "model.safetensors"), weights(grown / "model.safetensors")
    # New: the third level's downsampling, the fourth level, its decoder twin. At a rate of
    # 1e-12 one step leaves every tensor where it started.
    fresh = sorted(set(after) - set(before))
    assert fresh and all(name.startswith(("encoder.down.2.downsample.", "encoder.down.3.",
                                          "decoder.up.3.")) for name in fresh), fresh
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9)
    new_blocks = [name for name in fresh if ".conv2." in name]
    assert new_blocks and all(after[name].abs().max() < 1e-9 for name in new_blocks)
    assert f"{len(after) - len(fresh)} of {len(after)} tensors from {first}" in \
        capsys.readouterr().out
    model = json.loads((grown / "config.json").read_text())["model"]
    assert model["params"]["ddconfig"]["ch_mult"] == [1, 1, 2, 2]


@needs_data
def test_init_from_an_upstream_checkpoint_and_its_yaml(tmp_path):
    golden = DATA.parent / "golden" / "vqgan.ckpt"  # made by the upstream code
    if not golden.is_file():
        pytest.skip(f"golden data not found at {golden.parent}")
    run = tmp_path / "run"
    assert main(["train", "vqgan", "--init-from", str(golden), "--data",
                 str(image_subset(tmp_path / "photos", 12)), "--out", str(run), "--steps", "1",
                 "--batch-size", "2", "--size", "32", "--resize", "64", "--lr", "1e-12"]) == 0
    upstream = load_checkpoint(golden).model.state_dict()  # loss.* keys dropped
    trained = weights(run / "model.safetensors")
    assert trained.keys() == upstream.keys()
    for name in upstream:
        torch.testing.assert_close(trained[name], upstream[name], rtol=0, atol=1e-9)
    # The model section of vqgan.yaml (found beside the .ckpt) is the run's config.
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["params"]["lossconfig"]["params"]["disc_start"] == 10000
    assert model["params"]["ddconfig"]["attn_resolutions"] == [8]


@needs_data
def test_init_from_refuses_what_it_cannot_start_from(tmp_path, capsys):
    first = tmp_path / "first"
    assert train(tmp_path, first, 2) == 0
    other = tiny_vqgan_variant(tmp_path / "other.yaml", params={"n_embed": 32})
    common = ["train", "vqgan", "--data", str(tmp_path / "photos"), "--steps", "1"]
    assert main([*common, "--init-from", str(first), "--config", str(other),
                 "--out", str(tmp_path / "misfit")]) == 2
    err = capsys.readouterr().err
    assert "weights do not match" in err and "n_embed" in err  # names the misfit
    assert main([*common, "--init-from", str(tmp_path), "--out", str(tmp_path / "none")]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "neither")]) == 2
    assert "missing setting: --config (or --init-from" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("misfit", "none", "neither"))


@needs_data
def test_extra_data_adds_training_images_and_keeps_the_held_out_set(tmp_path):
    from vqrt.trainer.data import load_images
    extra = image_subset(tmp_path / "extra", 10, DATA / "ade20k" / "images")
    assert train(tmp_path, tmp_path / "plain", 1) == 0
    assert train(tmp_path, tmp_path / "more", 1, "--extra-data", str(extra)) == 0
    [plain] = [r for r in records_without_timing(tmp_path / "plain") if "train_images" in r]
    [more] = [r for r in records_without_timing(tmp_path / "more") if "train_images" in r]
    extra_train = len(load_images(extra, 32, 0.1, with_labels=False).train)
    assert 0 < extra_train < 10  # the extra folder's own held-out files are left out
    assert more["train_images"] == plain["train_images"] + extra_train
    assert more["held_out_images"] == plain["held_out_images"]


@needs_data
def test_segmentation_cond_stage(tmp_path, capsys):
    data = segmentation_subset(tmp_path / "ade", 6)
    config = tiny_segmentation_config(tmp_path / "seg.yaml", 151)
    run = tmp_path / "seg"
    assert main(["train", "vqgan", "--data", str(data), "--config", str(config), "--out",
                 str(run), "--steps", "30", "--batch-size", "4", "--lr", "1e-3",
                 "--n-labels", "151", "--log-every", "10"]) == 0
    bce = metrics(run, "bce")
    assert bce[-1] < 0.5 * bce[0], bce
    assert load_checkpoint(run).config.colorize_nlabels == 151
    assert main(["eval", "vqgan", str(run), "--data", str(data)]) == 0
    assert "pixel accuracy" in capsys.readouterr().out


@needs_data
def test_depth_cond_stage(tmp_path, capsys):
    data = depth_subset(tmp_path / "depth", 6)
    run = tmp_path / "depth_stage"
    assert main(["train", "vqgan", "--data", str(data), "--config",
                 str(tiny_depth_config(tmp_path / "depth.yaml")), "--out", str(run),
                 "--steps", "40", "--batch-size", "4", "--lr", "1e-3", "--log-every", "10",
                 "--sample-every", "40"]) == 0
    l1 = metrics(run, "l1")
    assert l1[-1] < 0.7 * l1[0], l1
    assert "perceptual loss off" not in capsys.readouterr().out  # never on for depth
    assert (run / "samples" / "step_0000040.png").is_file()
    assert load_checkpoint(run).config.ddconfig.in_channels == 1
    assert main(["eval", "vqgan", str(run), "--data", str(data)]) == 0
    assert "PSNR" in capsys.readouterr().out


def test_depth_config_needs_a_one_channel_discriminator(tmp_path, capsys):
    config = tiny_depth_config(tmp_path / "depth.yaml")
    config.write_text(config.read_text().replace("disc_in_channels: 1", "disc_in_channels: 3"))
    assert main(["train", "vqgan", "--data", str(tmp_path), "--config", str(config), "--out",
                 str(tmp_path / "run"), "--steps", "2"]) == 2
    assert "disc_in_channels 3 must equal in_channels 1" in capsys.readouterr().err


def test_discriminator_layout_matches_upstream():
    names = {k: tuple(v.shape) for k, v in NLayerDiscriminator(3, 64, 3).state_dict().items()}
    assert names["main.0.weight"] == (64, 3, 4, 4) and "main.0.bias" in names
    assert names["main.2.weight"] == (128, 64, 4, 4) and "main.2.bias" not in names
    assert names["main.3.running_mean"] == (128,)
    assert names["main.8.weight"] == (512, 256, 4, 4)
    assert names["main.11.weight"] == (1, 512, 4, 4)
    assert torch.Size([1, 1, 6, 6]) == NLayerDiscriminator(3, 8, 3)(torch.zeros(1, 3, 64, 64)).shape


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio():
    layer = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec = (3.0 * layer).sum()  # gradient (3, 3): norm 3 * sqrt(2)
    gan = (layer ** 2).sum()  # gradient (2, 4): norm sqrt(20)
    expected = 3 * 2 ** 0.5 / (20 ** 0.5 + 1e-4)
    assert adaptive_weight(rec, gan, layer).item() == pytest.approx(expected, rel=1e-6)
    flat = (0.0 * layer).sum()
    assert adaptive_weight((1e9 * layer).sum(), flat, layer).item() == 1e4  # the clamp


def test_lpips_weights_load_in_the_upstream_layout(tmp_path, capsys):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    state = {"loss.perceptual_loss." + k: torch.rand_like(v)
             for k, v in LPIPS().state_dict().items()}
    path = tmp_path / "lpips.safetensors"
    save_file(state, str(path))
    lpips = load_lpips(path)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(a, b).shape == (2, 1, 1, 1) and float(lpips(a, b).min()) > 0
    assert float(lpips(a, a).abs().max()) == 0.0
    if (DATA / "images").is_dir():  # the term joins the objective when the weights are given
        assert train(tmp_path, tmp_path / "run", 2, "--perceptual-weights", str(path),
                     "--log-every", "1") == 0
        assert len(metrics(tmp_path / "run", "lpips")) == 2
        assert main(["eval", "vqgan", str(tmp_path / "run"), "--data", str(tmp_path / "photos"),
                     "--perceptual-weights", str(path)]) == 0
        assert "LPIPS" in capsys.readouterr().out
    save_file({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, str(path))
    with pytest.raises(TrainingError, match="not LPIPS weights"):
        load_lpips(path)

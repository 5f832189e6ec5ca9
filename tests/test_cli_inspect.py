"""`vqrt inspect`: the card, JSON output, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest

import vqrt.trainer
from vqrt.cli import main
from shared_data import GOLDEN

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"golden data not found at {GOLDEN}")
MODEL = str(GOLDEN / "model.ckpt")
CONFIG = str(GOLDEN / "transformer.yaml")


def assert_one_line_error(capsys, code, expected):
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("vqrt: error: ")
    assert expected in err
    assert "Traceback" not in err


@needs_golden
def test_card_text(capsys):
    assert main(["inspect", MODEL, "--config", CONFIG]) == 0
    out = capsys.readouterr().out
    assert "taming.models.vqgan.VQModel" in out and "584,403 parameters" in out
    assert "taming.modules.transformer.mingpt.GPT" in out and "84,336 parameters" in out
    assert "latent grid    8 x 8, downsampling factor f = 8" in out
    assert "2 layers, 4 heads x 12 dims (48 wide), vocabulary 256, block size 65" in out
    assert "class-conditional, 8 classes" in out


@needs_golden
def test_card_json(capsys):
    assert main(["inspect", MODEL, "--config", CONFIG, "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["kind"] == "net2net"
    assert [(s["name"], s["parameters"]) for s in card["stages"]] == [
        ("first_stage", 584403), ("cond_stage", 0), ("transformer", 84336)]
    assert card["transformer"] == {"vocab_size": 256, "block_size": 65, "n_layer": 2,
                                   "n_head": 4, "n_embd": 48, "head_dim": 12}
    assert (card["latent_h"], card["latent_w"], card["downsampling_factor"]) == (8, 8, 8)
    assert (card["resolution"], card["codebook_size"], card["codebook_dim"]) == (64, 256, 48)
    assert card["conditioning"]["kind"] == "class"
    assert card["conditioning"]["n_classes"] == 8
    assert card["conditioning"]["cond_stage_key"] == "class_label"


@needs_golden
def test_first_stage_card_finds_its_config(capsys):
    assert main(["inspect", str(GOLDEN / "vqgan.ckpt"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["kind"] == "vqgan" and card["transformer"] is None
    assert card["ignored_keys"] == 12
    assert card["config"] == str(GOLDEN / "vqgan.yaml")


def test_missing_file(capsys, tmp_path):
    code = main(["inspect", str(tmp_path / "absent.ckpt")])
    assert_one_line_error(capsys, code, "absent.ckpt: no such file or directory")


@needs_golden
def test_random_bytes(capsys, tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(bytes(range(1, 128)) * 64)
    code = main(["inspect", str(path), "--config", CONFIG])
    assert_one_line_error(capsys, code, "not a PyTorch checkpoint")


@needs_golden
def test_config_that_does_not_match(capsys):
    code = main(["inspect", MODEL, "--config", str(GOLDEN / "vqgan.yaml")])
    assert_one_line_error(capsys, code, "weights do not match")


@needs_golden
def test_debug_shows_the_traceback(capsys):
    code = main(["--debug", "inspect", MODEL, "--config", str(GOLDEN / "vqgan.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" in err and "CheckpointError" in err
    assert err.rstrip().splitlines()[-1].startswith("vqrt: error: ")


def test_bad_usage_exits_2(capsys):
    assert main(["inspect"]) == 2
    assert main([]) == 2


def test_missing_train_extra(capsys, monkeypatch):
    # As if torch were not installed: the trainer modules must be imported afresh and fail.
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in ("checkpoints", "model_card"):
        monkeypatch.delitem(sys.modules, f"vqrt.trainer.{name}", raising=False)
        monkeypatch.delattr(vqrt.trainer, name, raising=False)
    code = main(["inspect", "model.ckpt"])
    assert_one_line_error(capsys, code,
                          "vqrt inspect needs the train extra (missing torch): "
                          "pip install 'vqrt[train]'")


def _run_python(args, cwd):
    # cwd away from the repository root, so that `vqrt` is the installed package and not the
    # source folder of the same name.
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@needs_golden
def test_console_entry(tmp_path):
    result = _run_python(["-m", "vqrt", "inspect", MODEL, "--config", CONFIG, "--json"],
                         tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["transformer"]["vocab_size"] == 256


def test_cli_import_does_not_import_torch(tmp_path):
    result = _run_python(["-c", "import sys, vqrt.cli; print('torch' in sys.modules)"],
                         tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

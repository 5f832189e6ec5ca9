"""`vqrt build` and `vqrt inspect BUNDLE` from the command line; the runtime side without torch."""
import json
import subprocess
import sys

import pytest

from vqrt.cli import main
from vqrt.runtime.bundle import load_bundle

from shared_data import GOLDEN

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"golden data not found at {GOLDEN}")
MODEL = str(GOLDEN / "model.ckpt")
CONFIG = str(GOLDEN / "transformer.yaml")


def assert_one_line_error(capsys, code, expected):
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vqrt: error: "), err
    assert expected in err, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "golden.bundle"
    assert main(["build", MODEL, "--config", CONFIG, "-o", str(out), "--precision", "fp16",
                 "--max-batch", "4", "--max-size", "128x64"]) == 0
    return out


@needs_golden
def test_build_prints_report_and_summary(bundle_dir, capsys, tmp_path):
    out = tmp_path / "again"
    assert main(["build", MODEL, "--config", CONFIG, "-o", str(out), "--backend",
                 "onnxruntime"]) == 0
    printed = capsys.readouterr().out
    assert "parity vs torch" in printed and "transformer_step" in printed
    files = len(load_bundle(out).manifest.files)  # 5 graphs and weights + the tiled decoder
    assert f"vqrt build: wrote {out} ({files} files + manifest.json" in printed
    assert "backends: onnxruntime" in printed


@needs_golden
def test_inspect_bundle_card(bundle_dir, capsys):
    assert main(["inspect", str(bundle_dir)]) == 0
    card = capsys.readouterr().out
    assert card.startswith(f"bundle: {bundle_dir} (schema 1)")
    assert "limits         batch <= 4, latent <= 8 x 16 (128 x 64 pixels), sequence <= 65" in card
    assert "KV cache       float16 [2, 2, batch, 4, 65, 12]" in card
    assert "class-conditional, 8 classes: token = class id" in card
    assert "decoder.onnx (fp16): indices int64 [batch, latent_h, latent_w]" in card
    assert "native_weights.safetensors (fp16, vqrt-native-1)" in card
    assert "psnr_db" in card


@needs_golden
def test_inspect_bundle_json(bundle_dir, capsys):
    assert main(["inspect", str(bundle_dir), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["schema_version"] == 1
    assert manifest["limits"] == {"max_batch": 4, "max_latent": [8, 16], "max_sequence": 65}
    assert manifest["model_card"]["transformer"]["vocab_size"] == 256


@needs_golden
@pytest.mark.parametrize("args, expected", [
    (["--max-size", "128"], "--max-size must be WIDTHxHEIGHT in pixels"),
    (["--max-size", "100x64"], "--max-size width 100 is not a positive multiple of the "
                               "downsampling factor 8 (try 96 or 104)"),
    (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    (["--precision", "bf16", "--backend", "onnxruntime"], "ONNX Runtime's CPU provider lacks"),
    (["--precision", "int8", "--backend", "tensorrt"], "int8 transformer graphs for tensorrt"),
])
def test_bad_options(capsys, tmp_path, args, expected):
    out = tmp_path / "bundle"
    code = main(["build", MODEL, "--config", CONFIG, "-o", str(out), *args])
    assert_one_line_error(capsys, code, expected)
    assert not out.exists()


@needs_golden
def test_existing_output(bundle_dir, capsys):
    code = main(["build", MODEL, "--config", CONFIG, "-o", str(bundle_dir)])
    assert_one_line_error(capsys, code, "already exists (a bundle); pass --force")


def test_missing_checkpoint(capsys, tmp_path):
    code = main(["build", str(tmp_path / "absent.ckpt"), "-o", str(tmp_path / "b")])
    assert_one_line_error(capsys, code, "absent.ckpt: no such file or directory")


@needs_golden
def test_config_given_for_a_bundle(bundle_dir, capsys):
    code = main(["inspect", str(bundle_dir), "--config", CONFIG])
    assert_one_line_error(capsys, code, "--config applies to checkpoints only")


def test_tensorrt_missing_stops_at_once(capsys, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    code = main(["build", str(tmp_path / "any.ckpt"), "-o", str(tmp_path / "b"),
                 "--backend", "tensorrt"])
    assert_one_line_error(capsys, code, "--backend tensorrt: the tensorrt package is not "
                                        "installed")


@needs_golden
def test_runtime_loads_and_decodes_without_torch(bundle_dir, tmp_path):
    """torch made unimportable: the bundle loads, the card prints, greedy decoding runs."""
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from vqrt.cli import main
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.ort_transformer import OrtTransformer, greedy
assert main(["inspect", {str(bundle_dir)!r}]) == 0
bundle = load_bundle({str(bundle_dir)!r})
tokens = greedy(OrtTransformer.from_bundle(bundle, 2), np.array([[0], [3]]), 64)
expected = np.load({str(GOLDEN / 'refs.npz')!r})["greedy_tokens"]
print("greedy equal:", bool((tokens == expected).all()))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "greedy equal: True" in result.stdout

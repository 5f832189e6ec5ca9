"""Bad requests: a clear one-line RequestError naming the value and the limit, and from the CLI
exit code 2 with no output file. Complements test_runtime_errors.py and test_runtime_cli.py
(class ids, batch and size limits, top_k, codes, params fields: not repeated here)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from test_export_conditioning import build_random_case
from torch_threads import one_torch_thread
from vqrt.cli import main
from vqrt.export.build import BuildOptions
from vqrt.runtime import GenerationParams, Generator, RequestError, segmentation_one_hot
from vqrt.runtime.bundle import MANIFEST_FILE, sha256_file
from vqrt.runtime.safetensors_io import Bf16, read_safetensors, write_safetensors


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def generator(golden_bundle):
    return Generator(golden_bundle, backend="native", device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def nan_bundle(golden_bundle, tmp_path_factory):
    """The golden bundle with NaN in the native weights' final LayerNorm, listed with the new
    hash: it loads, and every logit it computes is NaN."""
    bundle = tmp_path_factory.mktemp("nan") / "bundle"
    shutil.copytree(golden_bundle, bundle)
    path = bundle / "native_weights.safetensors"
    arrays, infos, metadata = read_safetensors(path)
    tensors = {name: Bf16(a) if infos[name].dtype == "BF16" else np.array(a)
               for name, a in arrays.items()}
    tensors["ln_f.weight"] = np.full_like(tensors["ln_f.weight"], np.nan)
    write_safetensors(path, tensors, metadata)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    for entry in manifest["files"]:
        if entry["path"] == path.name:
            entry.update(size=path.stat().st_size, sha256=sha256_file(path))
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    return bundle


@pytest.fixture(scope="module")
def segmentation_bundle(tmp_path_factory):
    """A tiny random model conditioned on 5-label segmentation maps (16 x 16 pixels, f = 2)."""
    root = tmp_path_factory.mktemp("segmentation")
    with one_torch_thread():
        build_random_case("segmentation", root, BuildOptions(backend="native"))
    return root / "bundle"


# --- NaN / Inf logits and what the sampler refuses ---------------------------------------------

def test_nan_logits_are_named(nan_bundle):
    generator = Generator(nan_bundle, backend="native", device="cpu", num_threads=1)
    with pytest.raises(RequestError) as error:
        generator.generate(class_labels=[1, 2], params=GenerationParams(size=(16, 16)))
    message = one_line(error)
    assert "logits for image token 0 of row 0 hold NaN" in message, message


class InfAfter:
    """A decoding whose logits for image token `index` of row `row` hold +inf."""

    def __init__(self, decoding, index: int, row: int):
        self._decoding, self._index, self._row = decoding, index, row

    def logits(self, index: int) -> np.ndarray:
        logits = self._decoding.logits(index)
        if index == self._index:
            logits[self._row, 5] = np.inf
        return logits


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_inf_logits_are_named(golden_bundle, backend):
    generator = Generator(golden_bundle, backend=backend, device="cpu", num_threads=1)
    generation = generator.start(class_labels=[1, 2], params=GenerationParams(size=(32, 32)))
    generation._decoding = InfAfter(generation._decoding, index=3, row=1)
    for _ in range(3):
        generation.step()
    with pytest.raises(RequestError) as error:
        generation.step()
    assert "logits for image token 3 of row 1 hold inf" in one_line(error)


def test_temperature_that_overflows_the_logits(generator):
    # The smallest normal float32 temperature: any logit beyond 4 overflows when divided.
    params = GenerationParams(temperature=1.2e-38, size=(16, 16))
    with pytest.raises(RequestError) as error:
        generator.generate(class_labels=[1], params=params)
    message = one_line(error)
    assert "image token 0" in message and "overflows float32" in message, message


# --- request values ---------------------------------------------------------------------------

@pytest.mark.parametrize("request_kwargs, expected", [
    (dict(class_labels=[1.5]), "class_labels must be one integer or a list of them"),
    (dict(class_labels=[]), "class_labels must be one integer or a list of them"),
    (dict(class_labels=[1], batch_size=0), "batch must be at least 1, got 0"),
    (dict(class_labels=[1], prefix_tokens=np.zeros((1, 3), np.float32)),
     "prefix_tokens must be integers, got float32"),
    (dict(class_labels=[1], prefix_tokens=np.full((1, 2), -3)),
     "prefix_tokens holds code -3, outside the codebook's [0, 256)"),
    (dict(class_labels=[1], params=GenerationParams(window_stride=20)),
     "window_stride (--window-stride) 20 must be in [1, 8]"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_request_values(generator, request_kwargs, expected):
    with pytest.raises(RequestError) as error:
        generator.start(**request_kwargs)
    assert expected in one_line(error)


@pytest.mark.parametrize("tokens, expected", [
    (np.zeros(64, np.int64), "tokens must be [B, h, w] with B, h and w at least 1, got shape "
                             "[64]"),
    (np.zeros((1, 0, 8), np.int64), "got shape [1, 0, 8]"),  # was onnxruntime's Conv error
    (np.full((1, 8, 8), -1), "tokens holds code -1, outside the codebook's [0, 256)"),
    (np.zeros((1, 8, 8), np.float64), "tokens must be integers, got float64"),
])
def test_bad_tokens_to_decode(generator, tokens, expected):
    with pytest.raises(RequestError) as error:
        generator.decode(tokens)
    assert expected in one_line(error)


def test_step_after_the_last_token(generator):
    generation = generator.start(class_labels=[1], params=GenerationParams(size=(8, 8)))
    generation.step()
    with pytest.raises(RequestError) as error:
        generation.step()
    assert "this generation is done: call result()" in one_line(error)


# --- segmentation maps ------------------------------------------------------------------------

@pytest.mark.parametrize("labels, expected", [
    (np.full((1, 16, 16), 5), "label map holds label 5, but the model has 5 labels (0..4)"),
    (np.full((1, 16, 16), -1), "label map holds label -1, but the model has 5 labels"),
    (np.zeros((16, 16), np.int64), "a label map must be integer [B, H, W]"),
])
def test_label_maps_with_unknown_labels(labels, expected):
    with pytest.raises(RequestError) as error:
        segmentation_one_hot(labels, 5)
    assert expected in one_line(error)


@pytest.mark.parametrize("size", [(8, 8), (32, 32), (16, 12)])
def test_segmentation_map_of_the_wrong_size(segmentation_bundle, size):
    generator = Generator(segmentation_bundle, backend="native", device="cpu", num_threads=1)
    width, height = size
    cond = segmentation_one_hot(np.zeros((1, height, width), np.int64), 5)
    with pytest.raises(RequestError) as error:
        generator.start(cond=cond)
    # The map's own size is offered only where the bundle can generate it (at most 16x16).
    remedy = ("resize the map to 16x16)" if size == (32, 32)
              else f"resize the map, or generate at its size, --size {width}x{height})")
    assert (f"the condition map is {width}x{height} pixels but the image is 16x16: they must "
            f"match ({remedy}" in one_line(error))


# --- the CLI: exit 2, one line, no output file ------------------------------------------------

def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, folder, argv, expected):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.startswith("vqrt: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and expected in err, err
    return sorted(p.name for p in folder.iterdir())


def test_cli_save_tokens_into_a_missing_folder_writes_nothing(golden_bundle, tmp_path, capsys):
    left = assert_refused(capsys, tmp_path, ["generate", golden_bundle, "-o", tmp_path / "a.png",
                                             "--class", 1, "--save-tokens",
                                             tmp_path / "no" / "t.npy"],
                          "the folder")
    assert left == []


def test_cli_output_into_a_missing_folder(golden_bundle, tmp_path, capsys):
    left = assert_refused(capsys, tmp_path, ["generate", golden_bundle, "-o",
                                             tmp_path / "no" / "a.png", "--class", 1],
                          "does not exist")
    assert left == []


def test_cli_generate_with_nan_weights(nan_bundle, tmp_path, capsys):
    left = assert_refused(capsys, tmp_path, ["generate", nan_bundle, "-o", tmp_path / "a.png",
                                             "--class", 1, "--backend", "native"], "hold NaN")
    assert left == []


@pytest.mark.parametrize("argv, expected", [
    (["--temperature", "0"], "temperature must be > 0, got 0.0"),
    (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--seed", "-1"], "seed must be in [0, 18446744073709551616), got -1"),
    (["--window-stride", "0"], "window_stride must be >= 1, got 0"),
    (["--cond", "{d}/map.png"], "takes no condition map (its conditioning is class)"),
])
def test_cli_generate_refuses(golden_bundle, tmp_path, capsys, argv, expected):
    argv = [a.format(d=tmp_path) for a in argv]
    left = assert_refused(capsys, tmp_path, ["generate", golden_bundle, "-o",
                                             tmp_path / "a.png", "--class", 1] + argv, expected)
    assert left == []


def test_cli_decode_of_a_pickled_array(golden_bundle, tmp_path, capsys):
    tokens = tmp_path / "t.npy"
    np.save(tokens, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    left = assert_refused(capsys, tmp_path, ["decode", golden_bundle, "--tokens", tokens, "-o",
                                             tmp_path / "a.png"], "t.npy: not a .npy array")
    assert left == ["t.npy"]


def test_cli_decode_of_float_tokens(golden_bundle, tmp_path, capsys):
    tokens = tmp_path / "t.npy"
    np.save(tokens, np.zeros((1, 8, 8), np.float32))
    left = assert_refused(capsys, tmp_path, ["decode", golden_bundle, "--tokens", tokens, "-o",
                                             tmp_path / "a.png"], "tokens must be integers")
    assert left == ["t.npy"]


def test_cli_encode_of_a_file_that_is_not_an_image(golden_bundle, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    left = assert_refused(capsys, tmp_path, ["encode", golden_bundle, "--input", photo,
                                             "--save-tokens", tmp_path / "t.npy"],
                          "photo.png: not a readable image")
    assert left == ["photo.png"]


@pytest.mark.parametrize("name, label, expected", [
    ("labels.png", 9, "labels.png: label map holds label 9, but the model has 5 labels"),
    # JPEG invents labels where regions meet: refused by format, before its labels are read.
    ("labels.jpg", 3, "labels.jpg: a label map must be stored losslessly (PNG), not as JPEG"),
])
def test_cli_segmentation_map_refused(segmentation_bundle, tmp_path, capsys, name, label,
                                      expected):
    labels = tmp_path / name
    Image.fromarray(np.full((16, 16), label, np.uint8), mode="L").save(labels)
    left = assert_refused(capsys, tmp_path, ["generate", segmentation_bundle, "-o",
                                             tmp_path / "a.png", "--cond", labels], expected)
    assert left == [name]


def test_cli_outputs_are_checked_before_any_work(golden_bundle, tmp_path, capsys, monkeypatch):
    """An output that cannot be written is refused before the bundle is even opened (a
    megapixel run takes minutes), and no command overwrites its own input."""
    import vqrt.runtime
    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work")
    monkeypatch.setattr(vqrt.runtime, "Generator", no_work)
    (tmp_path / "a.png").mkdir()
    tokens = tmp_path / "t.npy"
    np.save(tokens, np.zeros((1, 8, 8), np.int64))
    assert_refused(capsys, tmp_path, ["generate", golden_bundle, "-o", tmp_path / "a.png",
                                      "--class", 1], "a.png: is a directory; name a file")
    assert_refused(capsys, tmp_path, ["decode", golden_bundle, "--tokens", tokens, "-o", tokens],
                   "t.npy: is also --tokens; write the output to another file")
    assert_refused(capsys, tmp_path, ["encode", golden_bundle, "--input", tokens,
                                      "--save-tokens", tmp_path / "." / "t.npy"],
                   "t.npy: is also --input")
    # Root writes anywhere, so the unwritable folder is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    left = assert_refused(capsys, tmp_path, ["generate", golden_bundle, "-o",
                                             tmp_path / "b.png", "--class", 1],
                          f"the folder {tmp_path} is not writable by this user")
    assert left == ["a.png", "t.npy"] and np.load(tokens).dtype == np.int64


@pytest.mark.parametrize("closed", ["by its reader", "from the start"])
def test_cli_survives_a_closed_stdout(golden_bundle, tmp_path, closed):
    """`vqrt generate ... | head -1`: a reader that goes away drops what is printed after it,
    never the work, and never with a traceback; so does a process started with `>&-`, where
    Python's sys.stdout is None."""
    argv = [sys.executable, "-m", "vqrt", "generate", str(golden_bundle), "-o",
            str(tmp_path / "a.png"), "--class", "1"]
    if closed == "by its reader":
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        process.stdout.close()
    else:
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: os.close(1))
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert (tmp_path / "a.png").is_file()


def test_cli_missing_bundle(tmp_path, capsys):
    left = assert_refused(capsys, tmp_path, ["generate", tmp_path / "none", "-o",
                                             tmp_path / "a.png"], "none: no such directory")
    assert left == []

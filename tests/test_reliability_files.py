"""Hostile files: checkpoints, bundles and safetensors that must fail with one line naming the
problem, before anything is run or allocated from them. Complements test_checkpoints.py,
test_export_bundle_errors.py and test_runtime_strict_input.py (not repeated here); the cases
marked "fuzz" are crashes the fuzzers found (tests/fuzz_readers.py), kept as regressions."""
import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vqrt.cli import main
from vqrt.runtime import BundleError, GenerationParams, Generator, RequestError
from vqrt.runtime import bundle as bundle_module
from vqrt.runtime.bundle import MANIFEST_FILE, load_bundle
from vqrt.runtime.safetensors_io import SafetensorsError, parse_safetensors, write_safetensors
from vqrt.trainer.checkpoints import CheckpointError, load_checkpoint
from shared_data import GOLDEN


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message, message
    return message


@pytest.fixture
def bundle(golden_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(golden_bundle, copy)
    return copy


def edit_manifest(bundle: Path, change) -> None:
    document = json.loads((bundle / MANIFEST_FILE).read_text())
    change(document)
    (bundle / MANIFEST_FILE).write_text(json.dumps(document))


def replace_file(bundle: Path, relative: str, data: bytes) -> None:
    """Writes data as the bundle's file and lists it with its true size and SHA-256: the hash
    check passes, so what reads the file must refuse it."""
    (bundle / relative).write_bytes(data)

    def relist(document):
        for entry in document["files"]:
            if entry["path"] == relative:
                entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    edit_manifest(bundle, relist)


def setter(*path_and_value):
    *path, value = path_and_value

    def change(document):
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value
    return change


# --- manifests whose values the types alone do not catch --------------------------------------

@pytest.mark.parametrize("change, expected", [
    (setter("limits", "max_batch", 0), "manifest.limits.max_batch is 0, must be >= 1"),
    (setter("limits", "max_latent", [-1, 8]), "manifest.limits.max_latent is -1"),
    (setter("first_stage", "downsampling_factor", 0), "downsampling_factor is 0"),
    (setter("first_stage", "training_grid", [0, 8]), "training_grid is 0"),
    (setter("first_stage", "downsampling_factor", 16),  # would halve every image asked for
     "downsampling_factor is 16, but the training size [64, 64] over it is not the training "
     "grid [8, 8]"),
    (setter("conditioning", "n_classes", 1000), "n_classes is 1000, not in [1, vocabulary 256]"),
    (setter("first_stage", "codebook_size", 300),
     "codebook_size is 300, more than the transformer's vocabulary of 256"),
    (setter("transformer", "n_head", 0), "manifest.transformer.n_head is 0"),
    (setter("transformer", "n_embd", 50), "n_embd is 50, not n_head 4 x head_dim 12"),
    (setter("limits", "max_sequence", 10**9), "max_sequence is 1000000000, not the block size 65"),
    (setter("kv_cache", "shape", [2, 2, "batch", 4, 10**9, 12]),
     "kv_cache.shape is [2, 2, 'batch', 4, 1000000000, 12], not the transformer's"),
    (setter("kv_cache", "dtype", "object"), "kv_cache.dtype is 'object', not float32 or float16"),
    (setter("tokenization", "prefix", "shell"), "tokenization.prefix is 'shell', not one of"),
    (setter("kind", "evil"), "manifest.kind is 'evil', not net2net or vqgan"),
    (setter("files", 0, "path", "a\x00b"), "file path 'a\\x00b' leaves the bundle"),
    (setter("files", 0, "path", "x\ny"), "x\\x0ay: missing from the bundle"),  # fuzz
    (setter("notes\nand more", []), "unknown field(s) notes\\x0aand more"),  # fuzz
    (setter("model_card", "deep", json.loads("[" * 100 + "]" * 100)),  # fuzz: RecursionError
     "nested deeper than the limit of 64"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_manifest_values_are_checked(bundle, change, expected):
    edit_manifest(bundle, change)
    with pytest.raises(BundleError) as error:
        load_bundle(bundle)
    assert expected in one_line(error)


def test_default_size_beyond_the_bundle_says_to_ask_for_a_size(bundle):
    """A bundle built with --max-size below its training size: the request that gave no size
    is told so, not that it "requested" the training size."""
    edit_manifest(bundle, setter("limits", "max_latent", [4, 4]))
    generator = Generator(bundle, backend="native", device="cpu", num_threads=1)
    with pytest.raises(RequestError) as error:
        generator.start(class_labels=[1])
    assert one_line(error) == ("no size was asked for, and the default, the training size 64x64, "
                               "exceeds the bundle's largest 32x32: ask for a size within it "
                               "(--size WxH, or params.size)")
    generator.start(class_labels=[1], params=GenerationParams(size=(32, 32)))


def test_swapped_graph_is_refused_when_it_opens(bundle):
    """decoder.onnx replaced by the encoder, its size and SHA-256 rewritten to match: refused
    as the Generator opens it, naming both interfaces, instead of onnxruntime's missing-input
    error after the whole sampling."""
    shutil.copyfile(bundle / "encoder.onnx", bundle / "decoder.onnx")
    data = (bundle / "decoder.onnx").read_bytes()

    def rehash(document):
        entry = next(f for f in document["files"] if f["path"] == "decoder.onnx")
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    edit_manifest(bundle, rehash)
    with pytest.raises(BundleError) as error:
        Generator(bundle, backend="native", device="cpu", num_threads=1)
    assert ("decoder.onnx: the graph takes image tensor(float) and gives indices tensor(int64), "
            "but the manifest says indices tensor(int64) -> image tensor(float)") in one_line(error)


def test_unreadable_bundle_file_is_one_line(bundle, monkeypatch):
    """A bundle another user built (or a umask of 077): the file and the cause, not an OSError
    from deep in the checks. Simulated, as the tests may run as root."""
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(bundle_module, "sha256_file", denied)
    with pytest.raises(BundleError) as error:
        load_bundle(bundle)
    assert ": cannot read (Permission denied); the user who serves a bundle must be able to " \
           "read all of it" in one_line(error)


def test_oversized_manifest_is_refused_before_reading(bundle, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_MANIFEST", 1000)
    with pytest.raises(BundleError) as error:
        load_bundle(bundle)
    assert "more than a manifest's 1000" in one_line(error)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_listed_file_that_is_not_a_regular_file(bundle, kind):
    """A FIFO would block a reader that opened it: refused from lstat, never opened."""
    listed = json.loads((bundle / MANIFEST_FILE).read_text())["files"][0]["path"]
    target = bundle / listed
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with pytest.raises(BundleError) as error:
        load_bundle(bundle)
    assert f"{listed}: not a regular file" in one_line(error)


# --- files that pass their hash but not their reader -----------------------------------------

def consistent_block(size: int):
    """A transformer section, limit and KV cache all claiming block size `size`: consistent with
    each other, contradicted by the graphs and weights."""
    def change(document):
        document["transformer"]["block_size"] = size
        document["limits"]["max_sequence"] = size
        document["kv_cache"]["shape"][4] = size
    return change


@pytest.mark.parametrize("backend, expected", [
    ("native", "pos_emb has shape [65, 48], expected [100000, 48]"),
    ("onnxruntime", "transformer_prefill.onnx: the graph's kv_cache and logits"),
])
def test_manifest_contradicted_by_the_weights(bundle, backend, expected):
    edit_manifest(bundle, consistent_block(100000))
    with pytest.raises(BundleError) as error:
        Generator(bundle, backend=backend, device="cpu", num_threads=1)
    assert expected in one_line(error)


@pytest.mark.parametrize("data, expected", [
    (b"\x00" * 5, "too short for a safetensors file"),
    (struct.pack("<Q", 1000) + b"{}", "header length 1000 does not fit the file"),
    (json.dumps({"__metadata__": [1]}).encode(), None),  # fuzz: __metadata__ not an object
])
def test_native_weights_that_are_not_safetensors(bundle, data, expected):
    if expected is None:
        data, expected = struct.pack("<Q", len(data)) + data, "__metadata__ is not an object"
    replace_file(bundle, "native_weights.safetensors", data)
    with pytest.raises(BundleError) as error:
        Generator(bundle, backend="native", device="cpu", num_threads=1)
    message = one_line(error)
    assert "native_weights.safetensors" in message and expected in message


def test_graph_that_is_not_onnx(bundle):
    replace_file(bundle, "transformer_step.onnx", b"\x08\x07" + bytes(range(64)))
    with pytest.raises(BundleError) as error:
        Generator(bundle, backend="onnxruntime", device="cpu", num_threads=1)
    assert "transformer_step.onnx: ONNX Runtime cannot load this graph" in one_line(error)


# --- safetensors bytes ------------------------------------------------------------------------

def safetensors_bytes(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


GOOD = safetensors_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                         bytes(8))


@pytest.mark.parametrize("data, expected", [
    (GOOD[:6], "too short"),                                   # inside the length
    (GOOD[:20], "does not fit the file"),                      # inside the header
    (GOOD[:-1], "offsets [0, 8) that do not match"),           # inside the data
    (struct.pack("<Q", 1 << 62) + GOOD[8:], "header length 4611686018427387904"),
    (safetensors_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),
     "offsets [8, 0)"),
    (safetensors_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 64]}},
                       bytes(8)), "offsets [0, 64)"),
    (safetensors_bytes({"x": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
     "dtype F16"),
    (safetensors_bytes({"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
     "malformed header entry for tensor x"),
    (safetensors_bytes({"x": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}),
     "numpy cannot hold"),                                     # fuzz: numpy's ValueError
    (safetensors_bytes({"x": {"dtype": "F32", "shape": [1] * 70, "data_offsets": [0, 4]}},
                       bytes(4)), "numpy cannot hold"),        # fuzz: more dims than numpy's
    (safetensors_bytes({"__metadata__": {"a": 1}}), "__metadata__ is not an object of strings"),
    (safetensors_bytes({"x\ny": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                       bytes(8)), "tensor x\\x0ay has offsets"),  # fuzz: a line break
    (struct.pack("<Q", 400) + (b"[" * 200 + b"]" * 200), "nested deeper"),  # fuzz
], ids=lambda v: v if isinstance(v, str) else None)
def test_safetensors_bytes_are_checked_before_use(data, expected):
    with pytest.raises(SafetensorsError) as error:
        parse_safetensors(data, "w.safetensors")
    assert expected in one_line(error)


# --- checkpoints: nothing from the file runs --------------------------------------------------

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"golden data not found at {GOLDEN}")


def os_system_pickle(marker: Path) -> bytes:
    """A protocol-2 pickle, written by hand, whose loading would run os.system('touch MARKER')."""
    command = f"touch {marker}".encode()
    return (b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command
            + b"\x85q\x01Rq\x02.")


@needs_golden
def test_hand_written_pickle_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(os_system_pickle(marker))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, config=GOLDEN / "transformer.yaml")
    assert "evil.ckpt" in one_line(error)
    assert not marker.exists()


@needs_golden
def test_zip_checkpoint_with_a_code_global_does_not_run(tmp_path):
    """A torch.save zip whose data.pkl was swapped for one calling os.system."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    pkl = next(name for name in entries if name.endswith("data.pkl"))
    entries[pkl] = os_system_pickle(marker)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, config=GOLDEN / "transformer.yaml")
    assert "refused to unpickle" in one_line(error) and "system" in str(error.value)
    assert not marker.exists()


@needs_golden
@pytest.mark.parametrize("content, expected", [
    ([1, 2, 3], "holds a list, not a checkpoint dict"),
    ({"state_dict": {"w": "not a tensor"}}, "state_dict entry w is a str, not a tensor"),
    ({"state_dict": [torch.zeros(2)]}, "state_dict is a list, not a mapping"),
    ({"epoch": 3}, "no state_dict entry (top-level keys: epoch)"),
])
def test_checkpoint_content_of_the_wrong_kind(tmp_path, content, expected):
    path = tmp_path / "odd.ckpt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, config=GOLDEN / "transformer.yaml")
    assert expected in one_line(error)


@needs_golden
def test_checkpoint_tensor_larger_than_its_storage(tmp_path):
    """A tensor whose pickled size claims more elements than its storage holds."""
    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    pkl = next(name for name in entries if name.endswith("data.pkl"))
    size_three = b"K\x03\x85"  # BININT1 3, TUPLE1: the size (3,)
    assert entries[pkl].count(size_three) == 1
    entries[pkl] = entries[pkl].replace(size_three, b"J" + struct.pack("<i", 10**9) + b"\x85")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, config=GOLDEN / "transformer.yaml")
    assert "big.ckpt: not a readable PyTorch checkpoint" in one_line(error)


@needs_golden
def test_truncated_vqrt_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    write_safetensors(directory / "model.safetensors", {"w": np.zeros(16, np.float32)})
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[:-9])
    model = yaml.safe_load((GOLDEN / "vqgan.yaml").read_text())["model"]
    (directory / "config.json").write_text(json.dumps({"vqrt_checkpoint": 1, "model": model}))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert "model.safetensors: not a readable safetensors file" in one_line(error)


@needs_golden
def test_config_whose_tokens_leave_the_vocabulary(tmp_path):
    """Class tokens share the transformer's vocabulary (class c is token c): such a config would
    build a bundle every command refuses, so the checkpoint reader refuses it, naming the field."""
    config = tmp_path / "transformer.yaml"
    text = (GOLDEN / "transformer.yaml").read_text()
    assert "n_classes: 8\n" in text
    config.write_text(text.replace("n_classes: 8\n", "n_classes: 300\n", 1))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(GOLDEN / "model.ckpt", config)
    assert ("model.params.cond_stage_config.params.n_classes 300 puts the last class token (299) "
            "outside the transformer's vocabulary [0, 256)") in one_line(error)


@needs_golden
def test_checkpoint_with_non_finite_weights_names_the_tensor(tmp_path):
    checkpoint = torch.load(GOLDEN / "model.ckpt", map_location="cpu", weights_only=False)
    checkpoint["state_dict"]["transformer.head.weight"][3, 5] = float("nan")
    torch.save(checkpoint, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "model.ckpt", GOLDEN / "transformer.yaml")
    assert ("model.ckpt: transformer.head.weight holds NaN or infinite values (a damaged file, or "
            "a run that diverged): use an earlier checkpoint") in one_line(error)


@needs_golden
def test_checkpoint_saved_from_a_ddp_wrapper_says_so(tmp_path):
    checkpoint = torch.load(GOLDEN / "model.ckpt", map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = {"module." + k: v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "model.ckpt", GOLDEN / "transformer.yaml")
    assert ("the keys carry DistributedDataParallel's module. prefix: save "
            "model.module.state_dict(), or strip the prefix from the keys") in one_line(error)


@pytest.mark.parametrize("name, text", [
    ("deep.yaml", "model: " + "[" * 3000 + "1" + "]" * 3000 + "\n"),
    ("config.json", '{"vqrt_checkpoint": 1, "model": ' + "[" * 3000 + "]" * 3000 + "}"),
])
def test_config_nested_too_deeply(tmp_path, name, text):
    """Both config parsers recurse per level: a RecursionError, not a ValueError, before."""
    from vqrt.trainer.checkpoints import read_config
    (tmp_path / name).write_text(text)
    with pytest.raises(CheckpointError) as error:
        read_config(tmp_path / name)
    assert f"{name}: not a valid config (nested too deeply)" in one_line(error)


# --- the CLI: one line, exit 2, no traceback --------------------------------------------------

def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_permission_denied_is_one_line(monkeypatch, capsys):
    """Any file this user may not read or write, wherever a command meets it: one line."""
    import vqrt.cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/srv/models/model.ckpt")
    monkeypatch.setattr(vqrt.cli, "run_inspect", denied)
    code, _, err = run_cli(capsys, "inspect", "/srv/models/model.ckpt")
    assert code == 2 and err == ("vqrt: error: /srv/models/model.ckpt: permission denied (check "
                                 "the owner and mode of the file and of its folders)\n")


def test_cli_inspect_of_a_hostile_manifest(bundle, capsys):
    edit_manifest(bundle, setter("conditioning", "n_classes", 10**6))
    code, out, err = run_cli(capsys, "inspect", bundle)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("vqrt: error: ") and "n_classes is 1000000" in err


@needs_golden
def test_cli_inspect_of_a_code_running_checkpoint(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(os_system_pickle(marker))
    code, _, err = run_cli(capsys, "inspect", path, "--config", GOLDEN / "transformer.yaml")
    assert code == 2 and err.count("\n") == 1 and "evil.ckpt" in err and "Traceback" not in err
    assert not marker.exists()


def test_cli_generate_with_weights_that_are_not_safetensors(bundle, tmp_path, capsys):
    replace_file(bundle, "native_weights.safetensors", b"\xff" * 64)
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "generate", bundle, "-o", out, "--class", 1,
                           "--backend", "native")
    assert code == 2 and err.count("\n") == 1 and "native_weights.safetensors" in err
    assert not out.exists()

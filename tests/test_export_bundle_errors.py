"""Bundles that must not load, builds that must leave nothing behind, and --force."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

import vqrt.export.build as build_module
import vqrt.export.parity as parity_module
from vqrt.cli import main
from vqrt.export.build import BuildError, BuildOptions, build_bundle
from vqrt.runtime.bundle import MANIFEST_FILE, BundleError, ParityReport, load_bundle
from vqrt.runtime.bundle_card import format_parity
from shared_data import GOLDEN

pytestmark = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                reason=f"golden data not found at {GOLDEN}")
QUIET = dict(config=GOLDEN / "transformer.yaml", log=lambda line: None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(backend="onnxruntime"), **QUIET)
    return out


@pytest.fixture
def bundle_copy(built, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(built, copy)
    return copy


def load_error(path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def edit_manifest(bundle: Path, change) -> None:
    document = json.loads((bundle / MANIFEST_FILE).read_text())
    change(document)
    (bundle / MANIFEST_FILE).write_text(json.dumps(document))


def test_intact_bundle_loads(bundle_copy):
    assert load_bundle(bundle_copy).manifest.kind == "net2net"


def test_changed_file(bundle_copy):
    path = bundle_copy / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    message = load_error(bundle_copy)
    assert f"{path}: SHA-256 does not match the manifest" in message


def test_truncated_file(bundle_copy):
    path = bundle_copy / "transformer_weights.bin"
    path.write_bytes(path.read_bytes()[:-10])
    assert f"{path}: " in load_error(bundle_copy) and "bytes, the manifest says" in load_error(
        bundle_copy)


def test_missing_file(bundle_copy):
    (bundle_copy / "encoder.onnx").unlink()
    assert f"{bundle_copy / 'encoder.onnx'}: missing from the bundle" in load_error(bundle_copy)


def test_missing_manifest(bundle_copy):
    (bundle_copy / MANIFEST_FILE).unlink()
    assert f"{bundle_copy / MANIFEST_FILE}: missing" in load_error(bundle_copy)


def test_manifest_that_does_not_parse(bundle_copy):
    (bundle_copy / MANIFEST_FILE).write_text('{"schema_version": 1, ')
    message = load_error(bundle_copy)
    assert f"{bundle_copy / MANIFEST_FILE}: does not parse as JSON" in message


def test_wrong_schema_version(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d.update(schema_version=99))
    message = load_error(bundle_copy)
    assert f"{bundle_copy / MANIFEST_FILE}: schema version 99 is not supported" in message


def test_wrong_field_type(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d["limits"].update(max_batch="eight"))
    assert "manifest.limits.max_batch must be int" in load_error(bundle_copy)


def test_missing_field(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d.pop("kv_cache"))
    assert "manifest.kv_cache is missing" in load_error(bundle_copy)


def test_file_outside_the_bundle(bundle_copy):
    def escape(document):
        document["files"][0]["path"] = "../outside.onnx"
    edit_manifest(bundle_copy, escape)
    assert "'../outside.onnx' leaves the bundle" in load_error(bundle_copy)


def test_symlinked_file(bundle_copy, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    shutil.move(bundle_copy / "decoder.onnx", target)
    os.symlink(target, bundle_copy / "decoder.onnx")
    assert "decoder.onnx: is a symlink" in load_error(bundle_copy)


def test_graph_file_not_in_the_file_list(bundle_copy):
    def unlist(document):
        document["files"] = [f for f in document["files"] if f["path"] != "decoder.onnx"]
    edit_manifest(bundle_copy, unlist)
    assert "graph decoder names decoder.onnx, which is not in the file list" in load_error(
        bundle_copy)


def test_cli_inspect_of_a_damaged_bundle(bundle_copy, capsys):
    (bundle_copy / "decoder.onnx").write_bytes(b"oops")
    assert main(["inspect", str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoder.onnx" in err and "Traceback" not in err


def leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("failure", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_interrupted_build_leaves_no_bundle(tmp_path, monkeypatch, failure):
    def crash(*args, **kwargs):
        raise failure
    monkeypatch.setattr(build_module, "write_native_weights", crash)
    out = tmp_path / "bundle"
    with pytest.raises(type(failure)):
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(), **QUIET)
    assert not out.exists() and leftovers(tmp_path) == []


def test_failed_parity_leaves_no_bundle_unless_drift_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(parity_module, "FP32_MAX_ABS", 0.0)
    out = tmp_path / "bundle"
    with pytest.raises(BuildError, match="parity check failed: decoder max_abs_error"):
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(backend="onnxruntime"), **QUIET)
    assert not out.exists() and leftovers(tmp_path) == []
    build_bundle(GOLDEN / "model.ckpt", out,
                 BuildOptions(backend="onnxruntime", allow_drift=True), **QUIET)
    parity = load_bundle(out).manifest.parity
    assert not parity.passed and parity.drift_allowed


def test_existing_output_needs_force(bundle_copy, tmp_path):
    before = (bundle_copy / MANIFEST_FILE).read_bytes()
    with pytest.raises(BuildError, match="already exists .a bundle.; pass --force"):
        build_bundle(GOLDEN / "model.ckpt", bundle_copy, BuildOptions(), **QUIET)
    assert (bundle_copy / MANIFEST_FILE).read_bytes() == before
    build_bundle(GOLDEN / "model.ckpt", bundle_copy,
                 BuildOptions(precision="int8", backend="native", force=True), **QUIET)
    manifest = load_bundle(bundle_copy).manifest
    assert manifest.requested_precision == "int8" and manifest.backends == ("native",)
    assert not (bundle_copy / "transformer_step.onnx").exists()  # nothing of the old bundle
    assert leftovers(tmp_path) == []


def test_force_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="is not a bundle"):
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(force=True), **QUIET)
    assert (out / "notes.txt").read_text() == "keep me"


def test_non_finite_parity_value_fails_and_stays_valid_json():
    check = parity_module._check("decoder", "max_abs_error", float("nan"), 1e-3, True)
    assert check.value is None and not check.passed
    report = ParityReport("inputs", (check,), passed=False, drift_allowed=False)
    assert "non-finite" in format_parity(report)
    json.dumps(dataclasses.asdict(report), allow_nan=False)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(model, path):
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr(build_module, "save_graph", full_disk)
    out = tmp_path / "bundle"
    with pytest.raises(BuildError, match="encoder.onnx: cannot write the bundle .No space left"):
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(), **QUIET)
    assert not out.exists() and leftovers(tmp_path) == []


def test_force_without_atomic_exchange(bundle_copy, tmp_path, monkeypatch):
    """Where renameat2 is missing, the old bundle moves aside first, then is deleted."""
    import vqrt.export.bundle_writer as writer
    monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
    build_bundle(GOLDEN / "model.ckpt", bundle_copy,
                 BuildOptions(precision="fp16", backend="onnxruntime", force=True), **QUIET)
    assert load_bundle(bundle_copy).manifest.requested_precision == "fp16"
    assert leftovers(tmp_path) == []

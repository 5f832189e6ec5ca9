"""`vqrt bench` on the golden bundle with tiny settings: the structure of its JSON and table,
one-line errors for bad arguments, the bandwidth probe. Structure only: no timing assertions
(speed is measured by benchmarks/bench_suite.py, not by tests)."""
import contextlib
import importlib.util
import io
import json
import sys

import pytest

import vqrt.bench
from vqrt.bench.measure import HostMemoryPeak, read_bandwidth, summarize
from vqrt.cli import main

TINY = ["--tokens", "6", "--batch", "1,2", "--repeat", "2", "--warmup", "0"]
SUMMARY = {"median", "min", "max", "n"}
TOKEN_KEYS = {"prefill_ms", "token_latency_ms", "tokens_per_s", "bound", "x_upstream"}
ENTRY_KEYS = {"name", "role", "source", "batch", "peak_host_mb", "peak_device_mb",
              "image_decode_ms", "image_decode_measured_by", "end_to_end_per_image_ms",
              "x_torch_decoder"}
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def bench(*argv):
    """-> (exit code, stdout) of `vqrt bench ...` in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", *map(str, argv)])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def runtime_run(golden_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    plot = ["--plot", folder / "bench.png"] if HAS_MATPLOTLIB else []
    code, stdout = bench(golden_bundle, *TINY, "--json", folder / "bench.json", *plot)
    assert code == 0
    return json.loads((folder / "bench.json").read_text()), stdout, folder


@pytest.fixture(scope="module")
def baseline_run(golden_bundle, tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("bench-baselines") / "bench.json"
    code, stdout = bench(golden_bundle, "--backend", "native", "--tokens", "4", "--batch", "2",
                         "--repeat", "1", "--warmup", "0", "--baselines", "--json", out)
    assert code == 0
    return json.loads(out.read_text()), stdout


def test_json_structure(runtime_run):
    doc, _, _ = runtime_run
    assert doc["schema"] == "vqrt-bench-1"
    assert doc["bandwidth"]["bytes_per_s"]["median"] > 0 and doc["bandwidth"]["what"]
    assert doc["model"]["grid"] == [8, 8] and doc["model"]["prefix_tokens"] == 1
    assert doc["settings"]["tokens"] == 6 and doc["settings"]["batches"] == [1, 2]
    assert {"cpu", "cores", "cpu_isa"} <= set(doc["machine"])
    names = {(e["name"], e["batch"]) for e in doc["results"]}
    assert names == {(f"vqrt {b} fp32", batch) for b in ("native", "onnxruntime")
                     for batch in (1, 2)}
    for e in doc["results"]:
        assert ENTRY_KEYS | TOKEN_KEYS <= set(e)
        # both backends run the bundle's one decoder graph: its time is measured once
        decodes = e["name"] == "vqrt native fp32"
        assert e["image_decode_measured_by"] == (None if decodes else "vqrt native fp32")
        for figure in ("prefill_ms", "tokens_per_s") + (
                ("image_decode_ms", "end_to_end_per_image_ms") if decodes else ()):
            assert set(e[figure]) == SUMMARY and e[figure]["n"] == 2
        if not decodes:
            assert e["image_decode_ms"] is None and e["end_to_end_per_image_ms"] is None
        # 6 draws per run, the last feeds nothing: 5 latencies x 2 repeats
        assert e["token_latency_ms"]["n"] == 10
        assert e["token_latency_ms"]["p50"] <= e["token_latency_ms"]["p99"]
        assert e["bound"]["bytes_per_step"] > 0 and e["bound"]["step_vs_bound"] > 0
        assert e["x_upstream"] is None  # no baselines in this run
        assert e["peak_host_mb"] > 0 and e["peak_device_mb"] is None


def test_table(runtime_run):
    _, stdout, folder = runtime_run
    assert "token generation" in stdout and "image stage" in stdout
    assert "vqrt native fp32" in stdout and "vqrt onnxruntime fp32" in stdout
    assert "GB/s" in stdout
    if HAS_MATPLOTLIB:
        assert (folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines(baseline_run):
    doc, stdout = baseline_run
    by_name = {e["name"]: e for e in doc["results"]}
    assert set(by_name) == {"vqrt native fp32", "vqrt onnxruntime fp32", "torch upstream fp32",
                            "torch static-cache bf16", "onnxruntime int8 (dynamic)",
                            "torch decoder fp32"}
    assert by_name["torch upstream fp32"]["x_upstream"] == 1.0
    assert by_name["vqrt native fp32"]["x_upstream"] > 0
    assert by_name["vqrt native fp32"]["x_torch_decoder"] > 0
    assert "tokens_per_s" not in by_name["torch decoder fp32"]
    assert "torch upstream fp32" in stdout and "x upstream" in stdout


def test_bandwidth_probe():
    probe = read_bandwidth(threads=2, mebibytes=8, repeats=2)
    assert probe["bytes_per_s"]["median"] > 0 and probe["threads"] == 2
    assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert HostMemoryPeak().peak_bytes() > 0


@pytest.mark.parametrize("argv, expected", [
    (["--batch", "0"], "--batch sizes must be at least 1"),
    (["--batch", "1,x"], "--batch must be positive integers"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--warmup", "-1"], "--warmup must be at least 0"),
    (["--tokens", "0"], "--tokens must be at least 1"),
    (["--tokens", "65"], "--tokens 65 exceeds the 8x8 grid's 64 tokens"),
    (["--batch", "9"], "requested batch 9 exceeds the bundle's max batch 8"),
    (["--size", "60x64"], "not a multiple of the downsampling factor 8"),
    (["--size", "64"], "--size must be WIDTHxHEIGHT"),
    (["--plot", "out.jpg"], "must end in .png"),
    (["--json", "no/such/folder/out.json"], "does not exist"),
    (["--checkpoint", "model.ckpt"], "apply to --baselines only"),
])
def test_bad_arguments(golden_bundle, capsys, argv, expected):
    code = main(["bench", str(golden_bundle), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("vqrt: error: ") and expected in err


def test_not_a_bundle(tmp_path, capsys):
    code = main(["bench", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "manifest.json" in err


def test_baselines_without_torch(golden_bundle, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch now fails
    monkeypatch.delitem(sys.modules, "vqrt.bench.baselines", raising=False)
    monkeypatch.delattr(vqrt.bench, "baselines", raising=False)
    code = main(["bench", str(golden_bundle), "--baselines"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "--baselines needs the train extra (missing torch)" in err

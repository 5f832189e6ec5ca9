"""The TensorRT backend (runtime/tensorrt_backend.py). Where TensorRT 10 and a GPU exist: greedy
tokens equal upstream's on golden set A, the device loop (generate()) equals the Generator's
(step, draw), and the captured step graph equals eager steps. Everywhere: the
one-line refusals, "auto" never picking tensorrt, and the engine checks against the manifest
with a stand-in tensorrt module (vqrt's glue only, never TensorRT itself)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from test_export_tensorrt import ENV, FakeTensorRT
from test_runtime_cuda import assert_the_device_loop_equals_the_generators
from torch_threads import one_torch_thread
from vqrt.cli import main
from vqrt.export import tensorrt_engines
from vqrt.export.build import BuildOptions, build_bundle
from vqrt.runtime import GenerationParams, Generator, RequestError
from vqrt.runtime.bundle import BundleError, load_bundle
from vqrt.runtime.tensorrt_backend import (
    TensorRTEngines, TensorRTState, tensorrt_unavailable_reason)

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"no golden data at {GOLDEN}")
REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(bool(REASON), reason=f"backend tensorrt cannot run: {REASON}")
GREEDY = GenerationParams(greedy=True)


@pytest.fixture(scope="module")
def stand_in_bundle(tmp_path_factory):
    """A golden-set bundle whose engines a stand-in tensorrt "built" (files of fake bytes)."""
    out = tmp_path_factory.mktemp("trt-stand-in") / "bundle"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", FakeTensorRT())
        patch.setattr(tensorrt_engines, "probe", lambda: ENV)
        patch.setenv("VQRT_CACHE_DIR", str(out.parent / "cache"))
        with one_torch_thread():
            build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision="fp16",
                                                                  backend="tensorrt"),
                         config=GOLDEN / "transformer.yaml", log=lambda line: None)
    return out


@needs_golden
def test_auto_never_picks_tensorrt_and_asking_says_what_is_missing(stand_in_bundle, tmp_path,
                                                                    capsys, monkeypatch):
    assert Generator(stand_in_bundle).backend == "onnxruntime"  # tensorrt first in the manifest
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it fails, as where it is absent
    with pytest.raises(RequestError, match=r"^backend tensorrt: the tensorrt package is not "
                                           r"installed .+; or use backend native or onnxruntime$"):
        Generator(stand_in_bundle, backend="tensorrt")
    assert main(["generate", str(stand_in_bundle), "-o", str(tmp_path / "x.png"), "--class",
                 "1", "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "backend tensorrt: " in err, err
    assert not (tmp_path / "x.png").exists()


@needs_golden
def test_a_bundle_without_engines_names_the_rebuild(golden_bundle):
    with pytest.raises(RequestError, match=r"needs the bundle's tensorrt part.+`vqrt build "
                                           r"--backend tensorrt`"):
        Generator(golden_bundle, backend="tensorrt")


class FakeEngine:
    def __init__(self, io):
        self._io = io  # name -> (is_input, numpy type)

    @property
    def num_io_tensors(self):
        return len(self._io)

    def get_tensor_name(self, i):
        return list(self._io)[i]

    def get_tensor_mode(self, name):
        return "in" if self._io[name][0] else "out"

    def get_tensor_dtype(self, name):
        return self._io[name][1]


class DataType:
    def __init__(self, name):
        self.name = name


DTYPES = {name: DataType(name) for name in ("INT32", "INT64", "FLOAT", "HALF")}


def stand_in_runtime(monkeypatch, engine):
    fake = FakeTensorRT()
    fake.TensorIOMode = type("TensorIOMode", (), {"INPUT": "in", "OUTPUT": "out"})
    fake.DataType = type("DataType", (), DTYPES)
    fake.Runtime = lambda logger: type("Runtime", (), {
        "deserialize_cuda_engine": lambda self, data: engine})()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)


GRAPH_IO = {"tokens": (True, DTYPES["INT64"]), "position": (True, DTYPES["INT64"]),
            "kv_cache": (True, DTYPES["HALF"]), "logits": (False, DTYPES["FLOAT"]),
            "kv_cache_out": (False, DTYPES["HALF"])}


@needs_golden
def test_engines_are_checked_against_the_manifest(stand_in_bundle, monkeypatch):
    bundle = load_bundle(stand_in_bundle)
    stand_in_runtime(monkeypatch, FakeEngine(GRAPH_IO))
    engines = TensorRTEngines(bundle)
    assert (engines.codes, engines.max_length) == (bundle.manifest.first_stage.codebook_size,
                                                   bundle.manifest.transformer.block_size)
    # TensorRT narrowed the tokens to int32: the buffers the runtime binds would not fit.
    stand_in_runtime(monkeypatch, FakeEngine({**GRAPH_IO, "tokens": (True, DTYPES["INT32"])}))
    with pytest.raises(BundleError, match=r"transformer_prefill.plan: the engine's inputs and "
                                          r"outputs .+'tokens': \('in', 'INT32'\)"):
        TensorRTEngines(bundle)
    stand_in_runtime(monkeypatch, None)  # what TensorRT returns for another version's engine
    with pytest.raises(BundleError, match=r"cannot load this engine \(built with TensorRT "
                                          r"10.99.0 on Fake GPU, compute capability 9.0\)"):
        TensorRTEngines(bundle)


# --- on a GPU with TensorRT -------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory):
    """Golden set A with fp32 engines (TF32 off), so greedy tokens can equal upstream's."""
    out = tmp_path_factory.mktemp("trt") / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(backend="tensorrt"),
                 config=GOLDEN / "transformer.yaml", log=print)
    return out


@needs_golden
@needs_tensorrt
def test_greedy_tokens_match_upstream_on_golden(engine_bundle, golden_refs):
    generator = Generator(engine_bundle, backend="tensorrt")
    result = generator.generate(class_labels=golden_refs["cond"][:, 0], params=GREEDY)
    assert result.backend == "tensorrt"
    np.testing.assert_array_equal(result.tokens, golden_refs["greedy_grid"])


@needs_golden
@needs_tensorrt
@pytest.mark.parametrize("params", [GREEDY, GenerationParams(top_k=20, top_p=0.9, seed=7)])
def test_the_device_loop_equals_the_generators_loop(engine_bundle, golden_refs, params):
    assert_the_device_loop_equals_the_generators(Generator(engine_bundle, backend="tensorrt"),
                                                 golden_refs["cond"][:, 0], params)


@needs_golden
@needs_tensorrt
def test_graph_replay_equals_eager_steps(engine_bundle, golden_refs):
    engines = TensorRTEngines(load_bundle(engine_bundle))
    classes = golden_refs["cond"][:, 0]
    runs = []
    for use_graph in (False, True):
        state = TensorRTState(engines, len(classes), use_graph=use_graph)
        logits = [state.prefill(classes[:, None])]
        for position in range(1, 6):
            logits.append(state.step(logits[-1].argmax(axis=1), position))
        runs.append(np.stack(logits))
    assert state._graph is not None  # the step was captured, and replayed from step 2 on
    np.testing.assert_array_equal(runs[1], runs[0])

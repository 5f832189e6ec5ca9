"""The TensorRT backend and decoder engine (runtime/tensorrt_backend.py). Where TensorRT 10 and a
GPU exist: greedy tokens equal upstream's on golden set A, the device loop (generate()) equals
the Generator's (step, draw), the captured step graph equals eager steps, and the decoder
engine's images equal the fp32 graph's. Everywhere: the one-line refusals, "auto" never picking
tensorrt, the engine checks against the manifest with a stand-in tensorrt module, and
TensorRTState's buffers, positions, captured step, draw() and generate(), and the decoder
engines' whole-image and tiled decoding (TensorRTGraphs) over stand-ins for the GPU and the
engines (vqrt's glue only, never TensorRT)."""
import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from test_export_tensorrt import ENV, FakeTensorRT
from test_runtime_cuda import assert_the_device_loop_equals_the_generators
from torch_threads import one_torch_thread
from vqrt.cli import main
from vqrt.export import tensorrt_engines
from vqrt.export.build import BuildOptions, build_bundle
from vqrt.runtime import GenerationParams, Generator, RequestError, segmentation_one_hot
from vqrt.runtime import tensorrt_backend
from vqrt.runtime.bundle import BundleError, load_bundle
from vqrt.runtime.onnx_sessions import open_session
from vqrt.runtime.sampling import sample_logits
from vqrt.runtime.tensorrt_backend import (
    TensorRTEngines, TensorRTState, tensorrt_unavailable_reason)
from shared_data import GOLDEN

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"no golden data at {GOLDEN}")
REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(bool(REASON), reason=f"backend tensorrt cannot run: {REASON}")
GREEDY = GenerationParams(greedy=True)


@pytest.fixture(scope="module")
def stand_in_bundle(tmp_path_factory):
    """A golden-set bundle whose engines a stand-in tensorrt "built" (files of fake bytes)."""
    out = tmp_path_factory.mktemp("trt-stand-in") / "bundle"
    stand_in_build(out, "fp16")
    return out


@contextlib.contextmanager
def stand_in_tensorrt_builds(cache: Path, **fake):
    """Within it, builds get their engines from a stand-in tensorrt (FakeTensorRT made with
    `fake`: files of fake bytes), the timing cache in `cache`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", FakeTensorRT(**fake))
        patch.setattr(tensorrt_engines, "probe", lambda: ENV)
        patch.setenv("VQRT_CACHE_DIR", str(cache))
        with one_torch_thread():
            yield


def stand_in_build(out: Path, precision: str = "fp32", **fake) -> None:
    """Builds golden set A with --backend tensorrt at `out`, stand_in_tensorrt_builds."""
    with stand_in_tensorrt_builds(out.parent / "cache", **fake):
        build_bundle(GOLDEN / "model.ckpt", out,
                     BuildOptions(precision=precision, backend="tensorrt"),
                     config=GOLDEN / "transformer.yaml", log=lambda line: None)


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

    def get_tensor_location(self, name):
        return "device"


class DataType:
    def __init__(self, name):
        self.name = name


DTYPES = {name: DataType(name) for name in ("INT32", "INT64", "FLOAT", "HALF")}


def stand_in_runtime(monkeypatch, engine):
    fake = FakeTensorRT()
    fake.TensorIOMode = type("TensorIOMode", (), {"INPUT": "in", "OUTPUT": "out"})
    fake.DataType = type("DataType", (), DTYPES)
    fake.TensorLocation = type("TensorLocation", (), {"DEVICE": "device", "HOST": "host"})
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
def test_the_decoder_engine_decodes_as_onnxruntime_does(engine_bundle, golden_refs):
    """fp32 engines with TF32 off: the same images as the fp32 graph up to kernel rounding."""
    codes = golden_refs["greedy_grid"]
    engine = Generator(engine_bundle, decoder_engine="tensorrt").decode_raw(codes)
    graph = Generator(engine_bundle, decoder_engine="onnxruntime").decode_raw(codes)
    np.testing.assert_allclose(engine, graph, atol=1e-3)
    # Tiles of 3 latent positions through the step engines: tiled against whole as in
    # tests/test_tiled_decode.py (fp16 buffers between steps).
    tiled = Generator(engine_bundle, decoder_engine="tensorrt", tile=3).decode_raw(codes)
    mse = np.mean((tiled.astype(np.float64) - graph) ** 2)
    assert 10 * np.log10(4.0 / mse) >= 55


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


# --- TensorRTState's own bookkeeping, with stand-ins for the GPU and the engines --------------
# Everything vqrt does around the engines (buffers, row copies, positions, the captured step,
# draw, generate) runs here on the CPU: StandInStream answers DeviceStream's calls over host
# memory (recording instead of running while capturing), StandInContext answers the engines'
# contract (export/onnx_transformer.py: tokens at `position`, the in-place cache, logits of every
# new position) with a toy model whose logits depend on every earlier token. Not TensorRT.

VOCAB, CODES, BLOCK = 40, 32, 16


def toy_logits(sequence: np.ndarray) -> np.ndarray:
    """int64 [B, n] -> float32 [B, VOCAB] predicting position n."""
    h = np.zeros(sequence.shape[0])
    for i in range(sequence.shape[1]):
        h = np.sin(h * 1.7 + sequence[:, i] * 0.31 + i * 0.05)
    return (np.sin(np.outer(h + 2.0, np.arange(1, VOCAB + 1) * 0.37)) * 3).astype(np.float32)


class StandInStream:
    streams = {}  # handle -> stream, for the contexts

    def __init__(self):
        self.handle = len(StandInStream.streams) + 1
        StandInStream.streams[self.handle] = self
        self._blocks, self._next = {}, 1 << 20
        self._recording = None  # the ops of the graph being captured
        self.graphs = []

    def view(self, address: int, nbytes: int) -> np.ndarray:
        for base, block in self._blocks.items():
            if base <= address and address + nbytes <= base + len(block):
                return block[address - base:address - base + nbytes]
        raise ValueError(f"{nbytes} bytes at {address:#x} are not inside an allocation")

    def enqueue(self, op) -> None:
        if self._recording is None:
            op()
        else:
            self._recording.append(op)

    def allocate(self, nbytes):
        address, self._next = self._next, self._next + (nbytes + 511) // 256 * 256
        self._blocks[address] = np.zeros(nbytes, np.uint8)
        return address

    def release(self, address):
        assert self._recording is None and not self.graphs
        del self._blocks[address]

    def upload(self, address, host):
        data, target = host.copy(), self.view(address, len(host))
        self.enqueue(lambda: target.__setitem__(slice(None), data))

    def download(self, host, address):
        assert self._recording is None
        host[:] = self.view(address, len(host))

    def fill_zero(self, address, nbytes):
        target = self.view(address, nbytes)
        self.enqueue(lambda: target.fill(0))

    def copy_rows(self, dst, dst_pitch, src, src_pitch, width, rows):
        def op():
            for r in range(rows):
                self.view(dst + r * dst_pitch, width)[:] = self.view(src + r * src_pitch, width)
        self.enqueue(op)

    def add_int64(self, address, delta):
        value = self.view(address, 8).view(np.int64)
        self.enqueue(lambda: value.__iadd__(delta))

    def begin_capture(self):
        self._recording = []

    def end_capture(self):
        self.graphs.append(self._recording)
        self._recording = None
        return len(self.graphs) - 1

    def replay(self, graph):
        for op in self.graphs[graph]:
            op()

    def sample(self, logits, batch, vocab, seeds, step, top_k, top_p, temperature, greedy,
               tokens, status):
        def op():
            x = self.view(logits, batch * vocab * 4).view(np.float32).reshape(batch, vocab)
            drawn = sample_logits(x.copy(), top_k=top_k, top_p=top_p, temperature=temperature,
                                  seeds=self.view(seeds, batch * 8).view(np.uint64).copy(),
                                  step=step, greedy=greedy)
            self.view(tokens, batch * 8).view(np.int64)[:] = drawn
        self.enqueue(op)

    def check_sampled(self, status, batch, *params):
        pass


class StandInContext:
    """The transformer graphs' contract; the "KV cache" holds each position's token id."""

    def __init__(self, refuse_capture: bool):
        self.address, self.shape, self._refuse_capture = {}, {}, refuse_capture

    def set_tensor_address(self, name, address):
        self.address[name] = address
        return True

    def set_input_shape(self, name, shape):
        self.shape[name] = tuple(shape)
        return True

    def execute_async_v3(self, handle):
        stream = StandInStream.streams[handle]
        if self._refuse_capture and stream._recording is not None:
            return False
        batch, count = self.shape["tokens"]
        a = self.address
        assert a["kv_cache"] == a["kv_cache_out"]  # bound in place

        def op():
            tokens = stream.view(a["tokens"], batch * count * 8).view(np.int64)
            position = int(stream.view(a["position"], 8).view(np.int64)[0])
            cache = stream.view(a["kv_cache"], batch * BLOCK * 8).view(np.int64).reshape(
                batch, BLOCK)
            cache[:, position:position + count] = tokens.reshape(batch, count)
            logits = np.stack([toy_logits(cache[:, :position + t + 1])
                               for t in range(count)], axis=1)
            stream.view(a["logits"], logits.nbytes)[:] = logits.reshape(-1).view(np.uint8)
        stream.enqueue(op)
        return True


def stand_in_engines(refuse_capture: bool = False):
    engine = SimpleNamespace(
        create_execution_context=lambda: StandInContext(refuse_capture))
    # kv [1, 2, B, 1, BLOCK, 1] float32 is 8 bytes per row and position: one int64 token id.
    kv = SimpleNamespace(input="kv_cache", output="kv_cache_out", dtype="float32",
                         shape=(1, 2, "batch", 1, BLOCK, 1))
    return SimpleNamespace(kv=kv, vocab=VOCAB, codes=CODES, max_length=BLOCK, max_batch=4,
                           prefill=engine, step=engine)


@pytest.fixture
def stand_in_gpu(monkeypatch):
    monkeypatch.setattr(tensorrt_backend._native, "DeviceStream", StandInStream)


@pytest.mark.parametrize("use_graph,refuse_capture", [(False, False), (True, False),
                                                      (True, True)])
def test_state_logits_follow_the_sequence(stand_in_gpu, use_graph, refuse_capture):
    state = TensorRTState(stand_in_engines(refuse_capture), 3, use_graph=use_graph)
    rng = np.random.default_rng(0)
    for prefix_length in (4, 2):  # a second prefill on the same state restarts the sequence
        sequence = rng.integers(0, VOCAB, size=(3, prefix_length))
        logits = state.prefill(sequence)
        for position in range(prefix_length, prefix_length + 6):
            np.testing.assert_array_equal(logits, toy_logits(sequence)[:, :CODES])
            following = logits.argmax(axis=1)
            sequence = np.concatenate([sequence, following[:, None]], axis=1)
            logits = state.step(following, position)
    assert (state._graph is not None) == (use_graph and not refuse_capture)


@pytest.mark.parametrize("use_graph", [False, True])
def test_draw_and_generate_sample_what_the_cpu_samples(stand_in_gpu, use_graph):
    seeds = np.array([5, 6, 7], np.uint64)
    params = dict(top_k=10, top_p=0.9, temperature=1.1, greedy=False)
    prefix = np.array([[1, 2], [3, 4], [5, 6]])
    sequence, expected = prefix, []
    for k in range(7):  # the CPU sampler over the toy model's logits
        expected.append(sample_logits(toy_logits(sequence)[:, :CODES].copy(), seeds=seeds,
                                      step=k, **params))
        sequence = np.concatenate([sequence, expected[-1][:, None]], axis=1)
    expected = np.stack(expected, axis=1)
    engines = stand_in_engines()
    state = TensorRTState(engines, 3, use_graph=use_graph, fetch_logits=False)
    assert state.prefill(prefix) is None
    drawn = []
    for k in range(7):
        drawn.append(state.draw(seeds, k, **params))
        if k < 6:
            assert state.step(drawn[-1], 2 + k) is None
    np.testing.assert_array_equal(np.stack(drawn, axis=1), expected)
    generated = TensorRTState(engines, 3, use_graph=use_graph).generate(prefix, seeds, 7,
                                                                         **params)
    np.testing.assert_array_equal(generated, expected)


# --- the decoder engines (TensorRTGraphs, decoder engine "tensorrt") ----------------------------
# StandInOnnxEngine answers for an engine the stand-in tensorrt "built" from one of the bundle's
# ONNX graphs (its bytes name the file): its inputs and outputs are the graph's, its profile
# the manifest's, and its context runs the graph with ONNX Runtime on the bytes at the bound
# addresses of StandInStream, refusing shapes outside the profile as TensorRT does. So the
# decoder engine's glue (shared buffers and scratch, shapes, binds, output order, tile caps)
# runs here and must give ONNX Runtime's images exactly. Not TensorRT.

_TRT_TYPE = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF",
             onnx.TensorProto.INT64: "INT64"}


class StandInOnnxEngine:
    def __init__(self, path: Path, profile):
        graph = onnx.load(path, load_external_data=False).graph
        self.path, self.profile = path, profile
        self.inputs = [(t.name, _TRT_TYPE[t.type.tensor_type.elem_type]) for t in graph.input]
        self.outputs = [(t.name, _TRT_TYPE[t.type.tensor_type.elem_type]) for t in graph.output]
        self.device_memory_size_v2 = 1 << 30  # the profile's largest: never what is asked
        self.session = None  # opened on the first run

    @property
    def num_io_tensors(self):
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i):
        return (self.inputs + self.outputs)[i][0]

    def get_tensor_mode(self, name):
        return "in" if name in dict(self.inputs) else "out"

    def get_tensor_dtype(self, name):
        return DTYPES[dict(self.inputs + self.outputs)[name]]

    def get_tensor_location(self, name):
        return "device"

    def get_tensor_profile_shape(self, name, profile):
        shapes = self.profile[name]
        return shapes.min, shapes.opt, shapes.max

    def create_execution_context(self, strategy):
        assert strategy == "user managed"  # the scratch is shared: no memory of its own
        return StandInOnnxContext(self)

    def run(self, feeds):
        if self.session is None:
            self.session = open_session(self.path, ("CPUExecutionProvider",), "cpu", 1,
                                        arena=False)
        return dict(zip([name for name, _ in self.outputs], self.session.run(None, feeds)))


class StandInOnnxContext:
    def __init__(self, engine: StandInOnnxEngine):
        self.engine, self.address, self.shape, self.scratch = engine, {}, {}, None
        self._out_shapes = {}  # input shapes -> output name -> shape

    def set_input_shape(self, name, shape):
        shapes = self.engine.profile[name]
        if not all(lo <= s <= hi for lo, s, hi in zip(shapes.min, shape, shapes.max)):
            return False
        self.shape[name] = tuple(shape)
        return True

    def _feeds(self, read):
        return {name: read(name, self.shape[name], np.dtype(tensorrt_backend._NUMPY_OF[kind]))
                for name, kind in self.engine.inputs}

    def get_tensor_shape(self, name):
        if name in self.shape:
            return self.shape[name]
        key = tuple(sorted(self.shape.items()))
        if key not in self._out_shapes:  # run on zeros once for these input shapes
            outputs = self.engine.run(self._feeds(lambda n, shape, dtype: np.zeros(shape, dtype)))
            self._out_shapes[key] = {n: out.shape for n, out in outputs.items()}
        return self._out_shapes[key][name]

    def set_tensor_address(self, name, address):
        self.address[name] = address
        return True

    def update_device_memory_size_for_shapes(self):
        """A need that grows with the shapes, as TensorRT's does."""
        names = [name for name, _ in self.engine.inputs + self.engine.outputs]
        return 64 * sum(int(np.prod(self.get_tensor_shape(name))) for name in names)

    def set_device_memory(self, address, nbytes):
        self.scratch = (address, nbytes)

    def execute_async_v3(self, handle):
        stream = StandInStream.streams[handle]
        need = self.update_device_memory_size_for_shapes()
        assert self.scratch is not None and self.scratch[1] >= need
        stream.view(self.scratch[0], need)  # inside a live allocation

        def read(name, shape, dtype):
            nbytes = int(np.prod(shape)) * dtype.itemsize
            return stream.view(self.address[name], nbytes).view(dtype).reshape(shape).copy()

        def op():
            for name, out in self.engine.run(self._feeds(read)).items():
                stream.view(self.address[name], out.nbytes)[:] = out.reshape(-1).view(np.uint8)
        stream.enqueue(op)
        return True


def stand_in_decoder_engines(monkeypatch, bundle_path: Path):
    """tensorrt as the stand-in export saw it, each engine file answered by StandInOnnxEngine."""
    manifest = load_bundle(bundle_path).manifest
    by_bytes = {(bundle_path / spec.file).read_bytes(): spec
                for spec in manifest.tensorrt.engines.values()}
    fake = FakeTensorRT()
    fake.TensorIOMode = type("TensorIOMode", (), {"INPUT": "in", "OUTPUT": "out"})
    fake.TensorLocation = type("TensorLocation", (), {"DEVICE": "device"})
    fake.ExecutionContextAllocationStrategy = SimpleNamespace(USER_MANAGED="user managed")

    def deserialize(data):
        spec = by_bytes[data]
        return StandInOnnxEngine(bundle_path / spec.graph, spec.profile)
    fake.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=deserialize)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_backend._native, "DeviceStream", StandInStream)
    from vqrt.runtime import tiled_decode
    monkeypatch.setattr(tiled_decode, "tensorrt_unavailable_reason", lambda: "")


@needs_golden
def test_the_decoder_engine_is_asked_for_and_says_what_is_missing(stand_in_bundle, golden_bundle,
                                                                   monkeypatch):
    with pytest.raises(RequestError, match=r"needs the bundle's TensorRT decoder engine, which "
                                           r"it lacks: rebuild it with `vqrt build --backend "
                                           r"tensorrt`"):
        Generator(golden_bundle, decoder_engine="tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RequestError, match=r"^decoder engine tensorrt: the tensorrt package is "
                                           r"not installed .+; or use engine onnxruntime$"):
        Generator(stand_in_bundle, decoder_engine="tensorrt")


def _decoders(bundle_path: Path):
    from vqrt.runtime.tiled_decode import TiledDecoder
    bundle = load_bundle(bundle_path)
    cpu = ("CPUExecutionProvider",)
    return (TiledDecoder(bundle, cpu, "cpu", 1, engine="tensorrt"),
            TiledDecoder(bundle, cpu, "cpu", 1, engine="onnxruntime"))


@needs_golden
def test_the_decoder_engines_decode_whole_and_tiled_as_onnxruntime(stand_in_bundle, monkeypatch):
    stand_in_decoder_engines(monkeypatch, stand_in_bundle)
    engines, graphs = _decoders(stand_in_bundle)
    assert engines.providers == ("TensorRT",)
    rng = np.random.default_rng(3)
    # whole images: the largest the profile takes, a smaller one, again; then tiles of 1 and 3
    # latent positions, whose edge tiles are clipped, through every step engine
    for shape, tile in (((8, 8, 8), None), ((1, 3, 5), None), ((8, 8, 8), None),
                        ((2, 8, 8), 1), ((1, 7, 5), 3)):
        codes = rng.integers(0, 256, shape)
        assert (engines.plan(*shape, tile=tile).tiles is None) == (tile is None)
        np.testing.assert_array_equal(engines.decode(codes, tile=tile),
                                      graphs.decode(codes, tile=tile))
    with pytest.raises(RequestError, match=r"refuses indices of shape \[9, 8, 8\] \(outside "
                                           r"its optimization profile\); rebuild the bundle "
                                           r"with larger --max-batch"):
        engines._whole.run({"indices": np.zeros((9, 8, 8), np.int64)})


@needs_golden
def test_device_memory_follows_the_calls_made(stand_in_bundle, monkeypatch):
    """Step engines load when a plan first tiles; tiles only: no whole-image buffer or
    activations on the device; blocks grow to the largest call, outgrown ones are released."""
    stand_in_decoder_engines(monkeypatch, stand_in_bundle)
    engines, _ = _decoders(stand_in_bundle)
    graphs = engines._whole._graphs
    assert set(graphs._contexts) == {"decoder"}
    codes = np.random.default_rng(5).integers(0, 256, (1, 8, 8))
    engines.decode(codes, tile=2)
    assert len(graphs._contexts) == 1 + len(engines.runners)
    assert "indices" not in graphs._blocks and "image" not in graphs._blocks
    tiled_scratch = graphs._blocks["scratch"][1]
    engines.decode(np.repeat(codes, 8, axis=0))  # whole, the largest batch: the scratch grows
    assert graphs._blocks["scratch"][1] > tiled_scratch and "image" in graphs._blocks
    live = StandInStream.streams[graphs._stream.handle]._blocks
    assert sorted(live) == sorted(address for address, _ in graphs._blocks.values())
    engines.decode(codes, tile=2)  # contexts bound to moved blocks are re-bound


@needs_golden
def test_without_step_engines_tiles_run_on_onnxruntime(tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    stand_in_build(out, fail="conv_out")  # TensorRT refused a step: no step engines
    stand_in_decoder_engines(monkeypatch, out)
    engines, graphs = _decoders(out)
    assert engines.providers == ("TensorRT",)  # the whole-image engine
    assert all(runner.providers() == ("CPUExecutionProvider",)
               for runner in engines.runners.values())
    codes = np.random.default_rng(6).integers(0, 256, (2, 8, 8))
    for tile in (None, 3):
        np.testing.assert_array_equal(engines.decode(codes, tile=tile),
                                      graphs.decode(codes, tile=tile))


@needs_golden
def test_tiles_stay_within_the_step_engines_profiles(tmp_path, monkeypatch):
    """Step engines built for small tiles (a 64 KiB tensor limit: 14 pixels at the 64-channel
    level, less than the 64-pixel image): every tile the plan makes fits its engine's profile
    (the stand-in refuses any other), whatever the batch, tile or budget asked for."""
    from vqrt.runtime import tiled_decode
    out = tmp_path / "bundle"
    monkeypatch.setattr(tiled_decode, "TENSORRT_TILE_TENSOR_LIMIT", 64 << 10)
    stand_in_build(out)
    stand_in_decoder_engines(monkeypatch, out)
    engines, graphs = _decoders(out)
    largest = max(engines._largest_tile.values())
    assert largest < 64 and min(engines._largest_tile.values()) >= 1
    codes = np.random.default_rng(4).integers(0, 256, (2, 8, 8))
    whole = graphs.decode(codes)
    # A budget under the whole image's estimate: tiles sized by a fraction of the limit.
    budget = engines.plan(*codes.shape, max_memory=1 << 40).peak_bytes - 1
    for tile, budget in ((None, budget), (7, None), (4, None)):
        plan = engines.plan(*codes.shape, tile=tile, max_memory=budget)
        assert plan.tiles is not None and max(plan.tiles) <= largest
        decoded = engines.decode(codes, tile=tile, max_memory=budget)
        mse = np.mean((decoded.astype(np.float64) - whole) ** 2)
        assert 10 * np.log10(4.0 / mse) >= 55  # tiled against whole, as test_tiled_decode


@needs_golden
def test_the_encoder_engine_loads_on_first_use_and_encodes_as_onnxruntime(stand_in_bundle,
                                                                          monkeypatch):
    stand_in_decoder_engines(monkeypatch, stand_in_bundle)
    engines = Generator(stand_in_bundle, decoder_engine="tensorrt")
    graphs = engines._first_stage.engine_graphs
    assert engines.providers["encoder"] == ("TensorRT",)
    assert set(graphs._contexts) == {"decoder"}  # a process that never encodes never loads it
    images = np.random.default_rng(7).uniform(-1, 1, (3, 3, 64, 48)).astype(np.float32)
    np.testing.assert_array_equal(engines.encode(images),
                                  Generator(stand_in_bundle).encode(images))
    assert set(graphs._contexts) == {"decoder", "encoder"}


@pytest.mark.parametrize("name", ["segmentation", "first_stage_resized"])
def test_the_cond_encoder_engine_encodes_as_onnxruntime(name, tmp_path, monkeypatch):
    """Conditions at the training size and at larger images' (the engine's profile takes every
    image size up to the largest) and, where the graph resizes them first, of other sizes: the
    engine makes ONNX Runtime's tokens; one the profile cannot take is a one-line refusal."""
    from test_export_conditioning import build_random_case
    with stand_in_tensorrt_builds(tmp_path / "cache"):
        build_random_case(name, tmp_path, BuildOptions(backend="tensorrt", max_size=(32, 24)))
    bundle = tmp_path / "bundle"
    stand_in_decoder_engines(monkeypatch, bundle)
    engines = Generator(bundle, decoder_engine="tensorrt")._conditioner
    graphs = Generator(bundle, decoder_engine="onnxruntime")._conditioner
    assert engines.providers == {"cond_encoder": ("TensorRT",)}
    rng = np.random.default_rng(8)
    resized = name == "first_stage_resized"
    shapes = [(2, 16, 16), (1, 24, 32), (8, 8, 8)] + ([(1, 20, 12), (1, 6, 10)] if resized else [])
    for rows, height, width in shapes:
        if resized:
            cond = rng.uniform(-1, 1, (rows, 3, height, width)).astype(np.float32)
        else:
            cond = segmentation_one_hot(rng.integers(0, 5, (rows, height, width)), 5)
        image_size = (16, 16) if resized else (height, width)
        np.testing.assert_array_equal(engines.prefix(None, cond, image_size),
                                      graphs.prefix(None, cond, image_size))
    if resized:  # any size resizes on ONNX Runtime; the engine takes up to the largest image
        large = rng.uniform(-1, 1, (1, 3, 40, 8)).astype(np.float32)
        assert graphs.prefix(None, large, (16, 16)).shape == (1, 16)
        with pytest.raises(RequestError, match=r"^decoder engine tensorrt: the engine refuses "
                                               r"cond of shape \[1, 3, 40, 8\] \(outside its "
                                               r"optimization profile\); resize the condition "
                                               r"to at most 32x24 pixels \(the bundle's "
                                               r"largest image\), or use decoder engine "
                                               r"onnxruntime$"):
            engines.prefix(None, large, (16, 16))

"""TensorRT engines (`--backend tensorrt`). The engine tests run only where TensorRT 10 and a GPU
exist and skip elsewhere with what was found; the profile arithmetic, and vqrt's glue around
TensorRT with a stand-in module, run everywhere."""
import importlib.machinery
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Union

import onnx
import pytest

from vqrt.export import tensorrt_engines
from vqrt.export.build import BuildError, BuildOptions, build_bundle
from vqrt.runtime.bundle import (
    Conditioning, FirstStageSpec, GraphSpec, Limits, TransformerSpec, load_bundle)
from vqrt.runtime.tiled_decode import ConvStep, program_steps, tile_engine_name
from shared_data import GOLDEN


def tensorrt_or_skip() -> tensorrt_engines.TensorRTEnvironment:
    try:
        return tensorrt_engines.probe()
    except tensorrt_engines.TensorRTUnavailable as e:
        pytest.skip(f"needs TensorRT 10 and a CUDA GPU: {e}")


def tile_engine_names(bundle: Path) -> set:
    program = json.loads((bundle / "tiled_decoder" / "program.json").read_text())
    return {tile_engine_name(step) for step in program_steps(program)
            if isinstance(step, ConvStep)}


def test_profiles_cover_batch_and_latent_ranges():
    graph = GraphSpec("x.onnx", "fp32", 17, (), ())
    graphs = {name: graph for name in ("encoder", "decoder", "transformer_prefill",
                                       "transformer_step")}
    first_stage = FirstStageSpec(3, (64, 64), 8, (8, 8), 256, 48, "vq", (-1.0, 1.0))
    transformer = TransformerSpec(256, 65, 2, 4, 48, 12, 0)
    conditioning = Conditioning("class", 1, n_classes=8)
    limits = Limits(max_batch=4, max_latent=(16, 32), max_sequence=65)
    profiles = tensorrt_engines.engine_profiles(graphs, first_stage, transformer, conditioning,
                                                None, limits)
    image = profiles["encoder"]["image"]
    assert (image.min, image.opt, image.max) == ((1, 3, 8, 8), (1, 3, 64, 64), (4, 3, 128, 256))
    indices = profiles["decoder"]["indices"]
    assert (indices.min, indices.opt, indices.max) == ((1, 1, 1), (1, 8, 8), (4, 16, 32))
    tokens = profiles["transformer_prefill"]["tokens"]
    assert (tokens.min, tokens.opt, tokens.max) == ((1, 1), (1, 1), (4, 65))
    assert profiles["transformer_step"]["tokens"].max == (4, 1)
    assert profiles["transformer_step"]["kv_cache"].max == (2, 2, 4, 4, 65, 12)
    assert "position" not in profiles["transformer_step"]  # data, not a shape


@pytest.mark.parametrize("resize", [None, 8])
def test_cond_encoder_profile_takes_every_image_size(resize):
    """A condition has the image's size (or any, where the graph first resizes it): from one
    cond-stage step (8 here; a graph that resizes takes 1) up to the largest image."""
    graphs = {"cond_encoder": GraphSpec("c.onnx", "fp32", 17, (), ())}
    first_stage = FirstStageSpec(3, (64, 64), 16, (4, 4), 256, 48, "vq", (-1.0, 1.0))
    conditioning = Conditioning("vq", 16, cond_stage_key="segmentation", cond_channels=5,
                                cond_resize=resize)
    limits = Limits(max_batch=2, max_latent=(8, 12), max_sequence=None)
    cond = tensorrt_engines.engine_profiles(graphs, first_stage, None, conditioning, 8,
                                            limits)["cond_encoder"]["cond"]
    low = 8 if resize is None else 1
    assert (cond.min, cond.opt, cond.max) == ((1, 5, low, low), (1, 5, 64, 64), (2, 5, 128, 192))


def test_opt_shape_is_clamped_to_a_smaller_max():
    graphs = {"decoder": GraphSpec("d.onnx", "fp32", 17, (), ())}
    first_stage = FirstStageSpec(3, (256, 256), 16, (16, 16), 1024, 256, "vq", (-1.0, 1.0))
    limits = Limits(max_batch=1, max_latent=(8, 8), max_sequence=None)
    profile = tensorrt_engines.engine_profiles(graphs, first_stage, None, None, None, limits)
    assert profile["decoder"]["indices"].opt == (1, 8, 8)


def test_timing_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("VQRT_CACHE_DIR", str(tmp_path))
    env = tensorrt_engines.TensorRTEnvironment("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
    path = tensorrt_engines.timing_cache_path(env)
    assert path == tmp_path / "tensorrt" / "timing-10.3.0-NVIDIA-H100-80GB-HBM3-sm9.0.cache"


@pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(), reason=f"no golden data at {GOLDEN}")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_engines_build_and_deserialize(tmp_path, monkeypatch, precision):
    env = tensorrt_or_skip()
    import tensorrt as trt
    monkeypatch.setenv("VQRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision=precision,
                                                          backend="tensorrt"),
                 config=GOLDEN / "transformer.yaml", log=print)
    manifest = load_bundle(out).manifest
    assert manifest.backends[0] == "tensorrt"
    assert (manifest.tensorrt.version, manifest.tensorrt.gpu) == (env.version, env.gpu)
    assert set(manifest.tensorrt.engines) == set(manifest.graphs) | tile_engine_names(out)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for name, engine_spec in manifest.tensorrt.engines.items():
        engine = runtime.deserialize_cuda_engine((out / engine_spec.file).read_bytes())
        assert engine is not None, name
        io_names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        graph = onnx.load(out / engine_spec.graph, load_external_data=False).graph
        assert io_names == {t.name for t in list(graph.input) + list(graph.output)}, name
    assert tensorrt_engines.timing_cache_path(env).is_file()  # kept for the next build


class FakeTensorRT:
    """A stand-in for the tensorrt module that records what vqrt asks of it. It checks vqrt's
    glue (profiles, flags, files, manifest, timing cache), never TensorRT itself."""
    __version__ = "10.99.0"

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        BF16 = "bf16"
        TF32 = "tf32"

    def __init__(self, fail: Union[bool, str] = False):  # str: refuse graphs whose file has it
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch looks for one
        self.calls = []
        self.fail = fail
        fake = self

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+"

        class Config:
            def __init__(self):
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                return 0

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("shape", name, low, opt, high))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return SimpleNamespace(source=None)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                refused = (fake.fail is True or isinstance(fake.fail, str)
                           and fake.fail in network.source)
                return None if refused else f"engine of {network.source}".encode()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                fake.calls.append(("parse", Path(path).name))
                self.network.source = Path(path).name
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


ENV = tensorrt_engines.TensorRTEnvironment("10.99.0", "Fake GPU", "9.0")


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    def install(fail=False):
        fake = FakeTensorRT(fail)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(tensorrt_engines, "probe", lambda: ENV)
        monkeypatch.setenv("VQRT_CACHE_DIR", str(tmp_path / "cache"))
        return fake
    return install


@pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(), reason=f"no golden data at {GOLDEN}")
def test_engine_glue_with_a_stand_in(fake_tensorrt, tmp_path):
    fake = fake_tensorrt()
    out = tmp_path / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision="fp16", backend="tensorrt"),
                 config=GOLDEN / "transformer.yaml", log=lambda line: None)
    manifest = load_bundle(out).manifest
    assert manifest.backends == ("tensorrt", "onnxruntime")
    assert manifest.tools["tensorrt"] == "10.99.0" and "Fake GPU" in manifest.tools["gpu"]
    engines = manifest.tensorrt.engines
    assert set(engines) == set(manifest.graphs) | tile_engine_names(out)
    assert (out / engines["decoder"].file).read_bytes() == b"engine of decoder.onnx"
    assert engines["decoder"].profile["indices"].max == (8, 8, 8)
    # One engine per conv step of the tiled decoder, built from that step's graph.
    conv_out = engines["tiled_decoder/decoder.conv_out"]
    assert conv_out.file == "engines/tiled_decoder/decoder.conv_out.plan"
    assert (out / conv_out.file).read_bytes() == f"engine of {Path(conv_out.graph).name}".encode()
    assert conv_out.graph.startswith("tiled_decoder/") and (out / conv_out.graph).is_file()
    assert set(conv_out.profile) == {"x", "inside", "scale", "shift"}
    assert conv_out.precision == "fp32" and engines["decoder"].precision == "fp16"
    assert ("network", 1 << 5) in fake.calls  # fp16: strongly typed
    assert ("shape", "kv_cache", (2, 2, 1, 4, 65, 12), (2, 2, 1, 4, 65, 12),
            (2, 2, 8, 4, 65, 12)) in fake.calls
    # The timing cache grew once per engine and was kept for the next build.
    cache = tensorrt_engines.timing_cache_path(ENV).read_bytes()
    assert cache == b"+" * len(engines)


@pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(), reason=f"no golden data at {GOLDEN}")
def test_bf16_builds_the_encoder_in_fp32(fake_tensorrt, tmp_path):
    """Under the BF16 flag TensorRT may compute the codebook distances in bf16: the encoder's
    codes would differ from the fp32 graph's, so its engine (and the steps') is built fp32."""
    fake = fake_tensorrt()
    out = tmp_path / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision="bf16", backend="tensorrt"),
                 config=GOLDEN / "transformer.yaml", log=lambda line: None)
    engines = load_bundle(out).manifest.tensorrt.engines
    bf16 = {name for name, spec in engines.items() if spec.precision == "bf16"}
    assert bf16 == {"decoder", "transformer_prefill", "transformer_step"}
    assert engines["encoder"].precision == "fp32"
    assert fake.calls.count(("set_flag", "bf16")) == len(bf16)
    assert fake.calls.count(("clear_flag", "tf32")) == len(engines) - len(bf16)


@pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(), reason=f"no golden data at {GOLDEN}")
def test_auto_falls_back_when_an_engine_fails(fake_tensorrt, tmp_path):
    fake_tensorrt(fail=True)
    out = tmp_path / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision="bf16"),
                 config=GOLDEN / "transformer.yaml", log=lambda line: None)
    manifest = load_bundle(out).manifest
    assert manifest.tensorrt is None and "tensorrt" not in manifest.backends
    assert not (out / tensorrt_engines.ENGINE_DIR).exists()
    assert any(note.startswith("TensorRT not used: TensorRT could not build") for note in
               manifest.notes)
    with pytest.raises(BuildError, match="TensorRT could not build an engine from encoder.onnx"):
        build_bundle(GOLDEN / "model.ckpt", tmp_path / "b2",
                     BuildOptions(precision="bf16", backend="tensorrt"),
                     config=GOLDEN / "transformer.yaml", log=lambda line: None)
    assert not (tmp_path / "b2").exists()


@pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(), reason=f"no golden data at {GOLDEN}")
def test_a_refused_step_engine_costs_only_the_step_engines(fake_tensorrt, tmp_path):
    fake_tensorrt(fail="conv_out")  # TensorRT refuses one tiled-decoder step graph
    out = tmp_path / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(backend="tensorrt"),
                 config=GOLDEN / "transformer.yaml", log=lambda line: None)
    manifest = load_bundle(out).manifest
    assert set(manifest.tensorrt.engines) == set(manifest.graphs)  # the graphs' engines stay
    assert not (out / tensorrt_engines.STEP_ENGINE_DIR).exists()
    assert any(note.startswith("TensorRT step engines not built (TensorRT could not build an "
                               "engine from ") and "decoder.conv_out" in note
               for note in manifest.notes)
    # What the engines built before the refusal timed is kept for the next build.
    assert tensorrt_engines.timing_cache_path(ENV).read_bytes().count(b"+") > len(
        manifest.graphs)

"""TensorRT engines built from the bundle's ONNX graphs (TensorRT 10 Python API).

STATUS: written against the TensorRT 10 API documentation and never run: no machine this code
was developed on had TensorRT or a GPU. Its tests skip with that reason. Treat the first run on
a GPU as the real test (scripts or `pytest tests/test_export_tensorrt.py` there).

One engine per graph, each with one optimization profile: batch 1..max_batch, latent sizes from
1 x 1 to the bundle's max latent (images and conditions up to the largest image), token counts
1..block_size; `opt` is batch 1 at the training size. Also one engine per conv step of the
tiled decoder (engines/tiled_decoder/<step>.plan, fp32 whatever the bundle's precision, built
after the others: export/build.py), for tiles from 1 pixel to the largest the runtime asks for
(runtime/tiled_decode.py, tile_engine_profiles), so decoder engine "tensorrt" runs tiled plans
too. Precision:
  fp32  the fp32 graphs, TF32 off (so engines match the fp32 parity limits);
  fp16  the fp16 graphs in a strongly typed network: TensorRT keeps the graphs' fp32 islands
        (normalisation, softmax, argmin) instead of choosing precisions itself;
  bf16  the fp32 graphs with the BF16 builder flag (TensorRT picks per layer), but for the
        encoders (CODE_GRAPHS), built fp32: see engine_precision.
A timing cache per TensorRT version and GPU lives in $VQRT_CACHE_DIR (default
~/.cache/vqrt) and is reused and extended by every build. `tensorrt` and `cuda-python` are
imported only here, only when an engine is wanted.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from vqrt.runtime.bundle import (
    Conditioning, EngineSpec, FirstStageSpec, GraphSpec, Limits, ShapeRange, TensorRTSpec,
    TransformerSpec)
from vqrt.runtime.tiled_decode import (
    ConvStep, program_steps, tile_engine_name, tile_engine_profiles)

NEEDS = ("TensorRT 10 and an NVIDIA GPU with its driver (pip install 'vqrt[tensorrt]' on a "
         "machine with one)")
WORKSPACE_BYTES = 4 << 30
ENGINE_DIR = "engines"
STEP_ENGINE_DIR = f"{ENGINE_DIR}/tiled_decoder"  # tile_engine_name's prefix under ENGINE_DIR


# Graphs that end in an argmin over codebook distances. Under the BF16 flag TensorRT may compute
# those distances in bf16, and near-ties would then pick other codes than the fp32 graph's: other
# prefix tokens, another image. fp16 builds keep the graphs' fp32 islands (strongly typed).
CODE_GRAPHS = ("encoder", "cond_encoder")


def engine_precision(name: str, precision: str) -> str:
    """What engine `name` of a `precision` build is built in: fp32 for CODE_GRAPHS under bf16
    (an encoder runs once per request: its speed matters little), else `precision`."""
    return "fp32" if precision == "bf16" and name in CODE_GRAPHS else precision


class TensorRTUnavailable(Exception):
    """TensorRT cannot build here; the message says what was found."""


class TensorRTBuildError(Exception):
    """TensorRT refused a graph; the message is one line."""


@dataclass(frozen=True)
class TensorRTEnvironment:
    version: str
    gpu: str
    compute_capability: str


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python
        return cudart
    except ImportError:
        raise TensorRTUnavailable("cuda-python is not installed")


def probe() -> TensorRTEnvironment:
    """What TensorRT and which GPU this machine has; TensorRTUnavailable when either is missing
    or too old. Cheap: no engine is built."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"the tensorrt package is not installed ({e})")
    version = trt.__version__
    if int(version.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"found TensorRT {version}")
    cudart = _cudart()
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        raise TensorRTUnavailable(f"found TensorRT {version} but no usable CUDA GPU "
                                  f"(cudaGetDeviceCount: {getattr(error, 'name', error)})")
    if count < 1:
        raise TensorRTUnavailable(f"found TensorRT {version} but no CUDA GPU (0 devices)")
    error, props = cudart.cudaGetDeviceProperties(0)
    if error != cudart.cudaError_t.cudaSuccess:
        raise TensorRTUnavailable(f"found TensorRT {version} but cannot query GPU 0 "
                                  f"({getattr(error, 'name', error)})")
    name = props.name
    name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).strip("\0")
    return TensorRTEnvironment(version, name, f"{props.major}.{props.minor}")


def timing_cache_path(env: TensorRTEnvironment) -> Path:
    root = Path(os.environ.get("VQRT_CACHE_DIR", Path.home() / ".cache" / "vqrt"))
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{env.version}-{env.gpu}-sm{env.compute_capability}")
    return root / "tensorrt" / f"timing-{slug}.cache"


def engine_profiles(graphs: Dict[str, GraphSpec], first_stage: FirstStageSpec,
                    transformer: Optional[TransformerSpec], conditioning: Optional[Conditioning],
                    cond_factor: Optional[int], limits: Limits
                    ) -> Dict[str, Dict[str, ShapeRange]]:
    """graph name -> input -> (min, opt, max) shapes. Scalar inputs (position) need none.
    cond_factor: the cond stage's downsampling factor (bundles with a cond_encoder graph)."""
    f = first_stage.downsampling_factor
    train_h, train_w = first_stage.training_grid
    max_h, max_w = limits.max_latent
    batch = limits.max_batch

    def span(low, opt, high) -> ShapeRange:
        opt = tuple(max(lo, min(o, hi)) for lo, o, hi in zip(low, opt, high))
        return ShapeRange(tuple(low), opt, tuple(high))

    channels = first_stage.image_channels
    profiles = {
        "encoder": {"image": span((1, channels, f, f), (1, channels, train_h * f, train_w * f),
                                  (batch, channels, max_h * f, max_w * f))},
        "decoder": {"indices": span((1, 1, 1), (1, train_h, train_w), (batch, max_h, max_w))},
    }
    if "cond_encoder" in graphs:
        c = conditioning.cond_channels
        # A condition has the image's size (runtime/conditioning.py), from one cond-stage
        # downsampling step to the largest image; a graph that first resizes
        # (conditioning.cond_resize) takes any size up to that largest image.
        low = 1 if conditioning.cond_resize else cond_factor
        profiles["cond_encoder"] = {"cond": span((1, c, low, low),
                                                 (1, c, train_h * f, train_w * f),
                                                 (batch, c, max_h * f, max_w * f))}
    if transformer is not None:
        t = transformer
        kv = lambda b: (t.n_layer, 2, b, t.n_head, t.block_size, t.head_dim)  # noqa: E731
        prefix = max(1, conditioning.prefix_tokens)
        profiles["transformer_prefill"] = {
            "tokens": span((1, 1), (1, prefix), (batch, t.block_size)),
            "kv_cache": span(kv(1), kv(1), kv(batch))}
        profiles["transformer_step"] = {
            "tokens": span((1, 1), (1, 1), (batch, 1)), "kv_cache": span(kv(1), kv(1), kv(batch))}
    return {name: profile for name, profile in profiles.items() if name in graphs}


def tile_step_engines(staging: Path, program: str, limits: Limits
                      ) -> Tuple[Dict[str, Dict[str, ShapeRange]], Dict[str, str]]:
    """The tiled decoder's step engines, from its program (staging/program): engine name ->
    input -> shapes, and engine name -> its step graph's file in the bundle."""
    steps = program_steps(json.loads((staging / program).read_text(encoding="utf-8")))
    profiles = tile_engine_profiles(steps, limits.max_batch, limits.max_latent)
    return profiles, {tile_engine_name(s): s.graph for s in steps if isinstance(s, ConvStep)}


def _build_one(trt, onnx_path: Path, engine_path: Path, profile: Dict[str, ShapeRange],
               precision: str, timing_cache: bytes) -> bytes:
    """Builds and writes one engine; returns the extended timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = precision == "fp16"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        first = parser.get_error(0).desc() if parser.num_errors else "no detail"
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path.name}: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    optimization_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization_profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(optimization_profile)
    config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT could not build an engine from {onnx_path.name} "
                                 "(see the TensorRT log above)")
    with open(engine_path, "wb") as f:
        f.write(memoryview(serialized))
        f.flush()
        os.fsync(f.fileno())
    return bytes(memoryview(config.get_timing_cache().serialize()))


def _save_timing_cache(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def build_engines(staging: Path, sources: Dict[str, str],
                  profiles: Dict[str, Dict[str, ShapeRange]], precision: str,
                  env: TensorRTEnvironment, log: Callable[[str], None]) -> TensorRTSpec:
    """Engines for every name in `profiles`, each from the ONNX file sources[name] (a path in
    the bundle), written to staging/engines/<name>.plan, in engine_precision(name,
    precision)."""
    import tensorrt as trt
    cache_path = timing_cache_path(env)
    timing_cache = cache_path.read_bytes() if cache_path.is_file() else b""
    engines: Dict[str, EngineSpec] = {}
    try:
        for name, profile in profiles.items():
            relative = f"{ENGINE_DIR}/{name}.plan"
            built_as = engine_precision(name, precision)
            log(f"building TensorRT engine {relative} ({built_as})")
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            timing_cache = _build_one(trt, staging / sources[name], staging / relative,
                                      profile, built_as, timing_cache)
            engines[name] = EngineSpec(file=relative, graph=sources[name], precision=built_as,
                                       profile=profile)
    finally:  # what the engines built so far timed serves the next build, failed or not
        _save_timing_cache(cache_path, timing_cache)
    return TensorRTSpec(version=env.version, gpu=env.gpu,
                        compute_capability=env.compute_capability, engines=engines)


"""Tiled decoding: code indices of any size to images within a memory budget.

The bundle's tiled decoder (export/onnx_tiled_decoder.py) is a program of steps over named
whole-image buffers. This module runs it: each conv step streams its input buffer through its
ONNX graph one tile at a time (tile plus the halo its 3x3 kernel reads, zeros where the halo
leaves the image) and writes the tile's core into the output buffer. GroupNorm statistics are
merged over all tiles of the buffer they normalise (per-channel means and sums of squared
deviations, combined in float64 by Chan's parallel formula, then over each group), and each
attention block runs on the whole latent in query chunks, so no tile boundary changes a sum
that matters: tiled equals untiled up to rounding (fp16 storage between steps included),
seams included.

Memory: a step holds its input and output buffers whole (at most about two image-sized buffers
of the widest full-resolution level, in fp16: the step graphs read and write fp16 and compute
in fp32) plus one tile's temporaries; `plan()` sizes the tile from a budget and refuses, before
allocating, a request whose buffers alone do not fit.
This module never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vqrt.runtime.bundle import Bundle, BundleError, REBUILD, ShapeRange, TiledDecoderSpec
from vqrt.runtime.onnx_sessions import OrtGraph
from vqrt.runtime.params import RequestError
from vqrt.runtime.safetensors_io import SafetensorsError, read_safetensors
from vqrt.runtime.strict_json import loads_strict
from vqrt.runtime.tensorrt_backend import TensorRTGraphs, tensorrt_unavailable_reason

FORMAT = "vqrt-tiled-decoder-3"
WHOLE_GRAPH_SIDE = 32  # latents up to this side decode as one graph unless a tile is asked for
WHOLE_GRAPH_BUFFERS = 5  # the whole-image graph's peak over its largest activation (4.1x at
# 1024x1024, 4.8x at 2048x2048 with ONNX Runtime; benchmarks/decoder_bench.py)
# Each conv step's tile when the plan chooses: the largest square whose widest fp32 tensor
# (C x (p + 2)^2 x 4 bytes, C the wider of the step's input and output channels) stays within
# this. The element-wise passes around each conv (affine, swish, pad, residual, statistics) then
# stay in cache, and no block nears glibc's mmap threshold (tile sessions keep no arena, so
# blocks above it are mapped and faulted anew on every run). ImageNet-sized decoder at
# 1024x1024, ONNX Runtime fp32, single runs: 2 / 4 / 8 MiB 26.4 / 25.4 / 26.9 s; one tile of 8
# latent positions for every step 27.3-28.2 s, of 32 46.3 s (BENCHMARKS.md).
TILE_TENSOR_LIMIT = 4 << 20
# The same for the step engines of decoder engine "tensorrt": a GPU wants fewer, larger tiles
# (each tile is one engine launch and two copies over PCIe); 254 x 254 pixels of a 128-channel
# level. It also fixes the largest tile each engine's profile takes (tile_engine_profiles).
TENSORRT_TILE_TENSOR_LIMIT = 32 << 20
SMALLEST_TILE_TENSOR_LIMIT = TILE_TENSOR_LIMIT >> 9  # the last a memory budget tries
# What a step engine's refusal of a tile says: the plan never makes tiles beyond the profiles.
STEP_REFUSED = ("the tile plan made a tile outside the step engine's profile, which is a vqrt "
                "bug: please report it, and use --decoder-engine onnxruntime meanwhile")
# Tile temporaries over one step's estimate: freed temporaries of earlier steps stay in glibc's
# heaps (the engines' threads have their own), and steps' tiles differ in size, so the resident
# set grows past one step's needs: 2.4x at 1024x1024 with per-step tiles (BENCHMARKS.md).
TILE_HEAP_FACTOR = 3
ATTENTION_CHUNK = 1024  # queries per attention chunk: [chunk, N] scores, never [N, N]
FLOAT = 4  # bytes
STORAGE = np.dtype(np.float16)  # of the whole-image buffers between tile steps (the graphs' I/O)
FP16_MAX = 65504.0


def check_tiled_decoder_format(bundle: Bundle) -> None:
    """Every image decodes through the tiled decoder's program: a bundle whose program this
    vqrt does not read cannot make images (`vqrt inspect` says so too)."""
    spec = bundle.manifest.tiled_decoder
    if spec is None or spec.format != FORMAT:
        found = "none" if spec is None else spec.format
        raise BundleError(f"{bundle.path}: the bundle's tiled decoder is {found}, this vqrt "
                          f"reads {FORMAT}; {REBUILD} of this vqrt")


@dataclass(frozen=True)
class ConvStep:
    name: str
    graph: str
    input: str
    output: str
    kernel: int
    in_channels: int
    out_channels: int
    norm: Optional[str]
    swish: bool
    skip: Optional[str]
    skip_channels: Optional[int]
    upsample: bool


@dataclass(frozen=True)
class AttentionStep:
    name: str
    input: str  # [B, 3C, h, w]: q (scaled by 1/sqrt(C)), k, v
    output: str  # [B, C, h, w]
    channels: int


@dataclass(frozen=True)
class TilePlan:
    # Each conv step's tile side in pixels of its input, in program order; None: the
    # whole-image graph (decoder.onnx), the same sums with fewer graph boundaries.
    tiles: Optional[Tuple[int, ...]]
    storage: np.dtype  # of the whole-image buffers: float16 (STORAGE) when tiled
    buffer_bytes: int  # the most whole-image buffer bytes alive at once
    tile_bytes: int  # the most per-tile temporary bytes of any step (an estimate)

    @property
    def peak_bytes(self) -> int:
        return self.buffer_bytes + self.tile_bytes

    def describe(self) -> str:
        if self.tiles is None:
            return "the whole-image graph"
        low, high = min(self.tiles), max(self.tiles)
        return f"tiles of {low} px" if low == high else f"tiles of {low}-{high} px"


def _program_error(bundle: Bundle, what: str) -> BundleError:
    return BundleError(f"{bundle.file(bundle.manifest.tiled_decoder.program)}: {what}; {REBUILD}")


def program_steps(document: dict) -> List:
    """The steps of a program.json document; ValueError names a malformed one."""
    steps = []
    for i, raw in enumerate(document.get("steps", [])):
        try:
            fields = {k: v for k, v in raw.items() if k != "kind"}
            if raw["kind"] == "conv":
                step = ConvStep(**fields)
                if step.kernel not in (1, 3) or (step.upsample and step.kernel != 3):
                    raise ValueError(f"step {i} has kernel {step.kernel}")
            elif raw["kind"] == "attention":
                step = AttentionStep(**fields)
            else:
                raise ValueError(f"step {i} has unknown kind {raw['kind']!r}")
        except (KeyError, TypeError) as e:
            raise ValueError(f"step {i} is malformed ({e})") from None
        steps.append(step)
    return steps


def _parse_steps(bundle: Bundle, document: dict) -> List:
    try:
        steps = program_steps(document)
    except ValueError as e:
        raise _program_error(bundle, str(e)) from None
    listed = {entry.path for entry in bundle.manifest.files}
    for i, step in enumerate(steps):
        if isinstance(step, ConvStep) and step.graph not in listed:
            raise _program_error(bundle, f"step {i} names {step.graph}, which is not in the "
                                 "manifest's file list")
    return steps


def tile_engine_name(step: ConvStep) -> str:
    """The manifest's name for a conv step's TensorRT engine."""
    return f"tiled_decoder/{step.name}"


def _widest_channels(step: ConvStep) -> int:
    """Channels of the step's widest tensor: its input or its conv output (4 C_out phases for
    upsample steps)."""
    return max(step.in_channels, step.out_channels * (4 if step.upsample else 1))


def _tile_side(batch: int, channels: int, limit: int) -> int:
    """The largest tile side whose widest fp32 tensor, channels x (side + 2)^2, fits `limit`."""
    return max(1, math.isqrt(limit // (FLOAT * batch * channels)) - 2)


def tile_engine_profiles(steps: Sequence, max_batch: int, max_latent: Tuple[int, int]
                         ) -> Dict[str, Dict[str, ShapeRange]]:
    """Engine name -> input -> (min, opt, max) shapes for each conv step's TensorRT engine:
    batch 1..max_batch, square tiles from 1 pixel to TENSORRT_TILE_TENSOR_LIMIT's side at
    batch 1 (within the level's longer extent at max_latent); `opt` is batch 1 at the largest
    tile. (Device memory follows the shapes run, not these: runtime/tensorrt_backend.py.)"""
    def span(per_image: Tuple[int, ...], low: Tuple[int, ...], top: Tuple[int, ...],
             batched: bool = True) -> ShapeRange:
        """[B, *per_image, *spatial]: B 1..max_batch (or 1), spatial low..top, opt at top."""
        most = max_batch if batched else 1
        return ShapeRange((1,) + per_image + low, (1,) + per_image + top,
                          (most,) + per_image + top)

    profiles = {}
    scale = 1  # of the level the step reads, in pixels per latent position
    for step in steps:
        if not isinstance(step, ConvStep):
            continue
        side = _tile_side(1, _widest_channels(step), TENSORRT_TILE_TENSOR_LIMIT)
        high = (min(side, max(max_latent) * scale),) * 2
        halo, up = step.kernel // 2, 2 if step.upsample else 1
        haloed = tuple(t + 2 * halo for t in high)
        profile = {"x": span((step.in_channels,), (1 + 2 * halo,) * 2, haloed)}
        if halo:
            profile["inside"] = span((1,), (1 + 2 * halo,) * 2, haloed, batched=False)
        if step.norm is not None:
            profile["scale"] = profile["shift"] = span((step.in_channels,), (1, 1), (1, 1))
        if step.skip is not None:
            profile["skip"] = span((step.skip_channels,), (up, up), tuple(t * up for t in high))
        profiles[tile_engine_name(step)] = profile
        scale *= up
    return profiles


def _last_uses(steps: Sequence, final: str) -> Dict[str, int]:
    """buffer -> index of the last step that reads it (the final image is never freed)."""
    last: Dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in (step.input, getattr(step, "skip", None)):
            if name is not None:
                last[name] = i
    last.pop(final, None)
    return last


class _Stats:
    """Per-(image, channel) count, mean and M2 (sum of squared deviations) merged over tiles
    with Chan's parallel formula, in float64."""

    def __init__(self, batch: int, channels: int):
        self.count = 0
        self.mean = np.zeros((batch, channels))
        self.m2 = np.zeros((batch, channels))

    def add(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        delta = mean.astype(np.float64) - self.mean
        self.mean += delta * (count / total)
        self.m2 += m2.astype(np.float64) + delta * delta * (self.count * count / total)
        self.count = total

    def group_affine(self, groups: int, eps: float, gamma: np.ndarray, beta: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray]:
        """GroupNorm(groups) with affine (gamma, beta) as x * scale + shift, both
        float32 [B, C, 1, 1]; the variance is the biased one, as torch's GroupNorm."""
        batch, channels = self.mean.shape
        per_group = channels // groups
        mean = self.mean.reshape(batch, groups, per_group)
        group_mean = mean.mean(axis=2, keepdims=True)
        m2 = (self.m2.reshape(batch, groups, per_group).sum(axis=2, keepdims=True)
              + self.count * ((mean - group_mean) ** 2).sum(axis=2, keepdims=True))
        inv_std = 1.0 / np.sqrt(m2 / (self.count * per_group) + eps)
        scale = np.broadcast_to(inv_std, mean.shape).reshape(batch, channels) * gamma
        shift = beta - np.broadcast_to(group_mean, mean.shape).reshape(batch, channels) * scale
        return (scale.astype(np.float32).reshape(batch, channels, 1, 1),
                shift.astype(np.float32).reshape(batch, channels, 1, 1))


def _attention(qkv: np.ndarray, channels: int, storage: np.dtype) -> np.ndarray:
    """qkv [B, 3C, h, w] -> softmax(q^T k) v [B, C, h, w], `ATTENTION_CHUNK` queries at a time
    (the scores of one chunk are [chunk, h*w]; softmax rows are whole, so chunking is exact)."""
    batch, _, h, w = qkv.shape
    n = h * w
    out = np.empty((batch, channels, n), storage)
    for b in range(batch):
        flat = qkv[b].reshape(3, channels, n).astype(np.float32, copy=False)
        q_t = np.ascontiguousarray(flat[0].T)  # [N, C]
        k, v = flat[1], flat[2]  # [C, N]
        for start in range(0, n, ATTENTION_CHUNK):
            scores = q_t[start:start + ATTENTION_CHUNK] @ k  # [chunk, N]
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            out[b, :, start:start + ATTENTION_CHUNK] = v @ scores.T  # [C, chunk]
    return out.reshape(batch, channels, h, w)


class _OpenVinoGraph:
    """One graph compiled by OpenVINO for the CPU, with bf16 inference precision where the CPU
    has bf16 arithmetic (OpenVINO keeps fp32 elsewhere). One infer request per thread."""

    def __init__(self, path, num_threads: int):
        import threading
        import openvino
        core = openvino.Core()
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.outputs = list(self.compiled.outputs)  # in the graph's order, as ONNX Runtime
        self.local = threading.local()

    def providers(self) -> Tuple[str, ...]:
        return ("OpenVINO CPU",)

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        results = request.infer(feeds)
        return [np.array(results[output]) for output in self.outputs]


ENGINES = ("auto", "onnxruntime", "openvino", "tensorrt")


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(engine: str, bundle: Bundle, device: str) -> str:
    """"auto": OpenVINO for bundles built with --precision bf16 where it is installed and the
    decoder runs on the CPU (the user chose bf16 arithmetic at build time), else ONNX Runtime.
    "tensorrt" (the bundle's VQGAN engines) only when asked for, until it has run on a GPU."""
    if engine not in ENGINES:
        raise RequestError(f"decoder engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "tensorrt":
        trt = bundle.manifest.tensorrt
        if trt is None or "decoder" not in trt.engines:
            raise RequestError(f"{bundle.path}: decoder engine tensorrt needs the bundle's "
                               "TensorRT decoder engine, which it lacks: rebuild it with `vqrt "
                               "build --backend tensorrt`, or use engine onnxruntime")
        reason = tensorrt_unavailable_reason()
        if reason:
            raise RequestError(f"decoder engine tensorrt: {reason}; or use engine onnxruntime")
        return engine
    if engine == "auto":
        wants_bf16 = bundle.manifest.requested_precision == "bf16" and device != "cuda"
        return "openvino" if wants_bf16 and _openvino_available() else "onnxruntime"
    if engine == "openvino" and not _openvino_available():
        raise RequestError("decoder engine openvino needs the openvino package: pip install "
                           "openvino, or use engine onnxruntime")
    if engine == "openvino" and device == "cuda":
        raise RequestError("decoder engine openvino runs on the CPU; use device cpu or engine "
                           "onnxruntime")
    return engine


class TiledDecoder:
    """The bundle's tiled decoder program with one compiled graph per conv step (read-only after
    construction; decode() keeps its buffers per call, so threads may share one).

    engine "onnxruntime" (fp32, the CPU or CUDA provider), "openvino" (the CPU, bf16 arithmetic
    where the CPU has it: faster, not bit-comparable with fp32; needs the openvino package),
    "tensorrt" (the bundle's TensorRT engines on the GPU: the whole-image decoder engine for
    every latent up to the bundle's max, one engine per conv step for tiles, loaded when a plan
    first tiles, all sharing one set of device buffers; never run yet: no machine here has
    TensorRT) or "auto"
    (choose_engine)."""

    def __init__(self, bundle: Bundle, providers: Tuple[str, ...], device: str,
                 num_threads: int, engine: str = "auto"):
        check_tiled_decoder_format(bundle)
        spec: TiledDecoderSpec = bundle.manifest.tiled_decoder
        try:
            document = loads_strict(bundle.file(spec.program).read_bytes())
            self.tensors, _, _ = read_safetensors(bundle.file(spec.tensors))
        except SafetensorsError as e:
            raise BundleError(f"{e}; {REBUILD}") from None
        except ValueError as e:
            raise _program_error(bundle, f"does not parse as JSON ({e})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise _program_error(bundle, f"is not a {FORMAT} program")
        self.groups = int(document["groups"])
        self.eps = float(document["eps"])
        self.codes_buffer, self.image_buffer = document["codes"], document["image"]
        self.steps = _parse_steps(bundle, document)
        self.last_use = _last_uses(self.steps, self.image_buffer)
        engine = choose_engine(engine, bundle, device)
        self.engine = engine

        def compile_graph(path, step: bool):
            if engine == "openvino":
                return _OpenVinoGraph(path, num_threads)
            if step:  # one of dozens run one after another
                return OrtGraph(path, providers, device, num_threads, spin=False, arena=False)
            return OrtGraph(path, providers, device, num_threads, pattern=False,  # whole images
                            spec=bundle.manifest.graphs["decoder"])

        convs = [s for s in self.steps if isinstance(s, ConvStep)]
        engines = bundle.manifest.tensorrt.engines if engine == "tensorrt" else {}
        # A bundle whose step engines TensorRT refused (export/build.py) tiles on ONNX Runtime.
        steps_built = bool(engines) and all(tile_engine_name(s) in engines for s in convs)
        # The VQGAN's engines (the encoders' too: runtime/first_stage.py) on one stream,
        # sharing their device buffers; None unless engine "tensorrt".
        self.engine_graphs: Optional[TensorRTGraphs] = None
        if engine == "tensorrt":
            graphs = self.engine_graphs = TensorRTGraphs(bundle)
            self._whole = graphs.runner("decoder", ("image",), load_now=True)
            # The whole-image engine's profile covers every latent up to the bundle's max:
            # decode whole unless a tile or a memory budget asks for tiles.
            self.whole_side = max(bundle.manifest.limits.max_latent)
        else:
            self._whole = compile_graph(bundle.graph_path("decoder"), False)
            self.whole_side = WHOLE_GRAPH_SIDE
        # conv step -> the largest tile side its engine takes (step engines only)
        self._largest_tile: Dict[str, int] = {}
        if steps_built:
            self.runners = {s.name: graphs.runner(tile_engine_name(s), ("y", "mean", "m2"),
                                                  STEP_REFUSED) for s in convs}
            for s in convs:
                x = engines[tile_engine_name(s)].profile["x"].max
                self._largest_tile[s.name] = x[2] - 2 * (s.kernel // 2)
            self.tile_limit = TENSORRT_TILE_TENSOR_LIMIT
        else:
            self.runners = {s.name: compile_graph(bundle.file(s.graph), True) for s in convs}
            self.tile_limit = TILE_TENSOR_LIMIT

    @property
    def providers(self) -> Tuple[str, ...]:
        return self._whole.providers()

    # --- memory plan ---------------------------------------------------------------------------

    def _shapes(self, batch: int, h: int, w: int) -> Dict[str, Tuple[int, int, int, int]]:
        """buffer -> [B, C, H, W] for a latent of h x w."""
        codebook_dim = self.tensors["codebook"].shape[1]
        shapes = {self.codes_buffer: (batch, codebook_dim, h, w)}
        for step in self.steps:
            _, _, height, width = shapes[step.input]
            if isinstance(step, AttentionStep):
                shapes[step.output] = (batch, step.channels, height, width)
            else:
                scale = 2 if step.upsample else 1
                shapes[step.output] = (batch, step.out_channels, height * scale, width * scale)
        return shapes

    def _buffer_bytes(self, shapes) -> int:
        """The most whole-image buffer bytes alive at once while the program runs."""
        size = {name: math.prod(shape) * STORAGE.itemsize for name, shape in shapes.items()}
        live, peak = {self.codes_buffer}, size[self.codes_buffer]
        for i, step in enumerate(self.steps):
            live.add(step.output)
            peak = max(peak, sum(size[name] for name in live))
            live -= {name for name in list(live) if self.last_use.get(name, len(self.steps)) <= i}
        return peak

    def _tile_bytes(self, shapes, tiles: Sequence[int]) -> int:
        """An upper estimate of the tile temporaries of the worst step: an attention's chunk
        of scores and its fp32 q, k, v, or TILE_HEAP_FACTOR x one conv tile's (the tile and
        skip copies, the engine's activations: fp32 input, affine, sigmoid, swish, padded;
        its unfolded conv input, C_in k^2 per position; output and statistics temporaries).
        Checked against measured peaks in benchmarks/decoder_bench.py."""
        worst = 0
        tile = iter(tiles)
        for step in self.steps:
            batch, c_in, height, width = shapes[step.input]
            if isinstance(step, AttentionStep):  # a few large blocks, freed to the system
                n = height * width
                worst = max(worst, FLOAT * batch * (min(n, ATTENTION_CHUNK) * n * 2
                                                   + 3 * step.channels * n * 2))
                continue
            side = next(tile)
            pixels = (min(height, side) + 2) * (min(width, side) + 2)
            c_out = step.out_channels * (4 if step.upsample else 1)
            worst = max(worst, TILE_HEAP_FACTOR * FLOAT * batch * pixels * (
                5 * c_in + c_in * step.kernel ** 2 + 6 * c_out))
        return worst

    def _whole_bytes(self, shapes) -> int:
        """The whole-image graph's peak: WHOLE_GRAPH_BUFFERS activations of the largest fp32
        buffer."""
        return WHOLE_GRAPH_BUFFERS * FLOAT * max(math.prod(s) for s in shapes.values())

    def _step_tiles(self, shapes, h: int, tile: Optional[int] = None,
                    limit: Optional[int] = None) -> Tuple[int, ...]:
        """Each conv step's tile side in its input pixels: `tile` latent positions (tile * s
        at a level of scale s), or the largest whose widest fp32 tensor fits `limit` bytes
        (default: the engine's tile_limit); never beyond what the step's engine takes."""
        tiles = []
        for step in self.steps:
            if isinstance(step, AttentionStep):
                continue
            batch, _, height, width = shapes[step.input]
            if tile is not None:
                side = tile * (height // h)
            else:
                side = _tile_side(batch, _widest_channels(step), limit or self.tile_limit)
            largest = self._largest_tile.get(step.name, side)
            tiles.append(max(1, min(side, max(height, width), largest)))
        return tuple(tiles)

    def plan(self, batch: int, h: int, w: int, tile: Optional[int] = None,
             max_memory: Optional[int] = None) -> TilePlan:
        """How to decode a latent h x w: the whole-image graph when it is asked for (a tile
        covering the latent) or fits (no tile given: latents up to whole_side, or within
        max_memory bytes), else tiles of `tile` latent positions, or each step's
        tiles sized by tile_limit, or by the largest of tile_limit / 2^k that fits
        max_memory. Raises RequestError, before anything is allocated, when nothing fits."""
        if tile is not None and tile < 1:
            raise RequestError(f"tile must be at least 1 latent position, got {tile}")
        shapes = self._shapes(batch, h, w)
        side = max(h, w)
        whole = TilePlan(None, np.dtype(np.float32), 0, self._whole_bytes(shapes))
        if tile is not None and tile >= side and (max_memory is None
                                                  or whole.peak_bytes <= max_memory):
            return whole
        if tile is None and max_memory is None:
            return whole if side <= self.whole_side else self._tiled(
                shapes, self._step_tiles(shapes, h))
        if tile is None and whole.peak_bytes <= max_memory:
            return whole
        limits = [self.tile_limit >> k for k in range(16)
                  if self.tile_limit >> k >= SMALLEST_TILE_TENSOR_LIMIT]
        candidates = ([self._step_tiles(shapes, h, tile)] if tile is not None else
                      [self._step_tiles(shapes, h, limit=limit) for limit in limits])
        for tiles in candidates:
            result = self._tiled(shapes, tiles)
            if max_memory is None or result.peak_bytes <= max_memory:
                return result
        if tile is not None and tile > 1:
            hint = "use a smaller --tile or a larger budget"
        else:
            hint = "decode a smaller image or fewer images at once, or raise the budget"
        raise RequestError(f"decoding a {h}x{w} latent (batch {batch}) needs at least "
                           f"{_mib(result.peak_bytes)} with {result.describe()}, over "
                           f"--max-memory {_mib(max_memory)}: {hint}")

    def _tiled(self, shapes, tiles: Tuple[int, ...]) -> TilePlan:
        return TilePlan(tiles, STORAGE, self._buffer_bytes(shapes),
                        self._tile_bytes(shapes, tiles))

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, codes: np.ndarray, tile: Optional[int] = None,
               max_memory: Optional[int] = None) -> np.ndarray:
        """codes int64 [B, h, w] (checked by the caller) -> float32 [B, C, h*f, w*f]."""
        batch, h, w = codes.shape
        plan = self.plan(batch, h, w, tile, max_memory)
        if plan.tiles is None:
            return self._whole.run({"indices": codes})[0]
        codebook = self.tensors["codebook"]
        buffers = {self.codes_buffer: np.ascontiguousarray(
            codebook[codes].transpose(0, 3, 1, 2), STORAGE)}
        stats: Dict[str, _Stats] = {}
        tiles = iter(plan.tiles)
        for i, step in enumerate(self.steps):
            if isinstance(step, AttentionStep):
                buffers[step.output] = _attention(buffers[step.input], step.channels, STORAGE)
            else:
                self._conv(step, buffers, stats, next(tiles), max(h, w))
            for name in [n for n in buffers if self.last_use.get(n, len(self.steps)) <= i]:
                del buffers[name]
                stats.pop(name, None)
        return buffers[self.image_buffer].astype(np.float32, copy=False)

    def _conv(self, step: ConvStep, buffers: Dict[str, np.ndarray], stats: Dict[str, _Stats],
              tile: int, latent_side: int) -> None:
        """Runs one conv step over its input in tiles of tile x tile input positions."""
        x = buffers[step.input]
        batch, _, height, width = x.shape
        scale = 2 if step.upsample else 1
        if step.output in buffers:  # a residual written over its own skip buffer
            out = buffers[step.output]
        else:
            out = np.empty((batch, step.out_channels, height * scale, width * scale), STORAGE)
        feeds: Dict[str, np.ndarray] = {}
        if step.norm is not None:
            feeds["scale"], feeds["shift"] = stats[step.input].group_affine(
                self.groups, self.eps, self.tensors[f"{step.norm}.weight"],
                self.tensors[f"{step.norm}.bias"])
        merged = _Stats(batch, step.out_channels)
        halo = step.kernel // 2
        runner = self.runners[step.name]
        for y0 in range(0, height, tile):
            y1 = min(y0 + tile, height)
            for x0 in range(0, width, tile):
                x1 = min(x0 + tile, width)
                feeds["x"] = _with_halo(x, y0, y1, x0, x1, halo)
                if halo:
                    feeds["inside"] = _inside(y0, y1, x0, x1, halo, height, width)
                core = (slice(None), slice(None), slice(y0 * scale, y1 * scale),
                        slice(x0 * scale, x1 * scale))
                if step.skip is not None:
                    feeds["skip"] = np.ascontiguousarray(buffers[step.skip][core])
                y, mean, m2 = runner.run(feeds)
                # max |y| <= |mean| + sqrt(m2) per channel: only near the fp16 range is y read.
                if (np.abs(mean) + np.sqrt(m2) >= FP16_MAX).any() and not np.isfinite(y).all():
                    raise RequestError(
                        f"the image decoder's activations after {step.name} exceed the fp16 "
                        "range of tiled decoding; decode this image as one graph (--tile "
                        f"{latent_side} or more, with --max-memory large enough)")
                out[core] = y
                merged.add(y.shape[2] * y.shape[3], mean, m2)
        buffers[step.output] = out
        stats[step.output] = merged


def _with_halo(x: np.ndarray, y0: int, y1: int, x0: int, x1: int, halo: int) -> np.ndarray:
    """x[:, :, y0 - halo:y1 + halo, x0 - halo:x1 + halo] as a new array, zeros where it leaves
    x [B, C, H, W]."""
    _, _, height, width = x.shape
    top, left = max(y0 - halo, 0), max(x0 - halo, 0)
    bottom, right = min(y1 + halo, height), min(x1 + halo, width)
    if (top, left, bottom, right) == (y0 - halo, x0 - halo, y1 + halo, x1 + halo):
        return np.ascontiguousarray(x[:, :, top:bottom, left:right])
    tile = np.zeros(x.shape[:2] + (y1 - y0 + 2 * halo, x1 - x0 + 2 * halo), x.dtype)
    tile[:, :, top - (y0 - halo):bottom - (y0 - halo), left - (x0 - halo):right - (x0 - halo)] = (
        x[:, :, top:bottom, left:right])
    return tile


def _inside(y0: int, y1: int, x0: int, x1: int, halo: int, height: int, width: int
            ) -> np.ndarray:
    """float32 [1, 1, y1 - y0 + 2 halo, x1 - x0 + 2 halo]: 1 where the haloed tile is inside
    the H x W image, 0 beyond it."""
    rows = np.arange(y0 - halo, y1 + halo)
    cols = np.arange(x0 - halo, x1 + halo)
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    return inside.astype(np.float32)[None, None]


def _mib(n: int) -> str:
    """Bytes as a person reads them: 1.5 GiB, 300 MiB, 100 KiB."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n / 2 ** 10:.0f} KiB"

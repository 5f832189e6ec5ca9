"""What `vqrt bench` times and how. Never imports torch (the torch baselines plug in from
baselines.py as more Contenders).

A run times every contender at every batch, interleaved: repeat r runs each (batch,
contender) pair once before repeat r + 1 starts, so a burst of load from other processes hits
all of them alike; the first `warmup` repeats are thrown away. One timed run of a token
contender is

    start(batch)              making the prefix tokens + the prefill      -> "prefill"
    draw(k, last) for k < N   sample token k of every row, feed it on     -> per-token latency
    decode()                  the image decoder on the grid               -> "image decode"

so "prefill" is the time to the first token's logits (the sampler then takes microseconds;
with at most two batch sizes (the default) and whole grids, from the second repeat on a vqrt
contender's Generator hands start() the KV cache its previous run finished with, as in a
serving process: StatePool in runtime/backends.py keeps two; a partial grid (--tokens) is
cancelled, not finished, and gives nothing back),
tokens/s is B * N over start() plus all draws, and end-to-end per image is the whole run
(decode included) over B. Per-token latencies are pooled over the kept repeats (draws that
feed a token; the last draw only samples); every other figure is a median over repeats with
its min and max.

Bandwidth bound: a decode step must read every weight matrix once and the keys and values of
the positions it attends to, so it cannot take less than

    (matrix bytes + 2 * n_layer * n_embd * context * kv value bytes * B) / read bandwidth

where context is the mean number of positions a step attends to (P + N/2 for P prefix
tokens) and the bandwidth is measured in the same run. `step_vs_bound` is the median
per-token latency over that time: 1.0 would be a step at the memory roofline. Weights that
fit in the caches (tiny models) can beat it. Grids beyond the block (sliding windows) get no
bound: their steps recompute windows.
"""
from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime

import vqrt
from vqrt import _native
from vqrt.bench.measure import (DeviceMemoryPeak, HostMemoryPeak, ProgressBar,
                                latency_percentiles, summarize)
from vqrt.runtime.bundle import Bundle
from vqrt.runtime.conditioning import Conditioner, batch_rows
from vqrt.runtime.generator import Generator
from vqrt.runtime.onnx_sessions import CUDA_PROVIDER, execution_providers
from vqrt.runtime.ort_transformer import OrtTransformer, OrtTransformerGraphs
from vqrt.runtime.params import GenerationParams
from vqrt.runtime.sampling import sample_logits

SCHEMA = "vqrt-bench-1"
TOP_K = 100  # issue 5's setting; capped at the codebook size
UPSTREAM = "torch upstream fp32"  # the baseline token ratios are taken against
TORCH_DECODER = "torch decoder fp32"  # the baseline decode ratios are taken against
BYTES_PER_VALUE = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "int8": 1}


class BenchError(ValueError):
    """A benchmark request that cannot run; the message is one line."""


def matrix_bytes(n_layer: int, n_embd: int, vocab_size: int, precision: str,
                 row_scales: bool = False) -> int:
    """Bytes of the GPT's weight matrices, which every decode step reads once: per layer
    qkv [3C, C], proj [C, C], fc [4C, C], proj [C, 4C]; the head [V, C]. row_scales: int8
    weights with one float32 scale per output row."""
    values = n_layer * 12 * n_embd * n_embd + vocab_size * n_embd
    rows = n_layer * 9 * n_embd + vocab_size
    return values * BYTES_PER_VALUE[precision] + (4 * rows if row_scales else 0)


class Contender:
    """Something that draws image tokens, timed by run_suite.

    start(batch): makes the prefix tokens and runs the prefill (token 0's logits exist after).
    draw(k, last): samples image token k of every row and, unless last, feeds it to the model.
    decode(): decodes the tokens drawn (the rest of the grid zero) -> True, or False where
    the contender has no image stage.
    """
    name: str
    role: str  # "vqrt" (a bundle's backend), "peer" (what a user would pick instead), "baseline"
    source: str  # the bundle it runs, or "torch"
    weight_bytes: int  # matrix bytes a decode step reads
    kv_value_bytes: int  # bytes per cached key or value
    on_device: bool = False  # an ONNX Runtime graph runs on the GPU
    decode_measured_by: Optional[str] = None  # another contender measures this image decode

    def start(self, batch: int) -> None:
        raise NotImplementedError

    def draw(self, k: int, last: bool) -> None:
        raise NotImplementedError

    def decode(self) -> bool:
        return False


class DecodeContender:
    """An image decoder alone (the torch baseline): decode(batch) decodes a fixed random grid."""
    name: str
    role: str
    source: str
    decode_measured_by: Optional[str] = None

    def decode(self, batch: int) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Workload:
    """What every contender is asked for: the grid, how many of its tokens, the prefix."""
    grid: Tuple[int, int]  # (h, w)
    tokens: int  # image tokens drawn per row, <= h * w
    prefix_length: int
    size: Optional[Tuple[int, int]]  # (width, height) pixels; None = the training size
    top_k: int
    inputs: Callable[[int], Dict[str, np.ndarray]]  # batch -> Generator.start conditioning
    block_size: int

    @property
    def windowed(self) -> bool:
        """The grid outgrows the block: the runtime samples through sliding windows, where a
        step is no cached single-token step (no bandwidth bound, no baselines)."""
        return self.prefix_length + self.grid[0] * self.grid[1] - 1 > self.block_size


def conditioning_inputs(bundle: Bundle, size: Optional[Tuple[int, int]]):
    """-> batch -> the conditioning keywords of Generator.start: class ids 0, 1, ... (mod the
    class count), nothing (SOS), or a condition map at the image size whose first channel is 1
    (label 0 everywhere; coordinates 1.0)."""
    m = bundle.manifest
    rule = m.tokenization.prefix
    height, width = m.first_stage.training_size if size is None else (size[1], size[0])

    def inputs(batch: int) -> Dict[str, np.ndarray]:
        if rule == "class_id":
            return {"class_labels": np.arange(batch) % m.conditioning.n_classes}
        if rule in ("cond_encoder", "coord"):
            channels = m.conditioning.cond_channels if rule == "cond_encoder" else 1
            cond = np.zeros((batch, channels, height, width), dtype=np.float32)
            cond[:, 0] = 1.0
            return {"cond": cond}
        return {}
    return inputs


class PrefixTokens:
    """The prefix tokens of the workload by the bundle's rule (the runtime's Conditioner), for
    contenders that are not a Generator: batch -> int64 [B, P]."""

    def __init__(self, bundle: Bundle, workload: Workload, device: str, num_threads: int):
        self._conditioner = Conditioner(bundle, execution_providers(device), device,
                                        num_threads)
        self._inputs = workload.inputs

    def __call__(self, batch: int) -> np.ndarray:
        given = self._inputs(batch)
        rows = self._conditioner.prefix(given.get("class_labels"), given.get("cond"))
        batch_rows(len(rows), batch, "the conditioning")
        return np.array(np.broadcast_to(rows, (batch, rows.shape[1])))  # a writable copy


class GeneratorContender(Contender):
    """A bundle's backend through the runtime's public step loop (Generator.start, step)."""
    role = "vqrt"

    def __init__(self, generator: Generator, workload: Workload):
        m = generator.bundle.manifest
        t = m.transformer
        if generator.backend == "native":
            precision, kv = m.native.precision, "fp32"  # the native KV cache is fp32
        else:
            precision, kv = m.graphs["transformer_step"].precision, m.kv_cache.dtype
        self.name = f"vqrt {generator.backend} {precision}"
        self.source = str(generator.bundle.path)
        self.weight_bytes = matrix_bytes(t.n_layer, t.n_embd, t.vocab_size, precision,
                                         row_scales=precision == "int8")
        self.kv_value_bytes = BYTES_PER_VALUE[kv]
        self.on_device = any(p[0] == CUDA_PROVIDER for p in generator.providers.values())
        self.generator = generator
        self._workload = workload
        self._params = GenerationParams(top_k=workload.top_k, size=workload.size)
        self._generation = None

    @property
    def decoder_key(self) -> Tuple[str, Tuple[str, ...]]:
        """The decoder graph's SHA-256 and the providers running it: contenders with the same
        key run the same image decode, which is measured once (the first of them)."""
        m = self.generator.bundle.manifest
        file = m.graphs["decoder"].file
        sha = next(entry.sha256 for entry in m.files if entry.path == file)
        return sha, self.generator.providers["decoder"]

    def check(self, batch: int) -> None:
        """Starts and cancels one generation: a batch or size beyond the bundle is refused
        (RequestError, both numbers) before the run rather than during it."""
        self.start(batch)
        self._generation.cancel()

    def start(self, batch: int) -> None:
        self._generation = self.generator.start(**self._workload.inputs(batch),
                                                batch_size=batch, params=self._params)

    def draw(self, k: int, last: bool) -> None:
        self._generation.step()  # feeds token k unless it completes the grid

    def decode(self) -> bool:
        tokens = self._generation.tokens  # [B, N]
        self._generation.cancel()  # frees the KV cache of a partial grid
        if self.decode_measured_by is not None:
            return False
        h, w = self._workload.grid
        grid = np.zeros((tokens.shape[0], h * w), dtype=np.int64)
        grid[:, :tokens.shape[1]] = tokens
        self.generator.decode(grid.reshape(-1, h, w))
        return True


class OrtGraphsContender(Contender):
    """Transformer graphs on ONNX Runtime with the in-place KV buffer and vqrt's sampler (a
    peer: the ONNX Runtime int8 graph)."""
    role = "peer"

    def __init__(self, name: str, source: str, graphs: OrtTransformerGraphs,
                 prefix: PrefixTokens, workload: Workload, codebook_size: int, weight_bytes: int,
                 num_threads: int):
        self.name, self.source, self.weight_bytes = name, source, weight_bytes
        self.kv_value_bytes = BYTES_PER_VALUE[graphs.kv_spec.dtype]
        self.on_device = graphs.on_cuda
        self._graphs, self._prefix = graphs, prefix
        self._top_k, self._codes, self._threads = workload.top_k, codebook_size, num_threads
        self._transformer: Optional[OrtTransformer] = None
        self._logits = self._seeds = None

    def start(self, batch: int) -> None:
        prefix = self._prefix(batch)
        self._transformer = OrtTransformer(self._graphs, batch)
        self._logits = self._transformer.prefill(prefix)[:, -1]  # [B, V]
        self._seeds = np.arange(batch, dtype=np.uint64)

    def draw(self, k: int, last: bool) -> None:
        logits = np.ascontiguousarray(self._logits[:, :self._codes])
        token = sample_logits(logits, top_k=self._top_k, seeds=self._seeds, step=k,
                              num_threads=self._threads)
        if not last:
            self._logits = self._transformer.step(token[:, None])[:, 0]


@dataclass
class Measurements:
    """The kept repeats of one (contender, batch); seconds and bytes."""
    prefill: List[float] = field(default_factory=list)
    token_latencies: List[float] = field(default_factory=list)  # pooled over repeats
    tokens: List[float] = field(default_factory=list)  # start() through the last draw
    image_decode: List[float] = field(default_factory=list)
    end_to_end: List[float] = field(default_factory=list)
    peak_host: int = 0
    peak_device: Optional[int] = None


class Meters:
    """Peak memory around each timed run: host always, the GPU where a graph runs there."""

    def __init__(self, device: Optional[DeviceMemoryPeak]):
        self.host = HostMemoryPeak()
        self.device = device

    def run(self, measurements: Measurements, timed: Callable[[], None], on_device: bool):
        self.host.reset()
        watch = self.device if on_device else None
        if watch is not None:
            watch.start()
        timed()
        measurements.peak_host = max(measurements.peak_host, self.host.peak_bytes())
        if watch is not None:
            measurements.peak_device = max(measurements.peak_device or 0, watch.stop())


def _time_tokens(contender: Contender, batch: int, n_tokens: int,
                 keep: Optional[Measurements]) -> None:
    started = time.perf_counter()
    contender.start(batch)
    prefilled = time.perf_counter()
    latencies = []
    for k in range(n_tokens):
        before = time.perf_counter()
        contender.draw(k, last=k == n_tokens - 1)
        latencies.append(time.perf_counter() - before)
    drawn = time.perf_counter()
    decoded = contender.decode()
    finished = time.perf_counter()
    if keep is not None:
        keep.prefill.append(prefilled - started)
        keep.token_latencies.extend(latencies[:-1])  # the last draw feeds nothing
        keep.tokens.append(drawn - started)
        if decoded:
            keep.image_decode.append(finished - drawn)
            keep.end_to_end.append(finished - started)


def _time_decode(decoder: DecodeContender, batch: int, keep: Optional[Measurements]) -> None:
    started = time.perf_counter()
    decoder.decode(batch)
    if keep is not None:
        keep.image_decode.append(time.perf_counter() - started)


def measure_each_decoder_once(contenders: Sequence[Contender]) -> List[str]:
    """Marks every GeneratorContender whose decoder graph an earlier one runs too (the same
    graph on the same providers: builds of one model share it) -> notes saying so."""
    first: Dict[Tuple[str, Tuple[str, ...]], GeneratorContender] = {}
    for c in contenders:
        if isinstance(c, GeneratorContender):
            owner = first.setdefault(c.decoder_key, c)
            if owner is not c:
                c.decode_measured_by = owner.name
    shared = [f"{c.name} (that of {c.decode_measured_by})" for c in contenders
              if c.decode_measured_by]
    return [f"image decode measured once per decoder graph; these run one measured for another "
            f"row and have no image-stage figures of their own: {', '.join(shared)}"] if shared else []


def run_suite(contenders: Sequence[Contender], decoders: Sequence[DecodeContender],
              batches: Sequence[int], n_tokens: int, repeat: int, warmup: int,
              meters: Meters, progress: ProgressBar) -> Dict[Tuple[str, int], Measurements]:
    """Times every contender and decoder at every batch, interleaved (see the module
    docstring) -> (name, batch) -> Measurements of the `repeat` kept runs."""
    results = {(c.name, b): Measurements() for b in batches for c in (*contenders, *decoders)}
    for r in range(warmup + repeat):
        phase = f"warm-up {r + 1}/{warmup}" if r < warmup else f"repeat {r - warmup + 1}/{repeat}"
        for b in batches:
            for c in contenders:
                keep = results[c.name, b] if r >= warmup else None
                progress.advance(f"{phase}: {c.name}, batch {b}")
                meters.run(keep or Measurements(),
                           lambda: _time_tokens(c, b, n_tokens, keep), c.on_device)
            for d in decoders:
                keep = results[d.name, b] if r >= warmup else None
                progress.advance(f"{phase}: {d.name}, batch {b}")
                meters.run(keep or Measurements(), lambda: _time_decode(d, b, keep), False)
    progress.close()
    return results


# --- the JSON document -----------------------------------------------------------------------

def machine_info() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_isa": _native.cpu_isa(),
            "platform": platform.platform(), "python": platform.python_version(),
            "vqrt": vqrt.__version__, "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__}


def _ms(summary: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
    if summary is None:
        return None
    return {k: (v * 1e3 if k != "n" else v) for k, v in summary.items()}


def _entry(c, batch: int, m: Measurements, workload: Workload, n_layer: int, n_embd: int,
           bandwidth: float) -> Dict[str, object]:
    entry: Dict[str, object] = {
        "name": c.name, "role": c.role, "source": c.source, "batch": batch,
        "peak_host_mb": m.peak_host / 2**20,
        "peak_device_mb": None if m.peak_device is None else m.peak_device / 2**20,
        "image_decode_ms": _ms(summarize(m.image_decode)) if m.image_decode else None,
        "image_decode_measured_by": c.decode_measured_by,
        "end_to_end_per_image_ms": (_ms(summarize([t / batch for t in m.end_to_end]))
                                    if m.end_to_end else None)}
    if not m.tokens:
        return entry
    latency = latency_percentiles(m.token_latencies) if m.token_latencies else None
    entry.update({"prefill_ms": _ms(summarize(m.prefill)), "token_latency_ms": _ms(latency),
                  "tokens_per_s": summarize([batch * workload.tokens / t for t in m.tokens]),
                  "bound": None})
    if not workload.windowed:
        context = workload.prefix_length + workload.tokens / 2
        step_bytes = c.weight_bytes + 2 * n_layer * n_embd * context * c.kv_value_bytes * batch
        bound_s = step_bytes / bandwidth
        entry["bound"] = {"bytes_per_step": step_bytes, "step_ms": bound_s * 1e3,
                          "tokens_per_s": batch / bound_s,
                          "step_vs_bound": None if latency is None else latency["p50"] / bound_s}
    return entry


def _add_ratios(entries: List[Dict[str, object]]) -> None:
    """x_upstream: tokens/s over the upstream torch sampler's; x_torch_decoder: the torch
    decoder's time over this decode time (both > 1 = faster), same batch, same run."""
    by_key = {(e["name"], e["batch"]): e for e in entries}
    for e in entries:
        upstream = by_key.get((UPSTREAM, e["batch"]))
        e["x_upstream"] = (e["tokens_per_s"]["median"] / upstream["tokens_per_s"]["median"]
                           if upstream is not None and "tokens_per_s" in e else None)
        decoder = by_key.get((TORCH_DECODER, e["batch"]))
        e["x_torch_decoder"] = (decoder["image_decode_ms"]["median"]
                                / e["image_decode_ms"]["median"]
                                if decoder is not None and e["image_decode_ms"] else None)


def bench_document(*, settings: Dict[str, object], bundle: Bundle, workload: Workload,
                   contenders: Sequence[Contender], decoders: Sequence[DecodeContender],
                   results: Dict[Tuple[str, int], Measurements], bandwidth: Dict[str, object],
                   machine: Dict[str, object],
                   notes: Sequence[str]) -> Dict[str, object]:
    """The JSON document `vqrt bench --json` writes and report.py reads."""
    t = bundle.manifest.transformer
    entries = [_entry(c, b, results[c.name, b], workload, t.n_layer, t.n_embd,
                      bandwidth["bytes_per_s"]["median"])
               for b in settings["batches"] for c in (*contenders, *decoders)]
    _add_ratios(entries)
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "bandwidth": bandwidth,
        "model": {"transformer": {"n_layer": t.n_layer, "n_head": t.n_head, "n_embd": t.n_embd,
                                  "vocab_size": t.vocab_size, "block_size": t.block_size},
                  "grid": list(workload.grid), "prefix_tokens": workload.prefix_length,
                  "parameters": bundle.manifest.model_card.get("total_parameters")},
        "settings": {**settings, "tokens": workload.tokens, "top_k": workload.top_k},
        "notes": list(notes),
        "results": entries,
    }


"""The transformer stage on TensorRT (backend "tensorrt"): the bundle's transformer_prefill and
transformer_step engines (export/tensorrt_engines.py), with every buffer on the device bound
once, on one CUDA stream, the decode step replayed as a CUDA graph, and sampling on the device.
Also the VQGAN's engines (TensorRTGraphs, for decoder engine "tensorrt": the decoder's in
runtime/tiled_decode.py, the encoder's and cond_encoder's in runtime/first_stage.py): host in,
host out, device memory sized by the calls made.

STATUS: written against the TensorRT 10 Python API documentation and never run: no machine this
code was developed on had TensorRT (its tests skip with that reason). What it drives from our
side, vqrt._native.DeviceStream (csrc/device_stream.h: memory, copies, graph capture, the GPU
sampler), has GPU tests (tests/test_device_stream.py) that have not run yet either.

    engines = TensorRTEngines(bundle)          # deserialized once, shared by every state
    state = TensorRTState(engines, batch=8)    # one generation's KV cache, contexts, graph
    logits = state.prefill(tokens)             # int64 [B, L] -> float32 [B, codebook]
    logits = state.step(next_tokens, L)        # int64 [B] -> float32 [B, codebook]
    tokens = state.draw(seeds, step, top_k=100)                # from the last logits, on the GPU
    tokens = state.generate(prefix, seeds, steps, top_k=100)   # sampled on the GPU

Per state, on its DeviceStream (B = batch, M = block size, V = vocabulary, C = codebook):
    kv          [n_layer, 2, B, n_head, M, head_dim]  bound as both kv_cache and kv_cache_out:
                the graphs write only the new positions and never read them back
                (export/onnx_transformer.py), as onnxruntime's IO binding shares it. TensorRT
                does not document such aliasing for ordinary layers (NVIDIA/TensorRT issue 4681
                reports wrong results from it elsewhere); the golden greedy test is the check,
                and two buffers used in turn (a step graph for each) the way out if it fails
    prefill     tokens int64 [B, M], logits float32 [B, M, V], position int64 = 0
    step        tokens int64 [B] (also the sampler's output), position int64, logits [B, 1, V]
    codes       float32 [B, C]: the last position's image-code logits, what the host reads
                or the device sampler draws from
The step graph is [step engine, copy its logits to codes, position += 1]: the runtime's loop
uploads the tokens, replays it and draws the next tokens on the device (states made with
fetch_logits=False, as the backend makes them: only tokens cross, once per step); generate()
lets the sampler write the tokens in place, so nothing crosses to the host until the tokens of
the whole call, once. The first step after a prefill
runs eagerly (TensorRT prepares shape-dependent state on its first enqueue) and is then
captured; an engine that cannot be captured keeps running eagerly.
This module never imports torch; `tensorrt` is imported only when the backend is used.
"""
from __future__ import annotations

import operator
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vqrt import _native
from vqrt.runtime.bundle import REBUILD, Bundle, BundleError
from vqrt.runtime.params import RequestError

__all__ = ["TensorRTBackend", "TensorRTEngines", "TensorRTGraphs", "TensorRTState",
           "tensorrt_unavailable_reason"]

GRAPHS = ("transformer_prefill", "transformer_step")
BACKEND, DECODER = "backend tensorrt", "decoder engine tensorrt"  # how refusals start
_KV_DTYPES = {"float32": np.float32, "float16": np.float16}  # the manifest's kv_cache dtype
# TensorRT DataType name -> the numpy type TensorRTGraphs copies it as.
_NUMPY_OF = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32,
             "UINT8": np.uint8, "BOOL": np.bool_}


def tensorrt_unavailable_reason() -> str:
    """"" when the TensorRT backend can run here, else one line saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return (f"the tensorrt package is not installed ({e}): pip install tensorrt (TensorRT "
                "10) on a machine with an NVIDIA GPU")
    if int(trt.__version__.split(".")[0]) < 10:
        return f"found TensorRT {trt.__version__}; the engines need TensorRT 10"
    if not _native.built_with_cuda():
        return "vqrt was built without CUDA: rebuild where nvcc is (pip install with VQRT_CUDA=ON)"
    if _native.cuda_device_count() == 0:
        return "no CUDA device is usable here (no GPU, or no NVIDIA driver)"
    return ""


def _host_bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes as the uint8 view DeviceStream copies from or into."""
    return array.reshape(-1).view(np.uint8)


def _new_context(engine, who: str, *strategy):
    """An execution context of the engine (with `strategy`, an ExecutionContextAllocationStrategy:
    USER_MANAGED for one without activation memory of its own); `who` (backend tensorrt,
    decoder engine tensorrt) starts each refusal's message."""
    context = engine.create_execution_context(*strategy)
    if context is None:
        raise RequestError(f"{who}: TensorRT could not create an execution context (out of GPU "
                           "memory?)")
    return context


def _scratch_bytes(engine) -> int:
    """The activation memory a context of the engine needs at its profile's largest shapes."""
    size = getattr(engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
    return int(engine.device_memory_size if size is None else size)


def _use_scratch(context, address: int, nbytes: int) -> None:
    """Gives a USER_MANAGED context its activation memory (shared: contexts that never run at
    once may share one)."""
    if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
        context.set_device_memory(address, nbytes)
    else:
        context.device_memory = address


def _bind(context, name: str, address: int, who: str) -> None:
    if not context.set_tensor_address(name, address):
        raise RequestError(f"{who}: TensorRT refused the address of {name}")


REBUILD_LARGER = "rebuild the bundle with larger --max-batch or --max-size"


def _set_shape(context, name: str, shape: Tuple[int, ...], who: str,
               remedy: str = REBUILD_LARGER) -> None:
    if not context.set_input_shape(name, shape):
        raise RequestError(f"{who}: the engine refuses {name} of shape {list(shape)} (outside "
                           f"its optimization profile); {remedy}")


def _host_io(trt, engine, path) -> Tuple[List[Tuple[str, np.dtype]], List[Tuple[str, np.dtype]]]:
    """The engine's (inputs, outputs) as (name, numpy type); BundleError for a tensor that is
    not on the device or of a type the runtime copies."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        tensor = engine.get_tensor_name(i)
        dtype = _NUMPY_OF.get(getattr(engine.get_tensor_dtype(tensor), "name", ""))
        if dtype is None or engine.get_tensor_location(tensor) != trt.TensorLocation.DEVICE:
            raise BundleError(f"{path}: the engine's {tensor} is not a device tensor of a type "
                              f"the runtime copies ({', '.join(_NUMPY_OF)}); {REBUILD}")
        is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append((tensor, np.dtype(dtype)))
    return inputs, outputs


def _enqueue(context, stream, who: str) -> None:
    if not context.execute_async_v3(stream.handle):
        raise RequestError(f"{who}: TensorRT failed to enqueue the engine (see its log above)")


def load_engine(trt, runtime, bundle: Bundle, name: str):
    """The bundle's engine of graph `name`, deserialized -> (engine, its path); BundleError
    when the bundle has none or this TensorRT and GPU cannot load it."""
    spec = bundle.manifest.tensorrt
    engine_spec = spec.engines.get(name) if spec is not None else None
    if engine_spec is None:
        raise BundleError(f"{bundle.path}: the bundle has no {name} TensorRT engine; rebuild "
                          "it with `vqrt build --backend tensorrt` on the serving GPU")
    path = bundle.file(engine_spec.file)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BundleError(
            f"{path}: TensorRT {trt.__version__} cannot load this engine (built with TensorRT "
            f"{spec.version} on {spec.gpu}, compute capability {spec.compute_capability}); an "
            "engine runs only with the TensorRT version and GPU it was built for: rebuild "
            "the bundle here with `vqrt build --backend tensorrt`")
    return engine, path


class TensorRTEngines:
    """The bundle's two transformer engines, deserialized once and read-only (each state makes
    its own execution contexts), with the interface checked against the manifest."""

    def __init__(self, bundle: Bundle):
        import tensorrt as trt
        m = bundle.manifest
        self.kv = m.kv_cache
        self.vocab = m.transformer.vocab_size
        self.codes = m.first_stage.codebook_size
        self.max_length = m.transformer.block_size
        self.max_batch = m.limits.max_batch
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.prefill, self.step = (self._load(bundle, name) for name in GRAPHS)

    def _load(self, bundle: Bundle, name: str):
        trt = self._trt
        engine, path = load_engine(trt, self._runtime, bundle, name)
        kv_type = {"float32": trt.DataType.FLOAT, "float16": trt.DataType.HALF}[self.kv.dtype]
        want = {"tokens": ("in", trt.DataType.INT64), "position": ("in", trt.DataType.INT64),
                self.kv.input: ("in", kv_type), "logits": ("out", trt.DataType.FLOAT),
                self.kv.output: ("out", kv_type)}
        found = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            mode = "in" if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT else "out"
            found[tensor] = (mode, engine.get_tensor_dtype(tensor))
            # Every buffer is bound to device memory: a host tensor (a shape input) would be
            # read from a device address.
            if engine.get_tensor_location(tensor) != trt.TensorLocation.DEVICE:
                raise BundleError(f"{path}: TensorRT wants {tensor} on the host (a shape "
                                  f"tensor); the runtime binds device memory; {REBUILD}")
        if found != want:
            describe = lambda io: {k: (mode, getattr(dtype, "name", str(dtype)))  # noqa: E731
                                   for k, (mode, dtype) in io.items()}
            raise BundleError(f"{path}: the engine's inputs and outputs {describe(found)} are not "
                              f"the transformer graphs' {describe(want)}; {REBUILD}")
        return engine


class TensorRTState:
    """One batch of sequences on the engines: its own stream, buffers, contexts and graph."""

    def __init__(self, engines: TensorRTEngines, batch: int, *, use_graph: bool = True,
                 fetch_logits: bool = True):
        if not 1 <= batch <= engines.max_batch:
            raise ValueError(f"batch {batch} is outside the engines' [1, max batch "
                             f"{engines.max_batch}]")
        self._engines = engines
        self.batch = batch
        self.fetch_logits = fetch_logits  # else prefill and step leave them for draw()
        self.max_length = m_len = engines.max_length
        self.length = 0
        vocab, codes = engines.vocab, engines.codes
        self._kv_shape = tuple(batch if d == "batch" else d for d in engines.kv.shape)
        kv_itemsize = np.dtype(_KV_DTYPES[engines.kv.dtype]).itemsize
        self._kv_bytes = int(np.prod(self._kv_shape)) * kv_itemsize
        s = self._stream = _native.DeviceStream()
        self._kv = s.allocate(self._kv_bytes)
        self._prefill_tokens = s.allocate(batch * m_len * 8)
        self._prefill_logits = s.allocate(batch * m_len * vocab * 4)
        self._zero = s.allocate(8)  # the prefill's position: every prefill starts a sequence
        self._step_tokens = s.allocate(batch * 8)
        self._step_logits = s.allocate(batch * vocab * 4)
        self._position = s.allocate(8)  # the step's position, advanced by the step itself
        self._codes = s.allocate(batch * codes * 4)
        self._seeds = s.allocate(batch * 8)
        self._status = s.allocate(batch * 4)
        self._history = s.allocate(batch * m_len * 8)  # generate(): tokens [B, steps]
        self._prefill = self._context(engines.prefill, self._prefill_tokens, self._zero,
                                      self._prefill_logits)
        self._step = self._context(engines.step, self._step_tokens, self._position,
                                   self._step_logits)
        _set_shape(self._step, "tokens", (batch, 1), BACKEND)
        self._use_graph = use_graph
        self._graph = None  # the step graph's index on the stream, once captured
        self._graph_refused = False

    def _context(self, engine, tokens: int, position: int, logits: int):
        kv = self._engines.kv
        context = _new_context(engine, BACKEND)
        for name, address in (("tokens", tokens), ("position", position), (kv.input, self._kv),
                              (kv.output, self._kv), ("logits", logits)):
            _bind(context, name, address, BACKEND)
        _set_shape(context, kv.input, self._kv_shape, BACKEND)
        return context

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self._engines.vocab):
            raise ValueError(f"tokens must be in [0, {self._engines.vocab}), got "
                             f"[{tokens.min()}, {tokens.max()}]")

    # --- the calls every decoding state answers (runtime/backends.py) ------------------------

    def prefill(self, tokens: np.ndarray) -> Optional[np.ndarray]:
        """tokens int64 [B, L] at positions 0..L-1 (replacing the cache) -> logits float32
        [B, codebook] predicting position L (None without fetch_logits)."""
        self._enqueue_prefill(tokens)
        return self._read_codes()

    def step(self, tokens: np.ndarray, position: int) -> Optional[np.ndarray]:
        """tokens int64 [B] at `position` (the cached length) -> logits float32 [B, codebook]
        (None without fetch_logits)."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if tokens.shape != (self.batch,):
            raise ValueError(f"tokens must be [{self.batch}], got {list(tokens.shape)}")
        if position != self.length or self.length == 0:
            raise ValueError(f"position {position} is not the cached length {self.length} "
                             "(prefill first, then one step per position)")
        if position >= self.max_length:
            raise ValueError(f"position {position} is beyond the block size {self.max_length}")
        self._check_tokens(tokens)
        self._stream.upload(self._step_tokens, _host_bytes(tokens))
        self._run_step()
        return self._read_codes()

    def draw(self, seeds, step: int, *, top_k: int, top_p: float = 1.0,
             temperature: float = 1.0, greedy: bool = False) -> np.ndarray:
        """seeds uint64 [B] -> int64 [B]: one token per row from the logits of the last prefill
        or step, drawn on the GPU as the CPU sampler draws them (Philox counter `step`);
        ValueError with the CPU sampler's message for the lowest bad row."""
        if self.length == 0:
            raise ValueError("draw before prefill: run prefill first")
        seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
        if seeds.shape != (self.batch,):
            raise ValueError(f"seeds must be [{self.batch}], got {list(seeds.shape)}")
        s = self._stream
        s.upload(self._seeds, _host_bytes(seeds))
        s.sample(self._codes, self.batch, self._engines.codes, self._seeds,
                 operator.index(step), top_k, top_p, temperature, greedy, self._step_tokens,
                 self._status)
        s.check_sampled(self._status, self.batch, top_k, top_p, temperature, greedy)
        tokens = np.empty(self.batch, dtype=np.int64)
        s.download(_host_bytes(tokens), self._step_tokens)
        return tokens

    # --- the device loop ----------------------------------------------------------------------

    def generate(self, prefix, seeds, steps: int, *, top_k: int, top_p: float = 1.0,
                 temperature: float = 1.0, greedy: bool = False) -> np.ndarray:
        """prefix int64 [B, P], seeds uint64 [B] -> tokens int64 [B, steps]: token k of row b
        drawn with seeds[b] and Philox counter k from the logits after position P + k - 1 (the
        CPU generator's rule), all on the device; the tokens come back once."""
        prefix = np.ascontiguousarray(prefix, dtype=np.int64)
        seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
        steps = operator.index(steps)
        if seeds.shape != (self.batch,):
            raise ValueError(f"seeds must be [{self.batch}], got {list(seeds.shape)}")
        if prefix.ndim != 2 or steps < 1 or prefix.shape[1] + steps - 1 > self.max_length:
            raise ValueError(f"prefix [B, P] {list(prefix.shape)} and {steps} steps need P >= 1, "
                             f"steps >= 1 and P + steps - 1 <= the block size {self.max_length}")
        s, codes = self._stream, self._engines.codes
        self._enqueue_prefill(prefix)
        s.upload(self._seeds, _host_bytes(seeds))
        for k in range(steps):
            s.sample(self._codes, self.batch, codes, self._seeds, k, top_k, top_p, temperature,
                     greedy, self._step_tokens, self._status)
            s.copy_rows(self._history + 8 * k, 8 * steps, self._step_tokens, 8, 8, self.batch)
            if k + 1 < steps:
                self._run_step()
        out = np.empty((self.batch, steps), dtype=np.int64)
        s.download(_host_bytes(out), self._history)
        bad = np.argwhere(out < 0)
        if len(bad):
            row, step = bad[0]
            raise ValueError(f"sampling failed for row {row} at step {step} (a NaN or +inf "
                             "logit, every logit -inf, or the temperature overflowing the "
                             "largest logit)")
        return out

    # --- internals ----------------------------------------------------------------------------

    def _enqueue_prefill(self, tokens) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[0] != self.batch or not tokens.shape[1]:
            raise ValueError(f"tokens must be [{self.batch}, L >= 1], got {list(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens exceed the block size {self.max_length}")
        self._check_tokens(tokens)
        s, vocab, codes = self._stream, self._engines.vocab, self._engines.codes
        _set_shape(self._prefill, "tokens", tokens.shape, BACKEND)
        s.upload(self._prefill_tokens, _host_bytes(tokens))
        # Zeroed: masked positions enter the attention with weight 0, and 0 * NaN is NaN.
        s.fill_zero(self._kv, self._kv_bytes)
        _enqueue(self._prefill, self._stream, BACKEND)
        # logits [B, L, V]: row b's last position starts at float (b * L + L - 1) * V.
        s.copy_rows(self._codes, 4 * codes, self._prefill_logits + 4 * (length - 1) * vocab,
                    4 * length * vocab, 4 * codes, self.batch)
        s.upload(self._position, _host_bytes(np.array([length], dtype=np.int64)))
        self.length = length

    def _enqueue_step(self) -> None:
        """The step graph's body: the engine, its logits to codes, position + 1."""
        vocab, codes = self._engines.vocab, self._engines.codes
        _enqueue(self._step, self._stream, BACKEND)
        self._stream.copy_rows(self._codes, 4 * codes, self._step_logits, 4 * vocab, 4 * codes,
                               self.batch)
        self._stream.add_int64(self._position, 1)

    def _run_step(self) -> None:
        s = self._stream
        if self._graph is not None:
            s.replay(self._graph)
            self.length += 1
            return
        self._enqueue_step()
        self.length += 1  # the step ran (position + 1 on the device), whatever the capture does
        if self._use_graph and not self._graph_refused:
            self._capture_step()

    def _capture_step(self) -> None:
        """Records the step for replay; a capture TensorRT or CUDA refuses leaves the step
        eager (the stream is usable again either way)."""
        s = self._stream
        self._graph_refused = True  # until a graph is made: one attempt per state
        try:
            s.begin_capture()
        except RuntimeError:
            return
        graph, enqueued = None, False
        try:
            self._enqueue_step()
            enqueued = True
        # RequestError: TensorRT would not enqueue under capture; RuntimeError: a CUDA call
        # after it failed because the capture was invalidated (cudaErrorStreamCaptureInvalidated)
        except (RequestError, RuntimeError):
            pass
        finally:  # the capture is closed on every path, the one raising included
            try:
                graph = s.end_capture()
            except (RuntimeError, ValueError):
                pass
        if enqueued and graph is not None:
            self._graph = graph
            self._graph_refused = False

    def _read_codes(self) -> Optional[np.ndarray]:
        if not self.fetch_logits:
            return None
        out = np.empty((self.batch, self._engines.codes), dtype=np.float32)
        self._stream.download(_host_bytes(out), self._codes)
        return out


class TensorRTGraphs:
    """Engines with host inputs and outputs, each run whole per call, one at a time: the
    VQGAN's (decoder engine "tensorrt": the whole-image decoder engine and the tiled decoder's
    step engines in runtime/tiled_decode.py, the encoder and cond_encoder engines in
    runtime/first_stage.py). An engine is deserialized, its inputs and outputs
    checked and its context made (without memory of its own: USER_MANAGED) when its runner is
    made with load_now, else on its first run: step engines load only if a plan tiles, the
    encoder's when a process first encodes. Engines that name a tensor alike (the decoder's
    output and the encoder's input "image", and its input and the encoder's output "indices")
    share its buffer: calls never overlap. Memory is
    sized by use: a call sets its input shapes, asks what activation memory they need
    (update_device_memory_size_for_shapes) and grows the one scratch all contexts share, and the
    one buffer per tensor name, to fit, releasing the outgrown block; a context is re-bound
    only when a block it uses has moved. So the device holds what the largest call needed: a
    process that decodes in tiles never holds the whole-image engine's activations. Everything
    runs on one stream under a lock (a decoder is shared across threads)."""

    def __init__(self, bundle: Bundle, who: str = DECODER):
        import tensorrt as trt
        self._trt, self._bundle, self._who = trt, bundle, who
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._stream = _native.DeviceStream()
        self._lock = threading.Lock()
        self._engines, self._contexts, self._io, self._paths = {}, {}, {}, {}  # loaded ones
        self._blocks: Dict[str, Tuple[int, int]] = {}  # "scratch" or tensor -> (address, bytes)
        self._bound: Dict[str, Dict[str, Tuple[int, int]]] = {}  # engine -> block -> bound

    def runner(self, name: str, outputs: Sequence[str], remedy: str = REBUILD_LARGER,
               load_now: bool = False) -> "TensorRTRunner":
        """Engine `name` with outputs `outputs` (checked when it loads: now with load_now, else
        on its first run); remedy: what a refused input shape's message suggests."""
        if load_now:
            with self._lock:
                self._load(name, outputs)
        return TensorRTRunner(self, name, tuple(outputs), remedy)

    def _load(self, name: str, outputs: Sequence[str]) -> None:
        if name in self._contexts:
            return
        trt = self._trt
        engine, path = load_engine(trt, self._runtime, self._bundle, name)
        inputs, produced = _host_io(trt, engine, path)
        if sorted(outputs) != sorted(tensor for tensor, _ in produced):
            raise BundleError(f"{path}: the engine's outputs are "
                              f"{', '.join(tensor for tensor, _ in produced)}, not "
                              f"{', '.join(outputs)}; {REBUILD}")
        context = _new_context(engine, self._who,
                               trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self._engines[name], self._paths[name], self._io[name] = engine, path, (inputs, produced)
        self._contexts[name], self._bound[name] = context, {}

    def run(self, name: str, feeds: Dict[str, np.ndarray], outputs: Sequence[str],
            remedy: str = REBUILD_LARGER) -> List[np.ndarray]:
        """Engine `name` on input name -> array (converted to the engine's type) -> the named
        outputs, in that order. remedy: what a refused input shape's message suggests."""
        with self._lock:
            self._load(name, outputs)
            s, context = self._stream, self._contexts[name]
            inputs, produced = self._io[name]
            arrays = []
            for tensor, dtype in inputs:
                array = np.ascontiguousarray(feeds[tensor], dtype=dtype)
                _set_shape(context, tensor, array.shape, self._who, remedy)
                arrays.append((tensor, array))
            shapes = {tensor: tuple(context.get_tensor_shape(tensor)) for tensor, _ in produced}
            for tensor, shape in shapes.items():
                if any(d < 0 for d in shape):
                    raise BundleError(f"{self._paths[name]}: TensorRT cannot size its output "
                                      f"{tensor} ({list(shape)}); {REBUILD}")
            self._use(name, "scratch", max(1, self._scratch_need(name)))
            for tensor, array in arrays:
                s.upload(self._use(name, tensor, array.nbytes), _host_bytes(array))
            dtype_of = dict(produced)
            for tensor, shape in shapes.items():
                self._use(name, tensor, int(np.prod(shape)) * dtype_of[tensor].itemsize)
            _enqueue(context, s, self._who)
            results = []
            for tensor in outputs:
                out = np.empty(shapes[tensor], dtype=dtype_of[tensor])
                s.download(_host_bytes(out), self._blocks[tensor][0])
                results.append(out)
            return results

    def _scratch_need(self, name: str) -> int:
        """Activation bytes engine `name` needs at the input shapes just set (its profile's
        largest where this TensorRT cannot say)."""
        context = self._contexts[name]
        if hasattr(context, "update_device_memory_size_for_shapes"):
            return int(context.update_device_memory_size_for_shapes())
        return _scratch_bytes(self._engines[name])

    def _use(self, name: str, key: str, nbytes: int) -> int:
        """The block `key` (the scratch or a tensor's buffer), grown to at least nbytes and
        bound to engine `name`'s context -> its address."""
        address, size = self._blocks.get(key, (0, 0))
        if nbytes > size:
            if size:
                self._stream.release(address)
                del self._blocks[key]
            try:
                address, size = self._stream.allocate(max(1, nbytes)), max(1, nbytes)
            except (ValueError, RuntimeError) as e:
                raise RequestError(f"{self._who}: cannot allocate {nbytes / 2 ** 20:.0f} MiB "
                                   f"of GPU memory for {key} of {name} ({e}); give fewer or "
                                   "smaller images at once, decode in tiles (--tile, "
                                   "--max-memory), or use decoder engine onnxruntime") from None
            self._blocks[key] = (address, size)
        if self._bound[name].get(key) != (address, size):
            context = self._contexts[name]
            if key == "scratch":
                _use_scratch(context, address, size)
            else:
                _bind(context, key, address, self._who)
            self._bound[name][key] = (address, size)
        return address



class TensorRTRunner:
    """One of TensorRTGraphs' engines with the interface of the tiled decoder's other engines:
    run(feeds) -> the outputs in the graph's order."""

    def __init__(self, graphs: TensorRTGraphs, name: str, outputs: Tuple[str, ...],
                 remedy: str):
        self._graphs, self._name, self._outputs, self._remedy = graphs, name, outputs, remedy

    def providers(self) -> Tuple[str, ...]:
        return ("TensorRT",)

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self._graphs.run(self._name, feeds, self._outputs, self._remedy)


class TensorRTBackend:
    """The engines of one bundle, shared by every generation's TensorRTState. Chosen by "auto"
    where the bundle has engines and TensorRT runs here, or when asked for."""
    name = "tensorrt"

    def __init__(self, bundle: Bundle):
        reason = tensorrt_unavailable_reason()
        if reason:
            raise RequestError(f"backend tensorrt: {reason}; or use backend native or "
                               "onnxruntime")
        self._engines = TensorRTEngines(bundle)

    def new_state(self, batch: int) -> TensorRTState:
        return TensorRTState(self._engines, batch, fetch_logits=False)  # drawn on the device

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        return {}

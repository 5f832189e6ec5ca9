"""The transformer stage of a Generator: the native C++ decoder (on the CPU, or on an NVIDIA GPU
as backend "cuda": csrc/gpu_transformer.h over the same weights), the ONNX Runtime graphs, or
the bundle's TensorRT engines (runtime/tensorrt_backend.py).

A backend holds what every generation shares and never changes (the native weights, or the
ONNX Runtime sessions) and makes decoding states with `new_state(batch)`: a KV cache of that
batch and nothing else. A generation owns one state from its start to its end, so concurrent
generations share no mutable state; a StatePool hands a finished generation's state to the next
one of the same batch. Every kind of state answers the same two calls:

    prefill(tokens int64 [B, L])        positions 0..L-1       -> logits float32 [B, V]
    step(tokens int64 [B], position)    one token at position  -> logits float32 [B, V]

where the logits predict the token after the last one fed. The GPU states (cuda, tensorrt)
return None instead and keep the logits on the device, where a third call samples them:

    draw(seeds uint64 [B], step, top_k=, top_p=, temperature=, greedy=)  -> tokens int64 [B]

drawing, by design, what the CPU sampler would draw from the same logits (the same Philox
stream; not yet checked on a GPU), so only tokens cross to and from the host. This module never
imports torch.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from vqrt.runtime.bundle import REBUILD, Bundle, BundleError
from vqrt.runtime.cuda_decoder import (
    CudaDecoder, CudaUnavailable, CudaWeights, cuda_unavailable_reason)
from vqrt.runtime.native_decoder import GPTShape, NativeDecoder
from vqrt.runtime.ort_transformer import OrtTransformer, OrtTransformerGraphs
from vqrt.runtime.params import RequestError
from vqrt.runtime.safetensors_io import SafetensorsError, read_safetensors

BACKENDS = ("auto", "native", "onnxruntime", "cuda", "tensorrt")
# Backends that run the bundle's native weights (its manifest lists them as "native").
NATIVE_WEIGHTS = ("native", "cuda")


class DecodingState(Protocol):
    def prefill(self, tokens: np.ndarray) -> Optional[np.ndarray]: ...

    def step(self, tokens: np.ndarray, position: int) -> Optional[np.ndarray]: ...


class StatePool:
    """Decoding states of finished generations, kept for the next generations of the same batch.

    A new state costs its KV cache's allocation and zero-fill (model S at batch 8 on the CPU:
    75 MB; Generator.start() took 14.8 ms with a new state, 10.9 ms with a reused one), and on
    the GPU also a cuBLAS handle, device buffers and the capture of its step graph. A reused
    one skips all that (ONNX Runtime's states still zero their buffer at each prefill); reuse
    is safe because every prefill replaces what a state holds. At most `keep` idle states are
    kept, the most recently returned; older ones are dropped (freed). take() and give_back()
    may be called from any thread.
    """

    def __init__(self, new_state: Callable[[int], DecodingState], keep: int = 2):
        self._new_state = new_state
        self._keep = keep
        self._idle: List[Tuple[int, DecodingState]] = []  # (batch, state), oldest first
        self._lock = threading.Lock()

    def take(self, batch: int) -> DecodingState:
        """An idle state of this batch, or a new one; the caller owns it until give_back()."""
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == batch:
                    return self._idle.pop(i)[1]
        return self._new_state(batch)

    def give_back(self, batch: int, state: DecodingState) -> None:
        """Returns a state that nothing will call again (a finished generation's)."""
        with self._lock:
            self._idle.append((batch, state))
            excess = max(0, len(self._idle) - self._keep)
            dropped, self._idle = self._idle[:excess], self._idle[excess:]
        del dropped  # freed here, not under the lock (a GPU state's release takes time)

    @property
    def idle(self) -> int:
        """States waiting for a generation."""
        with self._lock:
            return len(self._idle)


class NativeBackend:
    """vqrt._native's KV-cached GPT over the bundle's native weights (read once, shared: a
    NativeDecoder references the arrays and never writes them)."""
    name = "native"

    def __init__(self, bundle: Bundle, num_threads: int):
        m = bundle.manifest
        path = bundle.file(m.native.file)
        try:
            arrays, infos, _ = read_safetensors(path)
        except SafetensorsError as e:  # listed with its hash, yet not a safetensors file
            raise BundleError(f"{e}; {REBUILD}") from None
        t = m.transformer
        self._shape = GPTShape(t.n_layer, t.n_head, t.n_embd, t.vocab_size, t.block_size)
        self._arrays = arrays
        self._dtypes = {name: info.dtype for name, info in infos.items()}
        self._num_threads = num_threads
        # Every tensor's name, shape and dtype against the manifest's sizes now, with a
        # one-position cache, so weights that do not match fail at load (naming the file),
        # not at the first request, and no cache is sized from numbers the weights contradict.
        try:
            NativeDecoder(self._shape, arrays, self._dtypes, max_batch=1, max_len=1,
                          num_threads=1)
        except ValueError as e:
            raise BundleError(f"{path}: {e} (the manifest's transformer section); "
                              f"{REBUILD}") from None

    def new_state(self, batch: int) -> NativeDecoder:
        return NativeDecoder(self._shape, self._arrays, self._dtypes, max_batch=batch,
                             num_threads=self._num_threads)

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        return {}


class CudaBackend(NativeBackend):
    """The same native weights on an NVIDIA GPU (csrc/gpu_transformer.h): checked as the CPU
    backend checks them, uploaded once as fp16 and shared by every generation's CudaDecoder (its
    own KV cache and stream on the device); its logits, the image codes' only [B, codebook],
    stay on the device and are drawn there (CudaDecoder.draw). Chosen only when asked for:
    backend="cuda"."""
    name = "cuda"

    def __init__(self, bundle: Bundle, num_threads: int):
        reason = cuda_unavailable_reason()
        if reason:
            raise RequestError(f"backend cuda: {reason}; or use backend native (the CPU)")
        super().__init__(bundle, num_threads)
        try:
            # Logits of the image codes only: all that the sampler reads.
            self._weights = CudaWeights(self._shape, self._arrays, self._dtypes,
                                        sample_vocab=bundle.manifest.first_stage.codebook_size)
        except (CudaUnavailable, ValueError) as e:
            raise RequestError(f"backend cuda: {e}") from None

    def new_state(self, batch: int) -> CudaDecoder:
        return CudaDecoder(self._weights, max_batch=batch, fetch_logits=False)


class _OrtState:
    """OrtTransformer with the backends' calls: last-position logits, explicit positions."""

    def __init__(self, transformer: OrtTransformer):
        self._transformer = transformer

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        self._transformer.reset()
        return self._transformer.prefill(tokens)[:, -1]

    def step(self, tokens: np.ndarray, position: int) -> np.ndarray:
        # The graphs write at `length`: decoding feeds positions in order, never skipping one.
        assert position == self._transformer.length, (position, self._transformer.length)
        return self._transformer.step(tokens[:, None])[:, 0]


class OrtBackend:
    """The bundle's transformer_prefill / transformer_step graphs with one in-place KV buffer
    per generation (IO binding; on the GPU where the CUDA provider took the graphs)."""
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers: Tuple[str, ...], device: str,
                 num_threads: int):
        self._graphs = OrtTransformerGraphs.from_bundle(bundle, providers, device, num_threads)

    def new_state(self, batch: int) -> _OrtState:
        return _OrtState(OrtTransformer(self._graphs, batch))

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        return self._graphs.providers


def choose_backend(bundle: Bundle, requested: str) -> str:
    """"auto": the first of the manifest's backends (its order of preference) that this runtime
    runs, tensorrt aside; otherwise the one asked for, if the bundle has it ("cuda" runs the
    native weights). Like cuda, tensorrt is never chosen by "auto" until it has run on a GPU
    (BENCHMARKS.md says it has not)."""
    have = bundle.manifest.backends
    runnable = [name for name in have if name in BACKENDS and name != "tensorrt"]
    if requested not in BACKENDS:
        raise RequestError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "auto":
        if not runnable:
            raise RequestError(f"{bundle.path}: the bundle offers {', '.join(have) or 'nothing'}"
                               f" for its transformer; \"auto\" picks native or onnxruntime: "
                               "rebuild it with `vqrt build --backend auto`, or ask for backend "
                               "tensorrt")
        return runnable[0]
    needed = "native" if requested in NATIVE_WEIGHTS else requested
    if needed not in have:
        raise RequestError(f"{bundle.path}: backend {requested} needs the bundle's {needed} "
                           f"part, which it lacks (it has {', '.join(have)}): rebuild it with "
                           f"`vqrt build --backend {needed}` or pick one it has")
    return requested

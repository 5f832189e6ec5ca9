"""The bundle's transformer graphs on ONNX Runtime, sharing one in-place KV buffer.

OrtTransformerGraphs holds the prefill and step sessions: read-only, shared by every
generation (InferenceSession.run is thread-safe). OrtTransformer is one batch of sequences: its
own KV buffer [n_layer, 2, B, n_head, block_size, head_dim], allocated once and zeroed, and
bound with IO binding as both `kv_cache` and `kv_cache_out` of every call, so each call writes
only its new positions and the buffer is never copied. It is zeroed because masked positions
enter the attention as weight 0, and 0 * NaN would still be NaN.

Where the CUDA execution provider really took the step graph, the buffer lives on the GPU
(an OrtValue on "cuda"); only tokens, the position and the logits cross to and from the host.
The runtime's ONNX Runtime backend (runtime/backends.py) and `vqrt build`'s parity report use
this loop. This module never imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import onnxruntime as ort

from vqrt.runtime.bundle import REBUILD, Bundle, BundleError, KVCacheSpec
from vqrt.runtime.onnx_sessions import CPU_PROVIDER, ORT_TYPES, open_session, runs_on_cuda


class OrtTransformerGraphs:
    """The prefill and step sessions of one bundle, and the KV buffer's spec."""

    def __init__(self, prefill_graph: Path, step_graph: Path, kv: KVCacheSpec,
                 providers: Tuple[str, ...] = (CPU_PROVIDER,), device: str = "cpu",
                 num_threads: int = 0):
        # Prefill lengths vary from call to call (new prompts, sliding windows): with a memory
        # pattern each length's planned block would stay in the arena (open_session). The
        # step's shapes are fixed for a generation: its pattern is one block, reused.
        self.prefill = open_session(Path(prefill_graph), providers, device, num_threads,
                                    pattern=False)
        self.step = open_session(Path(step_graph), providers, device, num_threads)
        self.kv_spec = kv
        self.on_cuda = runs_on_cuda(self.step)

    @classmethod
    def from_bundle(cls, bundle: Bundle, providers: Tuple[str, ...] = (CPU_PROVIDER,),
                    device: str = "cpu", num_threads: int = 0) -> "OrtTransformerGraphs":
        if bundle.manifest.kv_cache is None:
            raise ValueError(f"{bundle.path}: the bundle has no transformer graphs")
        graphs = cls(bundle.graph_path("transformer_prefill"),
                     bundle.graph_path("transformer_step"), bundle.manifest.kv_cache, providers,
                     device, num_threads)
        graphs.check_interface(bundle)
        return graphs

    def check_interface(self, bundle: Bundle) -> None:
        """The graphs' own KV cache (shape, type) and vocabulary are the manifest's, so the
        buffer allocated from the manifest is the one the graphs take and every token the
        runtime feeds is a row of their embedding (load_bundle checked the manifest's numbers
        against each other, not against the graphs)."""
        kv = self.kv_spec
        vocab = bundle.manifest.transformer.vocab_size
        element = ORT_TYPES[kv.dtype]
        for name in ("transformer_prefill", "transformer_step"):
            session = getattr(self, name.split("_")[1])
            inputs = {i.name: i for i in session.get_inputs()}
            outputs = {o.name: o for o in session.get_outputs()}
            cache, logits = inputs.get(kv.input), outputs.get("logits")
            found = (None if cache is None else (list(cache.shape), cache.type),
                     None if logits is None else logits.shape[-1])
            if found != ((list(kv.shape), element), vocab) or kv.output not in outputs:
                raise BundleError(
                    f"{bundle.graph_path(name)}: the graph's {kv.input} and logits "
                    f"({found[0]}, vocabulary {found[1]}) are not the manifest's ({list(kv.shape)}"
                    f" {kv.dtype}, vocabulary {vocab}); {REBUILD}")

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        """graph -> the execution providers its session really uses, best first."""
        return {"transformer_prefill": tuple(self.prefill.get_providers()),
                "transformer_step": tuple(self.step.get_providers())}


class OrtTransformer:
    """One batch of sequences through the transformer graphs; the first `length` positions of
    every row are in the KV buffer."""

    def __init__(self, graphs: OrtTransformerGraphs, batch: int):
        kv = graphs.kv_spec
        shape = tuple(batch if d == "batch" else d for d in kv.shape)
        self._graphs = graphs
        self._host = np.zeros(shape, dtype=np.dtype(kv.dtype))
        # _host: on the CPU the buffer itself (the OrtValue points at its memory: keep both
        # alive together); on the GPU the zeros the device buffer was copied from.
        self._kv = (ort.OrtValue.ortvalue_from_numpy(self._host, "cuda", 0) if graphs.on_cuda
                    else ort.OrtValue.ortvalue_from_numpy(self._host))
        self.batch = batch
        self.max_length = shape[4]
        self.length = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle, batch: int) -> "OrtTransformer":
        """A batch on the CPU provider with sessions of its own (tests, parity checks)."""
        limit = bundle.manifest.limits.max_batch
        if not 1 <= batch <= limit:
            raise ValueError(f"requested batch {batch} is outside the bundle's [1, max batch "
                             f"{limit}]")
        return cls(OrtTransformerGraphs.from_bundle(bundle), batch)

    def reset(self) -> None:
        """Starts new sequences (the buffer is zeroed again)."""
        if self._graphs.on_cuda:
            self._kv.update_inplace(np.zeros_like(self._host))
        else:
            self._host[...] = 0
        self.length = 0

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int64 [B, T] at positions [length, length + T), through the prefill graph
        -> logits float32 [B, T, V]."""
        return self._run(self._graphs.prefill, tokens)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int64 [B, 1] at position `length`, through the step graph -> logits
        float32 [B, 1, V]."""
        return self._run(self._graphs.step, tokens)

    def _run(self, session: ort.InferenceSession, tokens: np.ndarray) -> np.ndarray:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[0] != self.batch or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be [{self.batch}, T >= 1], got {tokens.shape}")
        if session is self._graphs.step and tokens.shape[1] != 1:
            raise ValueError(f"the step graph takes one token per row, got {tokens.shape[1]}")
        if self.length + tokens.shape[1] > self.max_length:
            raise ValueError(f"{self.length} cached + {tokens.shape[1]} new tokens exceed the "
                             f"cache length {self.max_length}")
        spec = self._graphs.kv_spec
        binding = session.io_binding()
        binding.bind_cpu_input("tokens", tokens)
        binding.bind_cpu_input("position", np.array(self.length, dtype=np.int64))
        binding.bind_ortvalue_input(spec.input, self._kv)
        binding.bind_output("logits", "cpu")
        binding.bind_ortvalue_output(spec.output, self._kv)  # the same memory
        session.run_with_iobinding(binding)
        self.length += tokens.shape[1]
        return binding.get_outputs()[0].numpy()

    @property
    def kv_cache(self) -> np.ndarray:
        """The buffer, [n_layer, 2, B, n_head, max_length, head_dim]: itself on the CPU, a copy
        from the GPU (read-only use)."""
        return self._kv.numpy() if self._graphs.on_cuda else self._host


def greedy(transformer: OrtTransformer, prefix: np.ndarray, steps: int) -> np.ndarray:
    """Greedy decoding: prefix int64 [B, L] through the prefill graph, then one token per step
    through the step graph. -> tokens int64 [B, steps], prefix cut off (the last token is
    never fed back)."""
    transformer.reset()
    logits = transformer.prefill(prefix)
    tokens = []
    for step in range(steps):
        next_token = logits[:, -1].argmax(axis=-1)[:, None]  # [B, 1], lowest index on ties
        tokens.append(next_token)
        if step + 1 < steps:
            logits = transformer.step(next_token)
    return np.concatenate(tokens, axis=1).astype(np.int64)

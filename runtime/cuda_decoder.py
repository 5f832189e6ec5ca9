"""The transformer stage on an NVIDIA GPU: vqrt._native's GPU decoder (csrc/gpu_transformer.h)
over the bundle's native weights, uploaded once as fp16 and shared by every decoder.

    weights = CudaWeights(shape, arrays, dtypes)          # the arrays may be freed after this
    decoder = CudaDecoder(weights, max_batch=8)
    logits = decoder.prefill(cond)                        # int64 [B, L] -> float32 [B, V]
    logits = decoder.step(next_tokens, pos)               # int64 [B] -> float32 [B, V]
    tokens = decoder.draw(seeds, step, top_k=100)         # from the last logits, on the GPU
    tokens = decoder.generate(cond, seeds, steps, ...)    # sampled on the GPU, one copy back

The runtime's step loop (runtime/backends.py) makes decoders with fetch_logits=False: prefill
and step then leave the logits on the device and return None, and draw() samples them there,
so only tokens cross to and from the host, once per step. generate() keeps the whole loop on
the device (CUDA graphs, the device sampler drawing the CPU's Philox stream). One decoder per
thread; prefill, step, draw and generate release the GIL.
Where the GPU decoder cannot run (a build without CUDA, no device, no libcublas), constructing
CudaWeights raises CudaUnavailable with the reason. This module never imports torch.

STATUS: compiled and never run on a GPU (no machine this was developed on had one; its GPU tests
skip with that reason; BENCHMARKS.md says what has run where).
"""
from __future__ import annotations

import operator
from dataclasses import asdict
from typing import Mapping, Optional

import numpy as np

from vqrt import _native
from vqrt.runtime.native_decoder import GPTShape, prefill_logits, step_logits, tag_dtypes

__all__ = ["CudaUnavailable", "CudaWeights", "CudaDecoder", "cuda_unavailable_reason"]


class CudaUnavailable(RuntimeError):
    """The GPU decoder cannot run on this machine or build; the message says why and the fix."""


def cuda_unavailable_reason() -> str:
    """"" when the GPU decoder can run here, else one line saying what is missing."""
    return _native.gpu_unavailable_reason()


class CudaWeights:
    """The transformer's weights on the current CUDA device (fp16 matrices, fp32 vectors).

    Args as NativeDecoder's; sample_vocab: logits computed per row, the first sample_vocab rows of
    the head (default all of the vocabulary)."""

    def __init__(self, shape: GPTShape, tensors: Mapping[str, np.ndarray],
                 dtypes: Optional[Mapping[str, str]] = None, *, sample_vocab: int = 0):
        reason = cuda_unavailable_reason()
        if reason:
            raise CudaUnavailable(reason)
        self.shape = shape
        self._weights = _native.GpuWeights(asdict(shape), dict(tensors),
                                           tag_dtypes(tensors, dtypes),
                                           operator.index(sample_vocab))

    @property
    def matrix_bytes(self) -> int:
        """Bytes of the fp16 matrices a decode step reads (the HBM bound's numerator)."""
        return self._weights.matrix_bytes

    @property
    def sample_vocab(self) -> int:
        return self._weights.sample_vocab


class CudaDecoder:
    """A KV cache of max_batch rows x max_len positions (default the block size) on the GPU.
    fetch_logits: prefill and step copy the logits to the host (else they stay for draw())."""

    def __init__(self, weights: CudaWeights, *, max_batch: int = 1,
                 max_len: Optional[int] = None, use_graph: bool = True,
                 fetch_logits: bool = True):
        self.shape = weights.shape
        self.fetch_logits = fetch_logits
        self._vocab = weights.sample_vocab
        self._model = _native.GpuTransformer(
            weights._weights, operator.index(max_batch),
            0 if max_len is None else operator.index(max_len), bool(use_graph))

    def prefill(self, tokens) -> Optional[np.ndarray]:
        """tokens int64 [B, T] at positions 0..T-1 (replacing anything cached) -> logits
        float32 [B, V] predicting position T (None without fetch_logits)."""
        if self.fetch_logits:
            return prefill_logits(self._model, tokens, self._vocab)
        self._model.prefill(np.ascontiguousarray(tokens, dtype=np.int64))
        return None

    def step(self, tokens, position: int) -> Optional[np.ndarray]:
        """tokens int64 [B] at `position` (the cached length) -> logits float32 [B, V] (None
        without fetch_logits)."""
        if self.fetch_logits:
            return step_logits(self._model, tokens, position, self._vocab)
        self._model.step(np.ascontiguousarray(tokens, dtype=np.int64), operator.index(position))
        return None

    def draw(self, seeds, step: int, *, top_k: int, top_p: float = 1.0,
             temperature: float = 1.0, greedy: bool = False) -> np.ndarray:
        """seeds uint64 [B] -> int64 [B]: one token per row from the logits of the last prefill
        or step, drawn on the GPU as the CPU sampler draws them (Philox counter `step`);
        ValueError with the CPU sampler's message for the lowest bad row."""
        seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
        out = np.empty(seeds.shape, dtype=np.int64)
        self._model.sample(seeds, operator.index(step), top_k, top_p, temperature, greedy, out)
        return out

    def generate(self, prefix, seeds, steps: int, *, top_k: int, top_p: float = 1.0,
                 temperature: float = 1.0, greedy: bool = False) -> np.ndarray:
        """prefix int64 [B, P], seeds uint64 [B] -> tokens int64 [B, steps]: token k of row b
        drawn with seeds[b] and Philox counter k from the logits after position P + k - 1 (the
        CPU generator's rule), all on the device."""
        prefix = np.ascontiguousarray(prefix, dtype=np.int64)
        seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
        if prefix.ndim != 2 or seeds.shape != (prefix.shape[0],):
            raise ValueError(f"prefix must be [B, P] and seeds [B], got {prefix.shape} and "
                             f"{seeds.shape}")
        out = np.empty((prefix.shape[0], operator.index(steps)), dtype=np.int64)
        self._model.generate(prefix, seeds, top_k, top_p, temperature, greedy, out)
        return out

    @property
    def length(self) -> int:
        return self._model.length

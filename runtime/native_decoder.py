"""The transformer stage on the CPU: vqrt._native's KV-cached GPT decoder over numpy weights.

Weights use the "vqrt-native-1" names and layout (export/native_weights.py): Linear weights
[out, in] as float32, float16, bfloat16 (uint16 bit patterns, tagged "BF16") or int8 with
``<name>_scale`` float32 [out]; everything else float32. The arrays are read in place, never
copied; the decoder keeps them referenced.

    arrays, infos, _ = read_safetensors(path)          # vqrt.runtime.safetensors_io
    decoder = NativeDecoder(shape, arrays, {n: i.dtype for n, i in infos.items()}, max_batch=8)
    logits = decoder.prefill(cond)                     # int64 [B, L] -> float32 [B, V]
    for pos in range(L, L + steps - 1):
        logits = decoder.step(next_tokens, pos)        # int64 [B] -> float32 [B, V]

One decoder serves one sequence batch at a time (it owns the KV cache): use one per thread.
prefill and step release the GIL. This module never imports torch.
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

import numpy as np

from vqrt import _native

__all__ = ["GPTShape", "NativeDecoder", "prefill_logits", "step_logits", "tag_dtypes"]

# numpy dtype -> safetensors name, for arrays given without a tag (uint16 needs one: BF16).
_TAG_OF = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}


def tag_dtypes(tensors: Mapping[str, np.ndarray],
               dtypes: Optional[Mapping[str, str]]) -> dict:
    """name -> safetensors dtype name for every tensor: the given tags, else from the numpy
    dtype (uint16 arrays hold BF16 bit patterns and must be tagged)."""
    tagged = dict(dtypes or {})
    for name, array in tensors.items():
        if name not in tagged:
            if array.dtype not in _TAG_OF:
                raise ValueError(f"tensor {name} has dtype {array.dtype}: tag it in dtypes "
                                 f"(uint16 holds BF16 bit patterns)")
            tagged[name] = _TAG_OF[array.dtype]
    return tagged


def prefill_logits(model, tokens, vocab: int) -> np.ndarray:
    """A compiled decoder's prefill (vqrt._native NativeTransformer or GpuTransformer): tokens
    int64 [B, T] -> logits float32 [B, vocab] (allocated here)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be 2-D [B, T], got shape {tokens.shape}")
    logits = np.empty((tokens.shape[0], vocab), dtype=np.float32)
    model.prefill(tokens, logits)
    return logits


def step_logits(model, tokens, position: int, vocab: int) -> np.ndarray:
    """A compiled decoder's step: tokens int64 [B] at `position` -> logits float32 [B, vocab]."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D [B], got shape {tokens.shape}")
    logits = np.empty((tokens.shape[0], vocab), dtype=np.float32)
    model.step(tokens, operator.index(position), logits)
    return logits


@dataclass(frozen=True)
class GPTShape:
    """The transformer's sizes (upstream transformer_config.params)."""
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    block_size: int


class NativeDecoder:
    """A GPT decoder with a preallocated KV cache of max_batch rows x max_len positions.

    Args:
        shape: the model's sizes.
        tensors: name -> numpy array, C-contiguous.
        dtypes: name -> "F32" | "F16" | "BF16" | "I8" (e.g. from read_safetensors' infos); a name
            missing here is tagged from its numpy dtype (uint16 arrays must be tagged BF16).
        max_batch: rows of the cache (the largest batch).
        max_len: positions of the cache, <= block_size (default block_size).
        num_threads: worker threads, 0 = one per core; never changes the results.
        bf16_activations: with BF16 weights, round activations to bf16 before each product
            (vdpbf16ps where the CPU has it: faster batched steps, less exact logits).
        kv_f16: keep the KV cache in fp16 (half its memory and of the bytes each step's
            attention reads; keys and values rounded once). Default (csrc/transformer.h): when
            the Linear weights are not all fp32 (the cache then rounds less than the weights
            do); fp32 weights keep an fp32 cache, so their tokens equal the fp32 references.
    """

    def __init__(self, shape: GPTShape, tensors: Mapping[str, np.ndarray],
                 dtypes: Optional[Mapping[str, str]] = None, *, max_batch: int = 1,
                 max_len: Optional[int] = None, num_threads: int = 0,
                 bf16_activations: bool = False, kv_f16: Optional[bool] = None):
        self.shape = shape
        self._model = _native.NativeTransformer(
            asdict(shape), dict(tensors), tag_dtypes(tensors, dtypes), operator.index(max_batch),
            0 if max_len is None else operator.index(max_len), operator.index(num_threads),
            bool(bf16_activations), None if kv_f16 is None else bool(kv_f16))

    def prefill(self, tokens) -> np.ndarray:
        """tokens int64 [B, T] at positions 0..T-1 (replacing anything cached) -> logits
        float32 [B, V] predicting position T."""
        return prefill_logits(self._model, tokens, self.shape.vocab_size)

    def step(self, tokens, pos: int) -> np.ndarray:
        """tokens int64 [B] at position pos <= length (later positions are forgotten first) ->
        logits float32 [B, V] predicting position pos + 1."""
        return step_logits(self._model, tokens, pos, self.shape.vocab_size)

    def rewind(self, length: int) -> None:
        """Keeps cached positions [0, length)."""
        self._model.rewind(operator.index(length))

    def reset(self) -> None:
        self.rewind(0)

    @property
    def length(self) -> int:
        """Cached positions."""
        return self._model.length

    @property
    def isa(self) -> str:
        """The kernels' instruction set: generic, avx2 or avx512 (see VQRT_CPU_ISA)."""
        return self._model.isa

    @property
    def num_threads(self) -> int:
        return self._model.num_threads

    @property
    def max_batch(self) -> int:
        return self._model.max_batch

    @property
    def max_len(self) -> int:
        return self._model.max_len

    @property
    def kv_f16(self) -> bool:
        """Whether the KV cache is fp16 (see the constructor)."""
        return self._model.kv_f16

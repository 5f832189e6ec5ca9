"""What a caller asks for (GenerationParams) and what comes back (GenerationResult).

GenerationParams checks what it can alone (types, ranges) in __post_init__; what depends on
the bundle (top_k against the codebook, the size against the downsampling factor and the
largest latent grid, the batch against the max batch) is checked by the Generator, which names
both numbers. Every problem is a RequestError (a ValueError) with one line. This module never
imports torch.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["RequestError", "GenerationParams", "StageTimings", "GenerationResult"]

SEED_LIMIT = 2**64  # seeds are uint64 (the sampler's Philox key)


class RequestError(ValueError):
    """A request the bundle (or this install) cannot serve; the message is one line naming the
    value at fault, the limit, and the fix."""


def _integer(name: str, value, low: int, high: Optional[int] = None) -> int:
    try:
        number = operator.index(value)  # refuses floats and bools' cousins like 3.0
    except TypeError:
        raise RequestError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or number < low or (high is not None and number >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise RequestError(f"{name} must be {bound}, got {value!r}")
    return number


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise RequestError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise RequestError(f"{name} must be finite, got {value!r}")
    return number


@dataclass(frozen=True)
class GenerationParams:
    """How to draw the image tokens.

    top_k: keep the k most likely image codes (ties with the k-th kept too); None = all codes.
        At most the bundle's codebook size.
    top_p: nucleus mass in (0, 1]; 1 disables it. Applied after top_k.
    temperature: > 0; logits are divided by it before filtering (upstream order).
    greedy: take the most likely code (lowest index on ties); temperature, top_k, top_p and
        seed then do not change the result.
    seed: in [0, 2**64). Row i of a batch samples with seed (seed + i) mod 2**64, and a row's
        tokens depend only on its seed, its conditioning and these params: the same row gives
        the same tokens alone or inside any batch. To reproduce row i of a batch alone, run it
        with seed + i.
    size: (width, height) in pixels, multiples of the downsampling factor; None = the bundle's
        training size. A grid beyond the transformer's block is sampled through sliding
        windows of the training grid (csrc/sliding_window.h).
    window_stride: sliding-window sampling only: the window stays still for runs of this many
        tokens along a row, prefilled once and then KV-cached. 1 = the paper's scheme (a window
        around every token, a full prefill each); larger is faster and less faithful (its NLL
        cost: BENCHMARKS.md). In [1, the training grid's width], checked by the Generator.
    """
    top_k: Optional[int] = None
    top_p: float = 1.0
    temperature: float = 1.0
    greedy: bool = False
    seed: int = 0
    size: Optional[Tuple[int, int]] = None
    window_stride: int = 1

    def __post_init__(self):
        if self.top_k is not None:
            object.__setattr__(self, "top_k", _integer("top_k", self.top_k, 1))
        top_p = _real("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "top_p", top_p)
        temperature = _real("temperature", self.temperature)
        if temperature <= 0.0:
            raise RequestError(f"temperature must be > 0, got {self.temperature!r} (for the "
                               "most likely token use greedy, --greedy)")
        # The sampler divides in float32: a temperature must be a normal float32 (compared in
        # float64: a cast of a large one would warn of overflow). Below that logit / T
        # overflows for any logit that is not tiny; greedy is what such a temperature means.
        tiny, huge = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
        if not tiny <= temperature <= huge:
            raise RequestError(f"temperature {self.temperature!r} is outside float32's normal "
                               f"range [{tiny:.4g}, {huge:.4g}], in which the sampler divides"
                               + (": use greedy (--greedy) for the most likely token"
                                  if temperature < tiny else ""))
        object.__setattr__(self, "temperature", temperature)
        if not isinstance(self.greedy, (bool, np.bool_)):
            raise RequestError(f"greedy must be True or False, got {self.greedy!r}")
        object.__setattr__(self, "greedy", bool(self.greedy))
        object.__setattr__(self, "seed", _integer("seed", self.seed, 0, SEED_LIMIT))
        if self.size is not None:
            if not isinstance(self.size, (tuple, list)) or len(self.size) != 2:
                raise RequestError(f"size must be (width, height) in pixels, got {self.size!r}")
            width = _integer("size width", self.size[0], 1)
            height = _integer("size height", self.size[1], 1)
            object.__setattr__(self, "size", (width, height))
        object.__setattr__(self, "window_stride", _integer("window_stride", self.window_stride, 1))

    def row_seeds(self, batch: int) -> np.ndarray:
        """uint64 [batch]: (seed + i) mod 2**64 for row i."""
        return ((self.seed + np.arange(batch, dtype=object)) % SEED_LIMIT).astype(np.uint64)


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock seconds per stage of one generation."""
    conditioning_s: float  # prefix tokens: cond_encoder graph, coordinates, class ids
    prefill_s: float  # the transformer over the prefix
    steps_s: float  # the transformer after the first prefill (sliding windows' prefills too)
    sampling_s: float  # the sampler
    image_decode_s: float  # the decoder graph (0 when images were not asked for)

    @property
    def total_s(self) -> float:
        return (self.conditioning_s + self.prefill_s + self.steps_s + self.sampling_s
                + self.image_decode_s)

    def as_dict(self) -> Dict[str, float]:
        return {"conditioning_s": self.conditioning_s, "prefill_s": self.prefill_s,
                "steps_s": self.steps_s, "sampling_s": self.sampling_s,
                "image_decode_s": self.image_decode_s, "total_s": self.total_s}


@dataclass(frozen=True)
class GenerationResult:
    """tokens: int64 [B, h, w] image codes in raster order (the prefix cut off);
    images: uint8 [B, H, W, 3] (H = h * f), or None when not decoded;
    row_seeds: uint64 [B], the seed each row sampled with."""
    tokens: np.ndarray
    images: Optional[np.ndarray]
    row_seeds: np.ndarray
    timings: StageTimings
    backend: str

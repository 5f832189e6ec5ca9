"""Which tokens a backend sees for each image token: the whole sequence, or sliding windows.

  CachedDecoding    the grid fits the block: [prefix, image tokens], prefilled once, then one
                    KV-cached step per token.
  WindowedDecoding  a grid beyond the block: sliding-window sampling, planned by the one
                    scheduler in C++ (vqrt._native.SlidingWindow, csrc/sliding_window.h, which
                    states the scheme); each window's prefix is prefilled, the rest of a run of
                    `stride` tokens is fed through the KV cache.

Both answer one call, `logits(index)` -> float32 [B, V] predicting image token `index` of every
row (None from a GPU state, which keeps them for its draw()), made when tokens[:, :index] are
final; a generation calls it for index = K, K + 1, ... (K image tokens given). They read the
generation's token buffer, never write it, and run on any DecodingState (runtime/backends.py),
so every backend samples through the same plan. This module never imports torch.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from vqrt import _native
from vqrt.runtime.backends import DecodingState, StatePool
from vqrt.runtime.params import RequestError

Decoding = Union["CachedDecoding", "WindowedDecoding"]


class CachedDecoding:
    """One sequence per row: prefix int64 [B, P], then the image tokens int64 [B, N]."""

    def __init__(self, state: DecodingState, prefix: np.ndarray, tokens: np.ndarray):
        self.state = state
        self._prefix = prefix
        self._tokens = tokens
        self._fed: Optional[int] = None  # image tokens in the KV cache

    def logits(self, index: int) -> Optional[np.ndarray]:
        if self._fed is None:
            logits = self.state.prefill(np.concatenate([self._prefix,
                                                        self._tokens[:, :index]], axis=1))
        else:
            assert index == self._fed + 1, (index, self._fed)
            logits = self.state.step(np.ascontiguousarray(self._tokens[:, index - 1]),
                                     self._prefix.shape[1] + index - 1)
        self._fed = index
        return logits


class WindowedDecoding:
    """Sliding-window sampling. The sequence of image token `index` is

        [prefix, the condition cropped to the window (spatial conditions), the window's
         image tokens before the token in the window's raster order]

    prefix: int64 [B, P] tokens before everything (class or SOS; empty for a spatial
    condition); cond_grid: int64 [B, N] the spatial condition's tokens on the image grid, or
    None; tokens: int64 [B, N] the generation's image tokens (raster order).
    """

    def __init__(self, state: DecodingState, plan: _native.SlidingWindow, prefix: np.ndarray,
                 cond_grid: Optional[np.ndarray], tokens: np.ndarray):
        self.state = state
        self._plan = plan
        self._prefix = prefix
        self._cond_grid = cond_grid
        self._tokens = tokens
        self._offset = prefix.shape[1] + (0 if cond_grid is None else plan.window_size)
        self._served = -1  # the last token whose logits came from the KV cache's window
        self._run_end = 0  # tokens [.., run_end) share that window

    def logits(self, index: int) -> Optional[np.ndarray]:
        _, _, local, run_end = self._plan.place(index)
        if index - 1 == self._served and index < self._run_end:  # the run goes on
            logits = self.state.step(np.ascontiguousarray(self._tokens[:, index - 1]),
                                     self._offset + local - 1)
        else:
            logits = self.state.prefill(self._sequence(index, local))
            self._run_end = run_end
        self._served = index
        return logits

    def _sequence(self, index: int, local: int) -> np.ndarray:
        """int64 [B, offset + local]: what the window of token `index` feeds."""
        batch = self._tokens.shape[0]
        sequence = np.empty((batch, self._offset + local), dtype=np.int64)
        sequence[:, :self._prefix.shape[1]] = self._prefix
        if self._cond_grid is not None:
            cond = np.empty((batch, self._plan.window_size), dtype=np.int64)
            self._plan.gather(self._cond_grid, index, cond.shape[1], cond)
            sequence[:, self._prefix.shape[1]:self._offset] = cond
        image = np.empty((batch, local), dtype=np.int64)
        self._plan.gather(self._tokens, index, local, image)
        sequence[:, self._offset:] = image
        return sequence


def new_decoding(states: StatePool, prefix: np.ndarray, *,
                 spatial: bool, tokens: np.ndarray, grid: Tuple[int, int],
                 window: Tuple[int, int], stride: int, block: int) -> Decoding:
    """The decoding of one generation, over a decoding state (KV cache) taken from `states`
    once the request is known to fit (the caller gives it back when the generation completes).

    prefix: int64 [B, P] the condition's tokens (a spatial condition: P tokens in raster order
    on the image grid); tokens: int64 [B, h*w] C-contiguous, the generation's buffer; grid:
    (h, w); window: the training grid (h0, w0); stride: runs of the window (1 = the paper's
    scheme); block: the transformer's block size. A grid whose sequence fits the block (the
    last token is never fed back: P + h*w - 1 positions) decodes as one sequence; a larger one
    through sliding windows.
    """
    h, w = grid
    if not 1 <= stride <= window[1]:
        raise RequestError(f"window_stride (--window-stride) {stride} must be in "
                           f"[1, {window[1]}] (the transformer's training grid is "
                           f"{window[0]}x{window[1]})")
    if prefix.shape[1] + h * w - 1 <= block:
        return CachedDecoding(states.take(tokens.shape[0]), prefix, tokens)
    plan = _native.SlidingWindow(h, w, window[0], window[1], stride)
    cond_grid = None
    if spatial:
        if prefix.shape[1] != h * w:
            raise RequestError(
                f"sliding-window sampling crops the condition with the image's window, so the "
                f"condition must lie on the {h}x{w} image grid: it gives {prefix.shape[1]} "
                f"tokens, not {h * w}")
        cond_grid, prefix = np.ascontiguousarray(prefix), prefix[:, :0]
    wh, ww = plan.window
    needed = prefix.shape[1] + (0 if cond_grid is None else wh * ww) + wh * ww - 1
    if needed > block:
        raise RequestError(f"a {wh}x{ww} window after {needed - wh * ww + 1} condition "
                           f"token(s) needs {needed} positions, more than the transformer's "
                           f"block size {block}")
    return WindowedDecoding(states.take(tokens.shape[0]), plan,
                            np.ascontiguousarray(prefix), cond_grid, tokens)

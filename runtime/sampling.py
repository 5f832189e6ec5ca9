"""Token sampling for the transformer stage: top-k, top-p and temperature, on the CPU.

The work happens in C++ (csrc/sampling.cpp, the reference for the CUDA twin); this module checks
and converts the numpy arguments. The rules, in taming-transformers order:

1. ``greedy``: the argmax of each row (lowest index on ties); top_k and top_p are still
   range-checked, temperature and seeds are ignored.
2. ``scaled = logits / temperature`` in float32 (temperature before filtering).
3. top-k: keep every token whose scaled logit is >= the k-th largest, so ties at the k-th value
   are all kept and more than ``top_k`` tokens can survive. ``-inf`` logits mask a token.
4. top-p (only when ``top_p < 1``): over the survivors sorted by logit (descending, ties by token
   index), remove a token once the probability mass strictly before it exceeds ``top_p``, so at
   least one token is kept. ``top_p == 1`` keeps everything (it never drops a tail token to the
   rounding of a cumulative sum, as the fp32 upstream code can).
5. Draw by inverse CDF over the kept tokens in that order with ``u = philox_uniform(seed, step,
   0)``, a Philox4x32-10 uniform keyed by the row's seed with the step as counter.

A row's token depends only on its logits, its seed and ``step``: not on the other rows, the
thread count or the CPU's instruction set. Logits must not contain NaN or +inf, and no row may be
all -inf. Invalid arguments raise ValueError naming the value (``top_k must be in [1, V=1024],
got 2000``). This module never imports torch.
"""
import operator

import numpy as np

from vqrt import _native

__all__ = ["sample_logits", "sampling_probs"]


def _logits_array(logits):
    """logits as a C-contiguous float32 [B, V] array (float32 is required, never cast)."""
    array = np.ascontiguousarray(logits)
    if array.dtype != np.float32:
        raise ValueError(f"logits must be float32, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"logits must be 2-D [B, V], got shape {array.shape}")
    return array


def _seeds_array(seeds, batch):
    """seeds as a C-contiguous uint64 [B] array; any non-negative integer array is accepted."""
    array = np.asarray(seeds)
    if array.dtype.kind not in "iu":
        raise ValueError(f"seeds must be integers (uint64), got {array.dtype}")
    if array.shape != (batch,):
        raise ValueError(f"seeds must have shape ({batch},) to match logits, got {array.shape}")
    if array.dtype.kind == "i" and (array < 0).any():
        raise ValueError(f"seeds must be >= 0, got {array[array < 0][0]}")
    return np.ascontiguousarray(array, dtype=np.uint64)


def sample_logits(logits, *, top_k, top_p=1.0, temperature=1.0, seeds, step, greedy=False,
                  num_threads=0):
    """Draws one token per row of logits.

    Args:
        logits: float32 [B, V]; -inf masks a token, NaN and +inf are errors.
        top_k: 1 <= top_k <= V; tokens tied with the k-th largest logit are kept too.
        top_p: 0 < top_p <= 1; 1 disables top-p filtering.
        temperature: finite and > 0 unless greedy (0 is an error, not greedy).
        seeds: integers [B], one per row, in [0, 2**64).
        step: int in [0, 2**64), the counter of each row's random stream (e.g. the position of
            the token being sampled); a different step gives an independent draw.
        greedy: argmax instead of sampling.
        num_threads: worker threads over rows, 0 = automatic; never changes the result.

    Returns:
        int64 [B] token ids in [0, V).
    """
    logits = _logits_array(logits)
    seeds = _seeds_array(seeds, logits.shape[0])
    step = operator.index(step)
    if not 0 <= step < 2**64:
        raise ValueError(f"step must be in [0, 2**64), got {step}")
    out = np.empty(logits.shape[0], dtype=np.int64)
    _native.sample_logits(logits, seeds, step, operator.index(top_k), float(top_p),
                          float(temperature), bool(greedy), operator.index(num_threads), out)
    return out


def sampling_probs(logits, *, top_k, top_p=1.0, temperature=1.0, greedy=False):
    """The distribution sample_logits draws each row from, computed by the same code.

    Same arguments as sample_logits (no seeds or step). Returns float64 [B, V]: the
    probabilities of the kept tokens, 0 elsewhere (one-hot at the argmax when greedy).
    """
    logits = _logits_array(logits)
    probs = np.empty(logits.shape, dtype=np.float64)
    _native.sampling_probs(logits, operator.index(top_k), float(top_p), float(temperature),
                           bool(greedy), probs)
    return probs

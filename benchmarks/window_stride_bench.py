"""What the faster sliding-window mode (GenerationParams.window_stride = s) costs against the
paper's scheme (s = 1): NLL of the sampled grids under the full-window model, and speed (not a
test; numbers go to BENCHMARKS.md by hand).

NLL: grids sampled at temperature 1 without filtering, each scored token by token with the
s = 1 windows (the model's own conditionals for the scheme it was meant to run): mean
-log p(token) in nats over the image codes. With s = 1 this is the model's entropy on its own
samples; the excess at s > 1 is what holding the window costs. Speed: tokens/s of the whole
generation (native backend, one thread), median of --repeats, strides interleaved.

    .venv/bin/python benchmarks/window_stride_bench.py BUNDLE [--grid 12x16] [--samples 16]

BUNDLE: a class-conditional or unconditional bundle built with a --max-size that holds the
grid (e.g. golden set A: vqrt build ../shared/golden/model.ckpt --config
../shared/golden/transformer.yaml --max-size 128x96 -o /tmp/golden-large).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vqrt import _native
from vqrt.runtime import GenerationParams, Generator
from vqrt.runtime.backends import NativeBackend
from vqrt.runtime.decoding import WindowedDecoding


def full_window_nll(backend: NativeBackend, prefix: np.ndarray, tokens: np.ndarray,
                    window, codes: int) -> np.ndarray:
    """prefix int64 [B, P], tokens int64 [B, h, w] -> NLL float64 [B, h*w] of each token under
    the s = 1 windows (teacher forcing: the decoding reads the given tokens)."""
    batch, h, w = tokens.shape
    flat = np.ascontiguousarray(tokens.reshape(batch, h * w))
    decoding = WindowedDecoding(backend.new_state(batch),
                                _native.SlidingWindow(h, w, window[0], window[1], 1), prefix,
                                None, flat)
    nll = np.empty(flat.shape)
    for index in range(h * w):
        logits = decoding.logits(index)[:, :codes].astype(np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        nll[:, index] = log_z - logits[np.arange(batch), flat[:, index]]
    return nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--grid", default="12x16", help="HxW latent grid (default 12x16)")
    parser.add_argument("--strides", default="1,2,4,8")
    parser.add_argument("--batch", type=int, default=8, help="rows per generation (default 8)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="batches sampled and scored per stride (default 4)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    h, w = (int(v) for v in args.grid.split("x"))
    strides = [int(s) for s in args.strides.split(",")]
    generator = Generator(args.bundle, backend="native", num_threads=1)
    m = generator.bundle.manifest
    f, window, codes = (m.first_stage.downsampling_factor, m.first_stage.training_grid,
                        m.first_stage.codebook_size)
    labels = (list(np.arange(args.batch) % m.conditioning.n_classes)
              if m.tokenization.prefix == "class_id" else None)
    prefix = (np.array(labels, dtype=np.int64)[:, None] if labels is not None else
              np.full((args.batch, 1), m.conditioning.sos_token, dtype=np.int64))
    backend = NativeBackend(generator.bundle, 1)
    print(f"{args.bundle}: grid {h}x{w}, window {window[0]}x{window[1]}, block "
          f"{m.transformer.block_size}, {args.batch * args.rounds} samples per stride "
          f"(seeds 0..)")

    def run(stride: int, batch: int, seed: int = 0):
        params = GenerationParams(seed=seed, size=(w * f, h * f), window_stride=stride)
        started = time.perf_counter()
        result = generator.generate(class_labels=None if labels is None else labels[:batch],
                                    batch_size=batch, params=params)
        return result.tokens, batch * h * w / (time.perf_counter() - started)

    speeds = {(s, b): [] for s in strides for b in (1, args.batch)}
    for _ in range(args.repeats):
        for key in speeds:
            speeds[key].append(run(*key)[1])
    print(f"{'stride':>6} {'NLL nats/token':>15} {'excess':>15} {'tok/s B=1':>10} "
          f"{'x':>5} {'tok/s B=' + str(args.batch):>11} {'x':>5}")
    base = None
    for stride in strides:
        per_grid = np.concatenate([
            full_window_nll(backend, prefix, run(stride, args.batch, r * args.batch)[0], window,
                            codes).mean(axis=1) for r in range(args.rounds)])
        one, many = (statistics.median(speeds[(stride, b)]) for b in (1, args.batch))
        if base is None:
            base = (per_grid, one, many)
        # The same seeds draw the same uniforms at every stride: the excess is paired by grid.
        excess = per_grid - base[0]
        n = len(per_grid)
        print(f"{stride:>6} {per_grid.mean():>8.4f}±{per_grid.std(ddof=1) / n ** .5:.4f} "
              f"{excess.mean():>+8.4f}±{excess.std(ddof=1) / n ** .5:.4f} "
              f"{one:>10.0f} {one / base[1]:>5.2f} {many:>11.0f} {many / base[2]:>5.2f}")


if __name__ == "__main__":
    main()

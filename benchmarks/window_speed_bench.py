"""Sliding-window sampling of a large grid with the S-sized transformer (issue 6): tokens/s of
the faster window mode (`window_stride` s: a window held still for s tokens, KV-cached) and of
the paper's scheme (s = 1) on the native backend, against the paper's scheme as upstream runs
it: taming's scripts/sample_conditional.py, one full forward of the whole window (prefix + the
h0 x w0 window's tokens) per sampled token, torch fp32, top-k then multinomial. Not a test: the
numbers go to BENCHMARKS.md by hand. (What s > 1 costs in NLL: window_stride_bench.py.)

    .venv/bin/python benchmarks/window_speed_bench.py CKPT --config YAML --bundle BUNDLE
        [--grid 64x64] [--tokens 32] [--strides 1,4,8,16] [--repeats 3]

CKPT/YAML: the class-conditional S model of bench_suite.py (build/bench/S/model.ckpt);
BUNDLE: its bundle built for the grid, e.g. `vqrt build CKPT --config YAML --precision bf16
--backend native --max-size 1024x1024 -o build/bench/S/bundle-1024`.

Every contender samples the same --tokens tokens of one row deep in the grid (row h/2, from
column 0: windows at full depth, as most of a large grid's tokens are), after the same random
image prefix; tokens/s = tokens over the wall time including each contender's own prefills.
Contenders run interleaved, --repeats times; medians.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vqrt.runtime import GenerationParams, Generator
from vqrt.trainer.checkpoints import load_checkpoint

TOP_K = 100


def upstream_window_sampler(gpt, class_id: int, grid: np.ndarray, window, start: int,
                            count: int, seed: int) -> float:
    """taming's sample_conditional.py loop over `count` tokens from raster index `start` of
    grid int64 [h, w] (changed in place); returns the seconds it took."""
    h, w = grid.shape
    h0, w0 = window
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.from_numpy(grid)
    started = time.perf_counter()
    with torch.no_grad():
        for index in range(start, start + count):
            i, j = divmod(index, w)
            top = min(max(i - h0 // 2, 0), h - h0)
            left = min(max(j - w0 // 2, 0), w - w0)
            patch = tokens[top:top + h0, left:left + w0].reshape(1, -1)
            sequence = torch.cat([torch.tensor([[class_id]]), patch], dim=1)[:, :-1]
            logits = gpt(sequence)[:, (i - top) * w0 + (j - left)]  # the window's (i, j)
            values, _ = torch.topk(logits, TOP_K)
            logits[logits < values[:, -1:]] = -float("inf")
            probs = torch.softmax(logits, dim=-1)
            tokens[i, j] = torch.multinomial(probs, 1, generator=generator)[0, 0]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--grid", default="64x64")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--strides", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    h, w = (int(v) for v in args.grid.split("x"))
    torch.set_num_threads(args.threads)
    gpt = load_checkpoint(args.checkpoint, args.config).transformer.eval()
    generator = Generator(args.bundle, backend="native", num_threads=args.threads)
    m = generator.bundle.manifest
    f, window = m.first_stage.downsampling_factor, tuple(m.first_stage.training_grid)
    start = (h // 2) * w
    prefix = np.random.default_rng(0).integers(0, m.first_stage.codebook_size, (1, start))
    print(f"{args.bundle}: grid {h}x{w}, window {window[0]}x{window[1]}, {args.tokens} tokens "
          f"from row {h // 2}, {args.threads} threads, top-k {TOP_K}")

    def native(stride: int) -> float:
        params = GenerationParams(top_k=TOP_K, seed=1, size=(w * f, h * f),
                                  window_stride=stride)
        started = time.perf_counter()
        generation = generator.start(class_labels=[0], prefix_tokens=prefix, params=params)
        for _ in range(args.tokens):
            generation.step()
        elapsed = time.perf_counter() - started
        generation.cancel()
        return elapsed

    def upstream() -> float:
        grid = np.zeros((h, w), np.int64)
        grid.reshape(-1)[:start] = prefix[0]
        return upstream_window_sampler(gpt, 0, grid, window, start, args.tokens, seed=1)

    contenders = {"torch fp32, full window per token (upstream)": upstream}
    for stride in (int(s) for s in args.strides.split(",")):
        contenders[f"vqrt native, stride {stride}"] = lambda s=stride: native(s)
    times = {name: [] for name in contenders}
    for name, run in contenders.items():  # warm-up
        run()
    for _ in range(args.repeats):
        for name, run in contenders.items():
            times[name].append(run())
    base = args.tokens / statistics.median(times["torch fp32, full window per token (upstream)"])
    print(f"{'contender':48s} {'tokens/s':>9s} {'spread':>8s} {'x upstream':>10s}")
    for name, seconds in times.items():
        rate = args.tokens / statistics.median(seconds)
        spread = (max(seconds) - min(seconds)) / 2 / statistics.median(seconds)
        print(f"{name:48s} {rate:9.2f} {spread:7.0%} {rate / base:9.1f}x")


if __name__ == "__main__":
    main()

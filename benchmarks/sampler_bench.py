"""Sampler micro-benchmark: vqrt's C++ top-k/top-p sampler against the upstream torch recipe.

The baseline is what taming-transformers does per step (sample_with_past): logits / temperature,
torch.topk, mask below the k-th value, softmax, torch.multinomial. Both run in the same process
on the same logits, so the ratio is meaningful on a shared, noisy machine.

    .venv/bin/python benchmarks/sampler_bench.py [--repeat 200] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from vqrt import _native
from vqrt.runtime.sampling import sample_logits


def torch_sample(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """logits [B, V] -> tokens [B]: taming's top-k sampling step."""
    logits = logits / temperature
    v, _ = torch.topk(logits, k)
    logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)[:, 0]


def median_us(fn, repeat: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the sampler runs one row per thread; compare like with like
    rng = np.random.default_rng(0)
    rows = []
    for vocab in (1024, 16384):
        for batch in (1, 8):
            logits = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)
            logits_t = torch.from_numpy(logits)
            seeds = np.arange(batch, dtype=np.uint64)
            for k in (100, 2000, vocab):
                if k > vocab:
                    continue
                ours = median_us(lambda: sample_logits(logits, top_k=k, temperature=1.0,
                                                       seeds=seeds, step=0, num_threads=1),
                                 args.repeat)
                ref = median_us(lambda: torch_sample(logits_t, k, 1.0), args.repeat)
                rows.append({"vocab": vocab, "batch": batch, "top_k": k, "vqrt_us": ours,
                             "torch_us": ref, "speedup": ref / ours})
    print(f"CPU ISA {_native.cpu_isa()}, torch {torch.__version__}, one thread, "
          f"median of {args.repeat}")
    print(f"{'V':>6} {'B':>3} {'k':>6} {'vqrt us':>9} {'torch us':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['vocab']:>6} {r['batch']:>3} {r['top_k']:>6} {r['vqrt_us']:>9.1f} "
              f"{r['torch_us']:>9.1f} {r['speedup']:>5.1f}x")
    if args.json:
        meta = {"cpu_isa": _native.cpu_isa(), "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "repeat": args.repeat}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

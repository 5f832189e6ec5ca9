"""ONNX Runtime sessions (CPU) with its memory pattern (its default, what vqrt used before
2026-11-30) and without (runtime/onnx_sessions.py's pattern=False, what they open with now):
peak memory and time over repeated calls, as a long-lived Generator makes them. The graphs that
run whole images (encoder, cond_encoder, whole-image decoder) at one size, and the transformer's
prefill at lengths drawn from 1..block size (sliding windows and new prompts vary them). Not a
test: the numbers go to BENCHMARKS.md by hand.

    .venv/bin/python benchmarks/session_memory_bench.py [--bundle build/demo-seg/bundle]
        [--side 1024] [--calls 3] [--prefill-calls 60] [--prefill-batch 8] [--repeat 3]
        [--json benchmarks/results/session_memory.json]

The default bundle is `make demo-seg`'s (its first stage, its segmentation cond stage and its
transformer). Each (graph, pattern) configuration runs in a fresh process; configurations are
interleaved `--repeat` times. Memory: growth of the kernel's high-water mark (VmHWM, reset
through /proc/self/clear_refs after the session and the inputs are made) after each call; time:
each call's median over the processes (prefill: the median time per token over all calls).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from decoder_bench import _status_bytes  # /proc/self/status fields in bytes

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = ("encoder", "cond_encoder", "decoder", "transformer_prefill")


def _feeds(bundle, graph: str, side: int, calls: int, batch: int, rng) -> list:
    """One feed dict per call."""
    from vqrt.runtime.conditioning import segmentation_one_hot
    m = bundle.manifest
    c = m.conditioning
    if graph == "transformer_prefill":
        kv = np.zeros((m.kv_cache.shape[0], 2, batch) + tuple(m.kv_cache.shape[3:]), np.float32)
        block = m.transformer.block_size
        return [{"tokens": rng.integers(0, m.first_stage.codebook_size, (batch, length)),
                 "position": np.array(0), "kv_cache": kv}
                for length in rng.integers(1, block + 1, calls)]
    if graph == "decoder":
        latent = side // m.first_stage.downsampling_factor
        feeds = {"indices": rng.integers(0, m.first_stage.codebook_size, (1, latent, latent))}
    elif graph == "encoder":
        feeds = {"image": rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)}
    elif c.cond_stage_key == "segmentation":
        feeds = {"cond": segmentation_one_hot(rng.integers(0, c.cond_channels, (1, side, side)),
                                              c.cond_channels)}
    else:
        feeds = {"cond": rng.uniform(-1, 1, (1, c.cond_channels, side, side)).astype(np.float32)}
    return [feeds] * calls


def _child(bundle_dir: str, graph: str, pattern: bool, side: int, calls: int, batch: int,
           threads: int) -> None:
    """In a fresh process: `calls` runs of one graph; prints JSON."""
    from vqrt.runtime.bundle import load_bundle
    from vqrt.runtime.onnx_sessions import open_session
    bundle = load_bundle(bundle_dir)
    session = open_session(bundle.graph_path(graph), ("CPUExecutionProvider",), "cpu", threads,
                           pattern=pattern)
    feeds = _feeds(bundle, graph, side, calls, batch, np.random.default_rng(0))
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _status_bytes("VmRSS")
    seconds, growth = [], []
    for feed in feeds:
        started = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - started)
        growth.append(_status_bytes("VmHWM") - before)
    tokens = [feed["tokens"].shape[1] for feed in feeds] if "tokens" in feeds[0] else None
    print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_growth_bytes": growth}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "demo-seg" / "bundle"))
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--prefill-calls", type=int, default=60)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("GRAPH", "PATTERN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        graph = args.child[0]
        calls = args.prefill_calls if graph == "transformer_prefill" else args.calls
        _child(args.bundle, graph, args.child[1] == "1", args.side, calls, args.prefill_batch,
               args.threads)
        return
    configs = [(graph, pattern) for graph in GRAPHS for pattern in (True, False)]
    results = {config: [] for config in configs}
    for _ in range(args.repeat):
        for graph, pattern in configs:
            out = subprocess.run(
                [sys.executable, __file__, "--bundle", args.bundle, "--side", str(args.side),
                 "--calls", str(args.calls), "--prefill-calls", str(args.prefill_calls),
                 "--prefill-batch", str(args.prefill_batch), "--threads", str(args.threads),
                 "--child", graph, "1" if pattern else "0"],
                check=True, capture_output=True, text=True, cwd=ROOT)
            results[(graph, pattern)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (graph, pattern), runs in results.items():
        calls = len(runs[0]["seconds"])
        row = {"graph": graph, "memory_pattern": pattern, "processes": len(runs),
               "peak_growth_bytes": [max(r["peak_growth_bytes"][i] for r in runs)
                                     for i in range(calls)]}
        growth = ", ".join(f"{b / 2 ** 30:.2f}" for b in row["peak_growth_bytes"][:3])
        if runs[0]["tokens"] is None:
            row.update(side=args.side, call_s=[statistics.median(r["seconds"][i] for r in runs)
                                              for i in range(calls)])
            timing = "calls " + ", ".join(f"{s:.2f}" for s in row["call_s"]) + " s"
            where = f"{args.side}x{args.side}"
        else:
            per_token = [s / n for r in runs for s, n in zip(r["seconds"], r["tokens"])]
            row.update(batch=args.prefill_batch, calls=calls,
                       median_s_per_token=statistics.median(per_token))
            timing = f"median {row['median_s_per_token'] * 1e6:.0f} us per token"
            growth += f" ... {row['peak_growth_bytes'][-1] / 2 ** 30:.2f}"
            where = f"batch {args.prefill_batch}, {calls} lengths"
        rows.append(row)
        print(f"{graph:19s} pattern {'on ' if pattern else 'off'} {where}: {timing}; peak growth "
              f"after calls {growth} GiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

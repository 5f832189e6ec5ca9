"""The graphs that run whole images on ONNX Runtime (CPU): the encoder, the cond_encoder and the
whole-image decoder, with ONNX Runtime's memory pattern (its default, what vqrt used before) and
without (what runtime/onnx_sessions.py's pattern=False opens them with now): peak memory and
time over repeated calls at one image size, as a long-lived Generator makes them. Not a test:
the numbers go to BENCHMARKS.md by hand.

    .venv/bin/python benchmarks/whole_graph_memory_bench.py [--bundle build/demo-seg/bundle]
        [--side 1024] [--calls 3] [--repeat 3] [--json benchmarks/results/whole_graphs.json]

The default bundle is `make demo-seg`'s (its first stage and its segmentation cond stage). Each
(graph, pattern) configuration runs in a fresh process, `--calls` calls on the same input;
configurations are interleaved `--repeat` times. Memory: growth of the kernel's high-water mark
(VmHWM, reset through /proc/self/clear_refs after the session and the input are made) after
each call; time: each call's median over the processes.
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


def _child(bundle_dir: str, graph: str, pattern: bool, side: int, calls: int,
           threads: int) -> None:
    """In a fresh process: `calls` runs of one graph; prints JSON."""
    from vqrt.runtime.bundle import load_bundle
    from vqrt.runtime.conditioning import segmentation_one_hot
    from vqrt.runtime.onnx_sessions import open_session
    bundle = load_bundle(bundle_dir)
    session = open_session(bundle.graph_path(graph), ("CPUExecutionProvider",), "cpu", threads,
                           pattern=pattern)
    rng = np.random.default_rng(0)
    c = bundle.manifest.conditioning
    if graph == "decoder":
        latent = side // bundle.manifest.first_stage.downsampling_factor
        codes = bundle.manifest.first_stage.codebook_size
        feeds = {"indices": rng.integers(0, codes, (1, latent, latent))}
    elif graph == "encoder":
        feeds = {"image": rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)}
    elif c.cond_stage_key == "segmentation":
        labels = rng.integers(0, c.cond_channels, (1, side, side))
        feeds = {"cond": segmentation_one_hot(labels, c.cond_channels)}
    else:
        feeds = {"cond": rng.uniform(-1, 1, (1, c.cond_channels, side, side)).astype(np.float32)}
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _status_bytes("VmRSS")
    seconds, growth = [], []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, feeds)
        seconds.append(time.perf_counter() - started)
        growth.append(_status_bytes("VmHWM") - before)
    print(json.dumps({"seconds": seconds, "peak_growth_bytes": growth,
                      "input_bytes": sum(a.nbytes for a in feeds.values())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "demo-seg" / "bundle"))
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("GRAPH", "PATTERN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.bundle, args.child[0], args.child[1] == "1", args.side, args.calls,
               args.threads)
        return
    configs = [(graph, pattern) for graph in ("encoder", "cond_encoder", "decoder")
               for pattern in (True, False)]
    results = {config: [] for config in configs}
    for _ in range(args.repeat):
        for graph, pattern in configs:
            out = subprocess.run(
                [sys.executable, __file__, "--bundle", args.bundle, "--side", str(args.side),
                 "--calls", str(args.calls), "--threads", str(args.threads), "--child", graph,
                 "1" if pattern else "0"], check=True, capture_output=True, text=True, cwd=ROOT)
            results[(graph, pattern)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (graph, pattern), runs in results.items():
        row = {"graph": graph, "memory_pattern": pattern, "side": args.side,
               "processes": len(runs),
               "call_s": [statistics.median(r["seconds"][i] for r in runs)
                          for i in range(args.calls)],
               "peak_growth_bytes": [max(r["peak_growth_bytes"][i] for r in runs)
                                     for i in range(args.calls)],
               "input_bytes": runs[0]["input_bytes"]}
        rows.append(row)
        print(f"{graph:12s} pattern {'on ' if pattern else 'off'} {args.side}x{args.side}: calls "
              + ", ".join(f"{s:.2f}" for s in row["call_s"]) + " s; peak growth after each "
              + ", ".join(f"{b / 2 ** 30:.2f}" for b in row["peak_growth_bytes"])
              + f" GiB (input {row['input_bytes'] / 2 ** 20:.0f} MiB)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

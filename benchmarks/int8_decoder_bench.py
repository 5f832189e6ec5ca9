"""The int8 decoder graph against the fp32 decoder graph on one engine (ONNX Runtime, CPU), in
one run (not a test; the numbers go to docs by hand).

Both graphs come from bundles made by `vqrt build` (read with the runtime's bundle reader): an
fp32 bundle and an int8 bundle built with --calibration-data from the same checkpoint. Each
measurement decodes one batch of code grids of --size pixels (default 256x256; the tiled
1024x1024 path is not measured here). The two sessions run interleaved, their order swapped
every repeat, so machine noise hits them alike; reported: median and p10/p90 latency of each,
and the fp32 / int8 ratio of the medians measured in this run (the issue's target: 1.5x).

    .venv/bin/python benchmarks/int8_decoder_bench.py --fp32 build/int8/fp32 \
        --int8 build/int8/int8 [--size 256] [--batch 1] [--repeats 20] [--threads 0]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnxruntime as ort

from vqrt.runtime.bundle import load_bundle


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return " ".join(f for f in wanted if f" {f}" in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", required=True, help="an fp32 bundle")
    parser.add_argument("--int8", required=True, help="an int8 bundle (--calibration-data)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads, 0 = all")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    bundles = {"fp32": load_bundle(args.fp32), "int8": load_bundle(args.int8)}
    for name, bundle in bundles.items():
        precision = bundle.manifest.graphs["decoder"].precision
        if precision != name:
            parser.error(f"--{name} {bundle.path}: its decoder graph is {precision}")
    first_stage = bundles["fp32"].manifest.first_stage
    f = first_stage.downsampling_factor
    if args.size % f:
        parser.error(f"--size {args.size} is not a multiple of the downsampling factor {f}")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, first_stage.codebook_size,
                         (args.batch, args.size // f, args.size // f)).astype(np.int64)
    sessions = {name: _session(b.graph_path("decoder"), args.threads)
                for name, b in bundles.items()}
    outputs = {name: s.run(None, {"indices": codes})[0] for name, s in sessions.items()}
    for _ in range(args.warmup - 1):
        for s in sessions.values():
            s.run(None, {"indices": codes})
    times: Dict[str, List[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for repeat in range(args.repeats):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            sessions[name].run(None, {"indices": codes})
            times[name].append(time.perf_counter() - start)

    pixels = lambda x: np.clip((x.astype(np.float64) + 1) / 2, 0, 1)  # noqa: E731
    mse = float(np.mean((pixels(outputs["fp32"]) - pixels(outputs["int8"])) ** 2))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "engine": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "cpu": f"{platform.processor() or platform.machine()} ({_cpu_flags()})",
        "threads": args.threads, "size": args.size, "batch": args.batch,
        "repeats": args.repeats,
        "median_ms": {k: v * 1e3 for k, v in medians.items()},
        "p10_ms": {k: _percentile(v, 10) * 1e3 for k, v in times.items()},
        "p90_ms": {k: _percentile(v, 90) * 1e3 for k, v in times.items()},
        "speedup_fp32_over_int8": medians["fp32"] / medians["int8"],
        "psnr_db_random_codes": 10 * np.log10(1 / mse) if mse > 0 else float("inf"),
    }
    print(f"decoder {args.size}x{args.size}, batch {args.batch}, {result['engine']}, "
          f"threads {args.threads or 'all'}, {args.repeats} interleaved repeats")
    for name in sessions:
        print(f"  {name:<5} median {result['median_ms'][name]:8.2f} ms   p10 "
              f"{result['p10_ms'][name]:8.2f}   p90 {result['p90_ms'][name]:8.2f}")
    print(f"  fp32 / int8 = {result['speedup_fp32_over_int8']:.2f}x  (target 1.5x); int8 vs fp32 "
          f"PSNR on these random codes {result['psnr_db_random_codes']:.1f} dB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

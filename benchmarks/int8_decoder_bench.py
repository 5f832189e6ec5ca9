"""The int8 decoder against fp32 and bf16 decoders, through the runtime's decoder
(runtime/tiled_decode.py: the whole-image graph or tiles, as its plan chooses), in one run (not
a test; the numbers go to BENCHMARKS.md by hand).

Contenders, each a (bundle, engine) pair the runtime ships:
  onnxruntime fp32   the fp32 bundle on ONNX Runtime (fp32 bundles' default)
  onnxruntime int8   the int8 bundle (`vqrt build --precision int8 --calibration-data`) on
                     ONNX Runtime (int8 bundles' default): QDQ graphs, tiles included
  openvino bf16      the fp32 bundle's graphs on OpenVINO with bf16 arithmetic (bf16 bundles'
                     default; the best bf16 path measured here, BENCHMARKS.md)
  openvino int8      the int8 bundle on OpenVINO
Per size, the contenders run interleaved (order reversed every repeat) on one random code grid;
reported: medians, p10/p90, the int8 / fp32 ratio per engine (issue 9's target: 1.5x) and the
int8 against the fastest bf16 contender, and each contender's PSNR against onnxruntime fp32's
pixels (random codes on random weights: a sanity figure; the quality on real photos is the
build's report).

    .venv/bin/python benchmarks/int8_decoder_bench.py --fp32 build/bench/decoder/bundle \\
        --int8 build/bench/decoder/bundle-int8 --sizes 256,1024 [--repeats 2,5] [--tile N]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.tiled_decode import TiledDecoder

CONTENDERS = {  # name -> (bundle flag, engine)
    "onnxruntime fp32": ("fp32", "onnxruntime"),
    "onnxruntime int8": ("int8", "onnxruntime"),
    "openvino bf16": ("fp32", "openvino"),
    "openvino int8": ("int8", "openvino"),
}


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return " ".join(f for f in wanted if f" {f}" in flags)


def _psnr(x: np.ndarray, reference: np.ndarray) -> float:
    pixels = lambda a: np.clip((a.astype(np.float64) + 1) / 2, 0, 1)  # noqa: E731
    mse = float(np.mean((pixels(x) - pixels(reference)) ** 2))
    return 10 * np.log10(1 / mse) if mse > 0 else float("inf")


def _measure(decoders: Dict[str, TiledDecoder], codes: np.ndarray, tile, repeats: int) -> Dict:
    outputs = {name: d.decode(codes, tile=tile) for name, d in decoders.items()}  # warm-up
    times: Dict[str, List[float]] = {name: [] for name in decoders}
    order = list(decoders)
    for repeat in range(repeats):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            decoders[name].decode(codes, tile=tile)
            times[name].append(time.perf_counter() - start)
    batch, h, w = codes.shape
    plan = next(iter(decoders.values())).plan(batch, h, w, tile)
    reference = outputs["onnxruntime fp32"]
    return {
        "plan": plan.describe() + ("" if plan.tiles is None else f", {plan.storage} buffers"),
        "repeats": repeats,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "p10_s": {k: float(np.percentile(v, 10)) for k, v in times.items()},
        "p90_s": {k: float(np.percentile(v, 90)) for k, v in times.items()},
        "psnr_db_vs_onnxruntime_fp32": {k: _psnr(v, reference) for k, v in outputs.items()
                                        if k != "onnxruntime fp32"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", required=True, help="an fp32 bundle")
    parser.add_argument("--int8", required=True, help="an int8 bundle of the same checkpoint")
    parser.add_argument("--sizes", default="256,1024", help="image sides in pixels")
    parser.add_argument("--repeats", default="10,2", help="repeats per size (one, or one each)")
    parser.add_argument("--tile", type=int, help="tile side in latent positions (default: the "
                        "runtime's plan)")
    parser.add_argument("--threads", type=int, default=2, help="threads per contender")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    bundles = {"fp32": load_bundle(args.fp32), "int8": load_bundle(args.int8)}
    for name, bundle in bundles.items():
        precision = bundle.manifest.graphs["decoder"].precision
        if precision != name:
            parser.error(f"--{name} {bundle.path}: its decoder graph is {precision}")
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = [int(r) for r in args.repeats.split(",")]
    repeats = repeats * len(sizes) if len(repeats) == 1 else repeats
    first_stage = bundles["fp32"].manifest.first_stage
    f = first_stage.downsampling_factor
    decoders = {name: TiledDecoder(bundles[which], ("CPUExecutionProvider",), "cpu",
                                   args.threads, engine)
                for name, (which, engine) in CONTENDERS.items()}
    import onnxruntime
    import openvino
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": f"{platform.processor() or platform.machine()} ({_cpu_flags()})",
        "engines": f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}",
        "threads": args.threads, "fp32": str(args.fp32), "int8": str(args.int8), "sizes": {},
    }
    rng = np.random.default_rng(0)
    for size, count in zip(sizes, repeats):
        if size % f:
            parser.error(f"size {size} is not a multiple of the downsampling factor {f}")
        codes = rng.integers(0, first_stage.codebook_size, (1, size // f, size // f))
        r = _measure(decoders, codes.astype(np.int64), args.tile, count)
        m = r["median_s"]
        bf16 = min((k for k in m if "bf16" in k), key=m.get)
        r["int8_over_fp32_same_engine"] = {
            "onnxruntime": m["onnxruntime fp32"] / m["onnxruntime int8"],
            "openvino (bf16 arithmetic)": m["openvino bf16"] / m["openvino int8"]}
        r["int8_over_best_bf16"] = {k: m[bf16] / m[k] for k in m if "int8" in k}
        result["sizes"][f"{size}x{size}"] = r
        print(f"{size}x{size}: {r['plan']}, {count} interleaved repeats, {args.threads} threads")
        for name in m:
            psnr = r["psnr_db_vs_onnxruntime_fp32"].get(name)
            print(f"  {name:<17} median {m[name]:8.3f} s  p10 {r['p10_s'][name]:8.3f}  p90 "
                  f"{r['p90_s'][name]:8.3f}" + ("" if psnr is None else f"  {psnr:5.1f} dB"))
        print(f"  int8 / fp32, onnxruntime: {r['int8_over_fp32_same_engine']['onnxruntime']:.2f}x"
              f" (target 1.5x); int8 over the fastest bf16 ({bf16}): " + ", ".join(
                  f"{k} {v:.2f}x" for k, v in r["int8_over_best_bf16"].items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Which int8 decoder recipe to ship: quality and speed of the variants, measured in one run.

For one checkpoint and one image folder (the calibration and held-out split of
vqrt.calibration.data), the fp32 decoder graph is calibrated once per method (entropy,
percentile, minmax), then quantized with each set of node groups kept fp32 (none, the last
conv, the last conv + attention products) and each activation type. Each variant: PSNR and
SSIM against the fp32 graph on the held-out images' codes, and its latency against fp32 at
--size (medians of interleaved repeats, ONNX Runtime CPU). The shipped recipe
(export/quantize_vqgan.RECIPE) was chosen from this table; docs/ARCHITECTURE.md has it.

    .venv/bin/python benchmarks/int8_recipe_sweep.py models/demo/transformer \
        --data ../shared/data/images [--count 64] [--size 256] [--repeats 10]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vqrt.calibration.data import build_calibration_set, encode_images, load_square_images
from vqrt.calibration.quality import image_checks, run_graph
from vqrt.export.onnx_builder import save_graph
from vqrt.export.onnx_vqgan import decoder_graph
from vqrt.export.quantize_vqgan import Recipe, calibrate, quantize
from vqrt.trainer.checkpoints import load_checkpoint

KEEP_SETS = ((), ("last_conv",), ("last_conv", "attention"))


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(paths, codes, repeats: int, threads: int):
    sessions = [_session(p, threads) for p in paths]
    for s in sessions:
        s.run(None, {"indices": codes})
    times = [[] for _ in sessions]
    for repeat in range(repeats):
        order = range(len(sessions)) if repeat % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            start = time.perf_counter()
            sessions[i].run(None, {"indices": codes})
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--methods", default="percentile,entropy,minmax")
    parser.add_argument("--activations", default="uint8")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))

    loaded = load_checkpoint(args.checkpoint)
    calibration = build_calibration_set(loaded, args.data, args.count)
    print(calibration.describe())
    vq = loaded.first_stage
    f = vq.cfg.ddconfig.downsampling_factor
    codes = np.random.default_rng(0).integers(
        0, vq.cfg.n_embed, (1, args.size // f, args.size // f)).astype(np.int64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vqrt-sweep-") as tmp:
        fp32 = Path(tmp) / "decoder.onnx"
        save_graph(decoder_graph(vq, np.float32), fp32)
        reference = run_graph(fp32, "indices", calibration.held_out_latents)
        # The same held-out photos at --size: attention spans more positions there than at
        # the training size the ranges were calibrated at.
        selection = calibration.selection
        large_codes = encode_images(loaded, load_square_images(selection.root,
                                                               selection.held_out, args.size))
        large_reference = run_graph(fp32, "indices", large_codes)
        for method in args.methods.split(","):
            cache = Path(tmp) / f"{method}.json"
            start = time.perf_counter()
            calibrate(fp32, "indices", calibration.decoder_latents, method, cache)
            seconds = time.perf_counter() - start
            for keep, activation in itertools.product(KEEP_SETS, args.activations.split(",")):
                recipe = Recipe(method=method, keep_fp32=keep, activation_type=activation)
                out = Path(tmp) / f"{method}-{'-'.join(keep) or 'none'}-{activation}.onnx"
                quantize(fp32, out, cache, recipe)
                psnr, ssim = image_checks(reference, run_graph(out, "indices",
                                                               calibration.held_out_latents))
                large_psnr = image_checks(large_reference,
                                          run_graph(out, "indices", large_codes))[0].value
                fp32_ms, int8_ms = _median_ms([fp32, out], codes, args.repeats, args.threads)
                row = {"method": method, "keep_fp32": list(keep), "activation": activation,
                       "psnr_db": psnr.value, "ssim": ssim.value, "detail": psnr.detail,
                       f"psnr_db_{args.size}": large_psnr,
                       "fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms,
                       "calibration_s": seconds}
                rows.append(row)
                print(f"{method:<10} keep {'+'.join(keep) or '-':<20} {activation:<5} "
                      f"PSNR {psnr.value:6.2f} dB (at {args.size}: {large_psnr:6.2f})  "
                      f"SSIM {ssim.value:.4f}  "
                      f"fp32 {fp32_ms:7.1f} ms  int8 {int8_ms:7.1f} ms  "
                      f"{fp32_ms / int8_ms:.2f}x  ({psnr.detail})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The image decoder on this CPU (issue 6): the runtime's tiled decoder against the upstream-style
torch fp32 decoder and the peers a user would pick, on upstream's ImageNet VQGAN shape (ch 128,
ch_mult [1, 1, 2, 2, 4], 2 res blocks, attention at 16, random weights); then the memory and
time of tiled against untiled decoding of a 64x64 latent (1024x1024), and a 2048x2048 decode
under an 8 GiB budget. Not a test: the numbers go to BENCHMARKS.md by hand.

    .venv/bin/python benchmarks/decoder_bench.py [--sizes 256,512] [--repeat 3]
                     [--json benchmarks/results/decoder.json]

Speed: each contender decodes the same random code grid; medians over --repeat runs after one
warm-up, contenders interleaved. Quality: PSNR of each contender's pixels (upstream's
conversion to uint8) against torch fp32's. Memory: each configuration runs in a fresh process;
its figure is the growth of peak RSS during the decode over the RSS after loading (the kernel's
high-water mark VmHWM, reset through /proc/self/clear_refs before the decode; ru_maxrss would
carry the parent's peak across exec).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "build" / "bench" / "decoder"


def make_bundle() -> Path:
    """A first-stage bundle of a random ImageNet-shaped VQGAN (upstream .ckpt + YAML), built
    for images up to 2048x2048."""
    bundle = WORK / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    import torch
    import yaml
    from bench_suite import IMAGENET_VQGAN
    from vqrt.trainer.model_config import parse_model_config
    from vqrt.trainer.models.vqgan import VQModel
    config = {"target": "taming.models.vqgan.VQModel", "params": IMAGENET_VQGAN}
    torch.manual_seed(0)
    model = VQModel(parse_model_config(config).config)
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, WORK / "vqgan.ckpt")
    (WORK / "vqgan.yaml").write_text(yaml.safe_dump({"model": config}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "vqrt", "build", str(WORK / "vqgan.ckpt"), "--config",
                    str(WORK / "vqgan.yaml"), "-o", str(bundle), "--max-size", "2048x2048",
                    "--max-batch", "1", "--force"], check=True, cwd=ROOT)
    return bundle


def contenders(bundle: Path, threads: int) -> Dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> decode(codes int64 [1, h, w]) -> float32 [1, 3, H, W]."""
    import torch
    from vqrt.runtime.bundle import load_bundle
    from vqrt.runtime.onnx_sessions import open_session
    from vqrt.runtime.tiled_decode import TiledDecoder
    from vqrt.trainer.checkpoints import load_checkpoint
    torch.set_num_threads(threads)
    vq = load_checkpoint(WORK / "vqgan.ckpt", WORK / "vqgan.yaml").first_stage.eval()

    def torch_decoder(dtype):
        def decode(codes):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=dtype == torch.bfloat16):
                quant = vq.quantize.embedding(torch.from_numpy(codes)).permute(0, 3, 1, 2)
                return vq.decoder(vq.post_quant_conv(quant)).float().numpy()
        return decode

    cpu = ("CPUExecutionProvider",)
    whole = open_session(bundle / "decoder.onnx", cpu, "cpu", threads)
    loaded = load_bundle(bundle)
    found = {"torch fp32 (upstream-style)": torch_decoder(torch.float32),
             "torch bf16 (autocast)": torch_decoder(torch.bfloat16),
             "onnxruntime fp32 (whole graph)": lambda c: whole.run(None, {"indices": c})[0]}
    try:
        import openvino
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(bundle / "decoder.onnx")), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads})
        output = compiled.output(0)
        found["openvino bf16 (whole graph)"] = lambda c: np.array(compiled({"indices": c})[output])
    except ImportError:
        print("openvino not installed: its contenders are skipped")
    # The runtime's decoder as Generator runs it (its default plan: the whole-image graph for
    # these sizes), and forced into tiles of 8 latent positions (128 px at full resolution).
    ort_decoder = TiledDecoder(loaded, cpu, "cpu", threads)
    found["vqrt decoder, onnxruntime fp32"] = ort_decoder.decode
    found["vqrt decoder, onnxruntime fp32, tile 8"] = lambda c: ort_decoder.decode(c, 8)
    if "openvino bf16 (whole graph)" in found:
        ov_decoder = TiledDecoder(loaded, cpu, "cpu", threads, engine="openvino")
        found["vqrt decoder, openvino bf16"] = ov_decoder.decode
        found["vqrt decoder, openvino bf16, tile 8"] = lambda c: ov_decoder.decode(c, 8)
    return found


def _pixels(x: np.ndarray) -> np.ndarray:
    from vqrt.runtime.first_stage import to_pixels
    return to_pixels(x).astype(np.float64)


def speed(bundle: Path, sizes: List[int], repeat: int, threads: int) -> List[Dict]:
    decoders = contenders(bundle, threads)
    rows = []
    for size in sizes:
        latent = size // 16
        codes = np.random.default_rng(size).integers(0, 1024, (1, latent, latent))
        reference = None
        times: Dict[str, List[float]] = {name: [] for name in decoders}
        outputs = {}
        for name, decode in decoders.items():  # warm-up, and the outputs for PSNR
            outputs[name] = decode(codes)
        reference = _pixels(outputs["torch fp32 (upstream-style)"])
        for _ in range(repeat):
            for name, decode in decoders.items():
                started = time.perf_counter()
                decode(codes)
                times[name].append(time.perf_counter() - started)
        base = statistics.median(times["torch fp32 (upstream-style)"])
        for name in decoders:
            median = statistics.median(times[name])
            mse = np.mean((_pixels(outputs[name]) - reference) ** 2)
            psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
            rows.append({"size": size, "contender": name, "median_s": median,
                         "min_s": min(times[name]), "max_s": max(times[name]),
                         "speedup_vs_torch_fp32": base / median, "psnr_vs_torch_fp32_db": psnr})
            print(f"{size}x{size}  {name:34s} {median * 1e3:9.0f} ms  x{base / median:5.2f}  "
                  f"PSNR {psnr:6.1f} dB", flush=True)
    return rows


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(bundle: str, latent: int, tile: int, budget: str, engine: str,
                  threads: int) -> None:
    """Runs in a fresh process: one decode; prints JSON with time and peak-RSS growth.
    engine "torch": the upstream-style torch fp32 decoder (untiled)."""
    codes = np.random.default_rng(latent).integers(0, 1024, (1, latent, latent))
    plan = None
    if engine == "torch":
        import torch
        from vqrt.trainer.checkpoints import load_checkpoint
        torch.set_num_threads(threads)
        vq = load_checkpoint(WORK / "vqgan.ckpt", WORK / "vqgan.yaml").first_stage.eval()

        def decode():
            with torch.no_grad():
                quant = vq.quantize.embedding(torch.from_numpy(codes)).permute(0, 3, 1, 2)
                return vq.decoder(vq.post_quant_conv(quant)).numpy()
    else:
        from vqrt.runtime.bundle import load_bundle
        from vqrt.runtime.tiled_decode import TiledDecoder
        decoder = TiledDecoder(load_bundle(bundle), ("CPUExecutionProvider",), "cpu", threads,
                               engine=engine)
        max_memory = int(float(budget) * 2 ** 30) if budget else None
        plan = decoder.plan(1, latent, latent, tile or None, max_memory)
        decode = lambda: decoder.decode(codes, tile or None, max_memory)  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _status_bytes("VmRSS")
    started = time.perf_counter()
    decode()
    elapsed = time.perf_counter() - started
    after = _status_bytes("VmHWM")
    print(json.dumps({"seconds": elapsed, "peak_growth_bytes": after - before,
                      "peak_rss_bytes": after,
                      "plan": "torch" if plan is None else plan.describe(),
                      "storage": None if plan is None else plan.storage.name,
                      "planned_peak_bytes": None if plan is None else plan.peak_bytes}))


def _run_child(bundle: Path, run, threads: int) -> Dict:
    """One memory configuration (image, latent, tile, budget, engine) in a fresh process."""
    _, latent, tile, budget, engine = run
    out = subprocess.run([sys.executable, __file__, "--child", str(bundle), str(latent),
                          str(tile), budget, engine, str(threads)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(bundle: Path, threads: int, big: bool, repeat: int) -> List[Dict]:
    """Each configuration `repeat` times, in fresh processes, the configurations interleaved
    (so machine noise hits them alike); rows hold the median time and the largest peak."""
    # (image, latent, tile (0: the plan's choice), budget GiB, engine); tile 64 = untiled.
    runs = [("1024x1024", 64, 64, "", "onnxruntime"),
            ("1024x1024", 64, 0, "", "onnxruntime"),
            ("1024x1024", 64, 16, "", "onnxruntime"),
            ("1024x1024", 64, 0, "0.6", "onnxruntime"),  # smaller tiles to fit
            ("1024x1024", 64, 0, "", "torch")]
    results: Dict[int, List[Dict]] = {i: [] for i in range(len(runs))}
    for _ in range(repeat):
        for i, run in enumerate(runs):
            results[i].append(_run_child(bundle, run, threads))
    if big:  # once: two minutes
        runs.append(("2048x2048", 128, 0, "8", "onnxruntime"))
        results[len(runs) - 1] = [_run_child(bundle, runs[-1], threads)]
    rows = []
    for i, (label, latent, tile, budget, engine) in enumerate(runs):
        runs_of = results[i]
        result = dict(runs_of[0])
        result.update({"image": label, "engine": engine, "budget_gib": budget or None,
                       "requested_tile": tile or None, "runs": len(runs_of),
                       "seconds": statistics.median(r["seconds"] for r in runs_of),
                       "seconds_each": [r["seconds"] for r in runs_of],
                       "peak_growth_bytes": max(r["peak_growth_bytes"] for r in runs_of),
                       "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs_of)})
        rows.append(result)
        print(f"{label} {engine:11s} {result['plan']}, {result['storage']} buffers, budget "
              f"{budget or '-'}: {result['seconds']:7.1f} s (median of {len(runs_of)}), peak "
              f"growth {result['peak_growth_bytes'] / 2 ** 30:6.2f} GiB (planned "
              f"{(result['planned_peak_bytes'] or 0) / 2 ** 30:.2f}; peak RSS "
              f"{result['peak_rss_bytes'] / 2 ** 30:.2f} GiB)", flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                      sys.argv[6], int(sys.argv[7]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-repeat", type=int, default=3,
                        help="fresh-process runs of each memory configuration, interleaved")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip", default="", help="comma-separated: speed, memory, 2048")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/decoder.json")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    bundle = make_bundle()
    doc = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "threads": args.threads,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "speed" not in skip:
        doc["speed"] = speed(bundle, [int(s) for s in args.sizes.split(",")], args.repeat,
                             args.threads)
    if "memory" not in skip:
        doc["memory"] = memory(bundle, args.threads, "2048" not in skip, args.memory_repeat)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

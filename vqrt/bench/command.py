"""`vqrt bench BUNDLE...`: the command line over suite.py, baselines.py and report.py.

At import this module needs only argparse (vqrt.cli builds its parser from here and must stay
free of numpy and torch); `run_bench` imports the rest when the command runs. Expected problems
are BenchError, RequestError or BundleError with one line; vqrt.cli prints them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

BACKENDS = ("native", "onnxruntime")
DEFAULT_REPEAT = 5
DEFAULT_WARMUP = 1


def add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("bundles", nargs="+", metavar="BUNDLE",
                       help="bundle directories of one model (e.g. its fp32, bf16 and int8 "
                            "builds), measured in one run")
    bench.add_argument("--backend", action="append", choices=BACKENDS, dest="backends",
                       help="measure this backend (repeatable; default: every backend each "
                            "bundle has)")
    bench.add_argument("--batch", metavar="B,B,...",
                       help="batch sizes, comma-separated (default: 1 and the bundle's max "
                            "batch)")
    bench.add_argument("--tokens", type=int, metavar="N",
                       help="image tokens drawn per row (default: the whole grid)")
    bench.add_argument("--size", metavar="WxH",
                       help="image size in pixels (default: the training size)")
    bench.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="R",
                       help=f"timed repeats of every measurement (default {DEFAULT_REPEAT})")
    bench.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="W",
                       help=f"untimed repeats first (default {DEFAULT_WARMUP})")
    bench.add_argument("--baselines", action="store_true",
                       help="also measure the torch baselines (upstream sampler, static-cache "
                            "bf16 sampler, VQGAN decoder) and ONNX Runtime fp32 and int8 "
                            "(needs the train extra)")
    bench.add_argument("--checkpoint", metavar="CKPT",
                       help="the torch model for --baselines (default: the checkpoint the "
                            "bundle's model card names)")
    bench.add_argument("--config", metavar="YAML", help="its config, as for `vqrt inspect`")
    bench.add_argument("--torch-compile", action="store_true",
                       help="torch.compile the static-cache sampler's step (minutes on a CPU)")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where ONNX Runtime graphs run (default auto)")
    bench.add_argument("--threads", type=int, default=0, metavar="N",
                       help="threads of the native decoder, the sampler and ONNX Runtime "
                            "(default 0: one per core)")
    bench.add_argument("--json", metavar="OUT.json", help="write every figure as JSON")
    bench.add_argument("--plot", metavar="OUT.png",
                       help="tokens/s against batch and latency per stage (needs matplotlib)")


def parse_batches(text: Optional[str]) -> Optional[List[int]]:
    """"1,4,16" -> [1, 4, 16] (sorted, unique); None stays None."""
    if text is None:
        return None
    from vqrt.bench.suite import BenchError
    try:
        batches = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise BenchError(f"--batch must be positive integers separated by commas, e.g. 1,4,16; "
                         f"got {text!r}") from None
    if batches[0] < 1:
        raise BenchError(f"--batch sizes must be at least 1, got {text!r}")
    return batches


def _check_options(args: argparse.Namespace) -> None:
    from vqrt.bench.suite import BenchError
    if args.repeat < 1:
        raise BenchError(f"--repeat must be at least 1, got {args.repeat}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be at least 0, got {args.warmup}")
    if args.tokens is not None and args.tokens < 1:
        raise BenchError(f"--tokens must be at least 1, got {args.tokens}")
    if args.threads < 0:
        raise BenchError(f"--threads must be at least 0 (0 = one per core), got {args.threads}")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise BenchError(f"{option} {path}: the folder {Path(path).parent} does not exist")
    if args.plot is not None:
        if Path(args.plot).suffix.lower() != ".png":
            raise BenchError(f"--plot {args.plot}: the file name must end in .png")
        if importlib.util.find_spec("matplotlib") is None:  # checked before the run
            raise BenchError("--plot needs matplotlib: pip install matplotlib")
    if (args.checkpoint or args.config or args.torch_compile) and not args.baselines:
        raise BenchError("--checkpoint, --config and --torch-compile apply to --baselines only")


def _import_baselines():
    from vqrt.bench.suite import BenchError
    try:
        from vqrt.bench import baselines
    except ModuleNotFoundError as e:
        raise BenchError(f"--baselines needs the train extra (missing {e.name}): "
                         "pip install 'vqrt[train]'") from e
    return baselines


def _same_model(bundles) -> None:
    from vqrt.bench.suite import BenchError
    for bundle in bundles:
        if bundle.manifest.kind != "net2net":
            raise BenchError(f"{bundle.path}: a first stage alone (kind vqgan) has no "
                             "transformer to benchmark")
    first = bundles[0].manifest
    for other in bundles[1:]:
        m = other.manifest
        if (m.transformer, m.first_stage, m.conditioning) != (
                first.transformer, first.first_stage, first.conditioning):
            raise BenchError(f"{other.path} and {bundles[0].path} hold different models: one "
                             "run compares builds of one model")


def _generators(bundles, backends, device: str, threads: int):
    """One Generator per (bundle, backend) asked for and present."""
    from vqrt.bench.suite import BenchError
    from vqrt.runtime import Generator
    made = []
    for bundle in bundles:
        for backend in bundle.manifest.backends:
            if backend in BACKENDS and (not backends or backend in backends):
                made.append(Generator(bundle.path, backend, device=device, num_threads=threads))
    if not made:
        have = sorted({b for bundle in bundles for b in bundle.manifest.backends})
        raise BenchError(f"no bundle has backend {' or '.join(backends)} (they have "
                         f"{', '.join(have)})")
    return made


def _workload(bundle, size, tokens: Optional[int], device: str, threads: int):
    from vqrt.bench.suite import (TOP_K, BenchError, PrefixTokens, Workload,
                                  conditioning_inputs)
    m = bundle.manifest
    f = m.first_stage.downsampling_factor
    grid = tuple(m.first_stage.training_grid) if size is None else (size[1] // f, size[0] // f)
    total = grid[0] * grid[1]
    if tokens is not None and tokens > total:
        raise BenchError(f"--tokens {tokens} exceeds the {grid[0]}x{grid[1]} grid's {total} "
                         "tokens")
    draft = Workload(grid=grid, tokens=tokens or total, prefix_length=0, size=size,
                     top_k=min(TOP_K, m.first_stage.codebook_size),
                     inputs=conditioning_inputs(bundle, size),
                     block_size=m.transformer.block_size)
    prefix = PrefixTokens(bundle, draft, device, threads)
    workload = dataclasses.replace(draft, prefix_length=prefix(1).shape[1])
    return workload, prefix


def run_bench(args: argparse.Namespace, size: Optional[Tuple[int, int]]) -> int:
    from vqrt.bench import report
    from vqrt.bench.measure import DeviceMemoryPeak, ProgressBar, read_bandwidth
    from vqrt.bench.suite import (BenchError, GeneratorContender, Meters, bench_document,
                                  machine_info, measure_each_decoder_once, run_suite)
    from vqrt.runtime.bundle import load_bundle
    _check_options(args)
    batches = parse_batches(args.batch)
    baselines = _import_baselines() if args.baselines else None
    bundles = [load_bundle(path) for path in args.bundles]
    _same_model(bundles)
    first = bundles[0]
    batches = batches or sorted({1, first.manifest.limits.max_batch})
    workload, prefix = _workload(first, size, args.tokens, args.device, args.threads)
    if baselines is not None and workload.windowed:
        raise BenchError(f"--baselines needs a grid within the transformer's block of "
                         f"{workload.block_size} positions; {workload.grid[0]}x"
                         f"{workload.grid[1]} after {workload.prefix_length} prefix token(s) "
                         "is sampled through sliding windows, which no baseline implements")
    backends = set(args.backends or ())
    if baselines is not None and backends and "onnxruntime" not in backends:
        backends.add("onnxruntime")  # the fp32 graph peer of issue 5
    generators = _generators(bundles, backends, args.device, args.threads)
    contenders = [GeneratorContender(g, workload) for g in generators]
    names = [c.name for c in contenders]
    for contender in contenders:
        if names.count(contender.name) > 1:  # two builds of one precision: name the folders
            contender.name += f" ({Path(contender.source).name})"
        contender.check(batches[-1])
    decoders, notes = [], measure_each_decoder_once(contenders)
    with contextlib.ExitStack() as stack:
        if baselines is not None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vqrt-bench-")))
            # the ONNX Runtime int8 peer quantizes the graphs of the first bundle that has them
            source = next((b for b in bundles if "transformer_step" in b.manifest.graphs), first)
            model = baselines.load_torch_model(source, args.checkpoint, args.config)
            more, decoders, baseline_notes = baselines.baselines(
                source, model, workload, prefix, batches[-1], args.torch_compile, scratch,
                args.device, args.threads)
            contenders += more
            notes += baseline_notes
        on_device = any(c.on_device for c in contenders)
        meters = Meters(DeviceMemoryPeak.open() if on_device else None)
        notes.append("peak MB: the process's peak resident memory during each run, every "
                     "contender's weights resident at once" if meters.host.resettable else
                     "peak MB: ru_maxrss, the process's peak so far (it only grows): later rows "
                     "include earlier ones")
        if workload.tokens < workload.grid[0] * workload.grid[1]:
            notes.append(f"--tokens {workload.tokens}: a partial grid; the image decode runs "
                         "on the whole grid with the undrawn tokens set to 0")
        print(f"vqrt bench: {len(contenders)} samplers{' + the torch decoder' if decoders else ''}"
              f" x batch {', '.join(map(str, batches))} x {args.warmup} + {args.repeat} repeats; "
              "measuring the read bandwidth first", file=sys.stderr, flush=True)
        bandwidth = read_bandwidth(os.cpu_count() or 1)
        progress = ProgressBar((args.warmup + args.repeat) * len(batches)
                               * (len(contenders) + len(decoders)))
        results = run_suite(contenders, decoders, batches, workload.tokens, args.repeat,
                            args.warmup, meters, progress)
    settings = {"bundles": [str(b.path) for b in bundles], "batches": batches,
                "size": list(size) if size else None, "repeat": args.repeat,
                "warmup": args.warmup, "device": args.device, "threads": args.threads,
                "baselines": args.baselines}
    doc = bench_document(settings=settings, bundle=first, workload=workload,
                         contenders=contenders, decoders=decoders, results=results,
                         bandwidth=bandwidth, machine=machine_info(), notes=notes)
    print(report.format_text(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"\nvqrt bench: wrote {args.json}")
    if args.plot:
        report.plot(doc, Path(args.plot))
        print(f"vqrt bench: wrote {args.plot}")
    return 0

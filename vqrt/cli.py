"""The `vqrt` command line.

One function per subcommand (`run_<name>(args) -> int`), registered in `build_parser`. Expected
user errors (a missing file, a file that is not a checkpoint, a config that does not match the
weights, a missing optional dependency) are raised as CommandError and printed as one line,
`vqrt: error: <message>`, with exit code 2 (so are argparse's usage errors, without the usage
block); `--debug` prints the traceback as well. So is an
OSError for a full disk, a quota, a read-only file system or a file the user may not read or
write. Anything else is a bug and keeps its traceback. A TERM (timeout, docker stop, a CI
cancel) is handled as a Ctrl-C: what was being written is cleaned up, exit 143. A reader that
closes stdout early (`vqrt build ... | head -1`) never fails the work: what is printed after that
is dropped.

This module imports neither torch nor numpy: commands import what they need when they run, so
`vqrt --help` works on a runtime-only install.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional

EXIT_OK = 0
EXIT_USER_ERROR = 2  # also what argparse uses for bad usage
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
# OSError numbers reported in one line: no space left, quota exceeded, read-only file system.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM)

# Modules of the `train` extra; a command needing one reports how to install it.
_TRAIN_EXTRA_MODULES = ("torch", "yaml", "safetensors", "numpy", "PIL", "tqdm", "onnx")


class CommandError(Exception):
    """An expected failure with a one-line message for the user."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, like every other error (the usage block is what --help is
    for); the subcommands' parsers are of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"vqrt: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that everything that cleans up after a Ctrl-C
    (a bundle's staging folder, an image's temporary file) does so after a TERM too."""


def _raise_terminated(signum, frame) -> None:
    # The exception waits for the running native call (an ONNX Runtime decode, a TensorRT
    # build) to return; a second TERM then kills at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


class _DroppingStdout:
    """sys.stdout for a command whose reader may go away (`vqrt build ... | head -1`): after a
    broken pipe the descriptor points at /dev/null, so later output, and the flush at exit, go
    nowhere instead of failing the work in the middle."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _import_train_extra(command: str, module: str):
    """Imports `module` (which needs the train extra), or explains how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name not in _TRAIN_EXTRA_MODULES:
            raise
        raise CommandError(f"vqrt {command} needs the train extra (missing {e.name}): "
                           "pip install 'vqrt[train]'") from e


def _inspect_bundle(args: argparse.Namespace) -> int:
    """`vqrt inspect BUNDLE`: the manifest as a card (no torch needed)."""
    from vqrt.runtime.bundle import BundleError, load_bundle, manifest_json
    from vqrt.runtime.bundle_card import format_bundle
    if args.config is not None:
        raise CommandError(f"{args.path}: a bundle carries its own manifest; --config applies "
                           "to checkpoints only")
    try:
        bundle = load_bundle(args.path)
    except BundleError as e:
        raise CommandError(str(e)) from e
    from vqrt.runtime.tiled_decode import check_tiled_decoder_format
    if args.json:
        sys.stdout.write(manifest_json(bundle.manifest))
    else:
        print(format_bundle(bundle))
    try:  # the card is what the bundle says; whether this vqrt can run it is said after it
        check_tiled_decoder_format(bundle)
    except BundleError as e:
        raise CommandError(str(e)) from e
    return EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    if (Path(args.path) / "manifest.json").exists():
        return _inspect_bundle(args)
    checkpoints = _import_train_extra("inspect", "vqrt.trainer.checkpoints")
    model_card = _import_train_extra("inspect", "vqrt.trainer.model_card")
    try:
        loaded = checkpoints.load_checkpoint(args.path, config=args.config)
    except checkpoints.CheckpointError as e:
        raise CommandError(str(e)) from e
    card = model_card.model_card(loaded)
    if args.json:
        print(json.dumps(card.to_dict(), indent=2))
    else:
        print(card.format())
    return EXIT_OK


def _size_option(option: str, text: Optional[str]):
    """A WxH option in pixels (--max-size, --size) -> (width, height), or None."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match:
        raise CommandError(f"{option} must be WIDTHxHEIGHT in pixels, e.g. 512x256; got {text!r}")
    return int(match.group(1)), int(match.group(2))


_MEMORY_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _memory_option(option: str, text: Optional[str]) -> Optional[int]:
    """A byte count with an optional binary suffix (512M, 8G, 1.5G) -> bytes, or None."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise CommandError(f"{option} must be a positive size such as 512M or 8G (bytes, K, M, "
                           f"G, T; powers of 1024), got {text!r}")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).upper()])


def _decoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile", type=int, metavar="N",
                        help="decode the image in tiles of N x N latent positions (exact at any "
                             "tile; default: latents up to 32 a side whole, larger ones in "
                             "tiles sized per layer, smaller ones where --max-memory says so)")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="memory the image decoder may use, e.g. 2G; a request that cannot "
                             "fit is refused before anything is allocated")
    parser.add_argument("--decoder-engine", choices=("auto", "onnxruntime", "openvino",
                                                     "tensorrt"),
                        default="auto",
                        help="what runs the image decoder: onnxruntime (fp32), openvino (CPU, "
                             "bf16 where the CPU has it; pip install openvino), tensorrt (the "
                             "bundle's engines on the GPU, for the encoders too), or auto "
                             "(default: openvino for --precision bf16 bundles where installed)")


def _decoder_options(args: argparse.Namespace) -> dict:
    return {"tile": args.tile, "max_memory": _memory_option("--max-memory", args.max_memory),
            "decoder_engine": args.decoder_engine}


def run_build(args: argparse.Namespace) -> int:
    build = _import_train_extra("build", "vqrt.export.build")
    options = build.BuildOptions(precision=args.precision, backend=args.backend,
                                 max_batch=args.max_batch,
                                 max_size=_size_option("--max-size", args.max_size),
                                 allow_drift=args.allow_drift, force=args.force,
                                 calibration_data=args.calibration_data,
                                 calibration_count=args.calibration_count)
    try:
        manifest = build.build_bundle(args.checkpoint, args.output, options, config=args.config)
    except build.BuildError as e:
        raise CommandError(str(e)) from e
    total = sum(entry.size for entry in manifest.files)
    print(f"vqrt build: wrote {args.output} ({len(manifest.files)} files + manifest.json, "
          f"{total / 1e6:.1f} MB; backends: {', '.join(manifest.backends)})")
    return EXIT_OK


def _add_build_parser(commands) -> None:
    build = commands.add_parser(
        "build", help="turn a checkpoint into a bundle the runtime loads",
        description="Write a bundle: ONNX graphs (encoder, decoder, cond encoder, transformer "
                    "prefill and step with an in-place KV cache), native transformer weights, "
                    "TensorRT engines where asked and possible, and manifest.json with a parity "
                    "report against the torch model. The bundle appears only when complete.")
    build.add_argument("checkpoint", metavar="CKPT",
                       help="upstream Lightning .ckpt, or a vqrt checkpoint directory")
    build.add_argument("--config", metavar="YAML", help="the training config (found as for "
                                                        "`vqrt inspect` when omitted)")
    build.add_argument("-o", "--output", required=True, metavar="BUNDLE",
                       help="bundle directory to create")
    build.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default="fp32",
                       help="fp32; fp16 graphs and weights; bf16 native weights and engines "
                            "(graphs stay fp32); int8 weight-only native weights, plus int8 "
                            "encoder and decoder graphs with --calibration-data (default fp32)")
    build.add_argument("--calibration-data", metavar="DIR",
                       help="int8: a folder of JPEG/PNG photos (searched recursively) to "
                            "calibrate the int8 graphs on; held-out photos of it measure the "
                            "int8 bundle against fp32 (decoder PSNR >= 35 dB, transformer NLL "
                            "within 2%%)")
    build.add_argument("--calibration-count", type=int, metavar="N",
                       help="photos to calibrate on (default 64)")
    build.add_argument("--backend", choices=("auto", "native", "onnxruntime", "tensorrt"),
                       default="auto", help="what to build for (default auto: native weights "
                                            "and ONNX graphs, plus TensorRT engines where "
                                            "TensorRT and a GPU work)")
    build.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="largest batch the runtime accepts (default 8)")
    build.add_argument("--max-size", metavar="WxH",
                       help="largest image in pixels, multiples of the downsampling factor "
                            "(default: the training size)")
    build.add_argument("--allow-drift", action="store_true",
                       help="keep the bundle even when the parity report or the int8 "
                            "quality report fails")
    build.add_argument("--force", action="store_true",
                       help="replace an existing bundle at -o (atomically)")
    build.set_defaults(run=run_build)


def _training_errors(command: str):
    """The trainer's expected-error types (each a ValueError with a one-line message)."""
    return tuple(getattr(_import_train_extra(command, module), name) for module, name in (
        ("vqrt.trainer.checkpoints", "CheckpointError"),
        ("vqrt.trainer.model_config", "ConfigError"),
        ("vqrt.trainer.data", "DataError"),
        ("vqrt.trainer.training", "TrainingError")))


def run_train(args: argparse.Namespace) -> int:
    errors = _training_errors("train")
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "run", "debug", "stage", "resume")}
    try:
        if args.stage == "vqgan":
            stage = _import_train_extra("train", "vqrt.trainer.train_vqgan")
            run = stage.train_vqgan(given, resume=args.resume)
        else:
            stage = _import_train_extra("train", "vqrt.trainer.train_transformer")
            run = stage.train_transformer(given, resume=args.resume)
    except errors as e:
        raise CommandError(str(e)) from e
    print(f"vqrt train: done; the run is in {run}")
    return EXIT_OK


def run_eval(args: argparse.Namespace) -> int:
    errors = _training_errors("eval")
    evaluate = _import_train_extra("eval", "vqrt.trainer.evaluate")
    try:
        lpips = Path(args.perceptual_weights) if args.perceptual_weights else None
        inception = Path(args.inception_weights) if args.inception_weights else None
        evaluation = evaluate.evaluate_run(Path(args.run_dir), Path(args.data), args.size,
                                           args.val_fraction, lpips, inception)
    except errors as e:
        raise CommandError(str(e)) from e
    print(json.dumps(evaluation.to_dict(), indent=2) if args.json else evaluation.format())
    return EXIT_OK


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options both training stages share. Defaults are None: a new run takes the trainer's
    defaults, a resumed one its stored settings."""
    parser.add_argument("--out", required=True, metavar="RUN",
                        help="run folder: checkpoints, metrics.jsonl, samples/")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--data", metavar="DIR", help="image folder (searched recursively)")
    parser.add_argument("--steps", type=int,
                        help="total optimizer steps (required for a new run)")
    parser.add_argument("--batch-size", type=int, help="images per process and step (default 8)")
    parser.add_argument("--lr", type=float,
                        help="peak learning rate (vqgan: the config's base_learning_rate x "
                             "batch x processes; transformer: 3e-4)")
    parser.add_argument("--size", type=int,
                        help="training crop side in pixels (vqgan: the config's resolution; "
                             "transformer: the first stage's)")
    parser.add_argument("--seed", type=int, help="seed of weights, data order and crops (0)")
    parser.add_argument("--val-fraction", type=float,
                        help="share of files held out, chosen by a hash of each file's path "
                             "(0.1)")
    parser.add_argument("--checkpoint-every", type=int, metavar="N", help="steps (1000)")
    parser.add_argument("--sample-every", type=int, metavar="N",
                        help="steps between PNG grids and held-out numbers (500)")
    parser.add_argument("--log-every", type=int, metavar="N",
                        help="steps between metrics.jsonl lines (10)")
    parser.add_argument("--keep-checkpoints", type=int, metavar="K",
                        help="newest checkpoints kept (2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"),  # trainer.training.PRECISIONS
                        help="fp32 (default), or bf16: forward passes in bfloat16 autocast with "
                             "fp32 weights and optimizer; faster on GPUs and on CPUs with "
                             "AVX512-BF16 or AMX")


def _add_train_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="train a VQGAN or a transformer",
        description="Train a first stage (vqgan) or a transformer on its codes. Under "
                    "`torchrun --nproc_per_node=N -m vqrt train ...` the processes train "
                    "data-parallel.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    vqgan = stages.add_parser(
        "vqgan", help="stage 1: VQGAN, or a segmentation or depth cond stage",
        description="Train a VQModel (L1 + optional LPIPS + codebook + patch GAN with adaptive "
                    "weight) on photos, or on depth maps when its ddconfig.in_channels is 1 "
                    "(DIR/images + DIR/depth), or a VQSegmentationModel, as the config says.")
    _add_run_options(vqgan)
    vqgan.add_argument("--config", metavar="YAML",
                       help="upstream-style config: model.target, model.params (ddconfig, "
                            "lossconfig), model.base_learning_rate")
    vqgan.add_argument("--init-from", metavar="RUN",
                       help="start from this first stage's weights (a vqgan run, checkpoint "
                            "folder or upstream .ckpt) with a fresh optimizer; its config is "
                            "the default --config")
    vqgan.add_argument("--init-partial", action="store_true", default=None,
                       help="with --init-from and a --config of another shape (say one level "
                            "more): take the tensors whose names and shapes match, start the "
                            "rest fresh (new residual blocks as the identity)")
    vqgan.add_argument("--extra-data", action="append", metavar="DIR",
                       help="another image folder to train on (repeatable); split as --data, "
                            "its held-out files unused")
    vqgan.add_argument("--resize", type=int,
                       help="shorter image side before random cropping (default: --size)")
    vqgan.add_argument("--n-labels", type=int,
                       help="segmentation cond stage: number of labels (one-hot channels)")
    vqgan.add_argument("--restart-dead-codes", type=int, metavar="N",
                       help="every N steps, move codes no batch chose onto encoder outputs "
                            "(not upstream; default 0: off)")
    vqgan.add_argument("--lr-decay-from", type=int, metavar="STEP",
                       help="from STEP on, decay the learning rate along a cosine to 0 at "
                            "--steps (not upstream; default: constant; a resumed run may set "
                            "or change it)")
    vqgan.add_argument("--adam-betas", type=float, nargs=2, metavar=("B1", "B2"),
                       help="the autoencoder's Adam betas (default: upstream's 0.5 0.9, chosen "
                            "for the GAN term; 0.9 0.999 for a run without it)")
    # losses.PIXEL_LOSSES, spelled out: the CLI imports torch only when a command trains.
    vqgan.add_argument("--pixel-loss", choices=("l1", "log-mse"),
                       help="the reconstruction term: l1 (upstream, the default) or log-mse, "
                            "the mean per-image ln(MSE), i.e. minus the mean PSNR (not upstream)")
    vqgan.add_argument("--perceptual-weights", metavar="FILE",
                       help="LPIPS weights (upstream layout, .safetensors or torch file); "
                            "without them the perceptual term is off")
    vqgan.set_defaults(run=run_train)
    transformer = stages.add_parser(
        "transformer", help="stage 2: a GPT over a trained VQGAN's codes",
        description="Train a transformer on the codes of a frozen first stage; validation "
                    "NLL in nats per token and bits per dimension.")
    _add_run_options(transformer)
    transformer.add_argument("--first-stage", metavar="RUN", help="a vqgan run (or checkpoint)")
    transformer.add_argument("--cond", choices=("none", "class", "segmentation", "depth"),
                             help="conditioning: none, class (sub-folder names), segmentation "
                                  "or depth (DIR/images + DIR/segmentations or DIR/depth; "
                                  "needs --cond-stage)")
    transformer.add_argument("--cond-stage", metavar="RUN",
                             help="the cond stage's vqgan run, for --cond segmentation or depth")
    transformer.add_argument("--n-layer", type=int, help="transformer layers (4)")
    transformer.add_argument("--n-head", type=int, help="attention heads (4)")
    transformer.add_argument("--n-embd", type=int, help="width (256)")
    transformer.add_argument("--dropout", type=float, help="embedding/residual/attention "
                                                           "dropout (0.0)")
    transformer.add_argument("--pkeep", type=float,
                             help="share of input image tokens kept; the rest are random (1.0)")
    transformer.add_argument("--warmup-steps", type=int, help="linear warm-up steps (100)")
    transformer.add_argument("--views", type=int,
                             help="crops per training image whose codes are cached (4)")
    transformer.set_defaults(run=run_train)


def _add_eval_parser(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="measure a trained model",
        description="Reconstruction quality on the held-out images of a data folder.")
    models = evaluate.add_subparsers(dest="model", metavar="MODEL", required=True)
    vqgan = models.add_parser(
        "vqgan", help="PSNR, SSIM and codebook usage of a first stage",
        description="PSNR, SSIM, codebook usage (perplexity, dead codes), and LPIPS and rFID "
                    "when given those networks' weights, on the held-out split (the run's, by "
                    "a hash of each file's path), center crops at --size.")
    vqgan.add_argument("run_dir", metavar="RUN", help="a vqgan run or vqrt checkpoint folder")
    vqgan.add_argument("--data", required=True, metavar="DIR", help="image folder")
    vqgan.add_argument("--size", type=int,
                       help="crop side (default: the run's --resize or --size)")
    vqgan.add_argument("--val-fraction", type=float, help="default: the run's")
    vqgan.add_argument("--perceptual-weights", metavar="FILE",
                       help="LPIPS weights (as for vqrt train vqgan): also report LPIPS")
    vqgan.add_argument("--inception-weights", metavar="FILE",
                       help="FID Inception weights (pytorch-fid's pt_inception-2015-12-05 "
                            ".pth, or safetensors): also report rFID")
    vqgan.add_argument("--json", action="store_true", help="print JSON")
    vqgan.set_defaults(run=run_eval)


@contextlib.contextmanager
def _runtime_errors():
    """Bundle and request problems (one line each, naming both numbers) as CommandError."""
    from vqrt.runtime import BundleError, RequestError
    try:
        yield
    except (BundleError, RequestError) as e:
        raise CommandError(str(e)) from e


def _check_suffix(option: str, path: str, allowed) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise CommandError(f"{option} {path}: the file name must end in "
                           f"{' or '.join(allowed)} (the suffix chooses the format)")
    return suffix


def _check_outputs(outputs, inputs=()) -> None:
    """Before any work (a megapixel run takes minutes): every output can be written where it
    is named, so a command never fails after the work, nor on its second file after writing
    the first, and never overwrites its own input. outputs and inputs: (option, path) pairs,
    a path None where the option was not given."""
    for option, path in outputs:
        if not path:
            continue
        target, folder = Path(path), Path(path).parent
        if not folder.is_dir():
            raise CommandError(f"{option} {path}: the folder {folder} does not exist")
        if target.is_dir():
            raise CommandError(f"{option} {path}: is a directory; name a file")
        # Files are written to a temporary name in the folder and renamed over the target.
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CommandError(f"{option} {path}: the folder {folder} is not writable by this "
                               "user; write elsewhere")
        for input_option, input_path in inputs:
            if input_path and Path(input_path).resolve() == target.resolve():
                raise CommandError(f"{option} {path}: is also {input_option}; write the output "
                                   "to another file")


class ProgressLine:
    """Where stderr is a terminal, one line rewritten in place while tokens are sampled (a
    megapixel image at window stride 1 samples for minutes): tokens done, rate, time left.
    Elsewhere (logs, CI, pipes) nothing. At most a few updates a second."""

    def __init__(self, stream, interval_s: float = 0.25):
        self.stream, self.interval_s = stream, interval_s
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.started = self.shown = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.shown < self.interval_s and done < total):
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-9)
        left = (total - done) / rate if rate > 0 else 0.0
        message = (f"sampling: {done}/{total} tokens per row ({100 * done // max(total, 1)}%), "
                   f"{rate:.0f}/s, {left:.0f} s left" if done < total
                   else f"sampled {total} tokens per row; decoding the image")
        self.stream.write(f"\r\033[K{message}")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


ROW = "{i}"  # in -o's file name: one PNG per row, i its row (seed S + i)


def _row_paths(output: str, batch: int) -> List[str]:
    """-o's files: the one grid, or with ROW in the file name one PNG per row."""
    if ROW not in Path(output).name:
        return [output]
    return [str(Path(output).with_name(Path(output).name.replace(ROW, str(i))))
            for i in range(batch)]


def _write_outputs(paths: List[str], images, tokens_path: Optional[str], tokens) -> None:
    """All of them or, when one fails (a full disk), none: the ones written are removed."""
    from vqrt.runtime import image_io
    written: List[str] = []
    try:
        for path in paths:
            image_io.write_png(path, images if len(paths) == 1 else images[len(written)][None])
            written.append(path)
        if tokens_path:
            image_io.write_npy(tokens_path, tokens)
    except BaseException:
        for path in written:
            Path(path).unlink()
        raise


def run_generate(args: argparse.Namespace) -> int:
    from vqrt.runtime import GenerationParams, Generator, image_io
    _check_suffix("-o", args.output, (".png",))
    if args.save_tokens:
        _check_suffix("--save-tokens", args.save_tokens, (".npy",))
    if ROW in str(Path(args.output).parent):
        raise CommandError(f"-o {args.output}: {ROW} may stand in the file name only")
    _check_outputs([("-o", args.output.replace(ROW, "0")), ("--save-tokens", args.save_tokens)],
                   [("--cond", args.cond)])
    with _runtime_errors():
        params = GenerationParams(top_k=args.top_k, top_p=args.top_p,
                                  temperature=args.temperature, greedy=args.greedy,
                                  seed=args.seed, size=_size_option("--size", args.size),
                                  window_stride=args.window_stride)
        generator = Generator(args.bundle, backend=args.backend, device=args.device,
                              **_decoder_options(args))
        cond = (image_io.read_cond_map(args.cond, generator.bundle.manifest.conditioning)
                if args.cond else None)
        progress = ProgressLine(sys.stderr)
        try:
            result = generator.generate(class_labels=args.class_labels, cond=cond,
                                        batch_size=args.batch, params=params,
                                        progress=progress)
        finally:
            progress.clear()
        batch = result.images.shape[0]
        paths = _row_paths(args.output, batch)
        _check_outputs([("-o", path) for path in paths], [("--cond", args.cond)])
        _write_outputs(paths, result.images, args.save_tokens, result.tokens)
    batch, height, width, _ = result.images.shape
    grid = len(paths) == 1 and batch > 1
    wrote = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"
    t = result.timings
    per_row = result.tokens.shape[1] * result.tokens.shape[2]
    decoding = t.prefill_s + t.steps_s + t.sampling_s
    print(f"vqrt generate: wrote {wrote} ({batch} image{'s' if batch > 1 else ''} "
          f"{width}x{height}{', a grid' if grid else ''}; backend {result.backend}; "
          f"{per_row} token{'s' if per_row > 1 else ''} per row in {decoding:.2f} s, "
          f"{batch * per_row / decoding:.0f} tokens/s; decoder {t.image_decode_s:.2f} s; seeds "
          f"{params.seed}..{(params.seed + batch - 1) % 2 ** 64})")
    return EXIT_OK


def run_decode(args: argparse.Namespace) -> int:
    from vqrt.runtime import Generator, image_io
    suffix = _check_suffix("-o", args.output, (".png", ".npy"))
    _check_outputs([("-o", args.output)], [("--tokens", args.tokens)])
    with _runtime_errors():
        tokens = image_io.read_npy(args.tokens)
        generator = Generator(args.bundle, device=args.device, **_decoder_options(args))
        codes = tokens[None] if tokens.ndim == 2 else tokens  # one [h, w] grid is a batch of 1
        if suffix == ".npy":
            image_io.write_npy(args.output, generator.decode_raw(codes))
        else:
            image_io.write_png(args.output, generator.decode(codes))
    print(f"vqrt decode: wrote {args.output}")
    return EXIT_OK


def run_encode(args: argparse.Namespace) -> int:
    from vqrt.runtime import Generator, from_pixels, image_io
    _check_suffix("--save-tokens", args.save_tokens, (".npy",))
    _check_outputs([("--save-tokens", args.save_tokens)], [("--input", args.input)])
    with _runtime_errors():
        if Path(args.input).suffix.lower() == ".npy":
            images = image_io.read_npy(args.input)
            images = images[None] if images.ndim == 3 else images  # [3, H, W]: a batch of 1
        else:
            images = from_pixels(image_io.read_image(args.input)[None])
        generator = Generator(args.bundle, device=args.device)
        tokens = generator.encode(images)
        image_io.write_npy(args.save_tokens, tokens)
    print(f"vqrt encode: wrote {args.save_tokens} (int64 {list(tokens.shape)})")
    return EXIT_OK


def _add_runtime_parsers(commands) -> None:
    devices = dict(choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the ONNX graphs run: auto (CUDA where onnxruntime-gpu works, "
                        "else the CPU), cpu or cuda (default auto)")
    generate = commands.add_parser(
        "generate", help="generate images from a bundle",
        description="Sample image tokens with the bundle's transformer and decode them. A "
                    "batch is written as one PNG grid (ceil(sqrt(B)) columns, row-major, no "
                    "gutter), or as one PNG per row where -o's file name holds {i} (the row: "
                    "-o 'out-{i}.png'). Row i samples with seed S + i, so a row's tokens are "
                    "the same alone (with --seed S+i) or inside any batch.")
    generate.add_argument("bundle", metavar="BUNDLE", help="a bundle directory (vqrt build)")
    generate.add_argument("-o", "--output", required=True, metavar="OUT.png",
                          help="the PNG: a grid of the batch, or one file per row where the "
                               "name holds {i}, the row (out-{i}.png: out-0.png, ...)")
    generate.add_argument("--class", dest="class_labels", type=int, action="append",
                          metavar="N", help="class id, once per row (class-conditional "
                                            "bundles); one id with --batch repeats it")
    generate.add_argument("--cond", metavar="MAP",
                          help="condition map: a segmentation label PNG, a depth PNG, an image, "
                               "or a float32 .npy [B, C, H, W]")
    generate.add_argument("--batch", type=int, metavar="N",
                          help="rows (default: one per --class, else 1)")
    generate.add_argument("--size", metavar="WxH",
                          help="image size in pixels, multiples of the downsampling factor "
                               "(default: the training size)")
    generate.add_argument("--window-stride", type=int, default=1, metavar="S",
                          help="sizes beyond the transformer's block are sampled through "
                               "sliding windows of the training grid: hold each window still "
                               "for S tokens along a row (faster, less faithful; default 1: "
                               "the paper's window around every token)")
    generate.add_argument("--seed", type=int, default=0, help="seed of row 0 (default 0)")
    generate.add_argument("--top-k", type=int, metavar="K", help="keep the K likeliest codes "
                                                                 "(default: all)")
    generate.add_argument("--top-p", type=float, default=1.0, metavar="P",
                          help="nucleus mass in (0, 1] (default 1: off)")
    generate.add_argument("--temperature", type=float, default=1.0, metavar="T",
                          help="> 0 (default 1)")
    generate.add_argument("--greedy", action="store_true", help="always the likeliest code")
    generate.add_argument("--save-tokens", metavar="T.npy",
                          help="also write the tokens, int64 [B, h, w]")
    generate.add_argument("--backend", choices=("auto", "native", "onnxruntime", "cuda",
                                                "tensorrt"),
                          default="auto", help="transformer backend (default auto: the "
                                               "bundle's first; cuda: the native decoder on "
                                               "an NVIDIA GPU; tensorrt: the bundle's engines)")
    generate.add_argument("--device", **devices)
    _decoder_arguments(generate)
    generate.set_defaults(run=run_generate)

    decode = commands.add_parser(
        "decode", help="code indices to an image",
        description="Decode code indices with the bundle's tiled decoder (exact at any tile "
                    "size; GroupNorm statistics and attention span the whole image).")
    decode.add_argument("bundle", metavar="BUNDLE")
    decode.add_argument("--tokens", required=True, metavar="T.npy",
                        help="int64 [B, h, w] or [h, w]")
    decode.add_argument("-o", "--output", required=True, metavar="OUT.png|OUT.npy",
                        help=".png: pixels (a grid when B > 1); .npy: the raw decoder output, "
                             "float32 [B, C, H, W], unclamped")
    decode.add_argument("--device", **devices)
    _decoder_arguments(decode)
    decode.set_defaults(run=run_decode)

    encode = commands.add_parser(
        "encode", help="an image to code indices",
        description="Encode an image with the bundle's encoder graph (its size must be a "
                    "multiple of the downsampling factor; nothing is resized).")
    encode.add_argument("bundle", metavar="BUNDLE")
    encode.add_argument("--input", required=True, metavar="IMAGE|X.npy",
                        help="a photo, or float32 [B, 3, H, W] (or [3, H, W]) in [-1, 1]")
    encode.add_argument("--save-tokens", required=True, metavar="T.npy",
                        help="int64 [B, h, w]")
    encode.add_argument("--device", **devices)
    encode.set_defaults(run=run_encode)


def run_bench(args: argparse.Namespace) -> int:
    from vqrt.bench.command import run_bench as bench
    from vqrt.bench.suite import BenchError
    with _runtime_errors():
        try:
            return bench(args, _size_option("--size", args.size))
        except BenchError as e:
            raise CommandError(str(e)) from e


def _add_bench_parser(commands) -> None:
    from vqrt.bench.command import add_bench_arguments  # argparse only
    bench = commands.add_parser(
        "bench", help="time a bundle's stages beside baselines and the machine's limits",
        description="Time the prefill, every token, the image decode and the whole request at "
                    "each batch, interleaving the backends (and, with --baselines, torch and "
                    "ONNX Runtime peers) over repeats; report medians with their spread, ratios "
                    "against the upstream torch sampler measured in the same run, and each "
                    "step against the bound the measured memory bandwidth sets.")
    add_bench_arguments(bench)
    bench.set_defaults(run=run_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vqrt", description="Compiled inference for VQGAN + transformer image generators.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect", help="print the model card of a checkpoint or a bundle",
        description="Print what a checkpoint holds: stages, parameter counts, codebook, latent "
                    "grid, transformer shape and conditioning. For a bundle (a directory with "
                    "manifest.json), check it and print its manifest.")
    inspect.add_argument("path", help="upstream Lightning .ckpt, a vqrt checkpoint "
                                      "directory / model.safetensors, or a bundle directory")
    inspect.add_argument("--config", metavar="YAML",
                         help="the training config (default: <ckpt stem>.yaml beside the "
                              "checkpoint, the run's configs/*-project.yaml, or config.json "
                              "of a vqrt checkpoint)")
    inspect.add_argument("--json", action="store_true", help="print the card as JSON")
    inspect.set_defaults(run=run_inspect)
    _add_build_parser(commands)
    _add_train_parser(commands)
    _add_eval_parser(commands)
    _add_runtime_parsers(commands)
    _add_bench_parser(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed usage or help
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    run: Callable[[argparse.Namespace], int] = args.run
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    stdout = sys.stdout  # None where the process started with fd 1 closed (`>&-`)
    guarded = _DroppingStdout(stdout) if stdout is not None else None
    if guarded is not None:
        sys.stdout = guarded
    try:
        code = run(args)
        if guarded is not None:
            guarded.flush()  # a full disk under `> FILE` is reported below like any other
        return code
    except CommandError as e:
        if args.debug:
            traceback.print_exc()
        print(f"vqrt: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        # A full disk, a quota or a read-only folder while a command writes (a training run's
        # checkpoints, say), or a file this user may not read, is the machine's state, not a
        # bug: one line naming the file.
        if e.errno not in _STORAGE_ERRNOS + _PERMISSION_ERRNOS:
            raise
        if args.debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        what = ("permission denied (check the owner and mode of the file and of its folders)"
                if e.errno in _PERMISSION_ERRNOS else f"cannot write ({e.strerror})")
        print(f"vqrt: error: {where}{what}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # what was being written has been cleaned up by now
        if args.debug:
            traceback.print_exc()
        terminated = isinstance(e, Terminated)
        print(f"vqrt: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        sys.stdout = stdout
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if guarded is not None:
            try:  # after an error: what is left, here, where a broken pipe is dropped
                guarded.flush()
            except OSError:
                pass  # the error already reported is the one that matters

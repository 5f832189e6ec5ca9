"""The `vqrt` command line.

One function per subcommand (`run_<name>(args) -> int`), registered in `build_parser`. Expected
user errors (a missing file, a file that is not a checkpoint, a config that does not match the
weights, a missing optional dependency) are raised as CommandError and printed as one line,
`vqrt: error: <message>`, with exit code 2; `--debug` prints the traceback as well. Anything
else is a bug and keeps its traceback.

This module imports neither torch nor numpy: commands import what they need when they run, so
`vqrt --help` works on a runtime-only install.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Callable, List, Optional

EXIT_OK = 0
EXIT_USER_ERROR = 2  # also what argparse uses for bad usage

# Modules of the `train` extra; a command needing one reports how to install it.
_TRAIN_EXTRA_MODULES = ("torch", "yaml", "safetensors", "numpy")


class CommandError(Exception):
    """An expected failure with a one-line message for the user."""


def _import_trainer(command: str):
    """Imports the torch-side checkpoint and card modules, or explains how to install them."""
    try:
        from vqrt.trainer import checkpoints, model_card
    except ModuleNotFoundError as e:
        if e.name not in _TRAIN_EXTRA_MODULES:
            raise
        raise CommandError(f"vqrt {command} needs the train extra (missing {e.name}): "
                           "pip install 'vqrt[train]'") from e
    return checkpoints, model_card


def run_inspect(args: argparse.Namespace) -> int:
    checkpoints, model_card = _import_trainer("inspect")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqrt", description="Compiled inference for VQGAN + transformer image generators.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect", help="print the model card of a checkpoint",
        description="Print what a checkpoint holds: stages, parameter counts, codebook, latent "
                    "grid, transformer shape and conditioning.")
    inspect.add_argument("path", help="upstream Lightning .ckpt, or a vqrt checkpoint "
                                      "directory / model.safetensors")
    inspect.add_argument("--config", metavar="YAML",
                         help="the training config (default: <ckpt stem>.yaml beside the "
                              "checkpoint, the run's configs/*-project.yaml, or config.json "
                              "of a vqrt checkpoint)")
    inspect.add_argument("--json", action="store_true", help="print the card as JSON")
    inspect.set_defaults(run=run_inspect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed usage or help
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CommandError as e:
        if args.debug:
            traceback.print_exc()
        print(f"vqrt: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR

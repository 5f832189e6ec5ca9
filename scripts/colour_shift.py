"""How much of a first stage's error is each image's overall colour: held-out PSNR as measured,
and again after each reconstruction's per-channel mean is moved onto the photo's (an oracle
no decoder has), with the mean absolute difference of those channel means.

  python scripts/colour_shift.py RUN [RUN ...] [--data ../shared/data/images] [--size 128]

A large gain from the oracle means the decoder cannot carry an image's colour to its output.
That is what a VQGAN with 32 channels at full resolution does: GroupNorm(32) then normalizes
every channel alone (an instance norm), and norm_out, right before conv_out, removes each
channel's mean and scale. The held-out split and crops are `vqrt eval vqgan`'s. Torch (the train
extra); CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vqrt.trainer.checkpoints import load_checkpoint
from vqrt.trainer.data import StageInput, center_crop
from vqrt.trainer.evaluate import psnr


@torch.no_grad()
def colour_shift(run: Path, data: Path, size: int, val_fraction: float) -> str:
    loaded = load_checkpoint(run)
    model = loaded.first_stage.eval()
    stage = StageInput.of(loaded.first_stage.cfg)
    held_out = stage.load(data, size, val_fraction).held_out
    x = stage.tensor(held_out, [center_crop(e, size) for e in held_out], size)  # (N, 3, S, S)
    photo = (x + 1) / 2
    estimate = (model.decode_indices(model.encode_to_indices(x)).clamp(-1, 1) + 1) / 2
    photo_means = photo.mean(dim=(2, 3), keepdim=True)  # (N, 3, 1, 1)
    estimate_means = estimate.mean(dim=(2, 3), keepdim=True)
    matched = estimate - estimate_means + photo_means
    return (f"{run}: {len(held_out)} held-out images at {size} px: PSNR "
            f"{float(psnr(photo, estimate).mean()):.2f} dB, with channel means matched "
            f"{float(psnr(photo, matched).mean()):.2f} dB; mean |channel mean error| "
            f"{float((photo_means - estimate_means).abs().mean()):.4f} (of 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="first-stage runs or checkpoints")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/images"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        print(colour_shift(run, args.data, args.size, args.val_fraction))


if __name__ == "__main__":
    main()

"""What a thumbnail keeps: PSNR of the held-out center crops against themselves shrunk by a
downsampling factor f (bicubic, antialiased) and enlarged back (bicubic), for f = 4, 8, 16.

  python scripts/thumbnail_psnr.py [--data ../shared/data/images] [--size 128]

A VQGAN at factor f stores one code (log2 n_embed bits) per f x f pixels; the thumbnail stores
three 8-bit numbers there and no learned decoder. The held-out split and crops are the
trainer's (`vqrt eval vqgan`: --val-fraction 0.1, center crops at --size), so the figures sit
beside a first stage's held-out PSNR. Torch (the train extra); CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from vqrt.trainer.data import apply_crop, center_crop, load_images
from vqrt.trainer.evaluate import psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/images")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    dataset = load_images(Path(args.data), args.size, args.val_fraction, with_labels=False)
    crops = [apply_crop(e.image, center_crop(e, args.size), args.size) for e in dataset.held_out]
    images = torch.stack(crops).float() / 255  # (N, 3, S, S) in [0, 1]
    print(f"{len(crops)} held-out images at {args.size} x {args.size}")
    for factor in (4, 8, 16):
        small = F.interpolate(images, scale_factor=1 / factor, mode="bicubic", antialias=True)
        back = F.interpolate(small, size=images.shape[-2:], mode="bicubic").clamp(0, 1)
        print(f"f = {factor:2d}: {float(psnr(images, back).mean()):.2f} dB")


if __name__ == "__main__":
    main()

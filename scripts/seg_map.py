"""Segmentation label maps for the demo: fit one to an image size, and render one in colour.

  python scripts/seg_map.py fit SRC.png OUT.png --size 1024x1024
      Scales the map (nearest neighbour, so no new labels appear) until it covers the size,
      keeping its aspect ratio, then crops the centre: the map then lies on the image grid that
      `vqrt generate --cond OUT.png --size WxH` asks for.
  python scripts/seg_map.py colorize MAP.png OUT.png
      One fixed colour per label (landscape labels of COCO-Stuff get natural colours, the others
      a colour drawn from the label number); prints each label's share of the pixels.

Maps are 8-bit single-channel PNGs (mode L or P), one label per pixel, as in
../shared/data/sflckr/segmentations (COCO-Stuff labels 0..181, 0-based).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# 0-based COCO-Stuff labels that occur in landscape photos: (name, RGB).
LANDSCAPE = {
    95: ("building-other", (150, 110, 110)), 96: ("bush", (70, 120, 40)),
    105: ("clouds", (225, 225, 235)), 110: ("dirt", (140, 100, 60)),
    118: ("flower", (220, 120, 170)), 119: ("fog", (190, 190, 200)),
    123: ("grass", (110, 190, 60)), 124: ("gravel", (150, 140, 125)),
    125: ("ground-other", (160, 130, 90)), 126: ("hill", (120, 140, 70)),
    127: ("house", (180, 80, 60)), 128: ("leaves", (60, 150, 60)),
    134: ("mountain", (130, 100, 80)), 135: ("mud", (100, 80, 50)),
    141: ("plant-other", (90, 160, 90)), 147: ("river", (60, 120, 200)),
    148: ("road", (110, 110, 110)), 149: ("rock", (120, 120, 120)),
    153: ("sand", (230, 210, 150)), 154: ("sea", (30, 80, 170)),
    156: ("sky-other", (120, 180, 240)), 158: ("snow", (250, 250, 250)),
    159: ("solid-other", (100, 90, 90)), 161: ("stone", (160, 160, 150)),
    162: ("straw", (210, 190, 100)), 168: ("tree", (30, 100, 30)),
    177: ("water-other", (70, 150, 210)),
}


def read_labels(path: Path) -> np.ndarray:
    """An 8-bit label map -> uint8 [H, W]."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            sys.exit(f"{path}: a label map must be a single-channel 8-bit PNG, got mode "
                     f"{image.mode}")
        return np.asarray(image, dtype=np.uint8)


def fit(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [h, w] -> uint8 [height, width]: nearest-neighbour scaling by the larger of the
    two ratios (the result covers the size), then a centre crop."""
    h, w = labels.shape
    scale = max(width / w, height / h)
    scaled_w, scaled_h = max(width, round(w * scale)), max(height, round(h * scale))
    scaled = np.asarray(Image.fromarray(labels).resize((scaled_w, scaled_h),
                                                       Image.Resampling.NEAREST))
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return scaled[top:top + height, left:left + width]


def palette() -> np.ndarray:
    """uint8 [256, 3]: LANDSCAPE's colours, a seeded random colour for every other label."""
    colours = np.random.default_rng(0).integers(40, 216, size=(256, 3)).astype(np.uint8)
    for label, (_, rgb) in LANDSCAPE.items():
        colours[label] = rgb
    return colours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit_parser = commands.add_parser("fit", help="scale (nearest) and centre-crop to WxH")
    fit_parser.add_argument("source", type=Path)
    fit_parser.add_argument("output", type=Path)
    fit_parser.add_argument("--size", required=True, metavar="WxH")
    colorize_parser = commands.add_parser("colorize", help="render a label map in colour")
    colorize_parser.add_argument("source", type=Path)
    colorize_parser.add_argument("output", type=Path)
    args = parser.parse_args()
    labels = read_labels(args.source)
    if args.command == "fit":
        width, height = (int(v) for v in args.size.lower().split("x"))
        fitted = fit(labels, width, height)
        Image.fromarray(fitted).save(args.output)
        print(f"{args.source}: {labels.shape[1]}x{labels.shape[0]} -> {args.output}: "
              f"{width}x{height} (nearest, centre crop)")
    else:
        Image.fromarray(palette()[labels]).save(args.output, optimize=True)
        values, counts = np.unique(labels, return_counts=True)
        for value, count in sorted(zip(values, counts), key=lambda vc: -vc[1]):
            name = LANDSCAPE.get(int(value), (f"label {value}",))[0]
            print(f"{int(value):4d} {name:16s} {100 * count / labels.size:5.1f} %")


if __name__ == "__main__":
    main()

"""Shared pieces of the training tests: the sample data, tiny configs, small data folders."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vqrt.trainer.training import cpu_has_bf16
from shared_data import DATA

needs_data = pytest.mark.skipif(not (DATA / "images").is_dir(),
                                reason=f"sample data not found at {DATA}")
# vqrt train refuses --precision bf16 on a CPU that would emulate it (trainer.training).
needs_native_bf16 = pytest.mark.skipif(
    not cpu_has_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX): "
    "vqrt train refuses --precision bf16 here")

# f = 4 at 32 px (an 8 x 8 latent), no attention but the mid blocks: ~0.75 M parameters.
TINY_DDCONFIG = {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3,
                 "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
                 "attn_resolutions": [], "dropout": 0.0}


def tiny_vqgan_config(path: Path, disc_start: int = 10) -> Path:
    model = {"base_learning_rate": 1e-4, "target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": 16, "n_embed": 64, "ddconfig": TINY_DDCONFIG,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_start": disc_start, "disc_weight": 0.8, "disc_ndf": 16,
                                  "disc_num_layers": 2}}}}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def tiny_vqgan_variant(path: Path, params=None, ddconfig=None) -> Path:
    """tiny_vqgan_config with some model.params (and ddconfig) values changed."""
    config = yaml.safe_load(tiny_vqgan_config(path).read_text())
    config["model"]["params"].update(params or {})
    config["model"]["params"]["ddconfig"].update(ddconfig or {})
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_segmentation_config(path: Path, n_labels: int) -> Path:
    ddconfig = dict(TINY_DDCONFIG, in_channels=n_labels, out_ch=n_labels)
    model = {"base_learning_rate": 1e-4, "target": "taming.models.vqgan.VQSegmentationModel",
             "params": {"embed_dim": 16, "n_embed": 32, "n_labels": n_labels,
                        "ddconfig": ddconfig,
                        "lossconfig": {"target": "taming.modules.losses.segmentation."
                                                 "BCELossWithQuant",
                                       "params": {"codebook_weight": 1.0}}}}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def image_subset(folder: Path, count: int, source: Path = None) -> Path:
    """folder with links to the first `count` sample photos."""
    source = source or DATA / "images"
    folder.mkdir(parents=True)
    for photo in sorted(source.glob("*.jpg"))[:count]:
        os.symlink(photo, folder / photo.name)
    return folder


def segmentation_subset(folder: Path, count: int) -> Path:
    """folder/images and folder/segmentations with the first `count` ADE20K pairs."""
    for sub in ("images", "segmentations"):
        (folder / sub).mkdir(parents=True)
    for photo in sorted((DATA / "ade20k" / "images").glob("*.jpg"))[:count]:
        os.symlink(photo, folder / "images" / photo.name)
        label_map = DATA / "ade20k" / "segmentations" / (photo.stem + ".png")
        os.symlink(label_map, folder / "segmentations" / label_map.name)
    return folder


def tiny_depth_config(path: Path) -> Path:
    """A depth cond stage as upstream's: a VQModel reading and writing one channel, its
    discriminator too."""
    ddconfig = dict(TINY_DDCONFIG, in_channels=1, out_ch=1)
    model = {"base_learning_rate": 1e-4, "target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": 16, "n_embed": 32, "ddconfig": ddconfig,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_start": 1000, "disc_in_channels": 1, "disc_ndf": 16,
                                  "disc_num_layers": 2}}}}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def synthetic_depth(photo: Path) -> np.ndarray:
    """A stand-in depth map for a photo (the sample data has none): far at the top, near at
    the bottom, nearer where the photo is dark. float32 [H, W], in metres-like units."""
    from PIL import Image
    with Image.open(photo) as image:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rows = np.linspace(1.0, 0.0, gray.shape[0], dtype=np.float32)[:, None]
    return 2.0 + 30.0 * rows * (0.5 + 0.5 * gray)


def depth_subset(folder: Path, count: int) -> Path:
    """folder/images with the first `count` sflckr photos and folder/depth with a synthetic
    depth map for each, in the formats users have: 16-bit PNG, upstream's RGBA-float PNG (the
    second map) and .npy (the third)."""
    from PIL import Image
    for sub in ("images", "depth"):
        (folder / sub).mkdir(parents=True)
    photos = sorted((DATA / "sflckr" / "images").rglob("*.jpg"))[:count]
    for i, photo in enumerate(photos):
        os.symlink(photo, folder / "images" / photo.name)
        depth = synthetic_depth(photo)
        target = folder / "depth" / photo.stem
        if i == 1:
            rgba = np.ascontiguousarray(depth.astype("<f4")).view(np.uint8)
            Image.fromarray(rgba.reshape(*depth.shape, 4)).save(f"{target}.png")
        elif i == 2:
            np.save(f"{target}.npy", depth)
        else:
            Image.fromarray((depth * 1000).astype(np.uint16)).save(f"{target}.png")
    return folder


def metrics(run: Path, key: str):
    """Values of `key` in run/metrics.jsonl, in order."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


def records_without_timing(run: Path):
    """run/metrics.jsonl's records without steps_per_s, which no two runs share."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "steps_per_s"} for line in lines]


def weights(path: Path):
    from safetensors.torch import load_file
    return load_file(str(path))


def assert_same_tensors(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key

"""Training data: image folders, segmentation pairs, class labels, the held-out split, crops.

Every file is opened, decoded and checked once, before training starts; anything wrong stops
with a DataError whose one-line message names the file. The decoded images are kept in memory
at training scale (shorter side = size), so a training step only crops and flips.

Layouts:
  images        DIR/**/*.{jpg,jpeg,png}; class labels are the first-level sub-folder names.
  segmentation  DIR/images/**/<name>.<jpg|png> paired with DIR/segmentations/**/<name>.png
                (same relative path, uint8 label map, labels 0..n_labels-1).

Held-out split: a file is held out when the SHA-1 of its relative path, read as a fraction in
[0, 1), is below val_fraction (at least one file is always held out). The split depends on the
file names only, so adding files never moves an old file between the two sides.

Tensors: images (3, H, W) uint8 at rest, (B, 3, S, S) float in [-1, 1] in a batch; label maps
(1, H, W) uint8 at rest, (B, n_labels, S, S) float one-hot in a batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PHOTOS_DIR = "images"
SEGMENTATIONS_DIR = "segmentations"


class DataError(ValueError):
    """Training data that cannot be used; the message is one line naming the file."""


@dataclass
class Example:
    """One training item at rest. image: (3, H, W) uint8 with min(H, W) == size;
    segmentation: (1, H, W) uint8 of the same H, W, or None; label: class id or None."""
    path: str  # relative to the data folder, for messages and the split
    image: Optional[torch.Tensor]
    segmentation: Optional[torch.Tensor] = None
    label: Optional[int] = None


@dataclass
class Dataset:
    train: List[Example]
    held_out: List[Example]
    class_names: Tuple[str, ...] = ()  # index = class id, when labels come from sub-folders


def list_images(folder: Path) -> List[Path]:
    """Every JPEG/PNG below folder, sorted by relative path."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no JPEG or PNG images found (searched recursively)")
    return files


def held_out_fraction(relative_path: str) -> float:
    """Where a file falls in [0, 1) for the split: its SHA-1, read as a fraction."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split(names: Sequence[str], val_fraction: float) -> Tuple[List[int], List[int]]:
    """-> (train indices, held-out indices) of names (relative paths); see the module doc."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the held-out fraction must lie in (0, 1), got {val_fraction}")
    if len(names) < 2:
        raise DataError(f"{len(names)} image(s): training needs at least 2 (one is held out)")
    keys = [held_out_fraction(n) for n in names]
    held = [i for i, k in enumerate(keys) if k < val_fraction]
    if not held:
        held = [min(range(len(names)), key=keys.__getitem__)]
    held_set = set(held)
    return [i for i in range(len(names)) if i not in held_set], held


def _resize_shorter(image, size: int, resample):
    from PIL import Image
    width, height = image.size
    scale = size / min(width, height)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(target, resample=getattr(Image.Resampling, resample))


def load_photo(path: Path, size: int) -> torch.Tensor:
    """An RGB image, shorter side resized to size (bicubic, antialiased) -> (3, H, W) uint8."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({' '.join(str(e).split())})")
    array = np.asarray(_resize_shorter(image, size, "BICUBIC"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_label_map(path: Path, size: int, n_labels: int,
                   photo_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """A uint8 label map, shorter side resized to size (nearest) -> (1, H, W) uint8.
    photo_size: the paired photo's (width, height) as stored, which the map must match."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise DataError(f"{path}: a label map must be a single-channel 8-bit PNG, "
                                f"got mode {image.mode}")
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable image ({' '.join(str(e).split())})")
    if photo_size is not None and image.size != photo_size:
        raise DataError(f"{path}: label map is {image.size[0]}x{image.size[1]} but its photo is "
                        f"{photo_size[0]}x{photo_size[1]}")
    labels = np.asarray(image, dtype=np.uint8)
    if int(labels.max()) >= n_labels:
        raise DataError(f"{path}: label {int(labels.max())} is not below n_labels {n_labels}")
    resized = np.asarray(_resize_shorter(Image.fromarray(labels), size, "NEAREST"))
    return torch.from_numpy(resized.copy()).unsqueeze(0)


def _photo_dimensions(path: Path) -> Tuple[int, int]:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({' '.join(str(e).split())})")


def _class_names(root: Path, files: Sequence[Path]) -> Tuple[str, ...]:
    for path in files:
        if len(path.relative_to(root).parts) < 2:
            raise DataError(f"{path}: not inside a class sub-folder (class labels are the "
                            f"names of {root}'s sub-folders)")
    return tuple(sorted({path.relative_to(root).parts[0] for path in files}))


def load_images(root: Path, size: int, val_fraction: float, with_labels: bool) -> Dataset:
    """Photos of a folder (recursive); with_labels: class ids from first-level sub-folders."""
    files = list_images(root)
    names = [p.relative_to(root).as_posix() for p in files]
    class_names = _class_names(root, files) if with_labels else ()
    examples = []
    for path, name in zip(files, names):
        label = class_names.index(name.split("/", 1)[0]) if with_labels else None
        examples.append(Example(name, load_photo(path, size), label=label))
    train, held = split(names, val_fraction)
    return Dataset([examples[i] for i in train], [examples[i] for i in held], class_names)


def load_segmentations(root: Path, size: int, n_labels: int, val_fraction: float,
                       with_photos: bool) -> Dataset:
    """Label maps of root/segmentations paired with root/images by relative path (photo of
    any image suffix, map .png). The split goes by the photo's relative path, so a photo and
    its map always fall on the same side. with_photos: also decode the photos."""
    photo_root, map_root = root / PHOTOS_DIR, root / SEGMENTATIONS_DIR
    if not map_root.is_dir():
        raise DataError(f"{map_root}: no such folder (segmentation data is DIR/{PHOTOS_DIR}/ "
                        f"with label maps in DIR/{SEGMENTATIONS_DIR}/ under the same names)")
    photos = {p.relative_to(photo_root).with_suffix("").as_posix(): p
              for p in list_images(photo_root)}
    maps = {p.relative_to(map_root).with_suffix("").as_posix(): p
            for p in list_images(map_root)}
    for stem, path in maps.items():
        if stem not in photos:
            raise DataError(f"{path}: segmentation without its photo (expected "
                            f"{photo_root / stem}.jpg or .png)")
    for stem, path in photos.items():
        if stem not in maps:
            raise DataError(f"{path}: photo without its segmentation (expected "
                            f"{map_root / stem}.png)")
    stems = sorted(photos)
    examples = []
    for stem in stems:
        photo_path = photos[stem]
        dimensions = _photo_dimensions(photo_path)
        segmentation = load_label_map(maps[stem], size, n_labels, dimensions)
        image = load_photo(photo_path, size) if with_photos else None
        examples.append(Example(photo_path.relative_to(photo_root).as_posix(), image,
                                segmentation))
    train, held = split([e.path for e in examples], val_fraction)
    return Dataset([examples[i] for i in train], [examples[i] for i in held])


# --- batches ------------------------------------------------------------------------------

def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def one_hot(label_maps: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(B, 1, H, W) integer labels -> (B, n_labels, H, W) float one-hot."""
    return F.one_hot(label_maps[:, 0].long(), n_labels).permute(0, 3, 1, 2).float()


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    flip: bool


def random_crop(example: Example, size: int, generator: torch.Generator) -> Crop:
    """A size x size window at a random place, mirrored with probability 1/2."""
    reference = example.image if example.image is not None else example.segmentation
    height, width = reference.shape[1:]
    top = int(torch.randint(height - size + 1, (1,), generator=generator))
    left = int(torch.randint(width - size + 1, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    return Crop(top, left, flip)


def center_crop(example: Example, size: int) -> Crop:
    reference = example.image if example.image is not None else example.segmentation
    height, width = reference.shape[1:]
    return Crop((height - size) // 2, (width - size) // 2, False)


def apply_crop(tensor: torch.Tensor, crop: Crop, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size), mirrored left-right when crop.flip."""
    window = tensor[:, crop.top:crop.top + size, crop.left:crop.left + size]
    return window.flip(-1) if crop.flip else window


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The shuffled order of `count` examples in an epoch: the same on every process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


def batch_indices(seed: int, step: int, count: int, batch_size: int, rank: int,
                  world_size: int) -> List[int]:
    """Example indices for one process at one step. The global sample stream is the
    concatenation of the epochs' orders; step s, rank r takes positions
    [(s * world_size + r) * batch_size, ... + batch_size), so processes never overlap and the
    stream depends on (seed, step) only: a resumed run continues it exactly."""
    start = (step * world_size + rank) * batch_size
    orders = {}
    indices = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, count)
        if epoch not in orders:
            orders[epoch] = epoch_order(seed, epoch, count)
        indices.append(int(orders[epoch][offset]))
    return indices

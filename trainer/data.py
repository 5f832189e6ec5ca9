"""Training data: image folders, segmentation pairs, class labels, the held-out split, crops.

Every file is opened, decoded and checked once, before training starts; anything wrong stops
with a DataError whose one-line message names the file. The decoded images are kept in memory
at training scale (shorter side = size), so a training step only crops and flips.

Layouts:
  images        DIR/**/*.{jpg,jpeg,png}; class labels are the first-level sub-folder names.
  segmentation  DIR/images/**/<name>.<jpg|png> paired with DIR/segmentations/**/<name>.png
                (same relative path, uint8 label map, labels 0..n_labels-1).
  depth         DIR/images/**/<name>.<jpg|png> paired with DIR/depth/**/<name>.<png|tif|npy>
                (any depth map vqrt.runtime.image_io.read_depth_map reads, scaled per map to
                [-1, 1] as upstream; the runtime reads a --cond map the same way).

Held-out split: a file is held out when the SHA-1 of its relative path, read as a fraction in
[0, 1), is below val_fraction (at least one file is always held out). The split depends on the
file names only, so adding files never moves an old file between the two sides.

Tensors: images (3, H, W) uint8 at rest, (B, 3, S, S) float in [-1, 1] in a batch; label maps
(1, H, W) uint8 at rest, (B, n_labels, S, S) float one-hot in a batch; depth maps (1, H, W)
float32 in [-1, 1] at rest and (B, 1, S, S) in a batch (resized bilinearly, as upstream's
albumentations default).
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
DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
PHOTOS_DIR = "images"
SEGMENTATIONS_DIR = "segmentations"
DEPTH_DIR = "depth"


class DataError(ValueError):
    """Training data that cannot be used; the message is one line naming the file."""


@dataclass
class Example:
    """One training item at rest. image: (3, H, W) uint8 with min(H, W) == size;
    segmentation: (1, H, W) uint8 of the same H, W, or None; depth: (1, H, W) float32 of the
    same H, W, or None; label: class id or None."""
    path: str  # relative to the data folder, for messages and the split
    image: Optional[torch.Tensor]
    segmentation: Optional[torch.Tensor] = None
    label: Optional[int] = None
    depth: Optional[torch.Tensor] = None

    def any_map(self) -> torch.Tensor:
        """The first of image, segmentation, depth that is loaded: its H, W place crops."""
        return next(t for t in (self.image, self.segmentation, self.depth) if t is not None)


@dataclass
class Dataset:
    train: List[Example]
    held_out: List[Example]
    class_names: Tuple[str, ...] = ()  # index = class id, when labels come from sub-folders


def list_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> List[Path]:
    """Every file below folder with one of suffixes (JPEG/PNG), sorted by relative path."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        kinds = "JPEG or PNG images" if suffixes == IMAGE_SUFFIXES else \
            f"{', '.join(suffixes)} files"
        raise DataError(f"{folder}: no {kinds} found (searched recursively)")
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


def load_depth_map(path: Path, size: int,
                   photo_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """A depth map scaled to [-1, 1] (read_depth_map), shorter side resized to size (bilinear)
    -> (1, H, W) float32. photo_size: the paired photo's (width, height), which it must match."""
    from PIL import Image
    from vqrt.runtime.image_io import read_depth_map
    from vqrt.runtime.params import RequestError
    try:
        depth = read_depth_map(path)
    except RequestError as e:
        raise DataError(str(e)) from None
    height, width = depth.shape
    if photo_size is not None and (width, height) != photo_size:
        raise DataError(f"{path}: depth map is {width}x{height} but its photo is "
                        f"{photo_size[0]}x{photo_size[1]}")
    resized = np.asarray(_resize_shorter(Image.fromarray(depth), size, "BILINEAR"),
                         dtype=np.float32)
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


def _paired(root: Path, map_dir: str, what: str,
            suffixes: Sequence[str]) -> List[Tuple[Path, Path]]:
    """(photo, map) pairs of root/images and root/<map_dir> with the same relative path up to
    the suffix, sorted; a file on one side without its partner stops with a DataError."""
    photo_root, map_root = root / PHOTOS_DIR, root / map_dir
    if not map_root.is_dir():
        raise DataError(f"{map_root}: no such folder ({what}s go in DIR/{map_dir}/ beside "
                        f"the photos in DIR/{PHOTOS_DIR}/, under the same names)")
    photos = {p.relative_to(photo_root).with_suffix("").as_posix(): p
              for p in list_images(photo_root)}
    maps = {p.relative_to(map_root).with_suffix("").as_posix(): p
            for p in list_images(map_root, suffixes)}
    for stem, path in maps.items():
        if stem not in photos:
            raise DataError(f"{path}: {what} without its photo (expected "
                            f"{photo_root / stem}.jpg or .png)")
    for stem, path in photos.items():
        if stem not in maps:
            raise DataError(f"{path}: photo without its {what} (expected "
                            f"{map_root / stem}{suffixes[0]})")
    return [(photos[stem], maps[stem]) for stem in sorted(photos)]


def _paired_dataset(root: Path, pairs: Sequence[Tuple[Path, Path]], size: int,
                    val_fraction: float, with_photos: bool, load_map) -> Dataset:
    """Examples of (photo, map) pairs; load_map(path, size, photo (width, height)) -> Example
    fields. The split goes by the photo's relative path, so a photo and its map always fall on
    the same side."""
    examples = []
    for photo_path, map_path in pairs:
        fields = load_map(map_path, size, _photo_dimensions(photo_path))
        image = load_photo(photo_path, size) if with_photos else None
        examples.append(Example((photo_path.relative_to(root / PHOTOS_DIR)).as_posix(), image,
                                **fields))
    train, held = split([e.path for e in examples], val_fraction)
    return Dataset([examples[i] for i in train], [examples[i] for i in held])


def load_segmentations(root: Path, size: int, n_labels: int, val_fraction: float,
                       with_photos: bool) -> Dataset:
    """Label maps of root/segmentations paired with root/images by relative path (photo and map
    of any image suffix; maps should be .png). with_photos: also decode the photos."""
    def load_map(path: Path, size: int, photo_size: Tuple[int, int]):
        return {"segmentation": load_label_map(path, size, n_labels, photo_size)}

    # Maps of any image suffix are accepted; .png (lossless, what label maps should be) first,
    # as the one messages name.
    pairs = _paired(root, SEGMENTATIONS_DIR, "segmentation", (".png", ".jpg", ".jpeg"))
    return _paired_dataset(root, pairs, size, val_fraction, with_photos, load_map)


def load_depth_maps(root: Path, size: int, val_fraction: float, with_photos: bool) -> Dataset:
    """Depth maps of root/depth paired with root/images by relative path (map .png, .tif or
    .npy). with_photos: also decode the photos."""
    def load_map(path: Path, size: int, photo_size: Tuple[int, int]):
        return {"depth": load_depth_map(path, size, photo_size)}

    pairs = _paired(root, DEPTH_DIR, "depth map", DEPTH_SUFFIXES)
    return _paired_dataset(root, pairs, size, val_fraction, with_photos, load_map)


# --- what a first stage reads ----------------------------------------------------------------

PHOTOS, SEGMENTATION, DEPTH = "photos", "segmentation", "depth"


@dataclass(frozen=True)
class StageInput:
    """The input of a VQ model (first stage or cond stage): photos, one-hot label maps (a
    VQSegmentationModel) or depth maps (a VQModel with in_channels 1, as upstream's depth cond
    stages). One object loads the data and builds the model's input tensors for every caller:
    training, evaluation and the transformer trainer's cond stage."""
    kind: str
    n_labels: Optional[int] = None  # segmentation only

    @classmethod
    def of(cls, config) -> "StageInput":
        """config: a VQConfig. A segmentation model carries colorize_nlabels; otherwise the
        input channels say: 3 photos, 1 depth maps."""
        if config.colorize_nlabels is not None:
            return cls(SEGMENTATION, config.colorize_nlabels)
        channels = config.ddconfig.in_channels
        if channels not in (1, 3):
            raise DataError(f"ddconfig.in_channels {channels}: a VQModel reads photos (3) or "
                            f"depth maps (1); segmentation maps need a VQSegmentationModel")
        return cls(PHOTOS if channels == 3 else DEPTH)

    @property
    def channels(self) -> int:
        return {PHOTOS: 3, DEPTH: 1}.get(self.kind, self.n_labels)

    def load(self, root: Path, size: int, val_fraction: float,
             with_photos: bool = False) -> Dataset:
        """The data folder for this input (see the module doc for the layouts)."""
        if self.kind == SEGMENTATION:
            return load_segmentations(root, size, self.n_labels, val_fraction, with_photos)
        if self.kind == DEPTH:
            return load_depth_maps(root, size, val_fraction, with_photos)
        return load_images(root, size, val_fraction, with_labels=False)

    def tensor(self, examples: Sequence[Example], crops: Sequence["Crop"],
               size: int) -> torch.Tensor:
        """The model's input for crops of examples: (B, channels, size, size) float."""
        if self.kind == SEGMENTATION:
            maps = torch.stack([apply_crop(e.segmentation, c, size)
                                for e, c in zip(examples, crops)])
            return one_hot(maps, self.n_labels)
        if self.kind == DEPTH:
            return torch.stack([apply_crop(e.depth, c, size) for e, c in zip(examples, crops)])
        return to_model_range(torch.stack([apply_crop(e.image, c, size)
                                           for e, c in zip(examples, crops)]))


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
    height, width = example.any_map().shape[1:]
    top = int(torch.randint(height - size + 1, (1,), generator=generator))
    left = int(torch.randint(width - size + 1, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    return Crop(top, left, flip)


def center_crop(example: Example, size: int) -> Crop:
    height, width = example.any_map().shape[1:]
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

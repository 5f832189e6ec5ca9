"""Image and array files for the CLI: reading photos, label maps and depth maps, writing PNG
and .npy outputs so that no partial file is ever left at the destination.

Pillow (a runtime dependency) is imported only here and only when a file is read or written.
Batches are written as one PNG grid: ceil(sqrt(B)) columns, row-major, no gutter, so image i
sits at tile (i // columns, i % columns) and can be cut out exactly; cells after the last
image are black. This module never imports torch.
"""
from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Callable, Union

import numpy as np

from vqrt.runtime.bundle import Conditioning
from vqrt.runtime.conditioning import segmentation_one_hot
from vqrt.runtime.params import RequestError

PathLike = Union[str, Path]


def _pil():
    try:
        from PIL import Image, UnidentifiedImageError
    except ModuleNotFoundError:
        raise RequestError("reading and writing images needs pillow: pip install pillow") \
            from None
    return Image, UnidentifiedImageError


LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000")  # pillow's names; they blur a label map's edges


def _open(path: Path, modes, what: str, labels: bool = False) -> np.ndarray:
    """The image at path as an array, converted to the first of `modes` unless its mode is one
    of them. labels: the values are labels, which a lossy format would have changed."""
    Image, UnidentifiedImageError = _pil()
    try:
        with Image.open(path) as image:
            if labels and image.format in LOSSY_FORMATS:
                raise RequestError(f"{path}: {what} must be stored losslessly (PNG), not as "
                                   f"{image.format}, whose compression changes labels where "
                                   "they meet")
            if image.mode not in modes:
                if modes[0] != "RGB":
                    raise RequestError(f"{path}: {what} must be a single-channel 8-bit image "
                                       f"(mode L or P), got mode {image.mode}")
                image = image.convert("RGB")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise RequestError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise RequestError(f"{path}: not a readable image ({' '.join(str(e).split())})") \
            from None


def read_npy(path: PathLike) -> np.ndarray:
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RequestError(f"{path}: no such file") from None
    except (ValueError, OSError) as e:
        raise RequestError(f"{path}: not a .npy array ({' '.join(str(e).split())})") from None


def read_image(path: PathLike) -> np.ndarray:
    """A photo (any format pillow reads) -> uint8 [H, W, 3]."""
    return _open(Path(path), ("RGB",), "a photo")


# Depth maps as stored: 8- or 16-bit grayscale, 32-bit integer or float images, or upstream's
# RGBA PNGs whose four bytes per pixel are one little-endian float32 (taming's rgba_to_depth).
_DEPTH_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F", "RGBA")


def read_depth_map(path: PathLike) -> np.ndarray:
    """A depth map file (PNG or TIFF of a _DEPTH_MODES mode, or .npy [H, W] / [1, H, W]) ->
    float32 [H, W] in [-1, 1], scaled per map as upstream: 2 (d - min) / max(max - min, 1e-8) - 1
    (a flat map is all -1). The trainer reads its depth maps here too, so a map means the same
    to a model in training and in a bundle."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        depth = read_npy(path)
        if depth.ndim == 3 and depth.shape[0] == 1:
            depth = depth[0]
        if depth.ndim != 2 or not (np.issubdtype(depth.dtype, np.floating)
                                   or np.issubdtype(depth.dtype, np.integer)):
            raise RequestError(f"{path}: a depth map .npy must be a real array [H, W] or "
                               f"[1, H, W], got {depth.dtype} {list(depth.shape)}")
    else:
        Image, UnidentifiedImageError = _pil()
        try:
            with Image.open(path) as image:
                if image.mode not in _DEPTH_MODES:
                    raise RequestError(
                        f"{path}: a depth map must be a grayscale (8/16/32-bit), float or "
                        f"upstream RGBA-float image, got mode {image.mode}")
                mode = image.mode
                depth = np.array(image)
        except FileNotFoundError:
            raise RequestError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError) as e:
            raise RequestError(f"{path}: not a readable image ({' '.join(str(e).split())})") \
                from None
        if mode == "RGBA":  # [H, W, 4] uint8 -> [H, W] float32, the bytes reinterpreted
            depth = np.ascontiguousarray(depth).view("<f4")[..., 0]
    depth = depth.astype(np.float64)
    if not np.isfinite(depth).all():
        raise RequestError(f"{path}: the depth map holds NaN or infinite values"
                           + (" (an RGBA depth map must hold float32 depths, as upstream "
                              "writes them)" if path.suffix.lower() != ".npy" else ""))
    low, high = depth.min(), depth.max()
    return (2.0 * (depth - low) / max(high - low, 1e-8) - 1.0).astype(np.float32)


def read_cond_map(path: PathLike, conditioning: Conditioning) -> np.ndarray:
    """A condition map file -> float32 [1, C, H, W] for the cond_encoder graph (or coordinates).

    .npy: the array itself, [C, H, W] or [B, C, H, W]. Images, by the condition:
    segmentation: an 8-bit label map (mode L or P) -> one-hot over cond_channels labels;
    one channel (depth): read_depth_map (coordinates: an 8-bit map / 255, in [0, 1]);
    three channels: an RGB image -> [-1, 1].
    """
    path = Path(path)
    if conditioning is None or (conditioning.cond_channels is None
                                and conditioning.kind != "coord"):
        # Said before the file is read: it names the mistake (--cond on a bundle that takes no
        # condition map), not a file format the bundle has no use for.
        kind = "none" if conditioning is None else conditioning.kind
        raise RequestError(f"{path}: this bundle takes no condition map (its conditioning is "
                           f"{kind}): cond (--cond) does not apply")
    if path.suffix.lower() == ".npy":
        array = read_npy(path)
        return array[None] if array.ndim == 3 else array
    channels = conditioning.cond_channels
    if conditioning.kind == "coord":
        return (_open(path, ("L",), "a coordinate map").astype(np.float32) / 255.0)[None, None]
    if conditioning.cond_stage_key == "segmentation":
        labels = _open(path, ("L", "P"), "a label map", labels=True)[None]
        try:
            return segmentation_one_hot(labels, channels)
        except RequestError as e:
            raise RequestError(f"{path}: {e}") from None
    if channels == 1:
        return read_depth_map(path)[None, None]
    if channels == 3:
        rgb = read_image(path).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])
    raise RequestError(f"{path}: this bundle's condition has {channels} channels; give it as a "
                       f"float32 .npy [B, {channels}, H, W]")


def tile(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> one grid uint8 [rows * H, columns * W, C] (see the module doc)."""
    batch, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / columns)
    grid = np.zeros((rows, columns, height, width, channels), dtype=np.uint8)
    grid.reshape(rows * columns, height, width, channels)[:batch] = images
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * height, columns * width, channels)


def write_atomically(path: PathLike, write: Callable[[object], None]) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it into place: the
    destination holds either its old content or the complete new file, never a partial one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RequestError(f"{path}: the folder {path.parent} does not exist")
    # os.open with mode 0o666 honours the umask, as a plain open() of the destination would.
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise RequestError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(descriptor, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        os.unlink(temporary)
        if isinstance(e, OSError):  # a full disk, a quota, a folder turned read-only
            raise RequestError(f"{path}: cannot write ({e.strerror or e}); nothing was "
                               "written there") from None
        raise


def write_png(path: PathLike, images: np.ndarray) -> None:
    """uint8 [B, H, W, C] (C 1 or 3) -> one PNG, a grid when B > 1."""
    Image, _ = _pil()
    grid = tile(images)
    picture = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    write_atomically(path, lambda f: picture.save(f, format="PNG"))


def write_npy(path: PathLike, array: np.ndarray) -> None:
    write_atomically(path, lambda f: np.save(f, array, allow_pickle=False))

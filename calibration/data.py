"""Calibration sets from a folder of real images, for `vqrt build --precision int8`.

A folder (searched recursively for JPEG/PNG, as `vqrt train`) is split in two by file name:

  held out     the files `vqrt train` holds out with its default --val-fraction 0.1 (SHA-1 of the
               relative path, trainer/data.py), at most MAX_HELD_OUT of them: the quality report
               measures on these, so a model trained on the same folder has never seen them;
  calibration  `count` of the other files, the ones with the smallest SHA-1 keys (a fixed,
               name-only choice that spreads over sub-folders).

Every chosen file is decoded, its shorter side resized to the model's training size (bicubic,
as training) and centre-cropped to a square. From those images:

  encoder_inputs    float32 [N, C, S, S] in [-1, 1]          (the encoder graph's calibration)
  decoder_latents   int64 [N, h, w]: the images' codes        (the decoder graph's calibration)
  sequences         int64 [N, P + h*w]: prefix + codes in raster order (the transformer report),
                    for prefixes that need no condition input (SOS, class id); None otherwise

and the same for the held-out images. Codes come from the fp32 torch model. Anything wrong with
the folder stops with a CalibrationError whose message is one line naming the folder or file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from vqrt.trainer.checkpoints import LoadedModel
from vqrt.trainer.data import DataError, held_out_fraction, list_images, load_photo
from vqrt.trainer.model_card import model_card

HELD_OUT_FRACTION = 0.1  # `vqrt train --val-fraction` default: the same files stay unseen
MAX_HELD_OUT = 32  # enough for a stable PSNR; the report runs at build time
DEFAULT_COUNT = 64
ENCODE_BATCH = 8
SAMPLE_TOP_K = 100  # as `make demo` samples
DEFAULT_SAMPLED = 8  # sequences the build samples from the fp32 model for the NLL report

PathLike = Union[str, Path]


class CalibrationError(ValueError):
    """Calibration data that cannot be used; the message is one line naming the folder or file."""


@dataclass(frozen=True)
class ImageSelection:
    root: Path
    calibration: Tuple[str, ...]  # paths relative to root, '/'-separated
    held_out: Tuple[str, ...]
    available: int  # images found in the folder

    def digest(self) -> str:
        """SHA-256 over the chosen files' names and bytes: names the exact calibration set."""
        digest = hashlib.sha256()
        for group, names in (("calibration", self.calibration), ("held_out", self.held_out)):
            for name in names:
                digest.update(f"{group}\0{name}\0".encode("utf-8"))
                digest.update(hashlib.sha256((self.root / name).read_bytes()).digest())
        return digest.hexdigest()


def select_images(folder: PathLike, count: int, max_held_out: int = MAX_HELD_OUT
                  ) -> ImageSelection:
    """The calibration and held-out files of folder (see the module doc); nothing is decoded."""
    root = Path(folder)
    if count < 1:
        raise CalibrationError(f"--calibration-count must be at least 1, got {count}")
    try:
        files = list_images(root)
    except DataError as e:
        raise CalibrationError(f"--calibration-data {e}") from None
    except OSError as e:
        raise CalibrationError(f"--calibration-data {root}: cannot read the folder "
                               f"({e.strerror or e})") from None
    names = [p.relative_to(root).as_posix() for p in files]
    keys = {name: held_out_fraction(name) for name in names}
    by_key = sorted(names, key=keys.__getitem__)
    held = [n for n in by_key if keys[n] < HELD_OUT_FRACTION] or by_key[:1]
    held = held[:max_held_out]
    held_set = set(held)
    rest = [n for n in by_key if n not in held_set]
    if len(rest) < count:
        raise CalibrationError(
            f"--calibration-data {root}: {len(names)} image(s), {len(held)} held out for the "
            f"quality report, leaves {len(rest)} for calibration, fewer than --calibration-count "
            f"{count}; add images or lower the count")
    return ImageSelection(root, tuple(rest[:count]), tuple(held), len(names))


def load_square_images(root: Path, names: Sequence[str], size: int) -> np.ndarray:
    """-> float32 [N, 3, size, size] in [-1, 1]: shorter side resized to size (bicubic, as
    training), centre crop."""
    images = []
    for name in names:
        try:
            photo = load_photo(root / name, size)  # (3, H, W) uint8, min(H, W) == size
        except DataError as e:
            raise CalibrationError(str(e)) from None
        _, height, width = photo.shape
        top, left = (height - size) // 2, (width - size) // 2
        crop = photo[:, top:top + size, left:left + size].numpy().astype(np.float32)
        images.append(crop / np.float32(127.5) - np.float32(1.0))
    return np.stack(images)


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: np.ndarray) -> np.ndarray:
    """float32 [N, C, S, S] -> codes int64 [N, h, w] by the fp32 torch first stage."""
    vq = loaded.first_stage
    codes = [vq.encode_to_indices(torch.from_numpy(images[i:i + ENCODE_BATCH])).numpy()
             for i in range(0, len(images), ENCODE_BATCH)]
    return np.concatenate(codes).astype(np.int64)


def sequence_prefixes(loaded: LoadedModel, count: int) -> Optional[Tuple[np.ndarray, str]]:
    """-> (prefix tokens int64 [count, P], how they were chosen), or None when the prefix needs
    a condition input that photos alone do not give (cond_encoder, coord)."""
    c = model_card(loaded).conditioning
    if c.kind == "unconditional":
        return np.full((count, 1), c.sos_token, dtype=np.int64), f"SOS token {c.sos_token}"
    if c.kind == "class":
        # The photos carry no labels: classes in turn, so every class is measured.
        classes = np.arange(count, dtype=np.int64) % c.n_classes
        return classes[:, None], f"class ids 0..{c.n_classes - 1} in turn (photos are unlabelled)"
    return None


def with_prefix(prefix: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """prefix [N, P], codes [N, h, w] -> [N, P + h*w] (raster order)."""
    return np.concatenate([prefix, codes.reshape(len(codes), -1)], axis=1).astype(np.int64)


@torch.no_grad()
def sample_sequences(loaded: LoadedModel, prefix: np.ndarray, steps: int, seed: int,
                     top_k: int = SAMPLE_TOP_K) -> np.ndarray:
    """Sequences the fp32 torch model samples itself (top-k, temperature 1): prefix [N, P] ->
    [N, P + steps]. Measures the int8 weights on what the model generates, not only on codes
    of photos."""
    gpt = loaded.transformer
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.from_numpy(prefix)
    cache = gpt.new_cache(len(prefix), prefix.shape[1] + steps - 1)
    step_input, generated = tokens, []
    codebook = loaded.first_stage.cfg.n_embed  # image tokens come from the codebook's range
    for _ in range(steps):
        logits = gpt.forward_cached(step_input, cache)[:, -1, :codebook]
        kth = torch.topk(logits, min(top_k, codebook), dim=-1).values[:, -1:]
        probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        step_input = torch.multinomial(probs, 1, generator=generator)
        generated.append(step_input)
    return torch.cat([tokens] + generated, dim=1).numpy().astype(np.int64)


@dataclass(frozen=True)
class CalibrationSet:
    selection: ImageSelection
    size: int  # the training size S the images were brought to
    encoder_inputs: np.ndarray  # float32 [N, C, S, S]
    decoder_latents: np.ndarray  # int64 [N, h, w]
    held_out_images: np.ndarray  # float32 [M, C, S, S]
    held_out_latents: np.ndarray  # int64 [M, h, w]
    held_out_sequences: Optional[np.ndarray]  # int64 [M, P + h*w], or None (see module doc)
    sampled_sequences: Optional[np.ndarray]  # int64 [K, P + h*w] from the fp32 model, or None
    prefix_rule: str  # how the sequences' prefixes were chosen ("" without sequences)

    def describe(self) -> str:
        s = self.selection
        text = (f"{len(s.calibration)} calibration and {len(s.held_out)} held-out images of "
                f"{s.available} in {s.root} ({self.size}x{self.size}, centre crop)")
        if self.held_out_sequences is not None:
            text += f"; sequence prefixes: {self.prefix_rule}"
        if self.sampled_sequences is not None:
            text += f"; {len(self.sampled_sequences)} sequences sampled from the fp32 model"
        return text


def build_calibration_set(loaded: LoadedModel, folder: PathLike, count: int = DEFAULT_COUNT,
                          sampled: int = 0, seed: int = 0) -> CalibrationSet:
    """The calibration and held-out arrays of folder for this model (see the module doc);
    sampled > 0 adds that many sequences sampled from the fp32 transformer."""
    vq = loaded.first_stage
    dd = vq.cfg.ddconfig
    if dd.in_channels != 3:
        raise CalibrationError(f"the first stage takes {dd.in_channels}-channel inputs; "
                               "calibration from photos needs an RGB model")
    if vq.cfg.quantizer == "gumbel" and vq.cfg.embed_dim != dd.z_channels:
        raise CalibrationError("this GumbelVQ cannot encode images (embed_dim != z_channels), "
                               "so photos give no codes to calibrate with")
    selection = select_images(folder, count)
    size = dd.resolution
    images = load_square_images(selection.root, selection.calibration, size)
    held_images = load_square_images(selection.root, selection.held_out, size)
    latents, held_latents = encode_images(loaded, images), encode_images(loaded, held_images)
    held_sequences = sampled_sequences = None
    rule = ""
    if loaded.transformer is not None:
        prefixes = sequence_prefixes(loaded, len(held_latents))
        if prefixes is not None:
            held_sequences, rule = with_prefix(prefixes[0], held_latents), prefixes[1]
            if sampled > 0:
                prefix = sequence_prefixes(loaded, sampled)[0]
                sampled_sequences = sample_sequences(loaded, prefix, held_latents[0].size, seed)
    return CalibrationSet(selection, size, images, latents, held_images, held_latents,
                          held_sequences, sampled_sequences, rule)

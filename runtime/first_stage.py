"""The VQGAN side of a bundle: images to code indices (encoder graph), indices to images
(decoder graph), and the checks of sizes, batches and codes against the bundle's limits.

Pixels follow upstream's image logger (taming main.py ImageLogger / log_images with clamp):
    x = clip(x, -1, 1); x = (x + 1) / 2; pixels = (x * 255).astype(uint8)
in float32, so 255 is reached only at x = 1 and every other value truncates toward zero (no
rounding). Inputs go the other way as upstream's datasets do: x = pixels / 127.5 - 1.
This module never imports torch.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from vqrt.runtime.bundle import REBUILD, Bundle, BundleError
from vqrt.runtime.onnx_sessions import OrtGraph
from vqrt.runtime.params import RequestError
from vqrt.runtime.tensorrt_backend import REBUILD_LARGER, TensorRTGraphs, TensorRTRunner
from vqrt.runtime.tiled_decode import TiledDecoder, TilePlan

# What encode accepts beyond the manifest's value_range, as a share of its span on each side:
# resampling (bicubic, Lanczos) overshoots a little; beyond this the input is on another scale.
IMAGE_RANGE_SLACK = 0.25


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    """Decoder output float32 [B, C, H, W] -> uint8 [B, H, W, C], upstream's conversion."""
    x = np.clip(np.asarray(decoded, dtype=np.float32), -1.0, 1.0)
    x = (x + np.float32(1.0)) / np.float32(2.0)
    return np.ascontiguousarray((x * np.float32(255.0)).astype(np.uint8).transpose(0, 2, 3, 1))


def from_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in [-1, 1] (x / 127.5 - 1, as upstream)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise RequestError(f"pixels must be uint8 [B, H, W, C], got {pixels.dtype} "
                           f"{list(pixels.shape)}")
    x = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def vqgan_graph(bundle: Bundle, name: str, outputs: Sequence[str],
                engines: Optional[TensorRTGraphs], providers: Tuple[str, ...], device: str,
                num_threads: int, load_now: bool, remedy: str = REBUILD_LARGER
                ) -> Union[OrtGraph, TensorRTRunner]:
    """The bundle's graph `name` (an encoder) on its TensorRT engine where `engines` is given
    (decoder engine "tensorrt": TiledDecoder.engine_graphs) and the bundle has that engine,
    else on ONNX Runtime. load_now: load the engine now, not on its first run. remedy: what a
    shape the engine's profile refuses should do."""
    if engines is not None and name in bundle.manifest.tensorrt.engines:
        return engines.runner(name, outputs, remedy, load_now)
    # Whole images: with a memory pattern, twice a megapixel encode's need from the second call.
    return OrtGraph(bundle.graph_path(name), providers, device, num_threads, pattern=False,
                    spec=bundle.manifest.graphs[name])


def finite_bounds(values: np.ndarray, refusal: str) -> Tuple[float, float]:
    """(min, max) of a non-empty array; a RequestError(refusal) where it holds NaN or an
    infinity (min and max, not isfinite: no temporary the size of a megapixel one-hot map)."""
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RequestError(refusal)
    return low, high


class FirstStage:
    """The encoder and the tiled decoder of one bundle (read-only, shared across threads).
    Images always decode through the tiled decoder (runtime/tiled_decode.py), the one decoding
    routine. With decoder engine "tensorrt" the encoder runs on its engine too, loaded when it
    first encodes (few processes do), in the decoder engines' TensorRTGraphs."""

    def __init__(self, bundle: Bundle, providers: Tuple[str, ...], device: str,
                 num_threads: int, decoder_engine: str = "auto"):
        m = bundle.manifest
        self.bundle = bundle
        self.factor = m.first_stage.downsampling_factor
        self.channels = m.first_stage.image_channels
        self.codebook_size = m.first_stage.codebook_size
        self.limits = m.limits
        if m.tiled_decoder is None:
            raise BundleError(f"{bundle.path}: the bundle has no tiled decoder; {REBUILD} of "
                              "this vqrt")
        self._decoder = TiledDecoder(bundle, providers, device, num_threads, decoder_engine)
        self.engine_graphs = self._decoder.engine_graphs
        self._encoder = (vqgan_graph(bundle, "encoder", ("indices",), self.engine_graphs,
                                     providers, device, num_threads, load_now=False)
                         if "encoder" in m.graphs else None)

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        found = {"decoder": self._decoder.providers}
        if self._encoder is not None:
            found["encoder"] = self._encoder.providers()
        return found

    # --- checks against the bundle's limits ---------------------------------------------------

    def check_batch(self, batch: int) -> None:
        limit = self.limits.max_batch
        if batch < 1:
            raise RequestError(f"batch must be at least 1, got {batch}")
        if batch > limit:
            raise RequestError(f"requested batch {batch} exceeds the bundle's max batch {limit} "
                               f"(split the request, or rebuild with `vqrt build --max-batch "
                               f"{batch}`)")

    def check_latent(self, h: int, w: int, asked: bool = True) -> None:
        """asked: the size was asked for; else it is the default, the training size (a bundle
        built with --max-size below it)."""
        max_h, max_w = self.limits.max_latent
        if h > max_h or w > max_w:
            f = self.factor
            if not asked:
                raise RequestError(f"no size was asked for, and the default, the training size "
                                   f"{w * f}x{h * f}, exceeds the bundle's largest "
                                   f"{max_w * f}x{max_h * f}: ask for a size within it "
                                   f"(--size WxH, or params.size)")
            raise RequestError(f"requested {w * f}x{h * f} pixels (latent {h}x{w}) exceeds the "
                               f"bundle's largest {max_w * f}x{max_h * f} (latent {max_h}x"
                               f"{max_w}); rebuild with `vqrt build --max-size WxH` for more")

    def latent_grid(self, size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
        """size (width, height) in pixels, None = training size -> latent (h, w)."""
        f = self.factor
        if size is None:
            h, w = self.bundle.manifest.first_stage.training_grid
            self.check_latent(h, w, asked=False)
            return h, w
        for side, value in zip(("width", "height"), size):
            if value % f:
                low, high = max(f, value - value % f), value - value % f + f
                raise RequestError(f"size {side} {value} is not a multiple of the downsampling "
                                   f"factor {f} (try {low} or {high})")
        width, height = size
        self.check_latent(height // f, width // f)
        return height // f, width // f

    def check_codes(self, codes: np.ndarray, what: str) -> np.ndarray:
        """Integer codes of any shape -> int64, each in [0, codebook size)."""
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise RequestError(f"{what} must be integers, got {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            bad = int(codes.max()) if codes.max() >= self.codebook_size else int(codes.min())
            raise RequestError(f"{what} holds code {bad}, outside the codebook's [0, "
                               f"{self.codebook_size})")
        return np.ascontiguousarray(codes, dtype=np.int64)

    # --- graphs -------------------------------------------------------------------------------

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images float32 [B, C, H, W] in [-1, 1], H and W multiples of f -> int64 [B, h, w]."""
        if self._encoder is None:
            raise RequestError(f"{self.bundle.path}: the bundle has no encoder graph (see its "
                               "notes: this first stage cannot encode)")
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != self.channels or 0 in images.shape:
            raise RequestError(f"images must be float32 [B, {self.channels}, H, W] with B, H and "
                               f"W at least 1, got {images.dtype} {list(images.shape)}")
        if images.dtype.kind != "f":
            raise RequestError(f"images must be float32 in [-1, 1], got {images.dtype}")
        self.check_batch(images.shape[0])
        self.latent_grid((images.shape[3], images.shape[2]))
        images = np.ascontiguousarray(images, dtype=np.float32)
        low, high = finite_bounds(images, "images hold NaN or infinite values")
        # Most often 0..255 pixels for [-1, 1], which would encode to nonsense.
        least, most = self.bundle.manifest.first_stage.value_range
        slack = IMAGE_RANGE_SLACK * (most - least)
        if low < least - slack or high > most + slack:
            raise RequestError(f"images must be in [{least:g}, {most:g}], got values in "
                               f"[{low:.4g}, {high:.4g}] (from_pixels makes them from uint8 "
                               "pixels)")
        return self._encoder.run({"image": images})[0]

    def plan_decode(self, batch: int, h: int, w: int, tile: Optional[int] = None,
                    max_memory: Optional[int] = None) -> TilePlan:
        """The tile plan for decoding [batch, h, w] codes; a RequestError when it cannot fit
        max_memory (bytes), raised before anything is allocated."""
        return self._decoder.plan(batch, h, w, tile, max_memory)

    def decode(self, codes: np.ndarray, tile: Optional[int] = None,
               max_memory: Optional[int] = None) -> np.ndarray:
        """codes int64 [B, h, w] -> the decoder's raw output float32 [B, C, h*f, w*f], decoded
        in tiles of `tile` latent positions (or the largest that fits max_memory bytes)."""
        codes = self.check_codes(codes, "tokens")
        if codes.ndim != 3 or 0 in codes.shape:
            raise RequestError(f"tokens must be [B, h, w] with B, h and w at least 1, got shape "
                               f"{list(codes.shape)}")
        self.check_batch(codes.shape[0])
        self.check_latent(codes.shape[1], codes.shape[2])
        return self._decoder.decode(codes, tile, max_memory)

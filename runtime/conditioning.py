"""Prefix tokens: what the transformer reads before the image tokens, by the manifest's rule.

  class_id      class labels; class c is token c of the shared vocabulary
  sos           unconditional: the manifest's SOS token
  cond_encoder  a spatial condition (one-hot segmentation, depth, an image) through the
                bundle's cond_encoder graph, tokens in raster order
  coord         a coordinate map in [0, 1], area-downsampled by coord_down_factor, times
                coord_n_embed, rounded half to even (upstream CoordStage)

One row of conditioning serves a whole batch (it is repeated); otherwise the batch is the
number of rows (batch_rows). Segmentation maps become the cond stage's input with `segmentation_one_hot`.
This module never imports torch.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from vqrt.runtime.bundle import Bundle
from vqrt.runtime.first_stage import finite_bounds, vqgan_graph
from vqrt.runtime.params import RequestError
from vqrt.runtime.tensorrt_backend import TensorRTGraphs

ClassLabels = Union[int, Sequence[int], np.ndarray]


def segmentation_one_hot(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Label maps integer [B, H, W] -> float32 [B, n_labels, H, W] with 1 at each pixel's
    label and 0 elsewhere (upstream's segmentation cond input)."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise RequestError(f"a label map must be integer [B, H, W], got {labels.dtype} "
                           f"{list(labels.shape)}")
    if labels.size and (labels.max() >= n_labels or labels.min() < 0):
        # A negative label would index the one-hot axis from its end: refuse it too.
        bad = int(labels.max()) if labels.max() >= n_labels else int(labels.min())
        raise RequestError(f"label map holds label {bad}, but the model has "
                           f"{n_labels} labels (0..{n_labels - 1})")
    one_hot = np.zeros((labels.shape[0], n_labels) + labels.shape[1:], dtype=np.float32)
    np.put_along_axis(one_hot, labels[:, None].astype(np.int64), 1.0, axis=1)
    return one_hot


def batch_rows(given: int, batch_size: Optional[int], what: str) -> int:
    """The batch of a request whose condition has `given` rows: one row is repeated to
    batch_size; otherwise batch_size (when set) must equal the number of rows."""
    if batch_size is None or batch_size == given:
        return given
    if given == 1:
        return batch_size
    raise RequestError(f"batch_size {batch_size} does not match the {given} rows of {what} "
                       f"(give one row to repeat it, or leave batch_size (--batch) out)")


class Conditioner:
    """Makes the prefix tokens of a request (read-only; the cond_encoder graph is shared).
    engines: the VQGAN's TensorRT engines (FirstStage.engine_graphs, decoder engine
    "tensorrt"), where the cond_encoder graph then runs, else on ONNX Runtime."""

    def __init__(self, bundle: Bundle, providers: Tuple[str, ...], device: str,
                 num_threads: int, engines: Optional[TensorRTGraphs] = None):
        m = bundle.manifest
        self.rule = m.tokenization.prefix
        self.conditioning = m.conditioning
        self.max_batch = m.limits.max_batch
        self.vocab_size = m.transformer.vocab_size
        self._factor = m.first_stage.downsampling_factor
        self._max_latent = m.limits.max_latent  # (h, w)
        self._cond_encoder = None
        if self.rule == "cond_encoder":
            # Rows are checked first (_encode_cond); what the engine's profile can still refuse
            # is a condition larger than the largest image, which only a graph that resizes
            # it (conditioning.cond_resize) accepts at all.
            f = m.first_stage.downsampling_factor
            largest = "x".join(str(side * f) for side in reversed(m.limits.max_latent))
            self._cond_encoder = vqgan_graph(
                bundle, "cond_encoder", ("cond_tokens",), engines, providers, device,
                num_threads, load_now=True,
                remedy=f"resize the condition to at most {largest} pixels (the bundle's largest "
                       "image), or use decoder engine onnxruntime")

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        if self._cond_encoder is None:
            return {}
        return {"cond_encoder": self._cond_encoder.providers()}

    def describe(self) -> str:
        c = self.conditioning
        return {"class_id": f"class-conditional ({c.n_classes} classes)",
                "sos": "unconditional", "cond_encoder": f"conditioned on a {c.cond_stage_key} map",
                "coord": "conditioned on a coordinate map"}.get(self.rule, self.rule)

    def prefix(self, class_labels: Optional[ClassLabels], cond: Optional[np.ndarray],
               image_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """-> int64 [N, P]: the prefix tokens of each row of the condition (batch_rows says
        how N rows make the batch). image_size: the request's (H, W) in pixels; a spatial
        condition the cond stage does not resize must have it (as upstream's datasets crop
        image and condition alike), else its tokens would lie on another grid than the
        image's."""
        wants_labels, wants_cond = self.rule == "class_id", self.rule in ("cond_encoder", "coord")
        if (class_labels is not None) != wants_labels:
            raise RequestError(f"this bundle is {self.describe()}: "
                               + ("pass class_labels (--class N)" if wants_labels
                                  else "class_labels (--class) do not apply"))
        if (cond is not None) != wants_cond:
            raise RequestError(f"this bundle is {self.describe()}: "
                               + ("pass cond, the condition map (--cond MAP)" if wants_cond
                                  else "cond (--cond) does not apply"))
        if self.rule == "class_id":
            rows = self._class_tokens(class_labels)
        elif self.rule == "sos":
            rows = np.full((1, self.conditioning.prefix_tokens), self.conditioning.sos_token,
                           dtype=np.int64)
        elif self.rule == "cond_encoder":
            rows = self._encode_cond(cond, image_size)
        elif self.rule == "coord":
            rows = self._coord_tokens(cond, image_size)
        else:
            raise RequestError(f"prefix rule {self.rule!r} is not known to this runtime; "
                               "update vqrt")
        return rows

    def _class_tokens(self, class_labels: ClassLabels) -> np.ndarray:
        labels = np.atleast_1d(np.asarray(class_labels))
        if labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu":
            raise RequestError(f"class_labels must be one integer or a list of them, got "
                               f"{class_labels!r}")
        n = self.conditioning.n_classes
        for label in labels:
            if not 0 <= label < n:
                raise RequestError(f"class id {int(label)} is out of range: the bundle has {n} "
                                   f"classes (0..{n - 1})")
        return labels.astype(np.int64)[:, None]

    def _spatial(self, cond: np.ndarray, channels: int, what: str,
                 image_size: Optional[Tuple[int, int]]) -> np.ndarray:
        """cond checked as float32 [B, channels, H, W], and of the image's size (H, W) unless
        the cond stage resizes it or no image_size is given."""
        cond = np.asarray(cond)
        if (cond.ndim != 4 or cond.dtype.kind != "f" or cond.shape[1] != channels
                or 0 in cond.shape):
            raise RequestError(f"cond must be float32 [B, {channels}, H, W] ({what}) with B, H "
                               f"and W at least 1, got {cond.dtype} {list(cond.shape)}")
        finite_bounds(cond, f"cond holds NaN or infinite values ({what})")
        _, _, h, w = cond.shape
        if (image_size is not None and self.conditioning.cond_resize is None
                and (h, w) != tuple(image_size)):
            height, width = image_size
            f, (max_h, max_w) = self._factor, self._max_latent
            # Offer the map's size only where the bundle could generate it.
            servable = h % f == 0 and w % f == 0 and h // f <= max_h and w // f <= max_w
            raise RequestError(f"the condition map is {w}x{h} pixels but the image is "
                               f"{width}x{height}: they must match (resize the map"
                               + (f", or generate at its size, --size {w}x{h})" if servable
                                  else f" to {width}x{height})"))
        return np.ascontiguousarray(cond, dtype=np.float32)

    def _encode_cond(self, cond: np.ndarray, image_size: Optional[Tuple[int, int]]
                     ) -> np.ndarray:
        c = self.conditioning
        cond = self._spatial(cond, c.cond_channels, f"{c.cond_stage_key}, {c.cond_channels} "
                                                    "channels", image_size)
        if cond.shape[0] > self.max_batch:
            raise RequestError(f"cond has {cond.shape[0]} rows, more than the bundle's max batch "
                               f"{self.max_batch} (split the request, or rebuild with `vqrt "
                               f"build --max-batch {cond.shape[0]}`)")
        try:
            return self._cond_encoder.run({"cond": cond})[0]
        except (Fail, InvalidArgument, RuntimeException) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RequestError(f"the cond_encoder graph rejected cond of shape "
                               f"{list(cond.shape)} (height and width must be multiples of its "
                               f"downsampling factor): {first}") from None

    def _coord_tokens(self, cond: np.ndarray, image_size: Optional[Tuple[int, int]]
                      ) -> np.ndarray:
        c = self.conditioning
        cond = self._spatial(cond, 1, "coordinates in [0, 1]", image_size)
        if cond.size and (cond.min() < 0.0 or cond.max() > 1.0):
            raise RequestError(f"coordinates must lie in [0, 1], got [{cond.min()}, "
                               f"{cond.max()}]")
        df = c.coord_down_factor
        b, _, height, width = cond.shape
        if height % df or width % df:
            raise RequestError(f"coordinate map {width}x{height} is not a multiple of the "
                               f"coord down factor {df}")
        # Area downsampling of whole df x df blocks is their mean: [B, 1, H/df, W/df].
        small = cond.reshape(b, 1, height // df, df, width // df, df).mean(axis=(3, 5),
                                                                            dtype=np.float32)
        tokens = np.rint(np.float32(c.coord_n_embed) * np.clip(small, 0.0, 1.0))
        if tokens.size and tokens.max() >= self.vocab_size:
            # n_embed == vocab_size (upstream's faceshq): x ~ 1 would index past the embedding.
            raise RequestError(f"coordinates as high as {float(small.max()):.6g} (averaged over "
                               f"{df}x{df} blocks) make token {int(tokens.max())}, outside the "
                               f"transformer's vocabulary [0, {self.vocab_size}): keep them "
                               f"below {(self.vocab_size - 0.5) / c.coord_n_embed:.6g}")
        return tokens.astype(np.int64).reshape(b, -1)

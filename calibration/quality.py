"""The quality report of an int8 build: int8 against fp32 on held-out real data, same engine.

  decoder      psnr_db (pixels clamp((x + 1) / 2, 0, 1), MSE pooled over every held-out image,
               so one bad image counts in full; the worst image is in the detail) and ssim (mean
               over images); DECODER_MIN_PSNR_DB enforced
  encoder      indices_agreement of the int8 and fp32 encoder graphs on the held-out images
               (informational: near-tie codes may flip)
  native       teacher-forced NLL (nats per image token, full-vocabulary softmax) of the fp32
               and the int8 native weights on held-out token sequences; nll_increase =
               nll_int8 / nll_fp32 - 1, at most NLL_MAX_INCREASE; argmax_agreement: where the
               two weights' most likely next tokens agree, teacher-forced (informational)

Both sides of each comparison run on the same engine (ONNX Runtime CPU for the graphs,
vqrt._native for the transformer), so the numbers isolate quantization.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Mapping, Optional

import numpy as np
import onnxruntime as ort
import torch

from vqrt.runtime.bundle import ParityCheck
from vqrt.runtime.native_decoder import GPTShape, NativeDecoder
from vqrt.trainer.evaluate import ssim

DECODER_MIN_PSNR_DB = 35.0
NLL_MAX_INCREASE = 0.02  # relative: int8 NLL at most 2% above fp32
PSNR_CAP = 200.0
BATCH = 8


def _check(graph: str, metric: str, value: float, limit: Optional[float], passed: bool,
           detail: str = "") -> ParityCheck:
    """A non-finite value fails and is stored as None (the manifest is strict JSON)."""
    if not math.isfinite(value):
        return ParityCheck(graph, metric, None, limit, False,
                           "; ".join(filter(None, [detail, "NaN or inf in the output"])))
    return ParityCheck(graph, metric, float(value), limit, bool(passed), detail)


def run_graph(path: Path, input_name: str, inputs: np.ndarray) -> np.ndarray:
    """The graph's first output for inputs [N, ...], BATCH at a time, ONNX Runtime CPU."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: inputs[i:i + BATCH]})[0]
                           for i in range(0, len(inputs), BATCH)])


def _pixels(x: np.ndarray) -> np.ndarray:
    return np.clip((x.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)


def _psnr(mse: float) -> float:
    return PSNR_CAP if mse == 0.0 else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def image_checks(reference: np.ndarray, image: np.ndarray) -> List[ParityCheck]:
    """Decoder outputs [N, C, H, W] (raw, fp32 reference first) -> psnr_db, ssim."""
    ref, img = _pixels(reference), _pixels(image)
    per_image = ((ref - img) ** 2).reshape(len(ref), -1).mean(axis=1)
    psnr = _psnr(float(per_image.mean())) if np.isfinite(per_image).all() else float("nan")
    worst = _psnr(float(per_image.max())) if np.isfinite(per_image).all() else float("nan")
    similarity = float(ssim(torch.from_numpy(ref), torch.from_numpy(img)).mean())
    detail = f"{len(ref)} held-out images, worst image {worst:.2f} dB"
    return [_check("decoder", "psnr_db", psnr, DECODER_MIN_PSNR_DB, psnr >= DECODER_MIN_PSNR_DB,
                   detail),
            _check("decoder", "ssim", similarity, None, True, detail)]


def decoder_checks(fp32_path: Path, int8_path: Path, latents: np.ndarray) -> List[ParityCheck]:
    return image_checks(run_graph(fp32_path, "indices", latents),
                        run_graph(int8_path, "indices", latents))


def encoder_checks(fp32_path: Path, int8_path: Path, images: np.ndarray) -> List[ParityCheck]:
    reference = run_graph(fp32_path, "image", images)
    codes = run_graph(int8_path, "image", images)
    agreement = float(np.mean(reference == codes))
    detail = (f"{int((reference != codes).sum())} of {reference.size} codes differ on "
              f"{len(images)} held-out images")
    return [_check("encoder", "indices_agreement", agreement, None, True, detail)]


def teacher_forced_logits(decoder: NativeDecoder, sequences: np.ndarray, prefix: int
                          ) -> np.ndarray:
    """sequences int64 [B, T] -> logits float32 [B, T - prefix, V]: column t predicts token
    prefix + t from the true tokens before it (one prefill of the prefix, then steps)."""
    logits = [decoder.prefill(sequences[:, :prefix])]
    for position in range(prefix, sequences.shape[1] - 1):
        logits.append(decoder.step(sequences[:, position], position))
    return np.stack(logits, axis=1)


def nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean -log softmax(logits)[target] in nats, float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(x - top).sum(axis=-1))
    chosen = np.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    return float(np.mean(log_z - chosen))


def transformer_checks(shape: GPTShape, fp32_tensors: Mapping[str, np.ndarray],
                       int8_tensors: Mapping[str, np.ndarray], int8_dtypes: Mapping[str, str],
                       sequences: np.ndarray, prefix: int, what: str = "held-out"
                       ) -> List[ParityCheck]:
    """fp32 against int8 native weights on sequences int64 [N, P + h*w] (P = prefix)."""
    if sequences.shape[1] - 1 > shape.block_size:
        raise ValueError(f"sequences of {sequences.shape[1]} tokens exceed the block size "
                         f"{shape.block_size} + 1")
    targets = sequences[:, prefix:]
    results = {}
    for name, tensors, dtypes in (("fp32", fp32_tensors, None),
                                  ("int8", int8_tensors, int8_dtypes)):
        logits = []
        for i in range(0, len(sequences), BATCH):
            batch = sequences[i:i + BATCH]
            decoder = NativeDecoder(shape, tensors, dtypes, max_batch=len(batch))
            logits.append(teacher_forced_logits(decoder, batch, prefix))
        results[name] = np.concatenate(logits)
    nll_fp32 = nll(results["fp32"], targets)
    nll_int8 = nll(results["int8"], targets)
    increase = nll_int8 / nll_fp32 - 1.0
    agreement = float(np.mean(results["fp32"].argmax(-1) == results["int8"].argmax(-1)))
    detail = (f"teacher-forced on {len(sequences)} {what} sequences of {targets.shape[1]} "
              "image tokens, nats per token")
    suffix = "" if what == "held-out" else f"_{what}"
    return [_check("native", f"nll_fp32{suffix}", nll_fp32, None, True, detail),
            _check("native", f"nll_int8{suffix}", nll_int8, None, True, detail),
            _check("native", f"nll_increase{suffix}", increase,
                   NLL_MAX_INCREASE if not suffix else None,
                   increase <= NLL_MAX_INCREASE or bool(suffix), "int8 / fp32 - 1"),
            _check("native", f"argmax_agreement{suffix}", agreement, None, True, detail)]

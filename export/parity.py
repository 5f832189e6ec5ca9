"""Parity report: every graph of a new bundle against the torch model, on fixed inputs.

Inputs (numpy default_rng(SEED), batch 2, training size): images uniform in [-1, 1); random
code-index grids; random token sequences of block_size tokens. Measured with ONNX Runtime (CPU):

  encoder, cond_encoder  indices_agreement (all positions) and indices_agreement_outside_ties
                         (positions where torch's best code beats the graph's choice by more
                         than TIE_TOLERANCE of the score scale: fp32 must agree on all of them)
  decoder                max_abs_error and psnr_db of pixels clamp((x + 1) / 2, 0, 1)
                         (PSNR_CAP dB for identical images)
  transformer_prefill    max_abs_error of logits for whole sequences at position 0
  transformer_step       max_abs_error of logits decoding teacher-forced one token at a time,
                         through the shared KV buffer: positions 1..STEPS after a 1-token
                         prefill, and the last STEPS positions after a prefill of the rest
  transformer_*          argmax_agreement (informational)
  native                 weight_max_rel_error of the stored matrices (informational)

Limits: fp32 graphs within FP32_MAX_ABS; fp16 decoder at least FP16_MIN_PSNR_DB; int8 graphs
are reported here without limits (their limits apply to the quality report on held-out real
data, calibration/quality.py). A build whose report fails stops unless --allow-drift.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from vqrt.runtime.bundle import GraphSpec, KVCacheSpec, ParityCheck, ParityReport
from vqrt.runtime.ort_transformer import OrtTransformer, OrtTransformerGraphs
from vqrt.trainer.checkpoints import LoadedModel
from vqrt.trainer.models.cond import FirstStageCondConfig
from vqrt.trainer.models.vqgan import VQModel

SEED = 0
BATCH = 2
FP32_MAX_ABS = 1e-3
FP16_MIN_PSNR_DB = 40.0
TIE_TOLERANCE = 1e-4
PSNR_CAP = 200.0
STEPS = 16


def psnr_db(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR of the pixels clamp((x + 1) / 2, 0, 1), peak 1; PSNR_CAP when identical, NaN when
    either image holds NaN."""
    to_pixels = lambda x: np.clip((x.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)  # noqa: E731
    mse = float(np.mean((to_pixels(reference) - to_pixels(image)) ** 2))
    if not np.isfinite(mse):
        return float("nan")
    return PSNR_CAP if mse == 0.0 else min(PSNR_CAP, 10.0 * np.log10(1.0 / mse))


def _check(graph: str, metric: str, value: float, limit: Optional[float], passed: bool,
           detail: str = "") -> ParityCheck:
    """A non-finite value (NaN or inf in an output) fails and is stored as None."""
    if not math.isfinite(value):
        return ParityCheck(graph=graph, metric=metric, value=None, limit=limit, passed=False,
                           detail="; ".join(filter(None, [detail, "NaN or inf in the output"])))
    return ParityCheck(graph=graph, metric=metric, value=float(value), limit=limit,
                       passed=bool(passed), detail=detail)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def _code_scores(vq: VQModel, x: torch.Tensor) -> np.ndarray:
    """Higher is better, [B, h, w, N]: minus the squared distance (vq), or the logits of the
    projection (gumbel)."""
    z = vq.encode_latent(x)
    if vq.cfg.quantizer == "gumbel":
        return vq.quantize.proj(z).permute(0, 2, 3, 1).numpy()
    return (-vq.quantize.distances(z)).numpy()


def _indices_checks(graph: str, scores: np.ndarray, indices: np.ndarray,
                    precision: str) -> List[ParityCheck]:
    reference = scores.argmax(axis=-1)
    indices = indices.reshape(reference.shape)
    agreement = float(np.mean(indices == reference))
    best = np.take_along_axis(scores, reference[..., None], axis=-1)[..., 0]
    chosen = np.take_along_axis(scores, indices[..., None], axis=-1)[..., 0]
    scale = np.maximum(1.0, np.abs(scores).max(axis=-1))
    real = (best - chosen) > TIE_TOLERANCE * scale  # mismatches that are not near-ties
    outside = 1.0 - float(real.sum()) / real.size
    differ = int((indices != reference).sum())
    detail = f"{differ} of {reference.size} positions differ, {int(real.sum())} beyond near-ties"
    enforced = precision == "fp32"
    return [_check(graph, "indices_agreement", agreement, None, True, detail),
            _check(graph, "indices_agreement_outside_ties", outside, 1.0 if enforced else None,
                   outside == 1.0 or not enforced, detail)]


def _encoder_checks(path: Path, spec: GraphSpec, vq: VQModel, x: np.ndarray,
                    graph: str, resize: Optional[int] = None) -> List[ParityCheck]:
    output = _session(path).run(None, {spec.inputs[0].name: x})[0]
    x_torch = torch.from_numpy(x)
    if resize is not None:  # as Net2NetTransformer.encode_to_c
        x_torch = F.interpolate(x_torch, size=(resize, resize))
    return _indices_checks(graph, _code_scores(vq, x_torch), output, spec.precision)


@torch.no_grad()
def _decoder_checks(path: Path, spec: GraphSpec, vq: VQModel,
                    indices: np.ndarray) -> List[ParityCheck]:
    reference = vq.decode_indices(torch.from_numpy(indices)).numpy()
    image = _session(path).run(None, {"indices": indices})[0]
    error = float(np.abs(image - reference).max())
    psnr = psnr_db(reference, image)
    fp32, fp16 = spec.precision == "fp32", spec.precision == "fp16"
    # An int8 graph is held to its quality report on real latents instead (calibration/quality):
    # random code grids lie outside the ranges it was calibrated on.
    return [_check("decoder", "max_abs_error", error, FP32_MAX_ABS if fp32 else None,
                   error <= FP32_MAX_ABS or not fp32),
            _check("decoder", "psnr_db", psnr, FP16_MIN_PSNR_DB if fp16 else None,
                   not fp16 or psnr >= FP16_MIN_PSNR_DB)]


def _logit_checks(graph: str, reference: np.ndarray, logits: np.ndarray, precision: str,
                  detail: str) -> List[ParityCheck]:
    error = float(np.abs(logits - reference).max())
    agreement = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
    fp32 = precision == "fp32"
    return [_check(graph, "max_abs_error", error, FP32_MAX_ABS if fp32 else None,
                   error <= FP32_MAX_ABS or not fp32, detail),
            _check(graph, "argmax_agreement", agreement, None, True, detail)]


@torch.no_grad()
def _transformer_checks(staging: Path, graphs: Dict[str, GraphSpec], kv: KVCacheSpec,
                        loaded: LoadedModel, tokens: np.ndarray) -> List[ParityCheck]:
    reference = loaded.transformer(torch.from_numpy(tokens)).numpy()  # [B, M, V]
    precision = graphs["transformer_step"].precision
    decoder = OrtTransformer(OrtTransformerGraphs(staging / graphs["transformer_prefill"].file,
                                                  staging / graphs["transformer_step"].file, kv),
                             tokens.shape[0])
    checks = _logit_checks("transformer_prefill", reference, decoder.prefill(tokens), precision,
                           f"{tokens.shape[1]} positions from 0")
    block = tokens.shape[1]
    steps = min(STEPS, block - 1)
    step_logits, step_reference = [], []
    for prefill in sorted({1, block - steps}):  # the first and the last `steps` positions
        decoder.reset()
        decoder.prefill(tokens[:, :prefill])
        for position in range(prefill, prefill + steps):
            step_logits.append(decoder.step(tokens[:, position:position + 1]))
            step_reference.append(reference[:, position:position + 1])
    return checks + _logit_checks(
        "transformer_step", np.concatenate(step_reference, 1), np.concatenate(step_logits, 1),
        precision, f"positions 1..{steps} and {block - steps}..{block - 1}, teacher-forced")


def describe_inputs(loaded: LoadedModel) -> str:
    dd = loaded.first_stage.cfg.ddconfig
    text = (f"numpy default_rng({SEED}), batch {BATCH}: images {dd.resolution}x{dd.resolution} "
            f"uniform in [-1, 1); code grids {dd.latent_size}x{dd.latent_size}")
    if loaded.transformer is not None:
        text += f"; token sequences of {loaded.transformer.cfg.block_size}"
    return text


def parity_report(loaded: LoadedModel, staging: Path, graphs: Dict[str, GraphSpec],
                  kv: Optional[KVCacheSpec], native_error: Optional[float],
                  allow_drift: bool) -> ParityReport:
    """Runs every graph in `graphs` (files under staging) against the torch model."""
    rng = np.random.default_rng(SEED)
    vq = loaded.first_stage
    dd = vq.cfg.ddconfig
    image = rng.uniform(-1, 1, (BATCH, dd.in_channels, dd.resolution, dd.resolution))
    indices = rng.integers(0, vq.cfg.n_embed, (BATCH, dd.latent_size, dd.latent_size))
    checks: List[ParityCheck] = []
    if "encoder" in graphs:
        checks += _encoder_checks(staging / graphs["encoder"].file, graphs["encoder"], vq,
                                  image.astype(np.float32), "encoder")
    checks += _decoder_checks(staging / graphs["decoder"].file, graphs["decoder"], vq,
                              indices.astype(np.int64))
    if "cond_encoder" in graphs:
        cfg = loaded.config
        cond_vq = vq if isinstance(cfg.cond, FirstStageCondConfig) else loaded.cond_stage
        cond_dd = cond_vq.cfg.ddconfig
        cond = rng.uniform(-1, 1, (BATCH, cond_dd.in_channels, cond_dd.resolution,
                                   cond_dd.resolution)).astype(np.float32)
        resize = cfg.downsample_cond_size if cfg.downsample_cond_size > -1 else None
        checks += _encoder_checks(staging / graphs["cond_encoder"].file, graphs["cond_encoder"],
                                  cond_vq, cond, "cond_encoder", resize)
    if kv is not None:
        gpt = loaded.transformer.cfg
        tokens = rng.integers(0, gpt.vocab_size, (BATCH, gpt.block_size)).astype(np.int64)
        checks += _transformer_checks(staging, graphs, kv, loaded, tokens)
    if native_error is not None:
        checks.append(_check("native", "weight_max_rel_error", native_error, None, True,
                             "largest |stored - fp32| / max |W| over the Linear weights"))
    return ParityReport(inputs=describe_inputs(loaded), checks=tuple(checks),
                        passed=all(c.passed for c in checks), drift_allowed=allow_drift)


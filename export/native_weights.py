"""The native decoder's weights: one safetensors file, layout LAYOUT (docs/ARCHITECTURE.md).

Linear weights are [out, in] (y = x W^T + b, torch's layout) in the requested precision:
  fp32 F32; fp16 F16; bf16 BF16 (bit patterns, round to nearest even);
  int8 I8 plus `<name>_scale` F32 [out]: weight-only, symmetric, per output channel,
       W[o, i] ~= q[o, i] * scale[o] with scale[o] = max_i |W[o, i]| / 127, q in [-127, 127].
Everything else (embeddings, biases, LayerNorm, codebook) is F32. The query, key and value
projections are fused, rows in that order, so one matrix product serves all three:

  tok_emb [V, C]   pos_emb [M, C]   ln_f.weight/.bias [C]   head.weight [V, C] (no bias)
  blocks.<i>.ln1.weight/.bias, ln2.weight/.bias          [C]
  blocks.<i>.attn.qkv.weight [3C, C]    .bias [3C]   (rows 0..C-1 query, C..2C-1 key, then
                                                      value; head h owns rows h*D..(h+1)*D-1
                                                      of each; no attention scale folded in)
  blocks.<i>.attn.proj.weight [C, C]    .bias [C]
  blocks.<i>.mlp.fc.weight   [4C, C]    .bias [4C]   (then exact erf GELU)
  blocks.<i>.mlp.proj.weight [C, 4C]    .bias [C]
  codebook [N, E]                                    (first-stage code vectors)
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from vqrt.runtime.safetensors_io import (
    Bf16, bf16_bits_to_float32, float32_to_bf16_bits, write_safetensors)
from vqrt.trainer.models.mingpt import GPT

LAYOUT = "vqrt-native-1"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def quantize_int8(weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """weight [out, in] fp32 -> (q int8 [out, in], scale fp32 [out])."""
    max_abs = np.abs(weight).max(axis=1)
    scale = np.where(max_abs > 0, max_abs / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _store(name: str, weight: np.ndarray, precision: str,
           out: Dict[str, Union[np.ndarray, Bf16]]) -> float:
    """Adds a Linear weight in `precision`; returns its largest error relative to max |W|."""
    if precision == "fp32":
        out[name] = weight
        restored = weight
    elif precision == "fp16":
        out[name] = weight.astype(np.float16)
        restored = out[name].astype(np.float32)
    elif precision == "bf16":
        bits = float32_to_bf16_bits(weight)
        out[name] = Bf16(bits)
        restored = bf16_bits_to_float32(bits)
    else:
        q, scale = quantize_int8(weight)
        out[name] = q
        out[f"{name}_scale"] = scale
        restored = q.astype(np.float32) * scale[:, None]
    peak = float(np.abs(weight).max())
    return float(np.abs(restored - weight).max()) / peak if peak > 0 else 0.0


def native_tensors(gpt: GPT, codebook: np.ndarray, precision: str
                   ) -> Tuple[Dict[str, Union[np.ndarray, Bf16]], float]:
    """-> (tensors in file order, largest relative weight error of the stored matrices)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    out: Dict[str, Union[np.ndarray, Bf16]] = {
        "tok_emb": _np(gpt.tok_emb.weight), "pos_emb": _np(gpt.pos_emb)[0]}
    errors = []
    for i, block in enumerate(gpt.blocks):
        prefix = f"blocks.{i}"
        attn = block.attn
        out[f"{prefix}.ln1.weight"] = _np(block.ln1.weight)
        out[f"{prefix}.ln1.bias"] = _np(block.ln1.bias)
        qkv = np.concatenate([_np(attn.query.weight), _np(attn.key.weight),
                              _np(attn.value.weight)])
        errors.append(_store(f"{prefix}.attn.qkv.weight", qkv, precision, out))
        out[f"{prefix}.attn.qkv.bias"] = np.concatenate(
            [_np(attn.query.bias), _np(attn.key.bias), _np(attn.value.bias)])
        errors.append(_store(f"{prefix}.attn.proj.weight", _np(attn.proj.weight), precision, out))
        out[f"{prefix}.attn.proj.bias"] = _np(attn.proj.bias)
        out[f"{prefix}.ln2.weight"] = _np(block.ln2.weight)
        out[f"{prefix}.ln2.bias"] = _np(block.ln2.bias)
        fc, proj = block.mlp[0], block.mlp[2]
        errors.append(_store(f"{prefix}.mlp.fc.weight", _np(fc.weight), precision, out))
        out[f"{prefix}.mlp.fc.bias"] = _np(fc.bias)
        errors.append(_store(f"{prefix}.mlp.proj.weight", _np(proj.weight), precision, out))
        out[f"{prefix}.mlp.proj.bias"] = _np(proj.bias)
    out["ln_f.weight"] = _np(gpt.ln_f.weight)
    out["ln_f.bias"] = _np(gpt.ln_f.bias)
    errors.append(_store("head.weight", _np(gpt.head.weight), precision, out))
    out["codebook"] = np.asarray(codebook, dtype=np.float32)
    return out, max(errors)


def write_native_weights(path: Path, gpt: GPT, codebook: np.ndarray, precision: str) -> float:
    """Writes the file; returns the largest relative weight error (0 for fp32)."""
    tensors, error = native_tensors(gpt, codebook, precision)
    write_safetensors(path, tensors, metadata={"layout": LAYOUT, "precision": precision})
    return error

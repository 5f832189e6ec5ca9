"""ONNX graphs of the minGPT transformer with one preallocated, in-place KV cache.

Two graphs from one builder, identical but for the length T of `tokens`:
  transformer_prefill: T dynamic (the prefix, or any chunk of tokens);
  transformer_step:    T = 1 (one token per call).

Interface (B = batch, L = n_layer, H = n_head, D = head_dim, M = block_size):
  inputs   tokens        int64        [B, T]     tokens at positions [position, position + T)
           position      int64        []         where tokens[:, 0] sits in the sequence
           kv_cache      kv dtype     [L, 2, B, H, M, D]   keys (index 0) and values (1)
  outputs  logits        float32      [B, T, vocab]        logits[:, t] predicts position+t+1
           kv_cache_out  kv dtype     [L, 2, B, H, M, D]   kv_cache with [position, position+T)
                                                            written
kv dtype is the graph's compute dtype (float32 or float16).

The shared-buffer scheme (onnxruntime-genai's past/present sharing): the runtime allocates
kv_cache once and binds that same memory as kv_cache_out with IO binding. Shapes never change
between steps and the buffer is never concatenated or copied by the caller:

  * attention reads the whole buffer [.., M, D] but masks keys at positions >= position, and
    handles this call's T new keys separately, so no value written by this call is read back
    from the buffer (whatever order the nodes run in);
  * one ScatterElements (axis 4) writes the new keys and values at [position, position + T);
    onnxruntime skips its input-to-output copy when the two share memory, so only the new
    entries are written.

`position` is data, never a shape: every shape depends only on B and T (TensorRT needs no shape
tensors). The attention scale 1/sqrt(D) is folded into the query projection; LayerNorm and
softmax run in fp32.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from vqrt.export.onnx_builder import (
    GraphBuilder, from_fp32, gelu, layer_norm, linear, softmax, to_fp32)
from vqrt.trainer.models.mingpt import GPT

KV_INPUT = "kv_cache"
KV_OUTPUT = "kv_cache_out"
LN_EPS = 1e-5  # torch nn.LayerNorm default, as upstream


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def _heads(b: GraphBuilder, h: str, module, name: str, heads: str, factor: float = 1.0) -> str:
    """h [B, T, C] through a Linear (weight and bias times factor) -> [B, H, T, D]."""
    y = linear(b, h, _np(module.weight) * factor, _np(module.bias) * factor, name)
    return b.op("Transpose", b.op("Reshape", y, heads), perm=[0, 2, 1, 3])


def kv_cache_shape(gpt: GPT):
    cfg = gpt.cfg
    return [cfg.n_layer, 2, "batch", cfg.n_head, cfg.block_size, cfg.head_dim]


def transformer_graph(gpt: GPT, dtype: np.dtype, step: bool) -> onnx.ModelProto:
    cfg = gpt.cfg
    b = GraphBuilder("vqrt_transformer_step" if step else "vqrt_transformer_prefill", dtype)
    tokens = b.input("tokens", TensorProto.INT64, ["batch", 1 if step else "seq"])
    position = b.input("position", TensorProto.INT64, [])
    kv_cache = b.input(KV_INPUT, b.float_type, kv_cache_shape(gpt))
    n_embd, n_head, head_dim = cfg.n_embd, cfg.n_head, cfg.head_dim

    # Positions: offsets [T] = 0..T-1 within this call, rows [T] = absolute positions.
    length = b.op("Gather", b.op("Shape", tokens), b.const(1))  # scalar T
    offsets = b.op("Range", b.const(0), length, b.const(1))
    rows = b.op("Add", offsets, position)
    x = b.op("Add", b.op("Gather", b.weight("tok_emb.weight", _np(gpt.tok_emb.weight)), tokens),
             b.op("Gather", b.weight("pos_emb", _np(gpt.pos_emb)[0]), rows))  # [B, T, C]

    # Masks (bool): past [M] keys already in the buffer (< position); new [T, T] causal among
    # this call's tokens, widened to the bidirectional block of the first n_unmasked positions.
    buffer_positions = b.op("Range", b.const(0), b.const(cfg.block_size), b.const(1))  # [M]
    past_allowed = b.op("Less", buffer_positions, position)
    new_allowed = b.op("LessOrEqual", b.op("Unsqueeze", offsets, b.const([0])),
                       b.op("Unsqueeze", offsets, b.const([1])))  # [T_query, T_key]
    if cfg.n_unmasked > 0:
        unmasked = b.op("Less", rows, b.const(cfg.n_unmasked))  # [T]
        both = b.op("And", b.op("Unsqueeze", unmasked, b.const([1])),
                    b.op("Unsqueeze", unmasked, b.const([0])))
        new_allowed = b.op("Or", new_allowed, both)
    neg_inf = b.const(-np.inf, np.float32)
    split_sizes = b.op("Concat", b.const([cfg.block_size]), b.op("Unsqueeze", length,
                                                                  b.const([0])), axis=0)
    heads = b.const([0, 0, n_head, head_dim])
    scale = head_dim ** -0.5

    new_kv = []
    for layer, block in enumerate(gpt.blocks):
        name = f"blocks.{layer}"
        attn = block.attn
        with b.scope(name):
            h = layer_norm(b, x, _np(block.ln1.weight), _np(block.ln1.bias), LN_EPS,
                           f"{name}.ln1")
            q = _heads(b, h, attn.query, f"{name}.attn.query", heads, scale)  # [B, H, T, D]
            k = _heads(b, h, attn.key, f"{name}.attn.key", heads)
            v = _heads(b, h, attn.value, f"{name}.attn.value", heads)
            cached_k, cached_v = (
                b.op("Squeeze", b.op("Slice", kv_cache, b.const([layer, kv]),
                                     b.const([layer + 1, kv + 1]), b.const([0, 1])),
                     b.const([0, 1]))  # [B, H, M, D]
                for kv in (0, 1))
            scores_past = b.op("Where", past_allowed, to_fp32(b, b.op(
                "MatMul", q, b.op("Transpose", cached_k, perm=[0, 1, 3, 2]))), neg_inf)
            scores_new = b.op("Where", new_allowed, to_fp32(b, b.op(
                "MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))), neg_inf)
            probs = softmax(b, b.op("Concat", scores_past, scores_new, axis=-1))  # [B,H,T,M+T]
            probs_past, probs_new = b.op("Split", probs, split_sizes, axis=-1, outputs=2)
            y = b.op("Add", b.op("MatMul", from_fp32(b, probs_past), cached_v),
                     b.op("MatMul", from_fp32(b, probs_new), v))  # [B, H, T, D]
            y = b.op("Reshape", b.op("Transpose", y, perm=[0, 2, 1, 3]),
                     b.const([0, 0, n_embd]))
            x = b.op("Add", x, linear(b, y, _np(attn.proj.weight), _np(attn.proj.bias),
                                      f"{name}.attn.proj"))
            h = layer_norm(b, x, _np(block.ln2.weight), _np(block.ln2.bias), LN_EPS,
                           f"{name}.ln2")
            fc, out = block.mlp[0], block.mlp[2]
            h = gelu(b, linear(b, h, _np(fc.weight), _np(fc.bias), f"{name}.mlp.fc"))
            x = b.op("Add", x, linear(b, h, _np(out.weight), _np(out.bias), f"{name}.mlp.proj"))
            pair = b.op("Concat", b.op("Unsqueeze", k, b.const([0])),
                        b.op("Unsqueeze", v, b.const([0])), axis=0)  # [2, B, H, T, D]
            new_kv.append(b.op("Unsqueeze", pair, b.const([0])))

    updates = b.op("Concat", *new_kv, axis=0)  # [L, 2, B, H, T, D]
    where = b.op("Expand", b.op("Reshape", rows, b.const([1, 1, 1, 1, -1, 1])),
                 b.op("Shape", updates))
    b.output(b.op("ScatterElements", kv_cache, where, updates, axis=4), KV_OUTPUT, b.float_type,
             kv_cache_shape(gpt))
    x = layer_norm(b, x, _np(gpt.ln_f.weight), _np(gpt.ln_f.bias), LN_EPS, "ln_f")
    logits = to_fp32(b, linear(b, x, _np(gpt.head.weight), None, "head"))
    b.output(logits, "logits", TensorProto.FLOAT, ["batch", 1 if step else "seq", cfg.vocab_size])
    return b.model()

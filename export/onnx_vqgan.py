"""ONNX graphs of a VQGAN (upstream VQModel / GumbelVQ), built from the torch module's weights.

  encoder:      image float32 [batch, C, height, width] -> indices int64 [batch, h, w]
                (encoder, quant_conv, nearest codebook entry; the argmin runs in fp32 and
                expands |z|^2 + |e|^2 - 2 z.e exactly as upstream, so near-ties break alike)
  decoder:      indices int64 [batch, h, w] -> image float32 [batch, C, h*f, w*f]
                (codebook lookup as a Gather, post_quant_conv, decoder; raw outputs, no clamp)
  cond_encoder: cond float32 [batch, C, height, width] -> cond_tokens int64 [batch, L]
                (optional nearest resize to a square, then an encoder graph, flattened in
                raster order)

Batch and spatial sizes are dynamic; height and width must be multiples of f (the runtime
checks). Attention blocks fold their 1/sqrt(C) into the q projection, so the product q.k never
holds the unscaled value (which overflows fp16 at large sizes).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import torch.nn as nn
from onnx import TensorProto

from vqrt.export.onnx_builder import (
    GraphBuilder, conv2d, from_fp32, group_norm, softmax, swish, to_fp32)
from vqrt.trainer.models.vqgan import (
    AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample, VQModel)

GROUPS = 32  # upstream GroupNorm(32 groups, eps 1e-6)
EPS = 1e-6


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def _conv(b: GraphBuilder, x: str, conv: nn.Conv2d, name: str, scale: float = 1.0) -> str:
    return conv2d(b, x, _np(conv.weight) * scale, _np(conv.bias) * scale, name,
                  stride=conv.stride[0], padding=conv.padding[0])


def _norm(b: GraphBuilder, x: str, norm: nn.GroupNorm, name: str) -> str:
    return group_norm(b, x, _np(norm.weight), _np(norm.bias), GROUPS, EPS, name)


def _resnet(b: GraphBuilder, x: str, block: ResnetBlock, name: str) -> str:
    with b.scope(name):
        h = _conv(b, swish(b, _norm(b, x, block.norm1, f"{name}.norm1")), block.conv1,
                  f"{name}.conv1")
        h = _conv(b, swish(b, _norm(b, h, block.norm2, f"{name}.norm2")), block.conv2,
                  f"{name}.conv2")
        if block.nin_shortcut is not None:
            x = _conv(b, x, block.nin_shortcut, f"{name}.nin_shortcut")
        return b.op("Add", x, h)


def _attention(b: GraphBuilder, x: str, attn: AttnBlock, name: str) -> str:
    """x [B, C, H, W]: single-head attention over the H*W positions, plus x."""
    channels = attn.q.weight.shape[0]
    with b.scope(name):
        h = _norm(b, x, attn.norm, f"{name}.norm")
        q = _conv(b, h, attn.q, f"{name}.q", scale=channels ** -0.5)  # scale folded into q
        k = _conv(b, h, attn.k, f"{name}.k")
        v = _conv(b, h, attn.v, f"{name}.v")
        flat = b.const([0, channels, -1])
        q = b.op("Transpose", b.op("Reshape", q, flat), perm=[0, 2, 1])  # [B, HW, C]
        k = b.op("Reshape", k, flat)  # [B, C, HW]
        v = b.op("Reshape", v, flat)  # [B, C, HW]
        weights = from_fp32(b, softmax(b, b.op("MatMul", q, k), axis=2))  # [B, HW_q, HW_k]
        out = b.op("MatMul", v, b.op("Transpose", weights, perm=[0, 2, 1]))  # [B, C, HW_q]
        out = b.op("Reshape", out, b.op("Shape", x))
        return b.op("Add", x, _conv(b, out, attn.proj_out, f"{name}.proj_out"))


def _downsample(b: GraphBuilder, x: str, down: Downsample, name: str) -> str:
    if down.conv is None:
        return b.op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2])
    padded = b.op("Pad", x, b.const([0, 0, 0, 0, 0, 0, 1, 1]))  # right and bottom by 1
    return _conv(b, padded, down.conv, f"{name}.conv")


def _upsample(b: GraphBuilder, x: str, up: Upsample, name: str) -> str:
    x = b.op("Resize", x, "", b.const([1.0, 1.0, 2.0, 2.0], np.float32), mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return x if up.conv is None else _conv(b, x, up.conv, f"{name}.conv")


def _stage_blocks(b: GraphBuilder, h: str, stage: nn.Module, name: str) -> str:
    for i, block in enumerate(stage.block):
        h = _resnet(b, h, block, f"{name}.block.{i}")
        if len(stage.attn) > 0:
            h = _attention(b, h, stage.attn[i], f"{name}.attn.{i}")
    return h


def _mid(b: GraphBuilder, h: str, mid: nn.Module, name: str) -> str:
    h = _resnet(b, h, mid.block_1, f"{name}.block_1")
    h = _attention(b, h, mid.attn_1, f"{name}.attn_1")
    return _resnet(b, h, mid.block_2, f"{name}.block_2")


def _encoder(b: GraphBuilder, x: str, enc: Encoder) -> str:
    """[B, C_in, H, W] -> [B, z_channels, H/f, W/f]."""
    h = _conv(b, x, enc.conv_in, "encoder.conv_in")
    for level, stage in enumerate(enc.down):
        h = _stage_blocks(b, h, stage, f"encoder.down.{level}")
        if level != enc.cfg.num_levels - 1:
            h = _downsample(b, h, stage.downsample, f"encoder.down.{level}.downsample")
    h = _mid(b, h, enc.mid, "encoder.mid")
    return _conv(b, swish(b, _norm(b, h, enc.norm_out, "encoder.norm_out")), enc.conv_out,
                 "encoder.conv_out")


def _decoder(b: GraphBuilder, z: str, dec: Decoder) -> str:
    """[B, z_channels, h, w] -> [B, out_ch, h*f, w*f]."""
    h = _mid(b, _conv(b, z, dec.conv_in, "decoder.conv_in"), dec.mid, "decoder.mid")
    for level in reversed(range(dec.cfg.num_levels)):
        stage = dec.up[level]
        h = _stage_blocks(b, h, stage, f"decoder.up.{level}")
        if level != 0:
            h = _upsample(b, h, stage.upsample, f"decoder.up.{level}.upsample")
    h = _conv(b, swish(b, _norm(b, h, dec.norm_out, "decoder.norm_out")), dec.conv_out,
              "decoder.conv_out")
    return b.op("Tanh", h) if dec.cfg.tanh_out else h


def _code_indices(b: GraphBuilder, z: str, vq: VQModel) -> str:
    """z [B, embed_dim, h, w] (after quant_conv) -> indices [B, h, w] int64, in fp32."""
    z32 = to_fp32(b, z)
    if vq.cfg.quantizer == "gumbel":
        proj = vq.quantize.proj
        logits = b.op("Conv", z32, b.weight("quantize.proj.weight", _np(proj.weight), fp32=True),
                      b.weight("quantize.proj.bias", _np(proj.bias), fp32=True),
                      kernel_shape=[1, 1])
        return b.op("ArgMax", logits, axis=1, keepdims=0)
    codebook = vq.quantize.embedding.weight.detach().float()  # [N, E]
    # |e|^2 as torch computes it, so the distances match the torch model's bit for bit.
    code_norms = codebook.pow(2).sum(dim=1).numpy()  # [N]
    zt = b.op("Transpose", z32, perm=[0, 2, 3, 1])  # [B, h, w, E]
    z_norms = b.op("ReduceSum", b.op("Mul", zt, zt), b.const([-1]), keepdims=1)  # [B, h, w, 1]
    dots = b.op("MatMul", zt, b.weight("quantize.embedding.weight.T",
                                       codebook.t().contiguous().numpy(), fp32=True))
    distances = b.op("Sub", b.op("Add", z_norms, b.weight("quantize.code_norms", code_norms,
                                                           fp32=True)),
                     b.op("Mul", dots, b.const(2.0, np.float32)))  # [B, h, w, N]
    return b.op("ArgMin", distances, axis=-1, keepdims=0)


def can_encode(vq: VQModel) -> bool:
    """Upstream GumbelVQ encodes only when embed_dim == z_channels (see VQModel)."""
    return vq.cfg.quantizer != "gumbel" or vq.cfg.embed_dim == vq.cfg.ddconfig.z_channels


def _encode_to_indices(b: GraphBuilder, image: str, vq: VQModel) -> str:
    x = b.op("Cast", image, to=b.float_type) if b.is_fp16 else image
    z = _conv(b, _encoder(b, x, vq.encoder), vq.quant_conv, "quant_conv")
    return _code_indices(b, z, vq)


def encoder_graph(vq: VQModel, dtype: np.dtype) -> onnx.ModelProto:
    b = GraphBuilder("vqrt_encoder", dtype)
    image = b.input("image", TensorProto.FLOAT,
                    ["batch", vq.cfg.ddconfig.in_channels, "height", "width"])
    b.output(_encode_to_indices(b, image, vq), "indices", TensorProto.INT64,
             ["batch", "latent_h", "latent_w"])
    return b.model()


def decoder_graph(vq: VQModel, dtype: np.dtype) -> onnx.ModelProto:
    b = GraphBuilder("vqrt_decoder", dtype)
    indices = b.input("indices", TensorProto.INT64, ["batch", "latent_h", "latent_w"])
    embedding = vq.quantize.embed if vq.cfg.quantizer == "gumbel" else vq.quantize.embedding
    codes = b.op("Gather", b.weight("quantize.codebook", _np(embedding.weight)), indices)
    quant = b.op("Transpose", codes, perm=[0, 3, 1, 2])  # [B, h, w, E] -> [B, E, h, w]
    image = _decoder(b, _conv(b, quant, vq.post_quant_conv, "post_quant_conv"), vq.decoder)
    dd = vq.cfg.ddconfig
    b.output(to_fp32(b, image), "image", TensorProto.FLOAT,
             ["batch", dd.out_ch, "height", "width"])
    return b.model()


def cond_encoder_graph(vq: VQModel, dtype: np.dtype, resize: Optional[int]) -> onnx.ModelProto:
    """The conditioning stage's encoder; resize: upstream downsample_cond_size (nearest resize
    to resize x resize before encoding), or None."""
    b = GraphBuilder("vqrt_cond_encoder", dtype)
    cond = b.input("cond", TensorProto.FLOAT,
                   ["batch", vq.cfg.ddconfig.in_channels, "height", "width"])
    if resize is not None:
        # F.interpolate(size=...) nearest: source index floor(dst * in / out).
        batch_channels = b.op("Slice", b.op("Shape", cond), b.const([0]), b.const([2]))
        sizes = b.op("Concat", batch_channels, b.const([resize, resize]), axis=0)
        cond = b.op("Resize", cond, "", "", sizes, mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    indices = _encode_to_indices(b, cond, vq)
    tokens = b.op("Reshape", indices, b.const([0, -1]))  # [B, h*w], raster order
    b.output(tokens, "cond_tokens", TensorProto.INT64, ["batch", "cond_length"])
    return b.model()

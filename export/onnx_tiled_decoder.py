"""The VQGAN decoder as a program of tile graphs, for exact tiled decoding at any size.

Upstream's decoder cannot be cut into independent tiles: every GroupNorm normalises over the
whole image and every attention block attends over all positions. So the runtime
(runtime/tiled_decode.py) runs the decoder layer by layer over whole-image buffers and tiles
each layer: one program step reads a buffer in tiles (each with the halo its kernel needs) and
writes another. GroupNorm is applied as a per-channel affine whose statistics the runtime merges
exactly over all tiles of the buffer it normalises; the attention core runs in the runtime, in
query chunks over the whole latent. Tiled equals untiled up to rounding, whatever the tile.

One conv step is one ONNX graph (weights as external data, shared file):

  inputs   x      float16 [B, C_in, th + 2r, tw + 2r]   the tile with its halo (r = kernel // 2)
                                                         of any finite value where it leaves
                                                         the image
           inside float32 [1, 1, th + 2r, tw + 2r]      1 inside the image, 0 in the halo
                                                         beyond it (3x3 steps only)
           scale, shift float32 [B, C_in, 1, 1]          GroupNorm folded to an affine (norm
                                                         steps only)
           skip   float16 [B, C_skip, th', tw']           the residual (residual steps only)
  outputs  y      float16 [B, C_out, th', tw']            th' = th (2 th for upsample steps)
           mean, m2 float32 [B, C_out]                    per-channel mean and sum of squared
                                                         deviations of y (fp32, before its
                                                         rounding to fp16) over the tile, merged
                                                         by the runtime for the next GroupNorm

  y = [skip or nin_shortcut(skip) +] conv(swish(x * scale + shift) * inside)

Every input's shape follows from x's and the step (no input is read for a shape), so a step
graph builds into a TensorRT engine with ordinary device inputs: a `pads` input would have made
TensorRT treat it as a shape tensor on the host.

The whole-image buffers between steps are fp16: half the memory of fp32, at one fp16 rounding of
each stored activation (tiled against whole stays >= 55 dB, tested), and the graphs convert at
their edges, inside the engine, which is cheaper than converting in numpy (1024x1024,
ImageNet-sized decoder: the whole decode took 29.6 s against 39.6 s with numpy converting fp32
graph inputs and outputs; BENCHMARKS.md). Everything inside a step computes in fp32.

The zeros where the halo leaves the image come after the norm and swish, where upstream's conv
pads. Upsample steps (nearest x2, then a 3x3 conv) run as a 3x3 conv on the low-resolution
input to 4 C_out channels, one per output phase, and a DepthToSpace: the same sums without the
4x larger upsampled tensor.

int8 bundles (`vqrt build --precision int8`) write the same program with QDQ step graphs: each
conv the whole-image int8 decoder quantized is quantized here with that graph's activation
scales and zero points (export/quantize_vqgan.py, conv_activations), and int8 weights made by the
same rule (symmetric, per output channel), so tiles see the same quantization grid as the whole
image. Steps whose whole-image convs stayed fp32 (conv_out), and the fused q/k/v step (three
convs with three output scales there), stay fp32.

The program (program.json) lists the steps in order; buffers are named, and the runtime frees a
buffer after its last use. tensors.safetensors holds the codebook and the GroupNorm affines.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import onnx
import torch.nn as nn
from onnx import TensorProto

from vqrt.export.onnx_builder import GraphBuilder, save_graphs_sharing_weights, swish
from vqrt.export.onnx_vqgan import EPS, GROUPS
from vqrt.export.quantize_vqgan import Int8Activation, Int8Conv
from vqrt.runtime.safetensors_io import write_safetensors
from vqrt.trainer.models.vqgan import AttnBlock, Decoder, ResnetBlock, VQModel

DIRECTORY = "tiled_decoder"  # inside the bundle
PROGRAM_FILE = f"{DIRECTORY}/program.json"
TENSORS_FILE = f"{DIRECTORY}/tensors.safetensors"
WEIGHTS_FILE = f"{DIRECTORY}/weights.bin"
PROGRAM_FORMAT = "vqrt-tiled-decoder-3"  # 2: fp16 buffers (x, skip, y); 3: inside, not pads


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def upsample_phase_weights(weight: np.ndarray) -> np.ndarray:
    """[C_out, C_in, 3, 3] of a conv on the nearest-x2 upsampled image -> [4 C_out, C_in, 3, 3]
    of a conv on the low-resolution image whose channel block p = 2 di + dj holds output phase
    (di, dj) (DepthToSpace DCR order). Output row 2i + di reads upsampled rows 2i + di - 1 + ky,
    that is input row i + (di + ky - 1) // 2, so each kernel row lands on input offset
    (di + ky - 1) // 2 (and likewise for columns)."""
    c_out, c_in = weight.shape[:2]
    phases = np.zeros((2, 2, c_out, c_in, 3, 3), np.float64)
    for di in range(2):
        for dj in range(2):
            for ky in range(3):
                for kx in range(3):
                    oy, ox = (di + ky - 1) // 2 + 1, (dj + kx - 1) // 2 + 1
                    phases[di, dj, :, :, oy, ox] += weight[:, :, ky, kx]
    return phases.reshape(4 * c_out, c_in, 3, 3).astype(np.float32)


def int8_weights(weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """weight [C_out, ...] -> (int8 [C_out, ...], scale float32 [C_out]): symmetric per output
    channel, scale = max |w| / 127, the rule ONNX Runtime's quantizer applied to the whole-image
    graph (so the convs the two share get the same int8 weights)."""
    absmax = np.abs(weight).reshape(len(weight), -1).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127, 1).astype(np.float32)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def _quantize_dequantize(b: GraphBuilder, x: str, q: Int8Activation) -> str:
    scale, zero = b.const(np.float32(q.scale), np.float32), b.const(q.zero_point, np.uint8)
    return b.op("DequantizeLinear", b.op("QuantizeLinear", x, scale, zero), scale, zero)


def _conv_op(b: GraphBuilder, x: str, name: str, weight: np.ndarray, bias: np.ndarray,
             int8: Optional[Int8Conv], kernel: int) -> str:
    """Conv with weight [C_out, C_in, k, k], bias [C_out]; with `int8`, in QDQ form (int8
    weights per output channel, the bias int32 at input scale x weight scale, input and
    output through uint8), which ONNX Runtime fuses into QLinearConv and OpenVINO into an
    int8 convolution."""
    attrs = dict(kernel_shape=[kernel, kernel], pads=[0, 0, 0, 0])
    if int8 is None:
        return b.op("Conv", x, b.weight(f"{name}.weight", weight), b.weight(f"{name}.bias", bias),
                    **attrs)
    q, scale = int8_weights(weight)
    bias_scale = (np.float32(int8.input.scale) * scale).astype(np.float32)
    w = b.op("DequantizeLinear", b.tensor(f"{name}.weight_int8", q),
             b.tensor(f"{name}.weight_scale", scale),
             b.tensor(f"{name}.weight_zero", np.zeros(len(q), np.int8)), axis=0)
    bias_q = b.op("DequantizeLinear", b.tensor(f"{name}.bias_int32",
                                               np.rint(bias / bias_scale).astype(np.int32)),
                  b.tensor(f"{name}.bias_scale", bias_scale),
                  b.tensor(f"{name}.bias_zero", np.zeros(len(q), np.int32)), axis=0)
    y = b.op("Conv", _quantize_dequantize(b, x, int8.input), w, bias_q, **attrs)
    return _quantize_dequantize(b, y, int8.output)


class _ProgramBuilder:
    """Collects the steps, their graphs and the GroupNorm tensors while walking the decoder.
    int8: whole-image conv name -> its activation quantization (None: an fp32 program)."""

    def __init__(self, int8: Optional[Mapping[str, Int8Conv]] = None):
        self.int8 = int8 or {}
        self.kept_fp32: List[str] = []  # with int8: the conv steps left fp32
        self.steps: List[Dict] = []
        self.graphs: List[Tuple[onnx.ModelProto, str]] = []  # (model, file inside the bundle)
        self.tensors: Dict[str, np.ndarray] = {}
        self._buffers = 0

    def buffer(self) -> str:
        self._buffers += 1
        return f"b{self._buffers}"

    def _norm(self, norm: Optional[nn.GroupNorm], name: Optional[str]) -> Optional[str]:
        if norm is None:
            return None
        self.tensors[f"{name}.weight"] = _np(norm.weight)
        self.tensors[f"{name}.bias"] = _np(norm.bias)
        return name

    def conv(self, name: str, x: str, conv: Tuple[np.ndarray, np.ndarray],
             norm: Optional[nn.GroupNorm] = None, norm_name: Optional[str] = None,
             swish_in: bool = False, skip: Optional[str] = None,
             shortcut: Optional[nn.Conv2d] = None, shortcut_name: Optional[str] = None,
             upsample: bool = False, tanh: bool = False, output: Optional[str] = None,
             source: Optional[str] = None) -> str:
        """One conv step, conv = (weight [C_out, C_in, k, k], bias [C_out]); returns its
        output buffer (a new one unless `output` names one). source: the whole-image graph's
        name for this conv when it differs from `name` (None for the fused q/k/v step, which
        has no single counterpart)."""
        weight, bias = conv
        kernel = weight.shape[-1]
        c_in, c_out = weight.shape[1], weight.shape[0]
        b = GraphBuilder(f"vqrt_tile_{name}", np.float32)
        h = b.op("Cast", b.input("x", TensorProto.FLOAT16, ["batch", c_in, "tile_h", "tile_w"]),
                 to=TensorProto.FLOAT)
        if norm is not None:
            scale = b.input("scale", TensorProto.FLOAT, ["batch", c_in, 1, 1])
            shift = b.input("shift", TensorProto.FLOAT, ["batch", c_in, 1, 1])
            h = b.op("Add", b.op("Mul", h, scale), shift)
        if swish_in:
            h = swish(b, h)
        if kernel == 3:
            h = b.op("Mul", h, b.input("inside", TensorProto.FLOAT, [1, 1, "tile_h", "tile_w"]))
        if upsample:
            weight, bias = upsample_phase_weights(weight), np.tile(bias, 4)
        y = _conv_op(b, h, name, weight, bias, self._int8(source, name), kernel)
        if upsample:
            y = b.op("DepthToSpace", y, blocksize=2, mode="DCR")
        skip_channels = None
        if skip is not None:
            skip_channels = c_out if shortcut is None else shortcut.weight.shape[1]
            s = b.op("Cast", b.input("skip", TensorProto.FLOAT16,
                                     ["batch", skip_channels, "out_h", "out_w"]),
                     to=TensorProto.FLOAT)
            if shortcut is not None:
                s = _conv_op(b, s, f"{name}.shortcut", _np(shortcut.weight),
                             _np(shortcut.bias), self._int8(shortcut_name, f"{name}.shortcut"), 1)
            y = b.op("Add", s, y)
        if tanh:
            y = b.op("Tanh", y)
        mean = b.op("ReduceMean", y, axes=[2, 3], keepdims=1)  # [B, C_out, 1, 1]
        deviation = b.op("Sub", y, mean)
        m2 = b.op("ReduceSum", b.op("Mul", deviation, deviation), b.const([2, 3]), keepdims=0)
        b.output(b.op("Cast", y, to=TensorProto.FLOAT16), "y", TensorProto.FLOAT16,
                 ["batch", c_out, "out_h", "out_w"])
        b.output(b.op("Reshape", mean, b.const([0, -1])), "mean", TensorProto.FLOAT,
                 ["batch", c_out])
        b.output(m2, "m2", TensorProto.FLOAT, ["batch", c_out])
        file = f"{DIRECTORY}/{len(self.graphs):03d}_{name}.onnx"
        self.graphs.append((b.model(), file))
        out = output or self.buffer()
        self.steps.append({
            "kind": "conv", "name": name, "graph": file, "input": x, "output": out,
            "kernel": kernel, "in_channels": c_in, "out_channels": c_out,
            "norm": self._norm(norm, norm_name), "swish": swish_in, "skip": skip,
            "skip_channels": skip_channels, "upsample": upsample})
        return out

    def _int8(self, source: Optional[str], step: str) -> Optional[Int8Conv]:
        if not self.int8:
            return None
        found = self.int8.get(source) if source is not None else None
        if found is None:
            self.kept_fp32.append(step)
        return found

    def resnet(self, x: str, block: ResnetBlock, name: str) -> str:
        h = self.conv(f"{name}.conv1", x, _wb(block.conv1), block.norm1, f"{name}.norm1", True,
                      source=f"{name}.conv1")
        # The residual sum overwrites x when the shapes agree (each tile reads x only at the
        # positions it writes), so a block holds two whole-image buffers, not three.
        same = block.nin_shortcut is None
        return self.conv(f"{name}.conv2", h, _wb(block.conv2), block.norm2, f"{name}.norm2", True,
                         skip=x, shortcut=block.nin_shortcut,
                         shortcut_name=f"{name}.nin_shortcut", output=x if same else None,
                         source=f"{name}.conv2")

    def attention(self, x: str, attn: AttnBlock, name: str) -> str:
        channels = attn.q.weight.shape[0]
        # q, k and v as one 1x1 conv to 3 C channels; 1/sqrt(C) folded into q as the
        # whole-graph decoder does.
        q, k, v = _wb(attn.q, channels ** -0.5), _wb(attn.k), _wb(attn.v)
        qkv = (np.concatenate([q[0], k[0], v[0]]), np.concatenate([q[1], k[1], v[1]]))
        projections = self.conv(f"{name}.qkv", x, qkv, attn.norm, f"{name}.norm", source=None)
        mixed = self.buffer()
        self.steps.append({"kind": "attention", "name": name, "input": projections,
                           "output": mixed, "channels": channels})
        return self.conv(f"{name}.proj_out", mixed, _wb(attn.proj_out), skip=x, output=x,
                         source=f"{name}.proj_out")


def _wb(conv: nn.Conv2d, scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    return _np(conv.weight) * np.float32(scale), _np(conv.bias) * np.float32(scale)


def _walk(p: _ProgramBuilder, z: str, vq: VQModel) -> str:
    dec: Decoder = vq.decoder
    h = p.conv("post_quant_conv", z, _wb(vq.post_quant_conv), source="post_quant_conv")
    h = p.conv("decoder.conv_in", h, _wb(dec.conv_in), source="decoder.conv_in")
    h = p.resnet(h, dec.mid.block_1, "decoder.mid.block_1")
    h = p.attention(h, dec.mid.attn_1, "decoder.mid.attn_1")
    h = p.resnet(h, dec.mid.block_2, "decoder.mid.block_2")
    for level in reversed(range(dec.cfg.num_levels)):
        stage = dec.up[level]
        for i, block in enumerate(stage.block):
            h = p.resnet(h, block, f"decoder.up.{level}.block.{i}")
            if len(stage.attn) > 0:
                h = p.attention(h, stage.attn[i], f"decoder.up.{level}.attn.{i}")
        if level != 0:
            up = stage.upsample
            if up.conv is None:
                raise ValueError("tiled decoding needs upsampling with a conv (resamp_with_conv)")
            h = p.conv(f"decoder.up.{level}.upsample", h, _wb(up.conv), upsample=True,
                       source=f"decoder.up.{level}.upsample.conv")
    return p.conv("decoder.conv_out", h, _wb(dec.conv_out), dec.norm_out, "decoder.norm_out", True,
                  tanh=dec.cfg.tanh_out, source="decoder.conv_out")


def write_tiled_decoder(vq: VQModel, staging: Path,
                        int8: Optional[Mapping[str, Int8Conv]] = None
                        ) -> Tuple[Dict[str, str], List[str]]:
    """Writes program.json, tensors.safetensors, the step graphs and their shared weights under
    staging/tiled_decoder/ (replacing what is there), in QDQ int8 where `int8` (whole-image
    conv name -> activation quantization, from conv_activations) has the conv; returns
    ({"program", "tensors", "weights"} paths inside the bundle, the convs left fp32)."""
    if (staging / DIRECTORY).exists():
        shutil.rmtree(staging / DIRECTORY)
    (staging / DIRECTORY).mkdir()
    p = _ProgramBuilder(int8)
    embedding = vq.quantize.embed if vq.cfg.quantizer == "gumbel" else vq.quantize.embedding
    p.tensors["codebook"] = _np(embedding.weight)  # [N, E]
    z = p.buffer()
    image = _walk(p, z, vq)
    dd = vq.cfg.ddconfig
    program = {"format": PROGRAM_FORMAT, "groups": GROUPS, "eps": EPS,
               "downsampling_factor": dd.downsampling_factor, "codes": z, "image": image,
               "image_channels": dd.out_ch, "steps": p.steps}
    save_graphs_sharing_weights([(model, staging / file) for model, file in p.graphs],
                                staging / WEIGHTS_FILE)
    write_safetensors(staging / TENSORS_FILE, p.tensors)
    with open(staging / PROGRAM_FILE, "w", encoding="utf-8") as f:
        f.write(json.dumps(program, indent=1, allow_nan=False) + "\n")
    return ({"program": PROGRAM_FILE, "tensors": TENSORS_FILE, "weights": WEIGHTS_FILE},
            p.kept_fp32)

"""The baselines and peers `vqrt bench --baselines` measures beside a bundle (the train extra:
torch, onnx). benchmarks/native_decoder_bench.py uses the same upstream sampler.

  torch upstream fp32      taming's sample_with_past: fp32, every layer's keys and values
                           grown with torch.cat each step, torch.topk then torch.multinomial
  torch static-cache bf16  what a careful torch user writes (gpt-fast style): bf16 weights,
                           query/key/value fused, a preallocated cache written in place,
                           scaled_dot_product_attention over it with a mask (so every step has
                           the same shapes), optionally torch.compile'd
  torch decoder fp32       the upstream VQGAN decoder (codebook lookup + conv decoder)
  onnxruntime int8         the bundle's fp32 prefill and step graphs after onnxruntime's
                           quantize_dynamic (int8 weights, activations quantized per call),
                           the in-place KV buffer and vqrt's sampler

Every sampler draws with top-k filtering at the workload's k, temperature 1.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vqrt.bench.suite import (TORCH_DECODER, UPSTREAM, BenchError, Contender, DecodeContender,
                              OrtGraphsContender, PrefixTokens, Workload, matrix_bytes)
from vqrt.runtime.bundle import Bundle
from vqrt.runtime.onnx_sessions import execution_providers
from vqrt.runtime.ort_transformer import OrtTransformerGraphs
from vqrt.trainer.checkpoints import CheckpointError, load_checkpoint
from vqrt.trainer.models.mingpt import GPT, top_k_filter

Prefix = Callable[[int], np.ndarray]  # batch -> int64 [B, P]


def load_torch_model(bundle: Bundle, checkpoint: Optional[str], config: Optional[str]):
    """The bundle's source model in torch (a Net2NetTransformer, fp32, eval): from `checkpoint`,
    else the checkpoint its model card names. Its transformer must have the bundle's shape."""
    card = bundle.manifest.model_card
    path = checkpoint or card.get("weights")
    config = config or (None if checkpoint else card.get("config"))
    if path is None or not Path(path).exists():
        raise BenchError(f"--baselines needs the torch model: pass --checkpoint CKPT (the "
                         f"bundle's model card names {card.get('weights')!r}, which is not "
                         f"there from {Path.cwd()})")
    try:
        loaded = load_checkpoint(path, config=config)
    except CheckpointError as e:
        raise BenchError(str(e)) from e
    t = bundle.manifest.transformer
    cfg = loaded.model.transformer.cfg if loaded.kind == "net2net" else None
    if cfg is None or (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) != (
            t.n_layer, t.n_head, t.n_embd, t.vocab_size):
        found = "a first stage alone" if cfg is None else (
            f"{cfg.n_layer} layers x {cfg.n_embd} wide, vocabulary {cfg.vocab_size}")
        raise BenchError(f"{path}: this checkpoint is {found}, the bundle's transformer has "
                         f"{t.n_layer} layers x {t.n_embd} wide, vocabulary {t.vocab_size}: "
                         "pass the bundle's source with --checkpoint")
    return loaded.model


# --- (a) upstream-style sampling -------------------------------------------------------------

@torch.no_grad()
def upstream_forward(gpt: GPT, idx: torch.Tensor, past, pos: int):
    """idx [B, T] at positions pos..pos+T-1; past: per layer (k, v) [B, H, pos, D] or None.
    -> (logits [B, T, V], past grown by T positions with torch.cat)."""
    b, t = idx.shape
    x = gpt.tok_emb(idx) + gpt.pos_emb[:, pos:pos + t]
    new_past = []
    for layer, block in enumerate(gpt.blocks):
        attn = block.attn
        h = block.ln1(x)
        q, k, v = (m(h).view(b, t, attn.n_head, -1).transpose(1, 2)
                   for m in (attn.query, attn.key, attn.value))
        if past is not None:
            k = torch.cat([past[layer][0], k], dim=-2)
            v = torch.cat([past[layer][1], v], dim=-2)
        new_past.append((k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        if t > 1:
            att = att.masked_fill(attn.mask[:, :, pos:pos + t, :pos + t] == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + attn.proj(y)
        x = x + block.mlp(block.ln2(x))
    return gpt.head(gpt.ln_f(x)), new_past


def _draw_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """float32 [B, V] -> int64 [B, 1]: taming's top_k_logits, softmax, torch.multinomial."""
    return torch.multinomial(F.softmax(top_k_filter(logits, top_k), dim=-1), num_samples=1)


class UpstreamSampler(Contender):
    role, source = "baseline", "torch"

    def __init__(self, gpt: GPT, prefix: Prefix, top_k: int, codebook_size: int,
                 device: str = "cpu"):
        """device: where gpt's weights are (the prefix goes there too)."""
        cfg = gpt.cfg
        self.name = UPSTREAM
        self._device = device
        self.weight_bytes = matrix_bytes(cfg.n_layer, cfg.n_embd, cfg.vocab_size, "fp32")
        self.kv_value_bytes = 4
        self._gpt, self._prefix, self._top_k, self._codes = gpt, prefix, top_k, codebook_size
        self._logits = self._past = None
        self._pos = 0

    def start(self, batch: int) -> None:
        prefix = torch.from_numpy(self._prefix(batch)).to(self._device)
        logits, self._past = upstream_forward(self._gpt, prefix, None, 0)
        self._logits, self._pos = logits[:, -1], prefix.shape[1]

    @torch.no_grad()
    def draw(self, k: int, last: bool) -> None:
        token = _draw_top_k(self._logits[:, :self._codes], self._top_k)
        if not last:
            logits, self._past = upstream_forward(self._gpt, token, self._past, self._pos)
            self._logits, self._pos = logits[:, -1], self._pos + 1


# --- (b) a static-cache torch sampler ---------------------------------------------------------

class StaticCacheGPT(nn.Module):
    """The GPT's weights in `dtype` with query, key and value fused; forward runs tokens at
    given positions against a preallocated cache, attending over all of it with a mask."""

    def __init__(self, gpt: GPT, dtype: torch.dtype):
        super().__init__()
        cfg = self.cfg = gpt.cfg
        self.tok_emb = copy.deepcopy(gpt.tok_emb).to(dtype)
        self.pos_emb = nn.Parameter(gpt.pos_emb.detach()[0].to(dtype))  # [M, C]
        self.ln1, self.qkv, self.proj, self.ln2, self.mlp = (nn.ModuleList() for _ in range(5))
        for block in gpt.blocks:
            a = block.attn
            qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
            qkv.weight.data = torch.cat([a.query.weight, a.key.weight, a.value.weight])
            qkv.bias.data = torch.cat([a.query.bias, a.key.bias, a.value.bias])
            self.qkv.append(qkv)
            for mine, theirs in ((self.ln1, block.ln1), (self.proj, a.proj),
                                 (self.ln2, block.ln2), (self.mlp, block.mlp)):
                mine.append(copy.deepcopy(theirs))
        self.ln_f, self.head = copy.deepcopy(gpt.ln_f), copy.deepcopy(gpt.head)
        self.to(dtype).eval()
        self.register_buffer("cache_positions", torch.arange(cfg.block_size))

    def forward(self, idx: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        """idx int64 [B, T] at positions int64 [T]; keys, values [L, B, H, M, D], written at
        those positions -> float32 logits [B, V] of the last position."""
        cfg = self.cfg
        b, t = idx.shape
        heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        x = self.tok_emb(idx) + self.pos_emb[positions]  # [B, T, C]
        sees = self.cache_positions[None, :] <= positions[:, None]  # [T, M]
        both_unmasked = ((self.cache_positions[None, :] < cfg.n_unmasked)
                         & (positions[:, None] < cfg.n_unmasked))
        mask = sees | both_unmasked
        for layer in range(cfg.n_layer):
            qkv = self.qkv[layer](self.ln1[layer](x)).view(b, t, 3, heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
            keys[layer].index_copy_(2, positions, k)
            values[layer].index_copy_(2, positions, v)
            y = F.scaled_dot_product_attention(q, keys[layer], values[layer], attn_mask=mask)
            x = x + self.proj[layer](y.transpose(1, 2).reshape(b, t, cfg.n_embd))
            x = x + self.mlp[layer](self.ln2[layer](x))
        return self.head(self.ln_f(x[:, -1])).float()


class StaticCacheSampler(Contender):
    role, source = "peer", "torch"

    def __init__(self, gpt: GPT, prefix: Prefix, top_k: int, codebook_size: int,
                 dtype: torch.dtype = torch.bfloat16, compile_steps: bool = False,
                 device: str = "cpu"):
        """device: where the cache and the copy of gpt's weights in `dtype` live."""
        cfg = gpt.cfg
        self.model = StaticCacheGPT(gpt, dtype).to(device)
        self._device = device
        self._step = torch.compile(self.model, dynamic=False) if compile_steps else self.model
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
        self.name = f"torch static-cache {precision}{' compiled' if compile_steps else ''}"
        self.weight_bytes = matrix_bytes(cfg.n_layer, cfg.n_embd, cfg.vocab_size, precision)
        self.kv_value_bytes = self.model.pos_emb.element_size()
        self._prefix, self._top_k, self._codes, self._dtype = prefix, top_k, codebook_size, dtype
        self._keys = self._values = self._logits = None
        self._pos = 0

    @torch.inference_mode()
    def start(self, batch: int) -> None:
        cfg = self.model.cfg
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self._keys = torch.zeros(shape, dtype=self._dtype, device=self._device)
        self._values = torch.zeros(shape, dtype=self._dtype, device=self._device)
        prefix = torch.from_numpy(self._prefix(batch)).to(self._device)
        self._pos = prefix.shape[1]
        self._logits = self.model(prefix, torch.arange(self._pos, device=self._device),
                                  self._keys, self._values)

    @torch.inference_mode()
    def draw(self, k: int, last: bool) -> None:
        token = _draw_top_k(self._logits[:, :self._codes], self._top_k)
        if not last:
            position = torch.tensor([self._pos], device=self._device)
            self._logits = self._step(token, position, self._keys, self._values)
            self._pos += 1


# --- (c) the upstream VQGAN decoder -----------------------------------------------------------

class TorchDecoder(DecodeContender):
    role, source = "baseline", "torch"

    def __init__(self, first_stage: nn.Module, grid: Tuple[int, int], codebook_size: int,
                 max_batch: int):
        self.name = TORCH_DECODER
        self._first_stage = first_stage
        generator = torch.Generator().manual_seed(0)
        self._codes = torch.randint(0, codebook_size, (max_batch,) + tuple(grid),
                                    generator=generator)  # [B, h, w]

    @torch.inference_mode()
    def decode(self, batch: int) -> None:
        self._first_stage.decode_indices(self._codes[:batch])


# --- the ONNX Runtime int8 peer ----------------------------------------------------------------

def quantize_transformer_graphs(bundle: Bundle, directory: Path) -> Tuple[Path, Path]:
    """The bundle's prefill and step graphs through onnxruntime.quantization.quantize_dynamic
    (its defaults: int8 weights per tensor, uint8 activations quantized per call) -> the new
    (prefill, step) paths in `directory`."""
    from onnxruntime.quantization import quantize_dynamic
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing (for static quantization) on root
    try:
        paths = []
        for graph in ("transformer_prefill", "transformer_step"):
            paths.append(Path(directory) / f"{graph}_int8.onnx")
            quantize_dynamic(bundle.graph_path(graph), paths[-1])
    finally:
        root.setLevel(level)
    return paths[0], paths[1]


def ort_int8_peer(bundle: Bundle, workload: Workload, prefix: PrefixTokens, directory: Path,
                  device: str, num_threads: int) -> OrtGraphsContender:
    m = bundle.manifest
    t = m.transformer
    prefill, step = quantize_transformer_graphs(bundle, directory)
    graphs = OrtTransformerGraphs(prefill, step, m.kv_cache, execution_providers(device), device,
                                  num_threads)
    return OrtGraphsContender("onnxruntime int8 (dynamic)", str(bundle.path), graphs, prefix,
                              workload, m.first_stage.codebook_size,
                              matrix_bytes(t.n_layer, t.n_embd, t.vocab_size, "int8"),
                              num_threads)


# --- all of them -------------------------------------------------------------------------------

def baselines(bundle: Bundle, model: nn.Module, workload: Workload, prefix: PrefixTokens,
              max_batch: int, compile_steps: bool, scratch: Path, device: str,
              num_threads: int) -> Tuple[List[Contender], List[DecodeContender], List[str]]:
    """-> (token contenders, the torch decoder, notes) for one bundle's source model."""
    m = bundle.manifest
    codes = m.first_stage.codebook_size
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads; the torch "
             "baselines run on the CPU"]
    contenders: List[Contender] = [UpstreamSampler(model.transformer, prefix, workload.top_k,
                                                   codes)]
    static = StaticCacheSampler(model.transformer, prefix, workload.top_k, codes,
                                compile_steps=compile_steps)
    if compile_steps:
        started = time.perf_counter()
        static.start(1)
        static.draw(0, last=False)  # compiles the step
        notes.append(f"torch.compile of the static-cache step: "
                     f"{time.perf_counter() - started:.0f} s before the first step ran")
    else:
        notes.append("torch static-cache sampler runs eagerly (--torch-compile to compile it)")
    contenders.append(static)
    step = m.graphs.get("transformer_step")
    if step is None:
        notes.append("onnxruntime int8 peer: skipped, the bundle has no transformer graphs "
                      "(build it with --backend auto or onnxruntime)")
    elif step.precision != "fp32":
        notes.append(f"onnxruntime int8 peer: skipped, the bundle's step graph is "
                     f"{step.precision} (quantize_dynamic needs fp32)")
    else:
        contenders.append(ort_int8_peer(bundle, workload, prefix, scratch, device, num_threads))
        notes.append("onnxruntime int8 peer: the bundle's prefill and step graphs through "
                     "quantize_dynamic (defaults), vqrt's sampler")
    decoders = [TorchDecoder(model.first_stage_model, workload.grid, codes, max_batch)]
    return contenders, decoders, notes

"""The transformer stage: a minGPT decoder with upstream taming-transformers' parameter layout.

State-dict keys as upstream taming.modules.transformer.mingpt.GPT: tok_emb.weight, pos_emb
(1, block_size, n_embd), blocks.<i>.{ln1, ln2, attn.{key, query, value, proj}, attn.mask,
mlp.0, mlp.2}, ln_f, head.weight (no bias). attn.mask is the causal-mask buffer
(1, 1, block_size, block_size); upstream saves it, so it stays a persistent buffer here.

Two forward paths share every layer: `forward(idx)` runs the whole sequence (the oracle), and
`forward_cached(idx, cache)` runs only new positions against a preallocated KVCache. The
reference decoding loops at the bottom (greedy by full recomputation, greedy with the cache,
top-k filtering) are the torch oracle that compiled samplers are tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    """Upstream transformer_config.params."""
    vocab_size: int
    block_size: int
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 256
    n_unmasked: int = 0  # the first n_unmasked positions attend to each other bidirectionally
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class KVCache:
    """Preallocated keys and values of every layer for one batch of sequences.

    keys, values: [n_layer, B, n_head, max_len, head_dim]; positions [0, length) are filled.
    """
    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]


def causal_mask(cfg: GPTConfig) -> torch.Tensor:
    """(1, 1, block_size, block_size) float: 1 where query row may attend to key column."""
    mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size))
    mask[:cfg.n_unmasked, :cfg.n_unmasked] = 1
    return mask.view(1, 1, cfg.block_size, cfg.block_size)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_drop = nn.Dropout(cfg.attn_pdrop)
        self.resid_drop = nn.Dropout(cfg.resid_pdrop)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.register_buffer("mask", causal_mask(cfg))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C) -> (B, n_head, T, head_dim)
        return x.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, layer_cache=None, start: int = 0) -> torch.Tensor:
        """x (B, T, C) holds positions [start, start + T).

        layer_cache None: x is the whole sequence (start must be 0). Otherwise a pair of
        (B, n_head, max_len, head_dim) views: this call's keys/values are written at
        [start, start + T) and attention reads [0, start + T).
        """
        b, t, c = x.shape
        q = self._heads(self.query(x))
        k = self._heads(self.key(x))
        v = self._heads(self.value(x))
        if layer_cache is None:
            assert start == 0, "without a cache the input must start at position 0"
        else:
            k_cache, v_cache = layer_cache
            k_cache[:, :, start:start + t] = k
            v_cache[:, :, start:start + t] = v
            k = k_cache[:, :, :start + t]
            v = v_cache[:, :, :start + t]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, start+T)
        att = att.masked_fill(self.mask[:, :, start:start + t, :start + t] == 0, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)  # heads side by side
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block; mlp = Linear(C, 4C), exact GELU, Linear(4C, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.resid_pdrop),
        )

    def forward(self, x: torch.Tensor, layer_cache=None, start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), layer_cache, start)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.n_embd))
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # minGPT's initialisation, for training from scratch.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def _run(self, idx: torch.Tensor, cache, start: int) -> torch.Tensor:
        b, t = idx.shape
        if start + t > self.cfg.block_size:
            raise ValueError(f"positions up to {start + t} exceed the block size "
                             f"{self.cfg.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, start:start + t])  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.keys[layer], cache.values[layer])
            x = block(x, layer_cache, start)
        return self.head(self.ln_f(x))  # (B, T, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64, T <= block_size -> logits (B, T, vocab_size); logits[:, t]
        predict the token at position t + 1."""
        return self._run(idx, None, 0)

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> KVCache:
        """An empty cache for `batch` sequences of up to max_len (default block_size) tokens,
        on the model's device and dtype."""
        max_len = self.cfg.block_size if max_len is None else max_len
        if max_len > self.cfg.block_size:
            raise ValueError(f"cache length {max_len} exceeds the block size "
                             f"{self.cfg.block_size}")
        shape = (self.cfg.n_layer, batch, self.cfg.n_head, max_len, self.cfg.head_dim)
        weight = self.pos_emb
        return KVCache(torch.zeros(shape, dtype=weight.dtype, device=weight.device),
                       torch.zeros(shape, dtype=weight.dtype, device=weight.device))

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Runs idx (B, T) at positions [cache.length, cache.length + T), stores their keys and
        values, advances cache.length by T and returns logits (B, T, vocab_size)."""
        b, t = idx.shape
        if b != cache.keys.shape[1]:
            raise ValueError(f"batch {b} does not match the cache's batch {cache.keys.shape[1]}")
        if cache.length + t > cache.max_len:
            raise ValueError(f"{cache.length} cached + {t} new positions exceed the cache "
                             f"length {cache.max_len}")
        logits = self._run(idx, cache, cache.length)
        cache.length += t
        return logits


# Reference decoding: plain torch, the oracle for the compiled samplers.

def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (..., V) -> same shape with every logit below the k-th largest set to -inf.
    Ties with the k-th largest are kept, so more than k entries may survive."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"top-k {k} outside [1, vocabulary size {logits.shape[-1]}]")
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


@torch.no_grad()
def greedy_full(gpt: GPT, prefix: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding that re-runs the whole sequence every step.
    prefix (B, L) conditioning tokens -> generated tokens (B, steps), prefix cut off."""
    sequence = prefix
    for _ in range(steps):
        next_token = gpt(sequence)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        sequence = torch.cat([sequence, next_token], dim=1)
    return sequence[:, prefix.shape[1]:]


@torch.no_grad()
def greedy_cached(gpt: GPT, prefix: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding with a KV cache: the prefix once, then one new token per step.
    prefix (B, L) -> generated tokens (B, steps). The last token is never fed back, so the
    cache needs L + steps - 1 positions."""
    cache = gpt.new_cache(prefix.shape[0], prefix.shape[1] + steps - 1)
    tokens = []
    step_input = prefix
    for _ in range(steps):
        next_token = gpt.forward_cached(step_input, cache)[:, -1].argmax(dim=-1, keepdim=True)
        tokens.append(next_token)
        step_input = next_token
    return torch.cat(tokens, dim=1)

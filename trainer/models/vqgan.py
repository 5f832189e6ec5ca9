"""The VQGAN first stage: Encoder, Decoder, quantizers and VQModel.

The module tree, parameter names and shapes match upstream taming-transformers
(taming.models.vqgan.VQModel / GumbelVQ with taming.modules.diffusionmodules.model Encoder and
Decoder), so an upstream state_dict loads with strict=True once its training-only loss.* keys are
dropped. Numerics follow upstream too: GroupNorm(32, eps 1e-6), swish, single-head spatial
attention scaled by 1/sqrt(C), zero-padded right/bottom stride-2 downsampling, nearest x2
upsampling, and no clamp or tanh on the decoder output (unless the config asks for tanh_out).

Shapes: images (B, C_img, H, W); latents (B, C, h, w) with h = H / f, w = W / f and
f = 2 ** (len(ch_mult) - 1); code indices (B, h, w) int64, raster order within a row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class DDConfig:
    """Upstream `ddconfig`: the architecture shared by Encoder and Decoder."""
    ch: int
    out_ch: int
    ch_mult: Tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: Tuple[int, ...]
    in_channels: int
    resolution: int
    z_channels: int
    double_z: bool = True  # upstream default; VQGAN configs set it to false
    dropout: float = 0.0
    resamp_with_conv: bool = True
    tanh_out: bool = False

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (self.num_levels - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid for a training-resolution image."""
        return self.resolution // self.downsampling_factor

    def level_has_attention(self, level: int) -> bool:
        # Decided from the configured resolution, never from the actual input size: a model
        # trained at 256 keeps attention at the same levels when it decodes a 12x16 latent.
        return self.resolution // 2 ** level in self.attn_resolutions


@dataclass(frozen=True)
class VQConfig:
    """Upstream VQModel / GumbelVQ / VQSegmentationModel params the network depends on."""
    ddconfig: DDConfig
    n_embed: int
    embed_dim: int
    quantizer: str = "vq"  # "vq" (VectorQuantizer2) or "gumbel" (GumbelQuantize)
    beta: float = 0.25  # upstream VQModel hard-codes 0.25
    legacy: bool = True  # upstream VectorQuantizer2 default (beta on the codebook term)
    colorize_nlabels: Optional[int] = None  # segmentation models carry a (3, n, 1, 1) buffer

    def __post_init__(self):
        if self.quantizer not in ("vq", "gumbel"):
            raise ValueError(f"quantizer must be 'vq' or 'gumbel', got {self.quantizer!r}")


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    # 32 contiguous channel groups; eps 1e-6 (not PyTorch's 1e-5) as upstream.
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1, swish, conv1, norm2, swish, dropout, conv2, plus a 1x1 nin_shortcut when the
    channel count changes. x: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, 1x1 conv projections, residual.
    x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = x.shape
        q = self.q(h).reshape(b, c, height * width).transpose(1, 2)  # (B, HW, C)
        k = self.k(h).reshape(b, c, height * width)  # (B, C, HW)
        v = self.v(h).reshape(b, c, height * width)  # (B, C, HW)
        weights = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halves H and W: zero-pad right and bottom by 1, then 3x3 stride-2 conv without padding
    (or 2x2 average pooling when the config turns resamp_with_conv off)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour x2, then a 3x3 conv (unless resamp_with_conv is off)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


def _mid_block(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> (B, z_channels (x2 if double_z), H/f, W/f)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.cfg = cfg
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, stride=1, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch  # each level starts with the previous level's width
        for level in range(cfg.num_levels):
            block_out = cfg.ch * cfg.ch_mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if cfg.level_has_attention(level):
                    stage.attn.append(AttnBlock(block_in))
            if level != cfg.num_levels - 1:
                stage.downsample = Downsample(block_in, cfg.resamp_with_conv)
            self.down.append(stage)
        self.mid = _mid_block(block_in, cfg.dropout)
        self.norm_out = group_norm(block_in)
        out_channels = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != self.cfg.num_levels - 1:
                h = stage.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> (B, out_ch, h*f, w*f). Any h, w: the convolutions are local
    and the attention blocks attend over all positions of their level."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.cfg = cfg
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, stride=1, padding=1)
        self.mid = _mid_block(block_in, cfg.dropout)
        # Built from the deepest level up, stored by level index (up[0] is full resolution),
        # as upstream does with up.insert(0, ...).
        stages = []
        for level in reversed(range(cfg.num_levels)):
            block_out = cfg.ch * cfg.ch_mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if cfg.level_has_attention(level):
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in, cfg.resamp_with_conv)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(range(self.cfg.num_levels)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        h = self.conv_out(swish(self.norm_out(h)))
        return torch.tanh(h) if self.cfg.tanh_out else h


class VectorQuantizer(nn.Module):
    """Upstream VectorQuantizer2: nearest codebook row by squared L2 distance.

    Parameter: embedding.weight (n_embed, embed_dim).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, embed_dim, h, w) -> squared L2 distance to every code (B, h, w, N)."""
        b, c, h, w = z.shape
        assert c == self.embed_dim, f"expected {self.embed_dim} channels, got {c}"
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, C), row-major positions
        codebook = self.embedding.weight  # (N, C)
        # Same expansion as upstream (|z|^2 + |e|^2 - 2 z.e), so near-ties break the same way.
        distances = (flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)
                     - 2.0 * flat @ codebook.t())  # (B*h*w, N)
        return distances.reshape(b, h, w, -1)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, embed_dim, h, w) -> (B, h, w) int64."""
        return self.distances(z).argmin(dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w) -> codebook vectors (B, embed_dim, h, w)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        """Training path. z (B, C, h, w) -> (z_q straight-through (B, C, h, w),
        codebook + commitment loss (scalar), indices (B, h, w))."""
        indices = self.indices(z)
        z_q = self.lookup(indices)
        codebook_term = torch.mean((z_q - z.detach()) ** 2)
        commitment_term = torch.mean((z_q.detach() - z) ** 2)
        if self.legacy:  # upstream's historical weighting, kept for checkpoint compatibility
            loss = commitment_term + self.beta * codebook_term
        else:
            loss = self.beta * commitment_term + codebook_term
        return z + (z_q - z).detach(), loss, indices


class GumbelQuantizer(nn.Module):
    """Upstream GumbelQuantize, inference side: a 1x1 conv to n_embed logits and an embedding.

    Parameters: proj (z_channels -> n_embed), embed.weight (n_embed, embed_dim). Upstream
    samples Gumbel noise even in eval mode; `indices` takes the noise-free argmax instead.
    """

    def __init__(self, in_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, in_channels, h, w) -> (B, h, w) int64."""
        return self.proj(z).argmax(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w) -> (B, embed_dim, h, w)."""
        return self.embed(indices).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """VQGAN without its training losses: encoder -> quant_conv -> quantize -> post_quant_conv
    -> decoder. Upstream VQModel, GumbelVQ and VQSegmentationModel share this layout."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        dd = cfg.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        if cfg.quantizer == "gumbel":
            # Upstream feeds quant_conv's embed_dim channels into a proj built for z_channels.
            self.quantize = GumbelQuantizer(dd.z_channels, cfg.n_embed, cfg.embed_dim)
        else:
            self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.legacy)
        self.quant_conv = nn.Conv2d(dd.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, dd.z_channels, 1)
        if cfg.colorize_nlabels is not None:
            # Random projection upstream uses to show label maps as RGB; saved in checkpoints.
            self.register_buffer("colorize", torch.randn(3, cfg.colorize_nlabels, 1, 1))

    @property
    def downsampling_factor(self) -> int:
        return self.cfg.ddconfig.downsampling_factor

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> z_e (B, embed_dim, H/f, W/f), before quantization."""
        return self.quant_conv(self.encoder(x))

    def encode_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> code indices (B, H/f, W/f) int64."""
        if self.cfg.quantizer == "gumbel" and self.cfg.embed_dim != self.cfg.ddconfig.z_channels:
            raise ValueError("this GumbelVQ can only decode: its quant_conv gives "
                             f"{self.cfg.embed_dim} channels but quantize.proj expects "
                             f"{self.cfg.ddconfig.z_channels} (as upstream, encode needs "
                             "embed_dim == z_channels)")
        return self.quantize.indices(self.encode_latent(x))

    def decode_latent(self, quant: torch.Tensor) -> torch.Tensor:
        """quant (B, embed_dim, h, w) -> image (B, out_ch, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w) int64 -> image (B, out_ch, h*f, w*f); any h, w."""
        assert indices.dim() == 3, f"indices must be (B, h, w), got {tuple(indices.shape)}"
        return self.decode_latent(self.quantize.lookup(indices))

    def forward(self, x: torch.Tensor):
        """Training path (VectorQuantizer only): x -> (reconstruction, quantizer loss)."""
        z = self.encode_latent(x)
        # Under bf16 autocast (vqrt train --precision bf16) the nearest-code search and the
        # codebook losses still run in fp32: with an 8-bit mantissa, distances to close codes
        # tie and the argmin would flip.
        with torch.autocast(z.device.type, enabled=False):
            quant, loss, _ = self.quantize(z.float())
        return self.decode_latent(quant), loss

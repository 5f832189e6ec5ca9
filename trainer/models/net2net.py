"""Net2NetTransformer without Lightning: first stage + conditioning stage + GPT.

Sub-module names match upstream taming.models.cond_transformer.Net2NetTransformer, so its
checkpoint state_dict (first_stage_model.*, cond_stage_model.*, transformer.*) loads with
strict=True. Only the Identity permuter exists (raster order); it has no weights.

Sequence layout: [condition tokens (B, L), image tokens (B, h*w) in raster order].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqrt.trainer.models.cond import (
    CondConfig, CoordStage, Labelator, SOSProvider, build_cond_stage, conditioning_kind)
from vqrt.trainer.models.mingpt import GPT, GPTConfig
from vqrt.trainer.models.vqgan import VQConfig, VQModel


@dataclass(frozen=True)
class Net2NetConfig:
    first_stage: VQConfig
    cond: CondConfig
    transformer: GPTConfig
    first_stage_key: str = "image"
    cond_stage_key: str = "depth"  # upstream default; names the dataset field, e.g. class_label
    downsample_cond_size: int = -1  # > -1: the condition is resized to this square first
    pkeep: float = 1.0  # training-time token corruption; 1.0 = none


class Net2NetTransformer(nn.Module):
    def __init__(self, cfg: Net2NetConfig):
        super().__init__()
        self.cfg = cfg
        self.first_stage_model = VQModel(cfg.first_stage)
        self.cond_stage_model = build_cond_stage(cfg.cond, self.first_stage_model)
        self.transformer = GPT(cfg.transformer)

    @property
    def conditioning(self) -> str:
        return conditioning_kind(self.cfg.cond)

    @torch.no_grad()
    def encode_to_z(self, x: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) -> image tokens (B, h*w), raster order."""
        return self.first_stage_model.encode_to_indices(x).flatten(1)

    @torch.no_grad()
    def encode_to_c(self, c) -> torch.Tensor:
        """condition -> prefix tokens (B, L) int64. c is: class ids (B,) for Labelator, the
        batch size for SOSProvider, a coordinate map (B, 1, H, W) for CoordStage, an image-like
        tensor (B, C, H, W) for a VQ cond stage (e.g. one-hot segmentation, depth)."""
        stage = self.cond_stage_model
        if isinstance(stage, (Labelator, SOSProvider, CoordStage)):
            return stage.encode(c)
        if self.cfg.downsample_cond_size > -1:
            size = self.cfg.downsample_cond_size
            c = F.interpolate(c, size=(size, size))  # upstream's default mode: nearest
        return stage.encode_to_indices(c).flatten(1)

    @torch.no_grad()
    def decode_to_img(self, tokens: torch.Tensor, latent_hw: Tuple[int, int]) -> torch.Tensor:
        """image tokens (B, h*w) raster order -> image (B, 3, h*f, w*f)."""
        h, w = latent_hw
        return self.first_stage_model.decode_indices(tokens.view(tokens.shape[0], h, w))

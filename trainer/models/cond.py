"""Conditioning stages of a Net2NetTransformer: what turns a condition into prefix tokens.

Upstream choices and their counterparts here:
  taming.modules.util.Labelator(n_classes)       -> Labelator: class id c is token c
  taming.modules.util.SOSProvider(sos_token), or
  "__is_unconditional__" / unconditional: true   -> SOSProvider: one fixed start token
  taming.modules.misc.coord.CoordStage           -> CoordStage: area-downsampled coordinates
  a VQModel / VQSegmentationModel cond stage     -> a second VQModel (segmentation, depth, ...)
  "__is_first_stage__"                           -> the first stage itself
None of the token providers has weights, so none adds state-dict keys; a VQ cond stage adds
cond_stage_model.* keys, and "__is_first_stage__" repeats the first stage's keys under
cond_stage_model.* (one module registered under two names, as upstream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqrt.trainer.models.vqgan import VQConfig, VQModel


@dataclass(frozen=True)
class ClassCondConfig:
    n_classes: int


@dataclass(frozen=True)
class UncondConfig:
    sos_token: int


@dataclass(frozen=True)
class CoordCondConfig:
    n_embed: int
    down_factor: int


@dataclass(frozen=True)
class FirstStageCondConfig:
    """cond_stage_config "__is_first_stage__": the first stage encodes the condition too."""


# A VQConfig stands for a separately trained VQ cond stage.
CondConfig = Union[ClassCondConfig, UncondConfig, CoordCondConfig, FirstStageCondConfig, VQConfig]


def conditioning_kind(cfg: CondConfig) -> str:
    """One word for the card and the bundle: class, unconditional, coord, vq or first_stage."""
    kinds = {ClassCondConfig: "class", UncondConfig: "unconditional", CoordCondConfig: "coord",
             FirstStageCondConfig: "first_stage", VQConfig: "vq"}
    return kinds[type(cfg)]


class Labelator(nn.Module):
    """Class-conditional: the class id is used directly as the single prefix token."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) int -> prefix tokens (B, 1) int64."""
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < self.n_classes):
            raise ValueError(f"class ids must lie in [0, {self.n_classes}); got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.long().view(-1, 1)


class SOSProvider(nn.Module):
    """Unconditional: every sequence starts with the same start-of-sequence token."""

    def __init__(self, sos_token: int):
        super().__init__()
        self.sos_token = sos_token

    def encode(self, batch_size: int) -> torch.Tensor:
        """-> prefix tokens (batch_size, 1) int64, all sos_token."""
        return torch.full((batch_size, 1), self.sos_token, dtype=torch.long)


class CoordStage(nn.Module):
    """Coordinate conditioning: a (B, 1, H, W) map in [0, 1], area-downsampled by down_factor,
    scaled by n_embed and rounded. Tokens range over 0..n_embed inclusive, as upstream."""

    def __init__(self, n_embed: int, down_factor: int):
        super().__init__()
        self.n_embed = n_embed
        self.down_factor = down_factor

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (B, 1, H, W) in [0, 1] -> tokens (B, (H/df) * (W/df)) int64, row-major."""
        if coords.dim() != 4 or coords.shape[1] != 1:
            raise ValueError(f"coordinates must be (B, 1, H, W), got {tuple(coords.shape)}")
        if float(coords.min()) < 0.0 or float(coords.max()) > 1.0:
            raise ValueError("coordinates must lie in [0, 1]")
        small = F.interpolate(coords, scale_factor=1.0 / self.down_factor, mode="area")
        tokens = (self.n_embed * small.clamp(0.0, 1.0)).round().long()  # (B, 1, h, w)
        return tokens.view(coords.shape[0], -1)


def build_cond_stage(cfg: CondConfig, first_stage: VQModel) -> nn.Module:
    if isinstance(cfg, ClassCondConfig):
        return Labelator(cfg.n_classes)
    if isinstance(cfg, UncondConfig):
        return SOSProvider(cfg.sos_token)
    if isinstance(cfg, CoordCondConfig):
        return CoordStage(cfg.n_embed, cfg.down_factor)
    if isinstance(cfg, FirstStageCondConfig):
        return first_stage
    return VQModel(cfg)

"""The model card: what a loaded checkpoint is, in numbers (what `vqrt inspect` prints)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from vqrt.trainer.checkpoints import LoadedModel
from vqrt.trainer.model_config import SOS_PROVIDER
from vqrt.trainer.models.cond import (
    ClassCondConfig, CoordCondConfig, FirstStageCondConfig, UncondConfig)
from vqrt.trainer.models.vqgan import VQConfig


@dataclass(frozen=True)
class StageCard:
    name: str  # first_stage, cond_stage or transformer
    target: str  # the upstream class named in the config
    parameters: int


@dataclass(frozen=True)
class TransformerCard:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    head_dim: int


@dataclass(frozen=True)
class ConditioningCard:
    kind: str  # class, unconditional, coord, vq, first_stage
    prefix_tokens: int  # condition tokens before the image tokens, at training size
    n_classes: Optional[int] = None
    sos_token: Optional[int] = None
    cond_stage_key: Optional[str] = None  # the dataset field, e.g. class_label, segmentation
    cond_channels: Optional[int] = None  # input channels of a VQ cond stage (one-hot labels)


@dataclass(frozen=True)
class ModelCard:
    weights: str
    weights_format: str
    config: str
    config_source: str
    kind: str  # vqgan or net2net
    target: str
    stages: Tuple[StageCard, ...]
    total_parameters: int
    resolution: int  # training image side
    image_channels: int
    downsampling_factor: int  # f = 2 ** (len(ch_mult) - 1)
    latent_h: int  # latent grid of a training-size image
    latent_w: int
    codebook_size: int
    codebook_dim: int
    quantizer: str  # vq or gumbel
    ignored_keys: int
    transformer: Optional[TransformerCard] = None
    conditioning: Optional[ConditioningCard] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        quantizer = "vector quantizer" if self.quantizer == "vq" else "Gumbel quantizer"
        lines = [
            f"model card: {self.weights} ({self.weights_format})",
            f"  config         {self.config} ({self.config_source})",
            f"  model          {self.target} ({self.kind})",
            "  stages",
        ]
        width = max(len(s.target) for s in self.stages)
        for stage in self.stages:
            lines.append(f"    {stage.name:<12} {stage.target:<{width}} "
                         f"{stage.parameters:>13,} parameters")
        lines += [
            f"    {'total':<12} {'':<{width}} {self.total_parameters:>13,} parameters",
            f"  image          {self.resolution} x {self.resolution} at training, "
            f"{self.image_channels} channels",
            f"  latent grid    {self.latent_h} x {self.latent_w}, downsampling factor "
            f"f = {self.downsampling_factor}",
            f"  codebook       {self.codebook_size:,} codes x {self.codebook_dim} dims "
            f"({quantizer})",
        ]
        if self.transformer is not None:
            t = self.transformer
            lines.append(f"  transformer    {t.n_layer} layers, {t.n_head} heads x {t.head_dim} "
                         f"dims ({t.n_embd} wide), vocabulary {t.vocab_size:,}, block size "
                         f"{t.block_size}")
        if self.conditioning is not None:
            lines.append(f"  conditioning   {_describe_conditioning(self.conditioning)}")
        lines.append(f"  ignored keys   {self.ignored_keys} training-only loss.* keys")
        return "\n".join(lines)


def _describe_conditioning(c: ConditioningCard) -> str:
    tokens = f"{c.prefix_tokens} prefix token{'s' if c.prefix_tokens != 1 else ''}"
    if c.kind == "class":
        return f"class-conditional, {c.n_classes} classes ({tokens})"
    if c.kind == "unconditional":
        return f"unconditional, start token {c.sos_token} ({tokens})"
    if c.kind == "coord":
        return f"coordinates ({tokens})"
    source = "the first stage" if c.kind == "first_stage" else "a VQ cond stage"
    return (f"{c.cond_stage_key} encoded by {source}, {c.cond_channels} input channels "
            f"({tokens})")


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conditioning(loaded: LoadedModel) -> ConditioningCard:
    cfg = loaded.config
    cond = cfg.cond
    key = cfg.cond_stage_key
    if isinstance(cond, ClassCondConfig):
        return ConditioningCard("class", 1, n_classes=cond.n_classes, cond_stage_key=key)
    if isinstance(cond, UncondConfig):
        return ConditioningCard("unconditional", 1, sos_token=cond.sos_token, cond_stage_key=key)
    if isinstance(cond, CoordCondConfig):
        side = cfg.first_stage.ddconfig.resolution // cond.down_factor
        return ConditioningCard("coord", side * side, cond_stage_key=key)
    vq = cfg.first_stage if isinstance(cond, FirstStageCondConfig) else cond
    size = cfg.downsample_cond_size if cfg.downsample_cond_size > -1 else vq.ddconfig.resolution
    side = size // vq.ddconfig.downsampling_factor
    return ConditioningCard(loaded.conditioning, side * side, cond_stage_key=key,
                            cond_channels=vq.ddconfig.in_channels)


def model_card(loaded: LoadedModel) -> ModelCard:
    raw_params = loaded.spec.raw.get("params") or {}
    first: VQConfig = loaded.first_stage.cfg
    stages = []
    transformer = conditioning = None
    if loaded.kind == "vqgan":
        stages.append(StageCard("first_stage", loaded.spec.target,
                                _parameters(loaded.first_stage)))
    else:
        stages.append(StageCard("first_stage", raw_params["first_stage_config"]["target"],
                                _parameters(loaded.first_stage)))
        cond_config = raw_params["cond_stage_config"]
        if isinstance(loaded.config.cond, UncondConfig):
            cond_target = SOS_PROVIDER  # also what "unconditional: true" substitutes upstream
        elif isinstance(cond_config, str):
            cond_target = cond_config  # __is_first_stage__
        else:
            cond_target = cond_config["target"]
        # A shared first stage is counted once, under first_stage.
        shared = loaded.cond_stage is loaded.first_stage
        stages.append(StageCard("cond_stage", cond_target,
                                0 if shared else _parameters(loaded.cond_stage)))
        gpt = loaded.transformer.cfg
        stages.append(StageCard("transformer", raw_params["transformer_config"]["target"],
                                _parameters(loaded.transformer)))
        transformer = TransformerCard(gpt.vocab_size, gpt.block_size, gpt.n_layer, gpt.n_head,
                                      gpt.n_embd, gpt.head_dim)
        conditioning = _conditioning(loaded)
    dd = first.ddconfig
    return ModelCard(
        weights=str(loaded.weights_path), weights_format=loaded.weights_format,
        config=str(loaded.config_path), config_source=loaded.config_source,
        kind=loaded.kind, target=loaded.spec.target, stages=tuple(stages),
        total_parameters=_parameters(loaded.model), resolution=dd.resolution,
        image_channels=dd.in_channels, downsampling_factor=dd.downsampling_factor,
        latent_h=dd.latent_size, latent_w=dd.latent_size, codebook_size=first.n_embed,
        codebook_dim=first.embed_dim, quantizer=first.quantizer,
        ignored_keys=len(loaded.ignored_keys), transformer=transformer,
        conditioning=conditioning)

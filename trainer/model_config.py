"""Reads the `model:` section of an upstream taming-transformers config into typed configs.

Only the fields that shape the network are kept. Training-only fields (lossconfig, ckpt_path,
monitor, learning rates, ...) are accepted and ignored; anything else is rejected with its
dotted path, so a config vqrt does not understand never loads as something it is not.
Errors are ConfigError (a ValueError) with one-line messages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple, Union

from vqrt.trainer.models.cond import (
    ClassCondConfig, CondConfig, CoordCondConfig, FirstStageCondConfig, UncondConfig)
from vqrt.trainer.models.mingpt import GPTConfig
from vqrt.trainer.models.net2net import Net2NetConfig
from vqrt.trainer.models.vqgan import DDConfig, VQConfig

VQMODEL = "taming.models.vqgan.VQModel"
GUMBELVQ = "taming.models.vqgan.GumbelVQ"
VQSEGMENTATION = "taming.models.vqgan.VQSegmentationModel"
NET2NET = "taming.models.cond_transformer.Net2NetTransformer"
GPT_TARGET = "taming.modules.transformer.mingpt.GPT"
LABELATOR = "taming.modules.util.Labelator"
SOS_PROVIDER = "taming.modules.util.SOSProvider"
COORD_STAGE = "taming.modules.misc.coord.CoordStage"
IDENTITY_PERMUTER = "taming.modules.transformer.permuter.Identity"
FIRST_STAGE_COND = "__is_first_stage__"
UNCONDITIONAL_COND = "__is_unconditional__"

# Training-only fields, per kind of params block: accepted, never used.
_VQ_TRAINING = ("lossconfig", "ckpt_path", "ignore_keys", "image_key", "monitor",
                "sane_index_shape")
_GUMBEL_TRAINING = _VQ_TRAINING + ("temperature_scheduler_config", "kl_weight")
_NET2NET_TRAINING = ("ckpt_path", "ignore_keys")


class ConfigError(ValueError):
    """A config field vqrt cannot use; the message names the field by its dotted path."""


@dataclass(frozen=True)
class ModelSpec:
    """What a config describes.

    kind: "vqgan" (a first stage alone) or "net2net" (first stage + conditioning + GPT).
    config: VQConfig or Net2NetConfig. raw: the `model:` mapping as read (target, params).
    """
    target: str
    kind: str
    config: Union[VQConfig, Net2NetConfig]
    raw: Mapping[str, Any]


_REQUIRED = object()


class _Params:
    """Takes typed fields out of one params mapping; `finish` rejects whatever is left."""

    def __init__(self, params: Any, where: str):
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(params).__name__}")
        self.left = dict(params)
        self.where = where

    def path(self, name: str) -> str:
        return f"{self.where}.{name}"

    def take(self, name: str, kind, default: Any = _REQUIRED) -> Any:
        """kind: a type or a tuple of types. An explicit null counts as absent."""
        value = self.left.pop(name, None)
        if value is None:
            if default is _REQUIRED:
                raise ConfigError(f"{self.path(name)} is missing")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            raise ConfigError(f"{self.path(name)} must be {names}, got {value!r}")
        return value

    def take_ints(self, name: str) -> Tuple[int, ...]:
        value = self.take(name, (list, tuple))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{self.path(name)} must be a list of ints, got {value!r}")
        return tuple(value)

    def take_positive(self, name: str, default: Any = _REQUIRED) -> int:
        value = self.take(name, int, default)
        if value <= 0:
            raise ConfigError(f"{self.path(name)} must be positive, got {value}")
        return value

    def ignore(self, names: Tuple[str, ...]) -> None:
        for name in names:
            self.left.pop(name, None)

    def finish(self) -> None:
        if self.left:
            names = ", ".join(sorted(self.left))
            raise ConfigError(f"{self.where}: unsupported field(s) {names}")


def _target_and_params(block: Any, where: str) -> Tuple[str, Any]:
    if not isinstance(block, Mapping) or not isinstance(block.get("target"), str):
        raise ConfigError(f"{where} must be a mapping with a target")
    unknown = set(block) - {"target", "params"}
    if unknown:
        raise ConfigError(f"{where}: unsupported field(s) {', '.join(sorted(unknown))}")
    return block["target"], block.get("params")


def _parse_ddconfig(params: Any, where: str) -> DDConfig:
    p = _Params(params, where)
    cfg = DDConfig(
        ch=p.take_positive("ch"),
        out_ch=p.take_positive("out_ch"),
        ch_mult=p.take_ints("ch_mult"),
        num_res_blocks=p.take_positive("num_res_blocks"),
        attn_resolutions=p.take_ints("attn_resolutions"),
        in_channels=p.take_positive("in_channels"),
        resolution=p.take_positive("resolution"),
        z_channels=p.take_positive("z_channels"),
        double_z=p.take("double_z", bool, True),
        dropout=p.take("dropout", float, 0.0),
        resamp_with_conv=p.take("resamp_with_conv", bool, True),
        tanh_out=p.take("tanh_out", bool, False),
    )
    if p.take("give_pre_end", bool, False):
        raise ConfigError(f"{p.path('give_pre_end')} true is not supported: that decoder "
                          "returns features, not images")
    p.finish()
    if not cfg.ch_mult or any(m <= 0 for m in cfg.ch_mult):
        raise ConfigError(f"{p.path('ch_mult')} must be a non-empty list of positive ints")
    # Upstream builds 32-group GroupNorms on every width, so each must divide by 32.
    for width in {cfg.ch * m for m in cfg.ch_mult} | {cfg.ch}:
        if width % 32:
            raise ConfigError(f"{where}: channel width {width} (ch x ch_mult) is not a "
                              "multiple of 32, which GroupNorm(32) needs")
    return cfg


def _parse_vq(target: str, params: Any, where: str) -> VQConfig:
    p = _Params(params, where)
    ddconfig = _parse_ddconfig(p.take("ddconfig", Mapping), p.path("ddconfig"))
    if ddconfig.double_z:
        # Upstream builds it but cannot run it: quant_conv takes z_channels, not 2 * z_channels.
        raise ConfigError(f"{p.path('ddconfig.double_z')} must be false for a VQ model (its "
                          "quant_conv takes z_channels inputs, not 2 * z_channels)")
    n_embed = p.take_positive("n_embed")
    embed_dim = p.take_positive("embed_dim")
    colorize = p.take("colorize_nlabels", int, None)
    if target == VQSEGMENTATION:
        colorize = p.take_positive("n_labels")
    if p.take("remap", str, None) is not None:
        raise ConfigError(f"{p.path('remap')}: codebook remapping (a .npy index file) is not "
                          "supported; remove remap and use the full codebook")
    p.ignore(_GUMBEL_TRAINING if target == GUMBELVQ else _VQ_TRAINING)
    p.finish()
    return VQConfig(ddconfig=ddconfig, n_embed=n_embed, embed_dim=embed_dim,
                    quantizer="gumbel" if target == GUMBELVQ else "vq",
                    colorize_nlabels=colorize)


def _parse_gpt(block: Any, where: str) -> GPTConfig:
    target, params = _target_and_params(block, where)
    if target != GPT_TARGET:
        raise ConfigError(f"{where}.target {target} is not supported (only {GPT_TARGET})")
    p = _Params(params, f"{where}.params")
    vocab_size = p.take_positive("vocab_size")
    block_size = p.take_positive("block_size")
    n_layer = p.take_positive("n_layer", 12)
    n_head = p.take_positive("n_head", 8)
    n_embd = p.take_positive("n_embd", 256)
    n_unmasked = p.take("n_unmasked", int, 0)
    if n_embd % n_head:
        raise ConfigError(f"{where}.params: n_embd {n_embd} is not divisible by n_head {n_head}")
    if not 0 <= n_unmasked <= block_size:
        raise ConfigError(f"{p.path('n_unmasked')} must lie in [0, block_size {block_size}], "
                          f"got {n_unmasked}")
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                    n_head=n_head, n_embd=n_embd, n_unmasked=n_unmasked,
                    embd_pdrop=p.take("embd_pdrop", float, 0.0),
                    resid_pdrop=p.take("resid_pdrop", float, 0.0),
                    attn_pdrop=p.take("attn_pdrop", float, 0.0))
    p.finish()
    return cfg


def _in_vocabulary(where: str, value: int, token: int, vocab_size: int, what: str) -> None:
    """The prefix tokens share the transformer's vocabulary: upstream would index past its
    embedding table at the first sample, so such a config is refused here. value: the field's
    value at `where`; token: the largest (or only) token it makes."""
    if not 0 <= token < vocab_size:
        raise ConfigError(f"{where} {value} puts {what} ({token}) outside the transformer's "
                          f"vocabulary [0, {vocab_size}) (transformer_config.params.vocab_size)")


def _parse_cond(block: Any, where: str, sos_token: int, sos_where: str, unconditional: bool,
                vocab_size: int) -> CondConfig:
    if unconditional or block == UNCONDITIONAL_COND:
        _in_vocabulary(sos_where, sos_token, sos_token, vocab_size, "the start token")
        return UncondConfig(sos_token)
    if block == FIRST_STAGE_COND:
        return FirstStageCondConfig()
    target, params = _target_and_params(block, where)
    if target in (VQMODEL, VQSEGMENTATION, GUMBELVQ):
        cfg = _parse_vq(target, params, f"{where}.params")
        _in_vocabulary(f"{where}.params.n_embed", cfg.n_embed, cfg.n_embed - 1, vocab_size,
                       "the cond stage's last code")
        return cfg
    p = _Params(params, f"{where}.params")
    if target == LABELATOR:
        cfg = ClassCondConfig(p.take_positive("n_classes"))
        _in_vocabulary(p.path("n_classes"), cfg.n_classes, cfg.n_classes - 1, vocab_size,
                       "the last class token")
    elif target == SOS_PROVIDER:
        cfg = UncondConfig(p.take("sos_token", int))
        _in_vocabulary(p.path("sos_token"), cfg.sos_token, cfg.sos_token, vocab_size,
                       "the start token")
    elif target == COORD_STAGE:
        cfg = CoordCondConfig(p.take_positive("n_embed"), p.take_positive("down_factor"))
        # round(n_embed * x) reaches n_embed only at x ~ 1, which upstream's coordinates
        # (arange / count, then area-averaged) never are: n_embed == vocab_size runs there
        # (faceshq_transformer.yaml), and the runtime refuses a coordinate that would.
        _in_vocabulary(p.path("n_embed"), cfg.n_embed, cfg.n_embed - 1, vocab_size,
                       "the largest coordinate token below 1.0")
    else:
        raise ConfigError(
            f"{where}.target {target} is not supported (supported: {LABELATOR}, {SOS_PROVIDER}, "
            f"{COORD_STAGE}, {VQMODEL}, {VQSEGMENTATION}, {FIRST_STAGE_COND}, "
            f"{UNCONDITIONAL_COND})")
    if target in (LABELATOR, SOS_PROVIDER) and not p.take("quantize_interface", bool, True):
        raise ConfigError(f"{p.path('quantize_interface')} false is not supported")
    p.finish()
    return cfg


def _parse_net2net(params: Any, where: str) -> Net2NetConfig:
    p = _Params(params, where)
    permuter = p.take("permuter_config", Mapping, None)
    if permuter is not None:
        permuter_target, _ = _target_and_params(permuter, p.path("permuter_config"))
        if permuter_target != IDENTITY_PERMUTER:
            raise ConfigError(f"{p.path('permuter_config')}: permuter {permuter_target} is not "
                              f"supported; only {IDENTITY_PERMUTER} (raster order)")
    first_target, first_params = _target_and_params(
        p.take("first_stage_config", Mapping), p.path("first_stage_config"))
    if first_target not in (VQMODEL, GUMBELVQ):
        raise ConfigError(f"{p.path('first_stage_config')}.target {first_target} is not "
                          f"supported (supported: {VQMODEL}, {GUMBELVQ})")
    first_stage = _parse_vq(first_target, first_params, p.path("first_stage_config") + ".params")
    transformer = _parse_gpt(p.take("transformer_config", Mapping),
                             p.path("transformer_config"))
    sos_token = p.take("sos_token", int, 0)
    unconditional = p.take("unconditional", bool, False)
    cond = _parse_cond(p.take("cond_stage_config", (Mapping, str)),
                       p.path("cond_stage_config"), sos_token, p.path("sos_token"),
                       unconditional, transformer.vocab_size)
    cfg = Net2NetConfig(
        first_stage=first_stage, cond=cond, transformer=transformer,
        first_stage_key=p.take("first_stage_key", str, "image"),
        cond_stage_key=p.take("cond_stage_key", str, "depth"),
        downsample_cond_size=p.take("downsample_cond_size", int, -1),
        pkeep=p.take("pkeep", float, 1.0),
    )
    p.ignore(_NET2NET_TRAINING)
    p.finish()
    if transformer.vocab_size < first_stage.n_embed:
        raise ConfigError(f"{p.path('transformer_config')}.params.vocab_size "
                          f"{transformer.vocab_size} is smaller than the first stage's n_embed "
                          f"{first_stage.n_embed}")
    return cfg


def parse_model_config(model: Any) -> ModelSpec:
    """model: the `model:` mapping of an upstream config (target, params, base_learning_rate).
    Field paths in errors start at `model`."""
    if not isinstance(model, Mapping):
        raise ConfigError("model must be a mapping with target and params")
    block = {k: v for k, v in model.items() if k != "base_learning_rate"}
    target, params = _target_and_params(block, "model")
    if target in (VQMODEL, GUMBELVQ, VQSEGMENTATION):
        return ModelSpec(target, "vqgan", _parse_vq(target, params, "model.params"), model)
    if target == NET2NET:
        return ModelSpec(target, "net2net", _parse_net2net(params, "model.params"), model)
    raise ConfigError(f"model.target {target} is not supported (supported: {VQMODEL}, "
                      f"{GUMBELVQ}, {VQSEGMENTATION}, {NET2NET})")


def config_path_of(spec: ModelSpec, stage: str) -> str:
    """Dotted config path of a stage's params: stage is first_stage, cond_stage or transformer."""
    if spec.kind == "vqgan":
        assert stage == "first_stage", stage
        return "model.params"
    return f"model.params.{stage}_config.params"


"""Loads and saves model checkpoints without Lightning or the upstream code.

Two formats, one loader:
  * upstream: a Lightning `.ckpt` (torch.save pickle; only its "state_dict" entry is used) plus
    the run's YAML config, given explicitly or found beside the checkpoint;
  * vqrt: a directory with `model.safetensors` and `config.json`, where config.json holds
    {"vqrt_checkpoint": 1, "model": <the YAML's model: section>}.
Either way the `model:` section goes through model_config.parse_model_config, the model is
built from it and the weights must match it key for key and shape for shape; the 12 or so
training-only `loss.*` keys of a VQGAN run are dropped first.

Pickles are read with torch.load(weights_only=True). Real Lightning files also pickle callback
and hyper-parameter objects, which that refuses; they are then read by a restricted unpickler
that maps an explicit allow-list of such names to inert stand-ins and rejects every other
global, so no code from the file ever runs.

Errors are CheckpointError (a ValueError) with one line naming the file and the fix.
"""
from __future__ import annotations

import _codecs
import builtins
import collections
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import yaml

from vqrt.runtime.strict_json import printable
from vqrt.trainer.model_config import ConfigError, ModelSpec, config_path_of, parse_model_config
from vqrt.trainer.models.cond import FirstStageCondConfig
from vqrt.trainer.models.mingpt import GPT, GPTConfig, causal_mask
from vqrt.trainer.models.net2net import Net2NetConfig, Net2NetTransformer
from vqrt.trainer.models.vqgan import VQConfig, VQModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
IGNORED_PREFIX = "loss."  # VQGAN training losses (LPIPS, discriminator): never needed here
FIX = "use the config the checkpoint was trained with"

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint or config that cannot be loaded; the message is one line."""

    def __init__(self, message: str):
        super().__init__(printable(message))  # key names from the file may hold line breaks


@dataclass
class LoadedModel:
    """A model built from its config with its checkpoint's weights, in eval mode, fp32, CPU.

    kind: "vqgan" (model is a VQModel) or "net2net" (a Net2NetTransformer).
    weights_format: "lightning" (torch pickle) or "vqrt" (safetensors + config.json).
    config_source: how the config was found, for messages and the model card.
    ignored_keys: checkpoint keys dropped as training-only (loss.*).
    """
    kind: str
    model: nn.Module
    spec: ModelSpec
    weights_path: Path
    weights_format: str
    config_path: Path
    config_source: str
    ignored_keys: Tuple[str, ...]

    @property
    def config(self) -> Union[VQConfig, Net2NetConfig]:
        return self.spec.config

    @property
    def first_stage(self) -> VQModel:
        return self.model.first_stage_model if self.kind == "net2net" else self.model

    @property
    def transformer(self) -> Optional[GPT]:
        return self.model.transformer if self.kind == "net2net" else None

    @property
    def cond_stage(self) -> Optional[nn.Module]:
        return self.model.cond_stage_model if self.kind == "net2net" else None

    @property
    def conditioning(self) -> str:
        """class, unconditional, coord, vq, first_stage; "none" for a lone first stage."""
        return self.model.conditioning if self.kind == "net2net" else "none"


# --- configs ------------------------------------------------------------------------------

def read_config(path: PathLike) -> Mapping[str, Any]:
    """The `model:` section of an upstream YAML config or of a vqrt config.json."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file; pass the YAML config, not the weights")
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        problem = " ".join(str(e).split())
        raise CheckpointError(f"{path}: not a valid config ({problem})")
    except RecursionError:  # both parsers recurse once per nesting level
        raise CheckpointError(f"{path}: not a valid config (nested too deeply)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the config ({e.strerror})") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("model"), Mapping):
        raise CheckpointError(f"{path}: no model: section; expected an upstream taming config "
                              "(model.target, model.params)")
    return document["model"]


def find_config(weights: Path) -> Tuple[Path, str]:
    """The config of an upstream checkpoint: <stem>.yaml beside it, or the run's configs/
    folder (upstream's logs/<run>/checkpoints/x.ckpt beside logs/<run>/configs/)."""
    beside = weights.with_suffix(".yaml")
    if beside.is_file():
        return beside, "found beside the checkpoint"
    # absolute(), not resolve(): a symlinked checkpoint belongs to the run it is linked from.
    run_configs = weights.absolute().parent.parent / "configs"
    # Training runs write <timestamp>-project.yaml (a resumed run adds a later one); released
    # models ship one config, e.g. configs/model.yaml.
    project = sorted(run_configs.glob("*-project.yaml"))
    if project:
        return project[-1], f"found in the run's {run_configs}"
    others = [p for p in sorted(run_configs.glob("*.yaml"))
              if not p.name.endswith("-lightning.yaml")]
    if len(others) == 1:
        return others[0], f"found in the run's {run_configs}"
    if len(others) > 1:
        names = ", ".join(p.name for p in others)
        raise CheckpointError(f"{weights}: several configs in {run_configs} ({names}); pass "
                              "the right one with --config")
    raise CheckpointError(f"{weights}: no config found (looked for {beside.name} beside it and "
                          f"{run_configs}/*-project.yaml); pass the training config with "
                          "--config")


def _parse(model_config: Mapping[str, Any], where: Path) -> ModelSpec:
    try:
        return parse_model_config(model_config)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}")


def _build(spec: ModelSpec) -> nn.Module:
    return VQModel(spec.config) if spec.kind == "vqgan" else Net2NetTransformer(spec.config)


# --- reading weights ----------------------------------------------------------------------

class _StandIn(dict):
    """Inert replacement for an allow-listed pickled object: keeps whatever the pickle gives it
    (constructor arguments, state, items) and does nothing else. A dict so that SETITEMS works
    for dict subclasses; hashable by identity so that it can be a dict key."""
    __hash__ = object.__hash__

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.pickled_args = args

    def __setstate__(self, state):
        self.pickled_state = state

    def append(self, item):
        self.setdefault("__items__", []).append(item)

    def extend(self, items):
        self.setdefault("__items__", []).extend(items)


# Globals that Lightning and OmegaConf put in checkpoints beside the state_dict. They become
# _StandIn subclasses; the real classes are never imported.
_STAND_IN_NAMES = frozenset((
    "argparse.Namespace", "typing.Any",
    "main.SetupCallback", "main.ImageLogger", "main.CUDACallback",  # upstream's main.py
    "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode", "omegaconf.nodes.ValueNode",
) + tuple(
    f"{package}.{name}"
    for package in ("pytorch_lightning", "lightning.pytorch")
    for name in (
        "callbacks.model_checkpoint.ModelCheckpoint", "callbacks.early_stopping.EarlyStopping",
        "callbacks.lr_monitor.LearningRateMonitor", "callbacks.progress.ProgressBar",
        "callbacks.progress.tqdm_progress.TQDMProgressBar",
        "callbacks.gpu_stats_monitor.GPUStatsMonitor", "utilities.parsing.AttributeDict",
        "trainer.states.TrainerState", "trainer.states.TrainerFn", "trainer.states.TrainerStatus",
        "trainer.states.RunningStage",
    )
) + ("lightning_fabric.utilities.data.AttributeDict",))

# Real objects a tensor checkpoint needs; none can run code of the file's choosing.
_REAL_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.Size": torch.Size,
    "_codecs.encode": _codecs.encode,  # bytes, in pickle protocol 2
    **{f"{module}.{name}": getattr(builtins, name)
       for module in ("builtins", "__builtin__")  # protocol 2 uses the Python 2 name
       for name in ("set", "frozenset", "dict", "list", "tuple", "int", "float", "bool", "str",
                    "bytes", "complex", "slice")},
}
_STAND_INS: Dict[str, type] = {}


class DisallowedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(f"global {name} is not allowed")
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified in _REAL_GLOBALS:
            return _REAL_GLOBALS[qualified]
        if qualified in _STAND_IN_NAMES:
            if qualified not in _STAND_INS:
                _STAND_INS[qualified] = type(name, (_StandIn,), {"pickled_name": qualified})
            return _STAND_INS[qualified]
        raise DisallowedGlobal(qualified)


class _RestrictedPickleModule:
    """The `pickle_module` torch.load gets: its Unpickler resolves only allow-listed globals."""
    __name__ = "vqrt_restricted_pickle"
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def _describe_non_pickle(path: Path, head: bytes) -> str:
    if not head:
        return f"{path}: empty file, not a checkpoint"
    try:
        head.decode("utf-8")
        return (f"{path}: a text file, not a PyTorch checkpoint (if it is a config, pass it "
                "with --config)")
    except UnicodeDecodeError:
        return f"{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle)"


def _zip_without_pickle(path: Path) -> bool:
    """A readable zip archive with no data.pkl (e.g. an .npz); damaged ones are left to
    torch.load to describe."""
    try:
        with zipfile.ZipFile(path) as archive:
            return not any(name.endswith("data.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    first_line = (str(error).splitlines() or [""])[0]
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                           f"({type(error).__name__}: {first_line})")


def _check_torch_file(path: Path) -> None:
    """Rejects what cannot be a torch.save file from its first bytes, before any config lookup."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a protocol-2 pickle (0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(_describe_non_pickle(path, head))
    if head.startswith(b"PK\x03\x04") and _zip_without_pickle(path):
        raise CheckpointError(f"{path}: a zip archive without data.pkl, not a torch.save "
                              "checkpoint")


def _torch_load(path: Path) -> Any:
    """torch.load of a file that passed _check_torch_file (done in _locate)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a global outside torch's weights-only set: retry with our allow-list
    except Exception as e:
        raise _unreadable(path, e)
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_RestrictedPickleModule)
    except DisallowedGlobal as e:
        raise CheckpointError(
            f"{path}: refused to unpickle {e.name} (vqrt loads only tensors and known "
            "Lightning/OmegaConf metadata); re-save just the weights, e.g. "
            "torch.save({'state_dict': ckpt['state_dict']}, path), where the file is trusted")
    except Exception as e:
        raise _unreadable(path, e)


def _lightning_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    content = _torch_load(path)
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a checkpoint dict")
    if "state_dict" in content:
        state = content["state_dict"]
    elif content and all(isinstance(v, torch.Tensor) for v in content.values()):
        state = content  # a bare state_dict saved with torch.save
    else:
        keys = ", ".join(map(str, list(content)[:8]))
        raise CheckpointError(f"{path}: no state_dict entry (top-level keys: {keys})")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: state_dict is a {type(state).__name__}, not a mapping")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key} is a "
                                  f"{type(value).__name__}, not a tensor")
    return dict(state)


def _safetensors_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})")


# --- checking weights against the config --------------------------------------------------

def _group(keys: Sequence[str], limit: int = 4) -> str:
    """Keys collapsed to their innermost numbered module: a.blocks.2.attn.key.weight ->
    a.blocks.2.*; first `limit` groups in order, then a count."""
    groups: List[str] = []
    for key in keys:
        parts = key.split(".")
        numbered = [i for i, part in enumerate(parts[:-1]) if part.isdigit()]
        group = ".".join(parts[:numbered[-1] + 1]) + ".*" if numbered else key
        if group not in groups:
            groups.append(group)
    shown = ", ".join(groups[:limit])
    return shown + (f" and {len(groups) - limit} more" if len(groups) > limit else "")


def _indices(keys, prefix: str) -> List[int]:
    """Distinct numbers n of keys starting with prefix + 'n.'."""
    found = {k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)}
    return sorted(int(n) for n in found if n.isdigit())


def _explain_gpt(found: Mapping[str, torch.Size], cfg: GPTConfig, where: str) -> List[str]:
    notes = []
    blocks = _indices(found, "transformer.blocks.")
    if len(blocks) != cfg.n_layer:
        extra = list(range(cfg.n_layer, len(blocks)))
        missing = list(range(len(blocks), cfg.n_layer))
        listed = ", ".join(f"transformer.blocks.{i}.*" for i in (extra or missing)[:3])
        more = ", ..." if len(extra or missing) > 3 else ""
        notes.append(f"{listed}{more} {'unexpected' if extra else 'missing'}: {where}.n_layer is "
                     f"{cfg.n_layer} but the checkpoint has {len(blocks)} blocks")
    tok = found.get("transformer.tok_emb.weight")
    if tok is not None and len(tok) == 2:
        if tok[0] != cfg.vocab_size:
            notes.append(f"{where}.vocab_size is {cfg.vocab_size} but transformer.tok_emb.weight "
                         f"has {tok[0]} rows")
        if tok[1] != cfg.n_embd:
            notes.append(f"{where}.n_embd is {cfg.n_embd} but the checkpoint's is {tok[1]} "
                         f"(transformer.tok_emb.weight {tuple(tok)})")
    pos = found.get("transformer.pos_emb")
    if pos is not None and len(pos) == 3 and pos[1] != cfg.block_size:
        notes.append(f"{where}.block_size is {cfg.block_size} but transformer.pos_emb has "
                     f"{pos[1]} positions")
    return notes


def _explain_vq(found: Mapping[str, torch.Size], cfg: VQConfig, prefix: str,
                where: str) -> List[str]:
    dd = cfg.ddconfig
    notes = []
    gumbel_found = prefix + "quantize.embed.weight" in found
    if gumbel_found != (cfg.quantizer == "gumbel"):
        has = "a Gumbel quantizer" if gumbel_found else "a vector quantizer"
        notes.append(f"the checkpoint's {prefix}quantize has {has} but the config says "
                     f"{'GumbelVQ' if cfg.quantizer == 'gumbel' else 'VQModel'}")
    codebook = found.get(prefix + ("quantize.embed.weight" if gumbel_found
                                   else "quantize.embedding.weight"))
    if codebook is not None and tuple(codebook) != (cfg.n_embed, cfg.embed_dim):
        notes.append(f"{where}.n_embed x embed_dim is {cfg.n_embed} x {cfg.embed_dim} but the "
                     f"checkpoint's codebook is {codebook[0]} x {codebook[1]}")
    conv_in = found.get(prefix + "encoder.conv_in.weight")
    if conv_in is not None and conv_in[0] != dd.ch:
        notes.append(f"{where}.ddconfig.ch is {dd.ch} but {prefix}encoder.conv_in has "
                     f"{conv_in[0]} output channels")
    if conv_in is not None and conv_in[1] != dd.in_channels:
        notes.append(f"{where}.ddconfig.in_channels is {dd.in_channels} but "
                     f"{prefix}encoder.conv_in takes {conv_in[1]}")
    levels = _indices(found, prefix + "encoder.down.")
    if len(levels) != dd.num_levels:
        notes.append(f"{where}.ddconfig.ch_mult has {dd.num_levels} levels but the checkpoint's "
                     f"encoder has {len(levels)}")
    blocks = _indices(found, prefix + "encoder.down.0.block.")
    if blocks and len(blocks) != dd.num_res_blocks:
        notes.append(f"{where}.ddconfig.num_res_blocks is {dd.num_res_blocks} but the "
                     f"checkpoint has {len(blocks)}")
    attn_found = [lv for lv in levels if _indices(found, f"{prefix}encoder.down.{lv}.attn.")]
    attn_config = [lv for lv in range(dd.num_levels) if dd.level_has_attention(lv)]
    if len(levels) == dd.num_levels and attn_found != attn_config:
        notes.append(f"{where}.ddconfig.attn_resolutions {list(dd.attn_resolutions)} (resolution "
                     f"{dd.resolution}) puts attention at levels {attn_config} but the "
                     f"checkpoint has it at levels {attn_found}")
    quant_conv = found.get(prefix + "quant_conv.weight")
    if quant_conv is not None and quant_conv[1] != dd.z_channels:
        notes.append(f"{where}.ddconfig.z_channels is {dd.z_channels} but {prefix}quant_conv "
                     f"takes {quant_conv[1]}")
    conv_out = found.get(prefix + "decoder.conv_out.weight")
    if conv_out is not None and conv_out[0] != dd.out_ch:
        notes.append(f"{where}.ddconfig.out_ch is {dd.out_ch} but {prefix}decoder.conv_out "
                     f"gives {conv_out[0]}")
    colorize = found.get(prefix + "colorize")
    expected_labels = cfg.colorize_nlabels
    if (colorize is None) != (expected_labels is None) or (
            colorize is not None and colorize[1] != expected_labels):
        has = "no colorize buffer" if colorize is None else f"colorize for {colorize[1]} labels"
        notes.append(f"{where}.colorize_nlabels/n_labels is {expected_labels} but the "
                     f"checkpoint has {has}")
    return notes


def _explain_kind(found: Mapping[str, torch.Size], spec: ModelSpec) -> List[str]:
    is_net2net = any(k.startswith("first_stage_model.") for k in found)
    if spec.kind == "vqgan" and is_net2net:
        return [f"the checkpoint holds a Net2NetTransformer (first_stage_model.*, transformer.* "
                f"keys) but model.target is {spec.target}"]
    if spec.kind == "net2net" and not is_net2net:
        if any(k.startswith("module.first_stage_model.") for k in found):
            return ["the keys carry DistributedDataParallel's module. prefix: save "
                    "model.module.state_dict(), or strip the prefix from the keys"]
        return [f"the checkpoint holds no first_stage_model.* keys (a lone first stage?) but "
                f"model.target is {spec.target}"]
    if spec.kind == "net2net":
        has_cond = any(k.startswith("cond_stage_model.") for k in found)
        wants_cond = isinstance(spec.config.cond, (VQConfig, FirstStageCondConfig))
        if has_cond != wants_cond:
            where = "model.params.cond_stage_config"
            return [f"the checkpoint {'has' if has_cond else 'lacks'} cond_stage_model.* keys "
                    f"(a VQ cond stage) but {where} is "
                    f"{'a VQ cond stage' if wants_cond else 'a stage without weights'}"]
    return []


def _explain(found: Mapping[str, torch.Size], spec: ModelSpec) -> List[str]:
    notes = _explain_kind(found, spec)
    if notes:
        return notes
    if spec.kind == "vqgan":
        return _explain_vq(found, spec.config, "", config_path_of(spec, "first_stage"))
    notes = _explain_vq(found, spec.config.first_stage, "first_stage_model.",
                        config_path_of(spec, "first_stage"))
    if isinstance(spec.config.cond, VQConfig):
        notes += _explain_vq(found, spec.config.cond, "cond_stage_model.",
                             config_path_of(spec, "cond_stage"))
    return notes + _explain_gpt(found, spec.config.transformer,
                                config_path_of(spec, "transformer"))


def _check_weights(state: Mapping[str, torch.Tensor], model: nn.Module, spec: ModelSpec,
                   weights: Path, config: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        found = {k: v.shape for k, v in state.items()}
        notes = _explain(found, spec)
        summary = "; ".join(
            f"{label}: {_group(keys)}" for label, keys in
            (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys)
        # The explanations name the config field; the raw key lists are the fallback.
        detail = "; ".join(notes) if notes else summary
        raise CheckpointError(f"{weights}: weights do not match {config}: {detail}; {FIX}")
    if spec.kind == "net2net":
        # The causal masks are buffers the checkpoint overrides; they must be what the config's
        # block_size and n_unmasked give, or the card would describe a different model.
        mask = causal_mask(spec.config.transformer)
        for key in expected:
            if key.endswith(".attn.mask") and not torch.equal(state[key].cpu().float(), mask):
                raise CheckpointError(f"{weights}: {key} differs from the causal mask that "
                                      f"{config}'s block_size and n_unmasked give; {FIX}")


def _check_finite(state: Mapping[str, torch.Tensor], weights: Path) -> None:
    """On load only (a training run checks its losses, not its checkpoints): else a build's
    parity check fails on a non-finite error that names no tensor."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{weights}: {key} holds NaN or infinite values (a damaged "
                                  "file, or a run that diverged): use an earlier checkpoint")


def _complete_shared_cond_stage(state: Dict[str, torch.Tensor], spec: ModelSpec) -> None:
    """With "__is_first_stage__" upstream saves the first stage twice, under cond_stage_model.*
    too; vqrt's format stores it once. Fill the second copy in when it is absent."""
    if spec.kind != "net2net" or not isinstance(spec.config.cond, FirstStageCondConfig):
        return
    if any(k.startswith("cond_stage_model.") for k in state):
        return
    prefix = "first_stage_model."
    for key in [k for k in state if k.startswith(prefix)]:
        state["cond_stage_model." + key[len(prefix):]] = state[key]


# --- public API -----------------------------------------------------------------------------

def _locate(path: Path, config: Optional[PathLike]) -> Tuple[Path, str, Path, str]:
    """-> (weights file, format, config file, how the config was found)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: a directory without {WEIGHTS_FILE}; pass a .ckpt "
                                  f"file or a vqrt checkpoint directory")
    else:
        weights = path
    fmt = "vqrt" if weights.suffix == ".safetensors" else "lightning"
    if fmt == "lightning":
        _check_torch_file(weights)
    if config is not None:
        return weights, fmt, Path(config), "given"
    if fmt == "vqrt":
        bundled = weights.parent / CONFIG_FILE
        if not bundled.is_file():
            raise CheckpointError(f"{weights}: no {CONFIG_FILE} beside it; pass the config "
                                  "with --config")
        return weights, fmt, bundled, "bundled"
    found, how = find_config(weights)
    return weights, fmt, found, how


def load_checkpoint(path: PathLike, config: Optional[PathLike] = None) -> LoadedModel:
    """Loads an upstream .ckpt (config given, or found beside it / in its run's configs/) or a
    vqrt checkpoint directory / model.safetensors (config.json beside it unless given)."""
    weights, fmt, config_path, how = _locate(Path(path), config)
    spec = _parse(read_config(config_path), config_path)
    if fmt == "vqrt":
        state = _safetensors_state_dict(weights)
    else:
        state = _lightning_state_dict(weights)
    ignored = tuple(k for k in state if k.startswith(IGNORED_PREFIX))
    for key in ignored:
        del state[key]
    _complete_shared_cond_stage(state, spec)
    # Built without memory or random init, then given the checkpoint's tensors (as fp32).
    with torch.device("meta"):
        model = _build(spec)
    _check_weights(state, model, spec, weights, config_path)
    _check_finite(state, weights)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return LoadedModel(kind=spec.kind, model=model, spec=spec, weights_path=weights,
                       weights_format=fmt, config_path=config_path, config_source=how,
                       ignored_keys=ignored)


def save_checkpoint(directory: PathLike, model: nn.Module,
                    model_config: Mapping[str, Any]) -> Path:
    """Writes model (a VQModel or Net2NetTransformer) as directory/model.safetensors plus
    directory/config.json holding model_config (an upstream `model:` section), after checking
    that the weights match that config. Returns the directory."""
    from safetensors.torch import save_file
    directory = Path(directory)
    spec = _parse(model_config, directory / CONFIG_FILE)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        reference = _build(spec)
    _check_weights(state, reference, spec, directory / WEIGHTS_FILE, directory / CONFIG_FILE)
    if spec.kind == "net2net" and isinstance(spec.config.cond, FirstStageCondConfig):
        # The same tensors under a second name: safetensors stores each tensor once.
        state = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "vqrt"})
    document = {"vqrt_checkpoint": FORMAT_VERSION, "model": model_config}
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return directory

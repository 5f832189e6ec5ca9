"""The bundle: a directory that `vqrt build` writes and the runtime loads, without torch.

manifest.json is the single source of truth for every setting; nothing is inferred from file
names. Its schema is the dataclasses below (Manifest at the root), written with
`manifest_json` and read back with `load_bundle`, which also checks that

  * schema_version is SCHEMA_VERSION;
  * every file in `files` stays inside the bundle (relative, no `..`, no symlinks), exists, and
    has the listed size and SHA-256;
  * every file that a graph, the native weights or an engine names is in `files`.

Every problem is a BundleError (a ValueError) with one line naming the file at fault and the
fix. docs/ARCHITECTURE.md ("Bundle layout") describes the files and graph interfaces.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Optional, Tuple, Union
from vqrt.runtime.strict_json import loads_strict, printable

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST = 64 << 20  # bytes; the C++ reader's limit too
REBUILD = "rebuild it with `vqrt build`"

Dim = Union[int, str]  # a fixed size, or the name of a dynamic axis (batch, seq, height, ...)


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message is one line naming the file at fault."""

    def __init__(self, message: str):
        super().__init__(printable(message))  # names from the manifest may hold line breaks


# --- schema ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, float16, int64
    shape: Tuple[Dim, ...]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph. external_data: the file holding its weights when they are shared with
    another graph (the transformer's prefill and step graphs share one)."""
    file: str
    # fp32; fp16 (normalisation, softmax, argmin stay fp32); int8 (QDQ, statically calibrated:
    # Manifest.quantization says how and what it costs)
    precision: str
    opset: int
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    external_data: Optional[str] = None


@dataclass(frozen=True)
class KVCacheSpec:
    """The one preallocated key/value buffer of the transformer graphs.

    shape [n_layer, 2 (key, value), batch, n_head, max_length, head_dim]; the runtime allocates
    it once (zeros), binds it as `input` and the same memory as `output` of every prefill and
    step call; each call writes positions [position, position + T) in place.
    """
    dtype: str
    shape: Tuple[Dim, ...]
    input: str
    output: str


@dataclass(frozen=True)
class FirstStageSpec:
    image_channels: int
    training_size: Tuple[int, int]  # (H, W) pixels
    downsampling_factor: int  # f: latent (h, w) = (H / f, W / f)
    training_grid: Tuple[int, int]  # (h, w) latent grid at the training size
    codebook_size: int
    codebook_dim: int
    quantizer: str  # vq (nearest code) or gumbel (argmax of a projection)
    value_range: Tuple[float, float]  # encoder input / decoder output; pixels: see docs


@dataclass(frozen=True)
class TransformerSpec:
    vocab_size: int
    block_size: int  # longest sequence, prefix included
    n_layer: int
    n_head: int
    n_embd: int
    head_dim: int
    n_unmasked: int  # the first n_unmasked positions see each other; prefill them in one call


@dataclass(frozen=True)
class Tokenization:
    """order "raster": image token (i, j) of an h x w grid is sequence element i * w + j.
    layout ("cond", "image"): the prefix tokens, then the image tokens. prefix says how the
    prefix is made: "class_id" (class c is token c), "sos" (sos_token), "cond_encoder" (the
    cond_encoder graph's tokens), "coord" (area-downsampled coordinates times coord_n_embed,
    rounded). Prefix and image tokens index one shared embedding table (vocab_size)."""
    order: str
    layout: Tuple[str, ...]
    prefix: str


@dataclass(frozen=True)
class Conditioning:
    kind: str  # class, unconditional, coord, vq (own VQ cond stage) or first_stage
    prefix_tokens: int  # prefix length at the training size
    n_classes: Optional[int] = None
    sos_token: Optional[int] = None
    cond_stage_key: Optional[str] = None  # the dataset field: class_label, segmentation, ...
    cond_channels: Optional[int] = None  # input channels of the cond_encoder graph
    cond_resize: Optional[int] = None  # the cond_encoder graph first resizes to this square
    coord_down_factor: Optional[int] = None
    coord_n_embed: Optional[int] = None


@dataclass(frozen=True)
class Limits:
    """What the runtime accepts; requests beyond them fail naming both numbers."""
    max_batch: int
    max_latent: Tuple[int, int]  # (h, w)
    max_sequence: Optional[int]  # = block_size: prefix + image tokens fed to the transformer


@dataclass(frozen=True)
class NativeWeightsSpec:
    """safetensors file for the native decoder; `layout` names the tensor layout documented
    in docs/ARCHITECTURE.md (Linear weights [out, in], fused qkv, int8 with *.weight_scale)."""
    file: str
    precision: str  # fp32, fp16, bf16 or int8 (the Linear weight matrices; the rest is fp32)
    layout: str


@dataclass(frozen=True)
class ShapeRange:
    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]


@dataclass(frozen=True)
class EngineSpec:
    file: str
    graph: str  # the ONNX file in the bundle it was built from
    precision: str
    profile: Dict[str, ShapeRange]  # input name -> shapes of its one optimization profile


@dataclass(frozen=True)
class TensorRTSpec:
    version: str
    gpu: str
    compute_capability: str
    engines: Dict[str, EngineSpec]


@dataclass(frozen=True)
class TiledDecoderSpec:
    """The decoder as a program of tile graphs (export/onnx_tiled_decoder.py), which the
    runtime runs layer by layer in tiles (runtime/tiled_decode.py). The program names its step
    graphs, each of which must be in the file list."""
    format: str  # vqrt-tiled-decoder-3
    program: str  # program.json: the steps, their graphs and buffers
    tensors: str  # safetensors: codebook [N, E] and the GroupNorm affines
    weights: str  # the step graphs' shared ONNX external data


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated
    sha256: str
    size: int


@dataclass(frozen=True)
class ParityCheck:
    """One measured difference from the torch model. limit None: reported, not enforced.
    value None: the output held NaN or inf (always a failure)."""
    graph: str
    metric: str  # max_abs_error, psnr_db, indices_agreement, ...
    value: Optional[float]
    limit: Optional[float]
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class ParityReport:
    inputs: str  # what the fixed inputs were
    checks: Tuple[ParityCheck, ...]
    passed: bool
    drift_allowed: bool  # built with --allow-drift


@dataclass(frozen=True)
class QuantizedGraphSpec:
    """One graph quantized to int8 by static calibration (`vqrt build --precision int8
    --calibration-data`); the graph itself is graphs[name], with precision int8."""
    calibration_cache: str  # file: the activation ranges it was made from (ONNX Runtime JSON)
    recipe: str  # format, weight and activation types, calibration method, what stays fp32
    fp32_nodes: Tuple[str, ...]  # Conv/MatMul nodes kept fp32


@dataclass(frozen=True)
class QuantizationSpec:
    """How the int8 parts were made and what they cost: `quality` compares them with fp32 on
    real images the calibration did not use (decoder PSNR/SSIM, transformer NLL/agreement)."""
    calibration_data: str  # what the calibration and held-out sets were
    calibration_sha256: str  # over the chosen files' names and bytes
    calibration_images: int
    held_out_images: int
    graphs: Dict[str, QuantizedGraphSpec]  # graph name -> how it was quantized
    native: str  # how the native weights were quantized ("" when the bundle has none)
    quality: ParityReport


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    created: str  # UTC, ISO 8601
    kind: str  # net2net (full generator) or vqgan (first stage alone)
    requested_precision: str  # --precision: fp32, fp16, bf16 or int8
    backends: Tuple[str, ...]  # native, onnxruntime, tensorrt: what this bundle can run on
    model_card: Dict[str, Any]  # `vqrt inspect CKPT --json` of the source checkpoint
    first_stage: FirstStageSpec
    transformer: Optional[TransformerSpec]
    tokenization: Optional[Tokenization]
    conditioning: Optional[Conditioning]
    limits: Limits
    graphs: Dict[str, GraphSpec]  # encoder, decoder, cond_encoder, transformer_prefill/_step
    kv_cache: Optional[KVCacheSpec]
    native: Optional[NativeWeightsSpec]
    tensorrt: Optional[TensorRTSpec]
    tiled_decoder: Optional[TiledDecoderSpec]
    files: Tuple[FileEntry, ...]
    tools: Dict[str, str]  # versions of what built it, GPU included where one was used
    parity: ParityReport
    quantization: Optional[QuantizationSpec]  # int8 builds from calibration data, else None
    notes: Tuple[str, ...]

    def referenced_files(self) -> Dict[str, str]:
        """file -> what names it, for every file the manifest's components use."""
        refs = {}
        for name, graph in self.graphs.items():
            refs[graph.file] = f"graph {name}"
            if graph.external_data:
                refs[graph.external_data] = f"graph {name} (external data)"
        if self.native is not None:
            refs[self.native.file] = "native weights"
        if self.tensorrt is not None:
            for name, engine in self.tensorrt.engines.items():
                refs[engine.file] = f"TensorRT engine {name}"
        if self.tiled_decoder is not None:
            for part in ("program", "tensors", "weights"):
                refs[getattr(self.tiled_decoder, part)] = f"tiled decoder {part}"
        if self.quantization is not None:
            for name, graph in self.quantization.graphs.items():
                # (the tiled decoder shares the decoder's cache: the first name stays)
                refs.setdefault(graph.calibration_cache, f"calibration cache of graph {name}")
        return refs


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    def file(self, relative: str) -> Path:
        return self.path / relative

    def graph(self, name: str) -> GraphSpec:
        if name not in self.manifest.graphs:
            have = ", ".join(sorted(self.manifest.graphs)) or "none"
            raise BundleError(f"{self.path}: the bundle has no {name} graph (it has: {have}); "
                              f"{REBUILD} with a backend that includes it")
        return self.manifest.graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.file(self.graph(name).file)


# --- manifest <-> JSON ----------------------------------------------------------------------

def manifest_json(manifest: Manifest) -> str:
    """Standard JSON (no NaN or Infinity), keys in schema order."""
    return json.dumps(dataclasses.asdict(manifest), indent=2, allow_nan=False) + "\n"


def _typed(kind: Any, value: Any, where: str) -> Any:
    """value (parsed JSON) as `kind` (a schema type), or a BundleError naming the field."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(option, value, where)
            except BundleError:
                continue
        raise BundleError(f"{MANIFEST_FILE}: {where} has the wrong type ({value!r})")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise BundleError(f"{MANIFEST_FILE}: {where} must be an object")
        hints = typing.get_type_hints(kind)
        fields = {f.name: f for f in dataclasses.fields(kind)}
        unknown = set(value) - set(fields)
        if unknown:
            raise BundleError(f"{MANIFEST_FILE}: {where} has unknown field(s) "
                              f"{', '.join(sorted(unknown))}; {REBUILD}")
        out = {}
        for name, field in fields.items():
            if name not in value:
                if field.default is not dataclasses.MISSING:
                    continue
                raise BundleError(f"{MANIFEST_FILE}: {where}.{name} is missing; {REBUILD}")
            out[name] = _typed(hints[name], value[name], f"{where}.{name}")
        return kind(**out)
    if origin is tuple:
        if not isinstance(value, list):
            raise BundleError(f"{MANIFEST_FILE}: {where} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise BundleError(f"{MANIFEST_FILE}: {where} must have {len(args)} entries")
        return tuple(_typed(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise BundleError(f"{MANIFEST_FILE}: {where} must be an object")
        return {k: _typed(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{MANIFEST_FILE}: {where} must be {kind.__name__}, got {value!r}")
    return value


def parse_manifest(text: str) -> Manifest:
    try:
        document = loads_strict(text)
    except ValueError as e:
        raise BundleError(f"{MANIFEST_FILE}: does not parse as JSON ({e}); {REBUILD}")
    if not isinstance(document, dict):
        raise BundleError(f"{MANIFEST_FILE}: is not a JSON object; {REBUILD}")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{MANIFEST_FILE}: schema version {version!r} is not supported (this "
                          f"vqrt reads version {SCHEMA_VERSION}); {REBUILD} of this vqrt")
    manifest = _typed(Manifest, document, "manifest")
    check_values(manifest)
    return manifest


# --- values ---------------------------------------------------------------------------------

PREFIX_RULES = ("class_id", "sos", "cond_encoder", "coord")


def _value_error(where: str, value: Any, rule: str) -> BundleError:
    return BundleError(f"{MANIFEST_FILE}: {where} is {value!r}, {rule}; {REBUILD}")


def _positive(where: str, *values: int) -> None:
    for value in values:
        if value < 1:
            raise _value_error(where, value, "must be >= 1")


def check_values(m: Manifest) -> None:
    """What the types alone do not say: every size the runtime computes with is >= 1, every
    token a prefix rule makes lies in the vocabulary, and the KV cache is the transformer's.
    A hand-edited or hostile manifest then fails here, naming the field, instead of as a
    division by zero, an out-of-range embedding row or an absurd allocation later. The graphs
    and native weights are checked against these numbers when they load (backends.py,
    ort_transformer.py)."""
    if m.kind not in ("net2net", "vqgan"):
        raise _value_error("manifest.kind", m.kind, "not net2net or vqgan")
    fs = m.first_stage
    _positive("manifest.first_stage.image_channels", fs.image_channels)
    _positive("manifest.first_stage.downsampling_factor", fs.downsampling_factor)
    _positive("manifest.first_stage.training_size", *fs.training_size)
    _positive("manifest.first_stage.training_grid", *fs.training_grid)
    _positive("manifest.first_stage.codebook_size", fs.codebook_size)
    _positive("manifest.first_stage.codebook_dim", fs.codebook_dim)
    # The encoder's stride-2 convs floor an odd side: the grid is the size over f, rounded down.
    grid = tuple(side // fs.downsampling_factor for side in fs.training_size)
    if grid != tuple(fs.training_grid):
        raise _value_error("manifest.first_stage.downsampling_factor", fs.downsampling_factor,
                           f"but the training size {list(fs.training_size)} over it is not the "
                           f"training grid {list(fs.training_grid)}")
    _positive("manifest.limits.max_batch", m.limits.max_batch)
    _positive("manifest.limits.max_latent", *m.limits.max_latent)
    if m.kind == "vqgan":
        return
    t, tok, cond = m.transformer, m.tokenization, m.conditioning
    for section, value in (("transformer", t), ("tokenization", tok), ("conditioning", cond)):
        if value is None:
            raise _value_error(f"manifest.{section}", None, "which a net2net bundle needs")
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "head_dim"):
        _positive(f"manifest.transformer.{name}", getattr(t, name))
    if t.n_head * t.head_dim != t.n_embd:
        raise _value_error("manifest.transformer.n_embd", t.n_embd,
                           f"not n_head {t.n_head} x head_dim {t.head_dim}")
    if fs.codebook_size > t.vocab_size:
        raise _value_error("manifest.first_stage.codebook_size", fs.codebook_size,
                           f"more than the transformer's vocabulary of {t.vocab_size}")
    if m.limits.max_sequence is not None and m.limits.max_sequence != t.block_size:
        raise _value_error("manifest.limits.max_sequence", m.limits.max_sequence,
                           f"not the block size {t.block_size}")
    if tok.prefix not in PREFIX_RULES:
        raise _value_error("manifest.tokenization.prefix", tok.prefix,
                           f"not one of {', '.join(PREFIX_RULES)} (a newer vqrt's bundle?)")
    if cond.prefix_tokens < 0 or cond.prefix_tokens > t.block_size:
        raise _value_error("manifest.conditioning.prefix_tokens", cond.prefix_tokens,
                           f"outside [0, block size {t.block_size}]")
    vocabulary = f"outside the vocabulary [0, {t.vocab_size})"
    if tok.prefix == "class_id":  # class c is token c
        if cond.n_classes is None or not 1 <= cond.n_classes <= t.vocab_size:
            raise _value_error("manifest.conditioning.n_classes", cond.n_classes,
                               f"not in [1, vocabulary {t.vocab_size}]")
    elif tok.prefix == "sos":
        if cond.sos_token is None or not 0 <= cond.sos_token < t.vocab_size:
            raise _value_error("manifest.conditioning.sos_token", cond.sos_token, vocabulary)
    elif tok.prefix == "cond_encoder":
        if cond.cond_channels is None or cond.cond_channels < 1:
            raise _value_error("manifest.conditioning.cond_channels", cond.cond_channels,
                               "must be >= 1")
        if cond.cond_resize is not None:
            _positive("manifest.conditioning.cond_resize", cond.cond_resize)
    else:  # coord: tokens are round(coord_n_embed * x) for x in [0, 1]
        if cond.coord_down_factor is None or cond.coord_down_factor < 1:
            raise _value_error("manifest.conditioning.coord_down_factor",
                               cond.coord_down_factor, "must be >= 1")
        # n_embed == vocab_size is upstream's faceshq: the runtime refuses the coordinates
        # (x ~ 1) whose token would be n_embed (Conditioner._coord_tokens).
        if cond.coord_n_embed is None or not 1 <= cond.coord_n_embed <= t.vocab_size:
            raise _value_error("manifest.conditioning.coord_n_embed", cond.coord_n_embed,
                               f"not in [1, vocabulary {t.vocab_size}]")
    if m.kv_cache is not None:
        if m.kv_cache.dtype not in ("float32", "float16"):
            raise _value_error("manifest.kv_cache.dtype", m.kv_cache.dtype,
                               "not float32 or float16")
        expected = (t.n_layer, 2, "batch", t.n_head, t.block_size, t.head_dim)
        if tuple(m.kv_cache.shape) != expected:
            raise _value_error("manifest.kv_cache.shape", list(m.kv_cache.shape),
                               f"not the transformer's {list(expected)}")


# --- files ----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_inside(root: Path, relative: str) -> Path:
    """root / relative, refusing absolute paths, `..`, and symlinks on the way."""
    pure = PurePosixPath(relative)
    if (not relative or pure.is_absolute() or "\\" in relative or "\0" in relative
            or any(part in ("..", ".", "") for part in relative.split("/"))):
        raise BundleError(f"{root / MANIFEST_FILE}: file path {relative!r} leaves the bundle or "
                          f"is not a plain relative path; {REBUILD}")
    current = root
    for part in pure.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            raise BundleError(f"{current}: missing from the bundle; {REBUILD}")
        if stat.S_ISLNK(mode):
            raise BundleError(f"{current}: is a symlink, which a bundle may not contain; "
                              f"{REBUILD}")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{current}: not a regular file; {REBUILD}")
    return current


def _check_files(root: Path, manifest: Manifest) -> None:
    located = {entry.path: _check_inside(root, entry.path) for entry in manifest.files}
    for path, user in manifest.referenced_files().items():
        if path not in located:
            raise BundleError(f"{root / MANIFEST_FILE}: {user} names {path}, which is not in the "
                              f"file list; {REBUILD}")
    for entry in manifest.files:
        path = located[entry.path]
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"{path}: {size} bytes, the manifest says {entry.size} (changed or "
                              f"truncated after the build); {REBUILD}")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"{path}: SHA-256 does not match the manifest (changed after the "
                              f"build); {REBUILD}")


def load_bundle(path: Union[str, Path]) -> Bundle:
    """Reads and checks a bundle directory (schema, file list, sizes, SHA-256 of every file)."""
    root = Path(path)
    try:
        if not root.is_dir():
            what = "no such directory" if not root.exists() else "not a directory"
            raise BundleError(f"{root}: {what}; pass a bundle directory made by `vqrt build`")
        return _read_bundle(root)
    except OSError as e:  # an unreadable file or folder (another user's bundle, a umask)
        remedy = ("the user who serves a bundle must be able to read all of it"
                  if e.errno in (errno.EACCES, errno.EPERM) else REBUILD)
        raise BundleError(f"{e.filename or root}: cannot read ({e.strerror}); {remedy}") from None


def _read_bundle(root: Path) -> Bundle:
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing, so {root} is not a bundle; build one with "
                          "`vqrt build`")
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST:  # read whole, so bounded first (csrc/bundle.h kMaxManifest)
        raise BundleError(f"{manifest_path}: {size} bytes, more than a manifest's {MAX_MANIFEST};"
                          f" {REBUILD}")
    try:
        manifest = parse_manifest(manifest_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{manifest_path}: not UTF-8 text; {REBUILD}")
    except BundleError as e:
        # parse_manifest names the manifest by its file name; give the full path instead.
        raise BundleError(str(e).replace(MANIFEST_FILE, str(manifest_path), 1)) from None
    _check_files(root, manifest)
    return Bundle(root, manifest)

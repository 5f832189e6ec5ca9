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
import hashlib
import json
import os
import stat
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Optional, Tuple, Union
from vqrt.runtime.strict_json import loads_strict

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
REBUILD = "rebuild it with `vqrt build`"

Dim = Union[int, str]  # a fixed size, or the name of a dynamic axis (batch, seq, height, ...)


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message is one line naming the file at fault."""


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
    precision: str  # fp32 or fp16 (fp16 graphs keep normalisation, softmax, argmin in fp32)
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
    graph: str  # the bundle graph it was built from
    precision: str
    profile: Dict[str, ShapeRange]  # input name -> shapes of its one optimization profile


@dataclass(frozen=True)
class TensorRTSpec:
    version: str
    gpu: str
    compute_capability: str
    engines: Dict[str, EngineSpec]


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
    files: Tuple[FileEntry, ...]
    tools: Dict[str, str]  # versions of what built it, GPU included where one was used
    parity: ParityReport
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
    return _typed(Manifest, document, "manifest")


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
    if (not relative or pure.is_absolute() or "\\" in relative
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
    if not root.is_dir():
        what = "no such directory" if not root.exists() else "not a directory"
        raise BundleError(f"{root}: {what}; pass a bundle directory made by `vqrt build`")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing, so {root} is not a bundle; build one with "
                          "`vqrt build`")
    try:
        manifest = parse_manifest(manifest_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{manifest_path}: not UTF-8 text; {REBUILD}")
    except BundleError as e:
        # parse_manifest names the manifest by its file name; give the full path instead.
        raise BundleError(str(e).replace(MANIFEST_FILE, str(manifest_path), 1)) from None
    _check_files(root, manifest)
    return Bundle(root, manifest)

"""`vqrt build`: a checkpoint in, a self-describing bundle out (see runtime/bundle.py).

What goes into the bundle, by --backend:
  native       native transformer weights + VQGAN graphs (images decode with ONNX Runtime)
  onnxruntime  transformer prefill/step graphs + VQGAN graphs
  tensorrt     the ONNX graphs + one TensorRT engine per graph and per tiled-decoder conv step
  auto         native weights + every ONNX graph, + engines where TensorRT and a GPU work
and by --precision (the ONNX graphs are fp32 unless fp16 is asked for):
  fp32  everything fp32
  fp16  fp16 graphs (fp32 islands, see onnx_builder), fp16 native weights, fp16 engines
  bf16  bf16 native weights and bf16 engines; fp32 graphs (ONNX Runtime's CPU provider has
        almost no bf16 kernels), so --backend onnxruntime refuses bf16
  int8  weight-only int8 native weights; fp32 graphs, unless --calibration-data DIR: then the
        encoder and decoder graphs are int8 QDQ, calibrated on those images, and a quality
        report against fp32 on held-out images goes into the manifest (export/quantize_bundle.py);
        the transformer graphs stay fp32, so --backend onnxruntime and tensorrt refuse int8

Every failure a user can cause is a BuildError with one line; nothing is left on disk then.
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
import onnxruntime
import torch

import vqrt
from vqrt.calibration.data import DEFAULT_COUNT as DEFAULT_CALIBRATION_COUNT
from vqrt.calibration.data import DEFAULT_SAMPLED, CalibrationError, build_calibration_set
from vqrt.export import tensorrt_engines
from vqrt.export.bundle_writer import OutputError, check_output, staged_directory
from vqrt.export.native_weights import LAYOUT, write_native_weights
from vqrt.export.onnx_builder import OPSET, save_graph, save_graphs_sharing_weights
from vqrt.export.onnx_tiled_decoder import PROGRAM_FORMAT, write_tiled_decoder
from vqrt.export.onnx_transformer import KV_INPUT, KV_OUTPUT, kv_cache_shape, transformer_graph
from vqrt.export.onnx_vqgan import can_encode, cond_encoder_graph, decoder_graph, encoder_graph
from vqrt.export.parity import parity_report
from vqrt.export.quantize_bundle import failure_message, quantize_bundle
from vqrt.runtime.bundle import (
    MANIFEST_FILE, SCHEMA_VERSION, Conditioning, FileEntry, FirstStageSpec, GraphSpec,
    KVCacheSpec, Limits, Manifest, NativeWeightsSpec, ShapeRange, TensorRTSpec, TensorSpec,
    TiledDecoderSpec, Tokenization, TransformerSpec, manifest_json, sha256_file)
from vqrt.runtime.bundle_card import format_parity, format_quality, format_value
from vqrt.trainer.checkpoints import CheckpointError, LoadedModel, load_checkpoint
from vqrt.trainer.model_card import model_card
from vqrt.trainer.models.cond import CoordCondConfig, FirstStageCondConfig

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BACKENDS = ("auto", "native", "onnxruntime", "tensorrt")
NATIVE_FILE = "native_weights.safetensors"
TRANSFORMER_WEIGHTS = "transformer_weights.bin"
PREFIX_RULES = {"class": "class_id", "unconditional": "sos", "coord": "coord",
                "vq": "cond_encoder", "first_stage": "cond_encoder"}

PathLike = Union[str, Path]


class BuildError(ValueError):
    """A build that cannot proceed; the message is one line."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    backend: str = "auto"
    max_batch: int = 8
    max_size: Optional[Tuple[int, int]] = None  # (width, height) in pixels; None: training size
    allow_drift: bool = False
    calibration_data: Optional[str] = None  # int8: a folder of images for static calibration
    calibration_count: Optional[int] = None  # images to calibrate on; None: the default (64)
    force: bool = False


@dataclass(frozen=True)
class _Plan:
    graph_precision: str  # fp32 or fp16
    transformer_graphs: bool
    native: bool
    tensorrt: Optional[tensorrt_engines.TensorRTEnvironment]
    notes: Tuple[str, ...]


def _plan(options: BuildOptions) -> _Plan:
    """Checks the options and, where engines are wanted, probes TensorRT: all before any work."""
    precision, backend = options.precision, options.backend
    if precision not in PRECISIONS:
        raise BuildError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    if backend not in BACKENDS:
        raise BuildError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend}")
    if options.max_batch < 1:
        raise BuildError(f"--max-batch must be at least 1, got {options.max_batch}")
    if options.calibration_count is not None and options.calibration_data is None:
        raise BuildError("--calibration-count needs --calibration-data DIR")
    if options.calibration_data is not None and precision != "int8":
        raise BuildError(f"--calibration-data is for --precision int8, not {precision}")
    if precision == "int8" and backend in ("onnxruntime", "tensorrt"):
        raise BuildError(f"--precision int8 quantizes the native transformer weights (and, "
                         "with --calibration-data, the encoder and decoder graphs); int8 "
                         f"transformer graphs for {backend} are not built: use --backend "
                         "native or auto, or another precision")
    if precision == "bf16" and backend == "onnxruntime":
        raise BuildError("--precision bf16 is for the native and tensorrt backends (ONNX "
                         "Runtime's CPU provider lacks bf16 kernels): use fp16 or fp32 with "
                         "--backend onnxruntime")
    notes: List[str] = []
    environment = None
    if backend == "tensorrt":
        try:
            environment = tensorrt_engines.probe()
        except tensorrt_engines.TensorRTUnavailable as e:
            raise BuildError(f"--backend tensorrt: {e}; it needs {tensorrt_engines.NEEDS}")
    elif backend == "auto" and precision == "int8" and options.calibration_data is not None:
        notes.append("TensorRT not used: engines from the int8 QDQ graphs are not built yet")
    elif backend == "auto" and precision == "int8":
        notes.append("TensorRT not used: int8 engines need static calibration (issue 9)")
    elif backend == "auto":
        try:
            environment = tensorrt_engines.probe()
        except tensorrt_engines.TensorRTUnavailable as e:
            notes.append(f"TensorRT not used: {e}")
    graph_precision = "fp16" if precision == "fp16" else "fp32"
    if precision == "fp16":
        notes.append("fp16 graphs keep LayerNorm, GroupNorm, softmax and the codebook argmin in "
                     "fp32; graph inputs and outputs keep their types")
    elif precision == "bf16":
        notes.append("bf16: native transformer weights in bf16; ONNX graphs stay fp32 (ONNX "
                     "Runtime's CPU provider lacks bf16 kernels); TensorRT engines, where "
                     "present, use the BF16 builder flag")
    elif precision == "int8" and options.calibration_data is not None:
        notes.append("int8: encoder and decoder graphs are int8 QDQ from static calibration "
                     "(quantization section); native transformer weights are weight-only int8 "
                     "with per-output-channel fp32 scales; the other ONNX graphs and the tiled "
                     "decoder's tile graphs stay fp32")
    elif precision == "int8":
        notes.append("int8: native transformer weights are weight-only int8 with per-output-"
                     "channel fp32 scales; ONNX graphs stay fp32; int8 graphs and engines need "
                     "static calibration (issue 9)")
    return _Plan(graph_precision, backend in ("auto", "onnxruntime", "tensorrt"),
                 backend in ("auto", "native"), environment, tuple(notes))


def _limits(loaded: LoadedModel, options: BuildOptions) -> Limits:
    dd = loaded.first_stage.cfg.ddconfig
    f = dd.downsampling_factor
    width, height = options.max_size or (dd.resolution, dd.resolution)
    for side, value in (("width", width), ("height", height)):
        if value < f or value % f:
            low, high = max(f, value - value % f), value - value % f + f
            raise BuildError(f"--max-size {side} {value} is not a positive multiple of the "
                             f"downsampling factor {f} (try {low} or {high})")
    gpt = loaded.transformer
    return Limits(max_batch=options.max_batch, max_latent=(height // f, width // f),
                  max_sequence=gpt.cfg.block_size if gpt is not None else None)


def _tensor_specs(values) -> Tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dtype, shape))
    return tuple(specs)


def _graph_spec(model: onnx.ModelProto, file: str, precision: str,
                external_data: Optional[str] = None) -> GraphSpec:
    return GraphSpec(file=file, precision=precision, opset=OPSET,
                     inputs=_tensor_specs(model.graph.input),
                     outputs=_tensor_specs(model.graph.output), external_data=external_data)


def _write_graphs(loaded: LoadedModel, staging: Path, plan: _Plan, log: Callable[[str], None]
                  ) -> Tuple[Dict[str, GraphSpec], Optional[KVCacheSpec], List[str]]:
    precision = plan.graph_precision
    dtype = np.float16 if precision == "fp16" else np.float32
    vq = loaded.first_stage
    graphs: Dict[str, GraphSpec] = {}
    notes: List[str] = []

    def save(name: str, model: onnx.ModelProto) -> None:
        save_graph(model, staging / f"{name}.onnx")
        graphs[name] = _graph_spec(model, f"{name}.onnx", precision)
        log(f"wrote {name}.onnx ({precision})")

    if can_encode(vq):
        save("encoder", encoder_graph(vq, dtype))
    else:
        notes.append("no encoder graph: this GumbelVQ's quant_conv gives embed_dim channels but "
                     "its proj expects z_channels (upstream cannot encode with it either)")
    save("decoder", decoder_graph(vq, dtype))
    kv = None
    if loaded.kind == "net2net":
        cfg = loaded.config
        if loaded.conditioning in ("vq", "first_stage"):
            cond_vq = vq if isinstance(cfg.cond, FirstStageCondConfig) else loaded.cond_stage
            resize = cfg.downsample_cond_size if cfg.downsample_cond_size > -1 else None
            save("cond_encoder", cond_encoder_graph(cond_vq, dtype, resize))
        if plan.transformer_graphs:
            gpt = loaded.transformer
            models = {name: transformer_graph(gpt, dtype, step=name.endswith("step"))
                      for name in ("transformer_prefill", "transformer_step")}
            save_graphs_sharing_weights(
                [(model, staging / f"{name}.onnx") for name, model in models.items()],
                staging / TRANSFORMER_WEIGHTS)
            for name, model in models.items():
                graphs[name] = _graph_spec(model, f"{name}.onnx", precision, TRANSFORMER_WEIGHTS)
            kv = KVCacheSpec(dtype=np.dtype(dtype).name, shape=tuple(kv_cache_shape(gpt)),
                             input=KV_INPUT, output=KV_OUTPUT)
            log(f"wrote transformer_prefill.onnx, transformer_step.onnx and "
                f"{TRANSFORMER_WEIGHTS} ({precision})")
            if gpt.cfg.n_unmasked > 0:
                notes.append(f"the first {gpt.cfg.n_unmasked} positions attend to each other: "
                             "feed them in one prefill call")
    return graphs, kv, notes


def _model_sections(loaded: LoadedModel):
    """-> (model card, FirstStageSpec, TransformerSpec, Tokenization, Conditioning); the last
    three are None for a first stage alone."""
    card = model_card(loaded)
    first_stage = FirstStageSpec(
        image_channels=card.image_channels, training_size=(card.resolution, card.resolution),
        downsampling_factor=card.downsampling_factor,
        training_grid=(card.latent_h, card.latent_w), codebook_size=card.codebook_size,
        codebook_dim=card.codebook_dim, quantizer=card.quantizer, value_range=(-1.0, 1.0))
    if loaded.kind != "net2net":
        return card, first_stage, None, None, None
    gpt = loaded.transformer.cfg
    transformer = TransformerSpec(
        vocab_size=gpt.vocab_size, block_size=gpt.block_size, n_layer=gpt.n_layer,
        n_head=gpt.n_head, n_embd=gpt.n_embd, head_dim=gpt.head_dim, n_unmasked=gpt.n_unmasked)
    c = card.conditioning
    tokenization = Tokenization(order="raster", layout=("cond", "image"),
                                prefix=PREFIX_RULES[c.kind])
    cfg = loaded.config
    coord = cfg.cond if isinstance(cfg.cond, CoordCondConfig) else None
    conditioning = Conditioning(
        kind=c.kind, prefix_tokens=c.prefix_tokens, n_classes=c.n_classes,
        sos_token=c.sos_token, cond_stage_key=c.cond_stage_key, cond_channels=c.cond_channels,
        cond_resize=(cfg.downsample_cond_size if c.kind in ("vq", "first_stage")
                     and cfg.downsample_cond_size > -1 else None),
        coord_down_factor=coord.down_factor if coord else None,
        coord_n_embed=coord.n_embed if coord else None)
    return card, first_stage, transformer, tokenization, conditioning


def _cond_factor(loaded: LoadedModel) -> Optional[int]:
    """The downsampling factor of the stage the cond_encoder graph encodes with."""
    if loaded.conditioning not in ("vq", "first_stage"):
        return None
    vq = loaded.first_stage if loaded.conditioning == "first_stage" else loaded.cond_stage
    return vq.downsampling_factor


def _file_entries(staging: Path) -> Tuple[FileEntry, ...]:
    entries = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        relative = path.relative_to(staging).as_posix()
        if relative != MANIFEST_FILE:
            entries.append(FileEntry(relative, sha256_file(path), path.stat().st_size))
    return tuple(entries)


def _tools(tensorrt: Optional[TensorRTSpec]) -> Dict[str, str]:
    tools = {"vqrt": vqrt.__version__, "python": platform.python_version(),
             "torch": torch.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
             "onnx_opset": str(OPSET)}
    if tensorrt is not None:
        tools["tensorrt"] = tensorrt.version
        tools["gpu"] = f"{tensorrt.gpu} (compute capability {tensorrt.compute_capability})"
    return tools


def _build_engines(staging: Path, sources: Dict[str, str],
                   profiles: Dict[str, Dict[str, ShapeRange]], options: BuildOptions,
                   plan: _Plan, log: Callable[[str], None]
                   ) -> Tuple[Optional[TensorRTSpec], List[str]]:
    """-> (engines or None, notes). --backend tensorrt fails on a refused graph; auto falls
    back to ONNX Runtime and says why."""
    try:
        spec = tensorrt_engines.build_engines(staging, sources, profiles, options.precision,
                                              plan.tensorrt, log)
    except tensorrt_engines.TensorRTBuildError as e:
        if options.backend == "tensorrt":
            raise BuildError(str(e)) from e
        shutil.rmtree(staging / tensorrt_engines.ENGINE_DIR, ignore_errors=True)
        return None, [f"TensorRT not used: {e}"]
    return spec, ["TensorRT engines are not in the parity report, which runs the ONNX graphs "
                  "with ONNX Runtime"]


def _build_step_engines(staging: Path, tensorrt: TensorRTSpec, program: str, limits: Limits,
                        env: tensorrt_engines.TensorRTEnvironment, log: Callable[[str], None]
                        ) -> Tuple[TensorRTSpec, List[str]]:
    """Adds an engine per tiled-decoder conv step, fp32 whatever the bundle's precision (the
    step graphs compute in fp32 between fp16 buffers; statistics stay fp32). A step TensorRT
    refuses costs only these engines: the runtime then tiles on ONNX Runtime."""
    profiles, sources = tensorrt_engines.tile_step_engines(staging, program, limits)
    try:
        steps = tensorrt_engines.build_engines(staging, sources, profiles, "fp32", env, log)
    except tensorrt_engines.TensorRTBuildError as e:
        shutil.rmtree(staging / tensorrt_engines.STEP_ENGINE_DIR, ignore_errors=True)
        return tensorrt, [f"TensorRT step engines not built ({e}): decoder engine tensorrt "
                          "tiles on ONNX Runtime"]
    return replace(tensorrt, engines={**tensorrt.engines, **steps.engines}), []


def _write_manifest(path: Path, manifest: Manifest) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(manifest_json(manifest))
        f.flush()
        os.fsync(f.fileno())


def build_bundle(checkpoint: PathLike, output: PathLike, options: BuildOptions,
                 config: Optional[PathLike] = None,
                 log: Callable[[str], None] = print) -> Manifest:
    """Builds the bundle at `output` (written elsewhere, moved into place when complete)."""
    plan = _plan(options)
    output = Path(output)
    try:
        check_output(output, options.force)
        loaded = load_checkpoint(checkpoint, config)
        calibration = None
        if options.calibration_data is not None:  # read and encoded before anything is written
            count = (DEFAULT_CALIBRATION_COUNT if options.calibration_count is None
                     else options.calibration_count)
            calibration = build_calibration_set(loaded, options.calibration_data, count,
                                                sampled=DEFAULT_SAMPLED)
            log(f"calibration set: {calibration.describe()}")
    except (OutputError, CheckpointError, CalibrationError) as e:
        raise BuildError(str(e)) from e
    if loaded.kind != "net2net" and options.backend == "native":
        raise BuildError(f"{loaded.weights_path}: a first stage alone has no transformer for "
                         "the native backend; use --backend onnxruntime or auto")
    if (loaded.kind != "net2net" and options.precision == "int8"
            and options.calibration_data is None):
        raise BuildError(f"{loaded.weights_path}: --precision int8 quantizes transformer weights "
                         "and a first stage alone has none; use fp32 or fp16")
    limits = _limits(loaded, options)
    card, first_stage, transformer, tokenization, conditioning = _model_sections(loaded)
    log(f"loaded {loaded.weights_path} ({loaded.kind}, config {loaded.config_path})")
    try:
        with staged_directory(output, options.force) as staging:
            graphs, kv, graph_notes = _write_graphs(loaded, staging, plan, log)
            tiled_files, _ = write_tiled_decoder(loaded.first_stage, staging)
            tiled_decoder = TiledDecoderSpec(PROGRAM_FORMAT, **tiled_files)
            log(f"wrote the tiled decoder ({tiled_decoder.program})")
            native = native_error = None
            if plan.native and loaded.kind == "net2net":
                codebook = (loaded.first_stage.quantize.embed if first_stage.quantizer == "gumbel"
                            else loaded.first_stage.quantize.embedding).weight
                native_error = write_native_weights(staging / NATIVE_FILE, loaded.transformer,
                                                    codebook.detach().float().numpy(),
                                                    options.precision)
                native = NativeWeightsSpec(NATIVE_FILE, options.precision, LAYOUT)
                log(f"wrote {NATIVE_FILE} ({options.precision})")
            quantization = None
            if calibration is not None:
                graphs, quantization = quantize_bundle(
                    loaded, staging, graphs, native.file if native else None, calibration,
                    options.allow_drift, log)
                log(format_quality(quantization.quality))
                if not quantization.quality.passed and not options.allow_drift:
                    raise BuildError(failure_message(quantization.quality))
            report = parity_report(loaded, staging, graphs, kv, native_error, options.allow_drift)
            log(format_parity(report))
            if not report.passed and not options.allow_drift:
                failed = "; ".join(
                    f"{c.graph} {c.metric} {format_value(c)}"
                    + ("" if c.limit is None else f" (limit {c.limit:g})")
                    for c in report.checks if not c.passed)
                raise BuildError(f"parity check failed: {failed}; no bundle written (pass "
                                 "--allow-drift to keep it anyway)")
            tensorrt, engine_notes = None, []
            if plan.tensorrt is not None:
                profiles = tensorrt_engines.engine_profiles(
                    graphs, first_stage, transformer, conditioning, _cond_factor(loaded), limits)
                sources = {name: graphs[name].file for name in profiles}
                tensorrt, engine_notes = _build_engines(staging, sources, profiles, options,
                                                        plan, log)
                if tensorrt is not None:
                    tensorrt, step_notes = _build_step_engines(
                        staging, tensorrt, tiled_decoder.program, limits, plan.tensorrt, log)
                    engine_notes += step_notes
            backends = tuple(name for name, present in (
                ("tensorrt", tensorrt is not None), ("native", native is not None),
                ("onnxruntime", kv is not None or loaded.kind != "net2net")) if present)
            manifest = Manifest(
                schema_version=SCHEMA_VERSION,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                kind=loaded.kind, requested_precision=options.precision, backends=backends,
                model_card=card.to_dict(), first_stage=first_stage, transformer=transformer,
                tokenization=tokenization, conditioning=conditioning, limits=limits,
                graphs=graphs, kv_cache=kv, native=native, tensorrt=tensorrt,
                tiled_decoder=tiled_decoder,
                files=_file_entries(staging), tools=_tools(tensorrt), parity=report,
                quantization=quantization, notes=plan.notes + tuple(graph_notes + engine_notes))
            _write_manifest(staging / MANIFEST_FILE, manifest)
    except OutputError as e:
        raise BuildError(str(e)) from e
    except OSError as e:  # permissions, a full disk: nothing was left behind
        where = e.filename or output
        raise BuildError(f"{where}: cannot write the bundle ({e.strerror or e}); check the -o "
                         "location and free space") from e
    return manifest

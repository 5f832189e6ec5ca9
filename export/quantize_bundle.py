"""`vqrt build --precision int8 --calibration-data DIR`: the int8 graphs of a bundle being
built, their calibration caches, and the quality report against fp32.

In the staging directory the fp32 encoder and decoder graphs (already written by build.py) are
replaced by their int8 QDQ versions under the same names, and the tiled decoder's step graphs
by QDQ versions with the whole-image decoder's activation scales, so the runtime opens
`graphs.decoder` and the tiles as always and ONNX Runtime runs them with integer kernels: one
reader, no precision switch at run time. The graph's manifest entry says precision int8;
`quantization.graphs` names its calibration cache (calibration/<graph>_ranges.json, in the file
list with its SHA-256) and what stayed fp32. The fp32 graphs live only in a temporary
directory, as the reference of the quality report (calibration/quality.py), which runs on the
held-out images.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from vqrt.calibration.data import CalibrationSet
from vqrt.calibration.quality import (
    decoder_checks, encoder_checks, transformer_checks)
from vqrt.export.native_weights import native_tensors
from vqrt.export.onnx_builder import check_file
from vqrt.export.onnx_tiled_decoder import DIRECTORY as TILED_DIRECTORY, write_tiled_decoder
from vqrt.export.quantize_vqgan import (
    RECIPE, Recipe, calibrate, conv_activations, count_ops, quantize)
from vqrt.runtime.bundle import (
    GraphSpec, ParityCheck, ParityReport, QuantizationSpec, QuantizedGraphSpec)
from vqrt.runtime.bundle_card import format_value
from vqrt.runtime.native_decoder import GPTShape
from vqrt.runtime.safetensors_io import read_safetensors
from vqrt.trainer.checkpoints import LoadedModel

CACHE_DIR = "calibration"
QUANTIZED_GRAPHS = {"decoder": "indices", "encoder": "image"}  # graph -> its input
NATIVE_RECIPE = ("weight-only int8: Linear weights symmetric per output channel (fp32 scale), "
                 "activations fp32")


def _native_checks(loaded: LoadedModel, native_path: Path, calibration: CalibrationSet
                   ) -> List[ParityCheck]:
    gpt = loaded.transformer
    shape = GPTShape(gpt.cfg.n_layer, gpt.cfg.n_head, gpt.cfg.n_embd, gpt.cfg.vocab_size,
                     gpt.cfg.block_size)
    codebook = (loaded.first_stage.quantize.embed if loaded.first_stage.cfg.quantizer == "gumbel"
                else loaded.first_stage.quantize.embedding).weight.detach().float().numpy()
    fp32, _ = native_tensors(gpt, codebook, "fp32")
    arrays, infos, _ = read_safetensors(native_path)  # exactly what the runtime will load
    dtypes = {name: info.dtype for name, info in infos.items()}
    prefix = calibration.held_out_sequences.shape[1] - calibration.held_out_latents[0].size
    checks = transformer_checks(shape, fp32, arrays, dtypes, calibration.held_out_sequences,
                                prefix)
    if calibration.sampled_sequences is not None:
        checks += transformer_checks(shape, fp32, arrays, dtypes, calibration.sampled_sequences,
                                     prefix, what="sampled")
    return checks


def quantize_bundle(loaded: LoadedModel, staging: Path, graphs: Dict[str, GraphSpec],
                    native_file: Optional[str], calibration: CalibrationSet, allow_drift: bool,
                    log: Callable[[str], None], recipe: Recipe = RECIPE
                    ) -> Tuple[Dict[str, GraphSpec], QuantizationSpec]:
    """Quantizes the encoder and decoder graphs in staging (in place) and measures the int8
    parts against fp32; -> (graphs with the new entries, the manifest's quantization)."""
    graphs = dict(graphs)
    quantized: Dict[str, QuantizedGraphSpec] = {}
    checks: List[ParityCheck] = []
    samples = {"decoder": (calibration.decoder_latents, calibration.held_out_latents),
               "encoder": (calibration.encoder_inputs, calibration.held_out_images)}
    (staging / CACHE_DIR).mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vqrt-int8-") as tmp:
        for name, input_name in QUANTIZED_GRAPHS.items():
            if name not in graphs:
                continue
            spec = graphs[name]
            int8_path = staging / spec.file
            fp32_path = Path(tmp) / f"{name}.fp32.onnx"
            os.replace(int8_path, fp32_path)  # the fp32 graph leaves the bundle
            cache = f"{CACHE_DIR}/{name}_ranges.json"
            calibration_inputs, held_out = samples[name]
            tensors = calibrate(fp32_path, input_name, calibration_inputs, recipe.method,
                                staging / cache)
            kept = quantize(fp32_path, int8_path, staging / cache, recipe)
            check_file(int8_path)
            ops = count_ops(int8_path)
            log(f"wrote {spec.file} (int8 QDQ: {tensors} activation ranges from "
                f"{len(calibration_inputs)} calibration inputs, {ops['DequantizeLinear']} "
                f"dequantize nodes, {len(kept)} Conv/MatMul kept fp32) and {cache}")
            graphs[name] = dataclasses.replace(spec, precision="int8")
            quantized[name] = QuantizedGraphSpec(cache, recipe.describe(), kept)
            measure = decoder_checks if name == "decoder" else encoder_checks
            checks += measure(fp32_path, int8_path, held_out)
    if "decoder" in quantized and (staging / TILED_DIRECTORY).is_dir():
        # The tile graphs take the whole-image int8 decoder's activation quantization.
        convs = conv_activations(staging / graphs["decoder"].file)
        _, kept = write_tiled_decoder(loaded.first_stage, staging, convs)
        quantized["tiled_decoder"] = QuantizedGraphSpec(quantized["decoder"].calibration_cache,
                                                        recipe.describe(), tuple(kept))
        log(f"rewrote the tiled decoder in int8 QDQ ({len(kept)} conv steps kept fp32: "
            f"{', '.join(kept)})")
    native_recipe = ""
    if native_file is not None:
        native_recipe = NATIVE_RECIPE
        if calibration.held_out_sequences is not None:
            checks += _native_checks(loaded, staging / native_file, calibration)
    passed = all(c.passed for c in checks)
    report = ParityReport(inputs=calibration.describe(), checks=tuple(checks), passed=passed,
                          drift_allowed=allow_drift)
    selection = calibration.selection
    spec = QuantizationSpec(
        calibration_data=calibration.describe(), calibration_sha256=selection.digest(),
        calibration_images=len(selection.calibration), held_out_images=len(selection.held_out),
        graphs=quantized, native=native_recipe, quality=report)
    return graphs, spec


def failure_message(report: ParityReport) -> str:
    """One line: each failed check with its measured value and its threshold."""
    values = {(c.graph, c.metric): c.value for c in report.checks}
    failed = []
    for c in report.checks:
        if c.passed:
            continue
        if c.value is None:
            failed.append(f"{c.graph} {c.metric}: NaN or inf in the int8 output")
        elif c.metric == "psnr_db":
            failed.append(f"{c.graph} PSNR {c.value:.2f} dB against fp32, below the "
                          f"{c.limit:g} dB threshold")
        elif c.metric == "nll_increase":
            failed.append(f"transformer NLL {values[('native', 'nll_int8')]:.4f} (int8) vs "
                          f"{values[('native', 'nll_fp32')]:.4f} (fp32) nats per token, "
                          f"+{100 * c.value:.2f}%, above the +{100 * c.limit:g}% threshold")
        else:
            failed.append(f"{c.graph} {c.metric} {format_value(c)} (threshold {c.limit:g})")
    return (f"int8 quality check failed on held-out images: {'; '.join(failed)}; no bundle "
            "written (pass --allow-drift to keep it anyway)")

"""Static int8 quantization of the VQGAN graphs (encoder, decoder) with ONNX Runtime.

QDQ format: QuantizeLinear/DequantizeLinear pairs around the quantized nodes, which ONNX
Runtime fuses into integer kernels (QLinearConv, QLinearMatMul) when it loads the graph, and
which TensorRT reads as explicit quantization. Weights int8, symmetric, per output channel;
activations uint8 with ranges calibrated on real data (see calibration/data.py).

Only Conv and MatMul are quantized. Everything else stays fp32 by construction: GroupNorm
(InstanceNormalization + the affine Mul/Add), swish, the attention softmax, Resize, and the
encoder's codebook distance + argmin. On top of that, RECIPE.keep_fp32 names node groups kept
fp32 because measurement said so (docs/ARCHITECTURE.md, "int8 graphs", has the numbers):

  last_conv   the decoder's conv_out (the image itself: its rounding error is the output's);
              the encoder's conv_out and quant_conv (their output picks the code: int8 there
              moves codes that are near-ties)
  attention   the q.k and weights.v products of the attention blocks

Calibration runs the fp32 graph over the calibration inputs in chunks (the histogram
calibrators keep every intermediate output of a chunk in memory), and the resulting activation
ranges are saved as ONNX Runtime's calibration cache (JSON, TensorsData); the bundle keeps that
file, and the quantized graph is made from it, so the cache is exactly what the graph used.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, create_calibrator,
    quantize_static, save_tensors_data)

QUANTIZED_OPS = ("Conv", "MatMul")
METHODS = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
           "minmax": CalibrationMethod.MinMax}
PERCENTILE = 99.999
CHUNK = 8  # calibration inputs per collection pass: bounds the calibrator's memory


@dataclass(frozen=True)
class Recipe:
    method: str = "percentile"  # activation calibration: entropy, percentile or minmax
    keep_fp32: Tuple[str, ...] = ("last_conv", "attention")  # node groups kept fp32
    activation_type: str = "uint8"  # uint8 x int8 is the fast pair on x86 (VNNI vpdpbusd)

    def describe(self) -> str:
        method = (f"percentile {PERCENTILE}" if self.method == "percentile" else self.method)
        return (f"QDQ, weights int8 symmetric per output channel, activations "
                f"{self.activation_type} ({method} calibration); {', '.join(QUANTIZED_OPS)} "
                f"quantized; fp32: GroupNorm, swish, softmax, resize, codebook argmin"
                + "".join(f", {group}" for group in self.keep_fp32))


RECIPE = Recipe()


class _Feeds(CalibrationDataReader):
    """One input array, fed one sample at a time."""

    def __init__(self, input_name: str, samples: np.ndarray):
        self._items = iter([{input_name: samples[i:i + 1]} for i in range(len(samples))])

    def get_next(self):
        return next(self._items, None)


def _group_nodes(model: onnx.ModelProto, group: str) -> List[str]:
    """Names of the nodes in one keep_fp32 group (names come from onnx_builder: nodes are
    scope/op_N, weights keep the torch module's name)."""
    names = []
    for node in model.graph.node:
        weights = set(node.input)
        if group == "last_conv" and weights & {"decoder.conv_out.weight",
                                               "encoder.conv_out.weight", "quant_conv.weight"}:
            names.append(node.name)
        elif group == "attention" and node.op_type == "MatMul" and ".attn" in node.name:
            names.append(node.name)
        elif group not in ("last_conv", "attention"):
            raise ValueError(f"unknown keep_fp32 group {group!r}")
    return names


def _argmin_nodes(model: onnx.ModelProto) -> List[str]:
    """The encoder's code choice (the product with the codebook): always fp32."""
    return [n.name for n in model.graph.node if "quantize.embedding.weight.T" in n.input
            or "quantize.proj.weight" in n.input]


@contextlib.contextmanager
def _quiet_onnxruntime_quantization() -> Iterator[None]:
    """The quantizer logs advice and the calibrators print progress on every call; the build
    prints its own lines."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def calibrate(fp32_path: Path, input_name: str, samples: np.ndarray, method: str,
              cache_path: Path) -> int:
    """Runs the fp32 graph over samples [N, ...] and writes the activation ranges of every
    Conv/MatMul input and output to cache_path; -> number of tensors calibrated."""
    # Histogram bins: ONNX Runtime's defaults (the entropy search is quadratic in them).
    options = {"symmetric": False, "percentile": PERCENTILE,
               "num_bins": 128 if method == "entropy" else 2048}
    with tempfile.TemporaryDirectory(prefix="vqrt-calibrate-") as tmp, \
            _quiet_onnxruntime_quantization():
        calibrator = create_calibrator(
            fp32_path, list(QUANTIZED_OPS), augmented_model_path=str(Path(tmp) / "aug.onnx"),
            calibrate_method=METHODS[method], providers=["CPUExecutionProvider"],
            extra_options=options)
        for start in range(0, len(samples), CHUNK):
            calibrator.collect_data(_Feeds(input_name, samples[start:start + CHUNK]))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache_path)
    return len(list(ranges.keys()))


def quantize(fp32_path: Path, out_path: Path, cache_path: Path, recipe: Recipe = RECIPE
             ) -> Tuple[str, ...]:
    """Writes the int8 QDQ graph of fp32_path to out_path from the ranges in cache_path;
    -> the names of the Conv/MatMul nodes kept fp32."""
    model = onnx.load(str(fp32_path))
    kept = _argmin_nodes(model)
    for group in recipe.keep_fp32:
        kept += _group_nodes(model, group)
    activation = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[recipe.activation_type]
    with _quiet_onnxruntime_quantization():
        quantize_static(
            str(fp32_path), str(out_path), calibration_data_reader=None,
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True, reduce_range=False, activation_type=activation,
            weight_type=QuantType.QInt8, nodes_to_exclude=kept,
            calibrate_method=METHODS[recipe.method], calibration_cache_path=str(cache_path),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    quantized = onnx.load(str(out_path))
    quantized.producer_name = "vqrt"  # the quantizer names itself; the graph is still ours
    onnx.save(quantized, str(out_path))
    return tuple(sorted(kept))


@dataclass(frozen=True)
class Int8Activation:
    """A uint8 tensor quantization: x ~ (q - zero_point) * scale."""
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Int8Conv:
    """The activation quantization of one quantized Conv: its input and its output."""
    input: Int8Activation
    output: Int8Activation


def conv_activations(int8_path: Path) -> Dict[str, Int8Conv]:
    """The input and output quantization of every quantized Conv of a QDQ graph written by
    quantize(), keyed by the conv's name (its fp32 weight's name without ".weight"), read from
    the graph itself: the DequantizeLinear feeding the Conv and the QuantizeLinear after it.
    Other graphs made from the same calibration (the tile graphs) reuse exactly these."""
    graph = onnx.load(str(int8_path), load_external_data=False).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                 if t.data_location != onnx.TensorProto.EXTERNAL}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def activation(node: onnx.NodeProto) -> Int8Activation:
        return Int8Activation(float(constants[node.input[1]]), int(constants[node.input[2]]))

    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        x, w = (producer.get(name) for name in node.input[:2])
        after = consumers.get(node.output[0], [])
        if (x is None or w is None or x.op_type != "DequantizeLinear"
                or w.op_type != "DequantizeLinear" or len(after) != 1
                or after[0].op_type != "QuantizeLinear"):
            continue  # kept fp32
        name = w.input[0].removesuffix(".weight_quantized")
        convs[name] = Int8Conv(activation(x), activation(after[0]))
    return convs


def count_ops(path: Path, op_types: Sequence[str] = ("QuantizeLinear", "DequantizeLinear",
                                                     "Conv", "MatMul")) -> Dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return {op: sum(1 for n in model.graph.node if n.op_type == op) for op in op_types}

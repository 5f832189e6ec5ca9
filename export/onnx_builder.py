"""A small ONNX graph builder and the layers every vqrt graph shares.

Graphs are written node by node from the torch model's weights (no tracing exporter), so each
graph's interface, dtypes and fp32 islands are exactly what this code says. A GraphBuilder has a
compute dtype (float32 or float16): weights and activations use it, while the layers below keep
their numerically fragile parts in fp32 and cast back (`in_fp32`):

  * LayerNorm and GroupNorm: statistics and affine in fp32;
  * softmax: in fp32 (its input is cast up, its output cast back);
  * the codebook distance / argmin of the encoder (in onnx_vqgan).

Graph inputs and outputs keep their declared types (images float32, indices int64), so one
interface serves every precision.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization; ReduceMean/ReduceSum axes as they are in opset 17
FLOAT_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
Dim = Union[int, str]


class GraphBuilder:
    """Collects nodes, initializers, inputs and outputs of one graph.

    Names: initializers keep the torch state-dict name they come from; intermediate values and
    nodes are named scope/op_N, the scope set with `with builder.scope("decoder.up.1"):`.
    """

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = np.dtype(dtype)
        if self.dtype not in FLOAT_TYPES:
            raise ValueError(f"compute dtype must be float32 or float16, got {self.dtype}")
        self.float_type = FLOAT_TYPES[self.dtype]
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: Dict[str, onnx.TensorProto] = {}
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._scopes: List[str] = []
        self._counter = 0

    @property
    def is_fp16(self) -> bool:
        return self.dtype == np.float16

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _fresh(self, op_type: str) -> str:
        self._counter += 1
        prefix = "/".join(self._scopes)
        return f"{prefix}/{op_type}_{self._counter}" if prefix else f"{op_type}_{self._counter}"

    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Declares `value` as graph output `name` (renamed through an Identity if needed)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name],
                                               name=self._fresh("Identity")))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def weight(self, name: str, array: np.ndarray, fp32: bool = False) -> str:
        """A floating-point initializer in the compute dtype (fp32 when fp32=True)."""
        dtype = np.float32 if fp32 else self.dtype
        return self._initializer(name, np.asarray(array, dtype=dtype))

    def tensor(self, name: str, array: np.ndarray) -> str:
        """A named initializer of exactly array's dtype (int8 weights, int32 biases, scales)."""
        return self._initializer(name, np.asarray(array))

    def const(self, array: Union[np.ndarray, Sequence[int], int, float],
              dtype: Optional[np.dtype] = None) -> str:
        """A small constant (shapes, axes, scalars); int64 unless dtype says otherwise."""
        value = np.asarray(array, dtype=dtype if dtype is not None else np.int64)
        return self._initializer(self._fresh("const"), value)

    def _initializer(self, name: str, value: np.ndarray) -> str:
        if name in self.initializers:
            raise ValueError(f"initializer {name} defined twice")
        # (np.ascontiguousarray would turn a 0-d scalar into shape [1].)
        self.initializers[name] = numpy_helper.from_array(np.array(value, order="C"), name)
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> Union[str, List[str]]:
        """Adds one node; returns its output name (or names when outputs > 1). An input ""
        is an omitted optional input."""
        node_name = self._fresh(op_type)
        names = [node_name if outputs == 1 else f"{node_name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if outputs == 1 else names

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  initializer=list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="vqrt")
        model.ir_version = 8  # readable by every onnxruntime >= 1.14
        return model


# --- precision islands ----------------------------------------------------------------------

def to_fp32(b: GraphBuilder, x: str) -> str:
    return b.op("Cast", x, to=TensorProto.FLOAT) if b.is_fp16 else x


def from_fp32(b: GraphBuilder, x: str) -> str:
    return b.op("Cast", x, to=b.float_type) if b.is_fp16 else x


# --- layers ---------------------------------------------------------------------------------

def linear(b: GraphBuilder, x: str, weight: np.ndarray, bias: Optional[np.ndarray],
           name: str) -> str:
    """x [..., in] @ weight.T + bias; weight is torch's [out, in], stored as [in, out]."""
    y = b.op("MatMul", x, b.weight(f"{name}.weight", np.ascontiguousarray(weight.T)))
    return y if bias is None else b.op("Add", y, b.weight(f"{name}.bias", bias))


def conv2d(b: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray, name: str,
           stride: int = 1, padding: int = 0) -> str:
    """x [B, in, H, W] -> [B, out, H', W']; weight [out, in, k, k] as torch."""
    return b.op("Conv", x, b.weight(f"{name}.weight", weight), b.weight(f"{name}.bias", bias),
                kernel_shape=list(weight.shape[2:]), strides=[stride, stride],
                pads=[padding] * 4)


def layer_norm(b: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray, eps: float,
               name: str) -> str:
    """LayerNorm over the last axis, computed in fp32."""
    y = b.op("LayerNormalization", to_fp32(b, x), b.weight(f"{name}.weight", weight, fp32=True),
             b.weight(f"{name}.bias", bias, fp32=True), axis=-1, epsilon=eps)
    return from_fp32(b, y)


def group_norm(b: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray, groups: int,
               eps: float, name: str) -> str:
    """GroupNorm of x [B, C, H, W] over `groups` contiguous channel groups, in fp32: reshape to
    [B, groups, C/groups * H * W], InstanceNormalization (unit scale, zero shift), reshape
    back, then the per-channel affine."""
    channels = weight.shape[0]
    x32 = to_fp32(b, x)
    grouped = b.op("Reshape", x32, b.const([0, groups, -1]))
    normed = b.op("InstanceNormalization", grouped,
                  b.const(np.ones(groups), np.float32), b.const(np.zeros(groups), np.float32),
                  epsilon=eps)
    y = b.op("Reshape", normed, b.op("Shape", x32))
    y = b.op("Mul", y, b.weight(f"{name}.weight", weight.reshape(channels, 1, 1), fp32=True))
    y = b.op("Add", y, b.weight(f"{name}.bias", bias.reshape(channels, 1, 1), fp32=True))
    return from_fp32(b, y)


def softmax(b: GraphBuilder, x: str, axis: int = -1) -> str:
    """Softmax in fp32; returns fp32 (callers cast back where they need to)."""
    return b.op("Softmax", to_fp32(b, x), axis=axis)


def swish(b: GraphBuilder, x: str) -> str:
    return b.op("Mul", x, b.op("Sigmoid", x))


def gelu(b: GraphBuilder, x: str) -> str:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (opset 17 has no Gelu op)."""
    erf = b.op("Erf", b.op("Mul", x, b.const(1.0 / np.sqrt(2.0), b.dtype)))
    return b.op("Mul", b.op("Mul", x, b.const(0.5, b.dtype)),
                b.op("Add", erf, b.const(1.0, b.dtype)))


# --- checking and saving --------------------------------------------------------------------

def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def check_file(path: Path) -> None:
    """onnx.checker (full) and strict shape inference on a written graph; weights stored as
    external data are not loaded for it."""
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False),
                                      check_type=True, strict_mode=True)


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained .onnx file (weights inline; fine below protobuf's 2 GB)."""
    _fsync_write(path, model.SerializeToString())
    check_file(path)


def save_graphs_sharing_weights(models: Sequence[Tuple[onnx.ModelProto, Path]],
                                data_path: Path) -> None:
    """Graphs whose initializers of the same name are the same tensor: each tensor's bytes are
    written once to data_path (64-byte aligned) and every graph points at them as ONNX external
    data (the models are changed in place). Small constants (< 1 KiB) stay inline."""
    offsets: Dict[str, Tuple[int, int]] = {}
    digests: Dict[str, bytes] = {}
    with open(data_path, "wb") as data:
        for model, path in models:
            for tensor in model.graph.initializer:
                if len(tensor.raw_data) < 1024:
                    continue
                digest = hashlib.blake2b(tensor.raw_data, digest_size=16).digest()
                if digests.setdefault(tensor.name, digest) != digest:
                    raise ValueError(f"{path.name}: initializer {tensor.name} differs from the "
                                     "tensor of that name in another graph")
                if tensor.name in offsets:
                    continue
                data.write(b"\0" * (-data.tell() % 64))
                offsets[tensor.name] = (data.tell(), len(tensor.raw_data))
                data.write(tensor.raw_data)
        data.flush()
        os.fsync(data.fileno())
    for model, path in models:
        for tensor in model.graph.initializer:
            if tensor.name not in offsets:
                continue
            offset, length = offsets[tensor.name]
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", data_path.name), ("offset", str(offset)),
                               ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        _fsync_write(path, model.SerializeToString())
        check_file(path)

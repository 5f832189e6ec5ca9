"""safetensors files read and written with numpy alone (no torch, no safetensors package).

The format: an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
tensor bytes, little-endian and C-contiguous, offsets relative to the end of the header.

numpy has no bfloat16, so BF16 tensors travel as uint16 arrays holding the bit patterns (the
upper half of the fp32 bits); `write_safetensors` takes them as `Bf16(bits)` to label them BF16,
and `read_safetensors` returns them as uint16 with dtype "BF16" in the TensorInfo.

Errors are SafetensorsError (a ValueError) with one line naming the file.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

from vqrt.runtime.strict_json import loads_strict, printable

# safetensors dtype name <-> numpy dtype (little-endian). BF16 is stored as uint16 bits.
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items() if name != "BF16"}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit

PathLike = Union[str, Path]


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message is one line."""

    def __init__(self, message: str):
        super().__init__(printable(message))  # tensor names may hold line breaks


@dataclass(frozen=True)
class Bf16:
    """uint16 bit patterns of bfloat16 values, to be written with dtype BF16."""
    bits: np.ndarray


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name: F32, F16, BF16, I8, ...
    shape: Tuple[int, ...]


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    out[nan] = np.uint16(0x7FC0)
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> fp32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def write_safetensors(path: PathLike, tensors: Mapping[str, Union[np.ndarray, Bf16]],
                      metadata: Mapping[str, str] = None) -> None:
    """Writes tensors in the order given, then fsyncs the file."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if isinstance(value, Bf16):
            array, dtype_name = np.ascontiguousarray(value.bits, dtype="<u2"), "BF16"
        else:
            array = np.ascontiguousarray(value)
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
            if array.dtype not in _NAMES:
                raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype "
                                       f"{array.dtype}")
            dtype_name = _NAMES[array.dtype]
        header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the tensor data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays:
            f.write(array.tobytes())
        f.flush()
        os.fsync(f.fileno())


def _count(value: Any) -> int:
    """A shape dimension or an offset: a non-negative JSON integer (not a float, string or bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _element_count(shape: Tuple[int, ...], limit: int) -> int:
    """The product of the dims (Python ints: an absurd shape cannot wrap around), or limit + 1
    once it exceeds the limit (so a header of huge dims costs no big-number arithmetic)."""
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > limit:
            return limit + 1
    return count


def read_safetensors(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, TensorInfo],
                                              Dict[str, str]]:
    """-> (arrays, infos, metadata). Arrays are read-only views of one buffer, in file order;
    BF16 tensors come back as uint16 bit patterns (infos[name].dtype == "BF16")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read ({e.strerror})")
    return parse_safetensors(data, str(path))


def parse_safetensors(data: bytes, path: str = "<bytes>") -> Tuple[
        Dict[str, np.ndarray], Dict[str, TensorInfo], Dict[str, str]]:
    """read_safetensors of a file's bytes (`path` names it in errors): every header value is
    checked against the bytes before an array is made, and nothing is allocated from a header
    value (the arrays are views of `data`)."""
    if len(data) < 8:
        raise SafetensorsError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER, len(data) - 8):
        raise SafetensorsError(f"{path}: header length {header_len} does not fit the file")
    try:
        header = loads_strict(data[8:8 + header_len])
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SafetensorsError(f"{path}: header is not JSON ({e})")
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        # The format's metadata maps strings to strings (the C++ reader requires it too).
        raise SafetensorsError(f"{path}: __metadata__ is not an object of strings")
    body = memoryview(data)[8 + header_len:]
    entries = []
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(_count(d) for d in entry["shape"])
            begin, end = (_count(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: malformed header entry for tensor {name}")
        count = _element_count(shape, len(body))
        if not 0 <= begin <= end <= len(body) or end - begin != count * dtype.itemsize:
            raise SafetensorsError(f"{path}: tensor {name} has offsets [{begin}, {end}) that do "
                                   f"not match its shape {shape} and dtype {entry['dtype']}")
        entries.append((begin, end, name, entry["dtype"], dtype, shape))
    arrays: Dict[str, np.ndarray] = {}
    infos: Dict[str, TensorInfo] = {}
    for begin, end, name, dtype_name, dtype, shape in sorted(entries):
        try:
            arrays[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        except ValueError as e:  # an empty tensor numpy cannot shape: [0, 2**62], 70 dims
            raise SafetensorsError(f"{path}: tensor {name} has shape {shape}, which numpy "
                                   f"cannot hold ({e})") from None
        infos[name] = TensorInfo(dtype_name, shape)
    return arrays, infos, dict(metadata)

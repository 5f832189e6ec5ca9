"""The Python bundle readers refuse what the C++ reader refuses: duplicate JSON keys, NaN or
Infinity, and safetensors shapes or offsets that are not non-negative integers or whose product
is absurd (no silent int64 wrap-around)."""
import json
import struct

import pytest

from vqrt.runtime.bundle import BundleError, parse_manifest
from vqrt.runtime.safetensors_io import SafetensorsError, read_safetensors
from vqrt.runtime.strict_json import loads_strict


@pytest.mark.parametrize("text, message", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"a": {"b": 1, "b": 1}}', "duplicate key 'b'"),
    ('{"a": NaN}', "NaN is not JSON"),
    ('{"a": -Infinity}', "-Infinity is not JSON"),
])
def test_strict_json_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        loads_strict(text)


def test_manifest_with_a_duplicate_key_is_a_bundle_error():
    with pytest.raises(BundleError, match=r"manifest.json: does not parse as JSON .*duplicate"):
        parse_manifest('{"schema_version": 1, "schema_version": 1}')


def write_safetensors(path, header: dict, body: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},          # float dimension
    {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]},          # string dimension
    {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]},      # bool dimension
    {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]},       # negatives multiply to 2
    {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]},          # float offset
    {"dtype": "F32", "shape": [2 ** 32, 2 ** 32, 2], "data_offsets": [0, 8]},  # wraps in int64
])
def test_safetensors_refuses_bad_shapes_and_offsets(tmp_path, entry):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": entry}, bytes(8))
    with pytest.raises(SafetensorsError, match="tensor x"):
        read_safetensors(path)


def test_safetensors_still_reads_a_good_file(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                      struct.pack("<2f", 1.5, -2.0))
    arrays, infos, _ = read_safetensors(path)
    assert arrays["x"].tolist() == [1.5, -2.0] and infos["x"].shape == (2,)

"""Native transformer weights: layout, precisions, and a reader without torch."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vqrt.export.build import BuildOptions, build_bundle
from vqrt.export.native_weights import LAYOUT, quantize_int8, write_native_weights
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.safetensors_io import (
    Bf16, SafetensorsError, bf16_bits_to_float32, read_safetensors, write_safetensors)
from vqrt.trainer.checkpoints import load_checkpoint
from shared_data import GOLDEN

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"golden data not found at {GOLDEN}")


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(GOLDEN / "model.ckpt", GOLDEN / "transformer.yaml")


def write(loaded, tmp_path, precision):
    path = tmp_path / f"{precision}.safetensors"
    codebook = loaded.first_stage.quantize.embedding.weight.detach().numpy()
    write_native_weights(path, loaded.transformer, codebook, precision)
    return read_safetensors(path)


def torch_weight(gpt, name):
    block, rest = name.split(".attn.") if ".attn." in name else (None, None)
    if rest == "qkv.weight":
        attn = gpt.blocks[int(block.split(".")[1])].attn
        return torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]).detach()
    renamed = name.replace("mlp.fc", "mlp.0").replace("mlp.proj", "mlp.2")
    return gpt.state_dict()[renamed].detach()


@needs_golden
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_layout_and_values(loaded, tmp_path, precision):
    arrays, infos, metadata = write(loaded, tmp_path, precision)
    gpt = loaded.transformer
    assert metadata == {"layout": LAYOUT, "precision": precision}
    assert infos["tok_emb"].dtype == "F32" and infos["tok_emb"].shape == (256, 48)
    assert infos["pos_emb"].shape == (65, 48)
    assert infos["codebook"].dtype == "F32" and infos["codebook"].shape == (256, 48)
    expected_dtype = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "int8": "I8"}[precision]
    matrices = [n for n in infos if n.endswith(".weight") and infos[n].shape[0] > 1
                and len(infos[n].shape) == 2]
    assert sorted(matrices) == sorted(
        [f"blocks.{i}.{m}.weight" for i in range(2)
         for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")] + ["head.weight"])
    assert infos["blocks.0.attn.qkv.weight"].shape == (144, 48)  # [3C, C]: query, key, value
    assert infos["blocks.0.mlp.fc.weight"].shape == (192, 48)  # [out, in]
    for name in matrices:
        assert infos[name].dtype == expected_dtype, name
        reference = torch_weight(gpt, name)
        stored = arrays[name]
        if precision == "fp32":
            np.testing.assert_array_equal(stored, reference.numpy())
        elif precision == "fp16":
            np.testing.assert_array_equal(stored, reference.half().numpy())
        elif precision == "bf16":
            np.testing.assert_array_equal(
                stored, reference.bfloat16().view(torch.int16).numpy().view(np.uint16))
        else:
            scale = arrays[f"{name}_scale"]
            assert scale.dtype == np.float32 and scale.shape == (stored.shape[0],)
            restored = stored.astype(np.float32) * scale[:, None]
            assert np.all(np.abs(restored - reference.numpy()) <= scale[:, None] * 0.5 + 1e-7)
    qkv_bias = arrays["blocks.1.attn.qkv.bias"]
    attn = gpt.blocks[1].attn
    np.testing.assert_array_equal(qkv_bias, torch.cat(
        [attn.query.bias, attn.key.bias, attn.value.bias]).detach().numpy())


@needs_golden
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_safetensors_package_reads_our_files(loaded, tmp_path, precision):
    write(loaded, tmp_path, precision)
    tensors = load_file(str(tmp_path / f"{precision}.safetensors"))
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}[precision]
    assert tensors["head.weight"].dtype == expected


def test_int8_quantization_is_symmetric_per_row():
    weight = np.array([[0.0, 0.5, -1.27], [2.54, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    q, scale = quantize_int8(weight)
    np.testing.assert_allclose(scale, [0.01, 0.02, 1.0])
    np.testing.assert_array_equal(q, [[0, 50, -127], [127, 0, 0], [0, 0, 0]])


def test_reader_round_trip_and_errors(tmp_path):
    values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    bits = np.array([0x3F80, 0xC000], np.uint16)  # 1.0, -2.0
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": values, "b": Bf16(bits), "c": np.arange(3, dtype=np.int64)},
                      metadata={"k": "v"})
    arrays, infos, metadata = read_safetensors(path)
    np.testing.assert_array_equal(arrays["a"], values)
    assert infos["b"].dtype == "BF16"
    np.testing.assert_array_equal(bf16_bits_to_float32(arrays["b"]), [1.0, -2.0])
    assert list(arrays) == ["a", "b", "c"] and metadata == {"k": "v"}
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(SafetensorsError, match="t.safetensors: header length|offsets"):
        read_safetensors(path)


@needs_golden
def test_native_backend_bundle(tmp_path):
    out = tmp_path / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision="bf16", backend="native"),
                 config=GOLDEN / "transformer.yaml", log=lambda line: None)
    m = load_bundle(out).manifest
    assert m.backends == ("native",) and m.kv_cache is None
    assert m.native.precision == "bf16" and m.native.layout == LAYOUT
    assert set(m.graphs) == {"encoder", "decoder"}
    assert all(g.precision == "fp32" for g in m.graphs.values())
    assert any("bf16" in note and "fp32" in note for note in m.notes)
    (check,) = [c for c in m.parity.checks if c.graph == "native"]
    assert 0 < check.value < 0.01  # bf16 keeps 8 bits of mantissa

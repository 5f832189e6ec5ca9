"""Tiled decoding (runtime/tiled_decode.py) against the whole-image decoder graph, its oracle:
real latents (photos from ../shared/data encoded by the bundle's encoder) on golden set A and on
the demo VQGAN, tiles down to one latent position, plus the memory plan and its errors."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from torch_threads import one_torch_thread
from vqrt.runtime import tiled_decode
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.first_stage import from_pixels, to_pixels
from vqrt.runtime.onnx_sessions import open_session
from vqrt.runtime.params import RequestError
from vqrt.runtime.tiled_decode import TiledDecoder, _Stats
from shared_data import DATA, GOLDEN

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = DATA / "images"
DEMO_VQGAN = ROOT / "models" / "demo" / "vqgan"
CPU = ("CPUExecutionProvider",)


def _photos(names, width: int, height: int) -> np.ndarray:
    """Center crops of real photos resized to width x height, float32 [B, 3, H, W] in [-1, 1]."""
    from PIL import Image
    if not PHOTOS.is_dir():
        pytest.skip(f"real photos not found at {PHOTOS}")
    pixels = []
    for name in names:
        image = Image.open(PHOTOS / name).convert("RGB")
        scale = max(width / image.width, height / image.height)
        image = image.resize((round(image.width * scale) + 1, round(image.height * scale) + 1),
                             Image.BICUBIC)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        pixels.append(np.asarray(image.crop((left, top, left + width, top + height))))
    return from_pixels(np.stack(pixels))


def _real_codes(bundle: Path, width: int, height: int, count: int) -> np.ndarray:
    names = sorted(p.name for p in PHOTOS.glob("*.jpg"))[:count] if PHOTOS.is_dir() else []
    encoder = open_session(bundle / "encoder.onnx", CPU, "cpu", 2)
    return encoder.run(None, {"image": _photos(names, width, height)})[0]


def _untiled(bundle: Path, codes: np.ndarray) -> np.ndarray:
    return open_session(bundle / "decoder.onnx", CPU, "cpu", 2).run(None, {"indices": codes})[0]


def _pixel_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((to_pixels(a).astype(np.float64) - to_pixels(b)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _check_tiles(bundle: Path, codes: np.ndarray, tiles) -> None:
    reference = _untiled(bundle, codes)
    decoder = TiledDecoder(load_bundle(bundle), CPU, "cpu", 2)
    for tile in tiles:
        tiled = decoder.decode(codes, tile=tile)
        assert tiled.shape == reference.shape
        pixel_diff = np.abs(to_pixels(tiled).astype(int) - to_pixels(reference)).max()
        assert _pixel_psnr(tiled, reference) >= 45.0, tile  # the acceptance
        assert pixel_diff <= 2, (tile, pixel_diff)
        # Rounding only (the fp16 buffers between steps: 59.5 dB on golden, 64 dB on the
        # f = 8 demo model, 68 on the f = 16 one, at most one pixel level apart); a seam or a
        # wrong statistic costs far more.
        assert _pixel_psnr(tiled, reference) >= 55.0, tile


@pytest.fixture(scope="module")
def golden_large(tmp_path_factory) -> Path:
    """Golden set A built for 256x192 images (a 24x32 latent; the model trained at 64x64)."""
    if not (GOLDEN / "model.ckpt").is_file():
        pytest.skip(f"golden data not found at {GOLDEN}")
    from vqrt.export.build import BuildOptions, build_bundle
    out = tmp_path_factory.mktemp("golden-large") / "bundle"
    with one_torch_thread():
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(max_batch=2, max_size=(256, 192)),
                     config=GOLDEN / "transformer.yaml", log=lambda line: None)
    return out


def test_default_tiles_keep_each_steps_tensors_within_the_limit(golden_large):
    """Beyond WHOLE_GRAPH_SIDE each conv step gets the largest tile whose widest fp32 tensor
    fits TILE_TENSOR_LIMIT (or its whole input); a budget below that plan gets smaller tiles."""
    decoder = TiledDecoder(load_bundle(golden_large), CPU, "cpu", 1)
    plan = decoder.plan(1, 48, 48)
    steps = [step for step in decoder.steps if isinstance(step, tiled_decode.ConvStep)]
    shapes = decoder._shapes(1, 48, 48)
    assert plan.tiles is not None and len(plan.tiles) == len(steps)
    limit = tiled_decode.TILE_TENSOR_LIMIT
    for step, side in zip(steps, plan.tiles):
        _, c_in, height, width = shapes[step.input]
        widest = 4 * max(c_in, step.out_channels * (4 if step.upsample else 1))
        assert widest * (side + 2) ** 2 <= limit or side == 1, step.name
        assert side == max(height, width) or widest * (side + 3) ** 2 > limit, step.name
    assert len(set(plan.tiles)) > 1  # wide low-resolution steps get smaller tiles
    assert decoder.plan(1, 48, 48, max_memory=2 ** 40).tiles is None  # the whole graph fits
    whole = decoder.plan(1, 48, 48, tile=48)
    tighter = decoder.plan(1, 48, 48, max_memory=min(plan.peak_bytes, whole.peak_bytes) - 1)
    assert tighter.peak_bytes < plan.peak_bytes and tighter.storage == np.float16
    assert all(a <= b for a, b in zip(tighter.tiles, plan.tiles)) and tighter.tiles != plan.tiles


def test_golden_tiled_equals_untiled_on_real_latents(golden_large):
    codes = _real_codes(golden_large, 256, 192, 2)  # [2, 24, 32]
    # 16: the acceptance tile; 5: tiles that do not divide the latent; 1: one position each
    # (8x8 pixels at full resolution), every halo clipped and padded.
    _check_tiles(golden_large, codes, (32, 16, 5, 1))


def test_chunked_attention_equals_one_chunk(monkeypatch):
    """Softmax rows are whole in every chunk, so chunking the queries changes nothing but the
    order of fp32 sums (checked on fp32 outputs: fp16 storage would hide or magnify it)."""
    qkv = np.random.default_rng(0).standard_normal((2, 3 * 16, 24, 32)).astype(np.float32)
    monkeypatch.setattr(tiled_decode, "ATTENTION_CHUNK", 768)  # one chunk
    whole = tiled_decode._attention(qkv, 16, np.float32)
    monkeypatch.setattr(tiled_decode, "ATTENTION_CHUNK", 7)  # 768 queries in chunks of 7
    chunked = tiled_decode._attention(qkv, 16, np.float32)
    q, k, v = (qkv.reshape(2, 3, 16, 768)[:, i].astype(np.float64) for i in range(3))
    scores = np.einsum("bcn,bcm->bnm", q, k)
    weights = np.exp(scores - scores.max(axis=2, keepdims=True))
    weights /= weights.sum(axis=2, keepdims=True)
    expected = np.einsum("bnm,bcm->bcn", weights, v).reshape(2, 16, 24, 32)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    np.testing.assert_allclose(chunked, expected, atol=1e-4)


def test_demo_vqgan_tiled_equals_untiled_on_real_latents(tmp_path):
    if not (DEMO_VQGAN / "model.safetensors").is_file():
        pytest.skip(f"no demo model at {DEMO_VQGAN}")
    from vqrt.export.build import BuildOptions, build_bundle
    out = tmp_path / "bundle"
    with one_torch_thread():
        build_bundle(DEMO_VQGAN, out, BuildOptions(max_batch=1, max_size=(512, 384)),
                     log=lambda line: None)
    codes = _real_codes(out, 512, 384, 1)  # [1, 24, 32] at f = 16
    _check_tiles(out, codes, (16, 7))


def test_stats_merged_over_tiles_equal_whole_image_stats():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 8, 9, 11)) * 3 + 5).astype(np.float32)
    merged = _Stats(2, 8)
    for rows in (slice(0, 4), slice(4, 9)):
        for cols in (slice(0, 3), slice(3, 11)):
            part = x[:, :, rows, cols].astype(np.float64)
            mean = part.mean(axis=(2, 3))
            merged.add(part.shape[2] * part.shape[3], mean,
                       ((part - mean[:, :, None, None]) ** 2).sum(axis=(2, 3)))
    gamma, beta = rng.standard_normal(8), rng.standard_normal(8)
    scale, shift = merged.group_affine(4, 1e-6, gamma, beta)
    grouped = x.astype(np.float64).reshape(2, 4, -1)
    normed = ((grouped - grouped.mean(axis=2, keepdims=True))
              / np.sqrt(grouped.var(axis=2, keepdims=True) + 1e-6)).reshape(x.shape)
    expected = normed * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(x * scale + shift, expected, rtol=1e-5, atol=1e-5)


def test_memory_plan_picks_a_tile_that_fits_and_refuses_what_cannot(golden_large):
    decoder = TiledDecoder(load_bundle(golden_large), CPU, "cpu", 1)
    assert decoder.plan(2, 24, 32).tiles is None  # within WHOLE_GRAPH_SIDE: the whole graph
    assert decoder.plan(2, 24, 32, tile=32).tiles is None
    t8, t4 = decoder.plan(2, 24, 32, tile=8), decoder.plan(2, 24, 32, tile=4)
    assert t8.buffer_bytes == t4.buffer_bytes and t4.tile_bytes < t8.tile_bytes
    assert t8.storage == np.float16
    chosen = decoder.plan(2, 24, 32, max_memory=t4.peak_bytes + 1)
    assert chosen.tiles is not None and chosen.peak_bytes <= t4.peak_bytes + 1
    with pytest.raises(RequestError, match=r"over --max-memory .*decode a smaller image"):
        decoder.plan(2, 24, 32, max_memory=t4.buffer_bytes // 2)
    with pytest.raises(RequestError, match="use a smaller --tile"):
        decoder.plan(2, 24, 32, tile=8, max_memory=t4.buffer_bytes // 2)
    with pytest.raises(RequestError, match="decode a smaller image"):  # no smaller tile exists
        decoder.plan(2, 24, 32, tile=1, max_memory=t4.buffer_bytes // 2)
    with pytest.raises(RequestError, match="tile must be at least 1"):
        decoder.plan(2, 24, 32, tile=0)


def test_fp16_overflow_is_a_clear_error(golden_large, monkeypatch):
    """Activations beyond fp16's range cannot be stored between tile steps: one line saying
    so and how to decode anyway, not an image of inf."""
    codes = _real_codes(golden_large, 256, 192, 1)
    decoder = TiledDecoder(load_bundle(golden_large), CPU, "cpu", 1)
    runner = decoder.runners["decoder.conv_in"]
    real_run = runner.run

    def blown_up(feeds):
        y, mean, m2 = real_run(feeds)
        return np.full_like(y, np.inf), mean, m2 + np.float32(1e10)
    monkeypatch.setattr(runner, "run", blown_up)
    with pytest.raises(RequestError, match=r"after decoder.conv_in exceed the fp16 range of "
                                           r"tiled decoding; .*--tile 32 or more"):
        decoder.decode(codes, tile=8)


def test_phase_weights_equal_upsample_then_conv():
    import torch
    import torch.nn.functional as F
    from vqrt.export.onnx_tiled_decoder import upsample_phase_weights
    torch.manual_seed(0)
    x, weight = torch.randn(1, 3, 5, 6), torch.randn(4, 3, 3, 3)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, padding=1)
    phases = torch.from_numpy(upsample_phase_weights(weight.numpy()))
    y = F.conv2d(x, phases, padding=1)  # [1, 4 C, 5, 6], channel (2 di + dj) C + c
    # DepthToSpace, DCR: out[c, 2i + di, 2j + dj] = y[(2 di + dj) C + c, i, j]
    got = y.reshape(1, 2, 2, 4, 5, 6).permute(0, 3, 4, 1, 5, 2).reshape(1, 4, 10, 12)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cli_decode_tiles_and_memory_budget(golden_large, tmp_path, capsys):
    from vqrt.cli import main
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(1).integers(0, 256, (1, 24, 32)))
    outputs = []
    for option in (["--tile", "3"], ["--tile", "32"], ["--max-memory", "64M"]):
        out = tmp_path / f"out{len(outputs)}.npy"
        assert main(["decode", str(golden_large), "--tokens", str(tokens), "-o", str(out),
                     *option]) == 0
        outputs.append(np.load(out))
    # --tile 3 and the 64M budget tile (fp16 buffers); --tile 32 covers the latent: whole.
    assert _pixel_psnr(outputs[0], outputs[1]) >= 55.0
    assert _pixel_psnr(outputs[2], outputs[1]) >= 55.0
    capsys.readouterr()
    for option, message in ((["--max-memory", "100K"], "over --max-memory 100 KiB"),
                            (["--max-memory", "lots"], "--max-memory must be a positive size"),
                            (["--tile", "0"], "tile must be an integer of at least 1")):
        refused = tmp_path / "refused.png"
        assert main(["decode", str(golden_large), "--tokens", str(tokens), "-o", str(refused),
                     *option]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not refused.exists()


def test_openvino_engine_is_close_to_fp32(golden_large):
    pytest.importorskip("openvino")
    codes = _real_codes(golden_large, 256, 192, 1)
    loaded = load_bundle(golden_large)
    fp32 = TiledDecoder(loaded, CPU, "cpu", 2).decode(codes, tile=16)
    openvino = TiledDecoder(loaded, CPU, "cpu", 2, engine="openvino")
    assert openvino.providers == ("OpenVINO CPU",)
    # bf16 arithmetic where the CPU has it; issue 6 asks >= 40 dB against fp32.
    assert _pixel_psnr(openvino.decode(codes, tile=16), fp32) >= 40.0
    with pytest.raises(RequestError, match="engine must be one of"):
        TiledDecoder(loaded, CPU, "cpu", 2, engine="tvm")
    # "auto" follows the precision the bundle was built for.
    bf16 = dataclasses.replace(loaded, manifest=dataclasses.replace(
        loaded.manifest, requested_precision="bf16"))
    assert tiled_decode.choose_engine("auto", bf16, "cpu") == "openvino"
    assert tiled_decode.choose_engine("auto", bf16, "cuda") == "onnxruntime"
    assert tiled_decode.choose_engine("auto", loaded, "cpu") == "onnxruntime"

"""vqrt.calibration: calibration sets from real photos (the split, the arrays, the errors) and
the quality metrics of the int8 report. Golden set A and a few photos of ../shared/data."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_threads import one_torch_thread
from vqrt.calibration.data import (
    HELD_OUT_FRACTION, CalibrationError, build_calibration_set, select_images)
from vqrt.calibration.quality import (
    DECODER_MIN_PSNR_DB, image_checks, nll, teacher_forced_logits, transformer_checks)
from vqrt.export.native_weights import native_tensors
from vqrt.runtime.native_decoder import GPTShape, NativeDecoder
from vqrt.trainer.checkpoints import load_checkpoint
from vqrt.trainer.data import held_out_fraction
from shared_data import SHARED

GOLDEN = SHARED / "golden"
PHOTOS = SHARED / "data" / "images"
pytestmark = pytest.mark.skipif(
    not (GOLDEN / "model.ckpt").is_file() or not PHOTOS.is_dir(),
    reason=f"golden data or photos not found under {SHARED}")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """10 photos, two of them in a sub-folder (the search is recursive)."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for i, source in enumerate(sorted(PHOTOS.glob("*.jpg"))[:10]):
        shutil.copy(source, folder / ("sub" if i < 2 else "") / source.name)
    return folder


@pytest.fixture(scope="module")
def golden():
    return load_checkpoint(GOLDEN / "model.ckpt", GOLDEN / "transformer.yaml")


def test_split_is_disjoint_deterministic_and_matches_the_trainer(photos):
    selection = select_images(photos, 6)
    names = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    assert selection.available == 10 and len(selection.calibration) == 6
    assert not set(selection.calibration) & set(selection.held_out)
    held = [n for n in names if held_out_fraction(n) < HELD_OUT_FRACTION]
    assert sorted(selection.held_out) == sorted(held or [min(names, key=held_out_fraction)])
    assert select_images(photos, 6) == selection
    assert selection.digest() == select_images(photos, 6).digest()
    assert select_images(photos, 5).calibration == selection.calibration[:5]  # a prefix


def test_calibration_set_arrays(photos, golden):
    with one_torch_thread():
        calibration = build_calibration_set(golden, photos, 4, sampled=2)
    assert calibration.encoder_inputs.shape == (4, 3, 64, 64)
    assert calibration.encoder_inputs.dtype == np.float32
    assert -1.0 <= calibration.encoder_inputs.min() and calibration.encoder_inputs.max() <= 1.0
    with torch.no_grad():
        codes = golden.first_stage.encode_to_indices(torch.from_numpy(
            calibration.encoder_inputs)).numpy()
    np.testing.assert_array_equal(calibration.decoder_latents, codes)
    held = len(calibration.selection.held_out)
    assert calibration.held_out_latents.shape == (held, 8, 8)
    sequences = calibration.held_out_sequences
    assert sequences.shape == (held, 65)  # class token + 8 x 8 codes
    np.testing.assert_array_equal(sequences[:, 0], np.arange(held) % 8)  # classes in turn
    np.testing.assert_array_equal(sequences[:, 1:], calibration.held_out_latents.reshape(held, -1))
    assert calibration.sampled_sequences.shape == (2, 65)
    assert calibration.sampled_sequences[:, 1:].max() < 256
    assert "4 calibration and" in calibration.describe()


def _error(folder, count=4) -> str:
    with pytest.raises(CalibrationError) as info:
        select_images(folder, count)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_missing_and_short_folders_stop_with_one_line(tmp_path, photos):
    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    assert "no JPEG or PNG images found" in _error(empty)
    assert "no such data folder" in _error(tmp_path / "missing")
    message = _error(photos, 200)
    assert "10 image(s)" in message and "fewer than --calibration-count 200" in message
    assert "at least 1" in _error(photos, 0)


def test_unreadable_image_is_named(tmp_path, golden):
    folder = tmp_path / "broken"
    folder.mkdir()
    for source in sorted(PHOTOS.glob("*.jpg"))[:3]:
        shutil.copy(source, folder / source.name)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(CalibrationError) as info:
        build_calibration_set(golden, folder, 3)
    assert "zz_broken.png: not a readable image" in str(info.value)


def test_image_checks():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    same = image_checks(image, image)
    assert same[0].value == 200.0 and same[0].passed and same[1].value == pytest.approx(1.0)
    noisy = image + np.float32(0.1)  # pixel error 0.05 -> 26 dB
    psnr, _ = image_checks(image, noisy)
    assert psnr.value < DECODER_MIN_PSNR_DB and not psnr.passed and psnr.limit == 35.0
    nan = image_checks(image, np.full_like(image, np.nan))[0]
    assert nan.value is None and not nan.passed


def test_nll_matches_torch_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 4
    targets = rng.integers(0, 7, (3, 5))
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double().reshape(-1, 7),
                                                 torch.from_numpy(targets).reshape(-1))
    assert nll(logits, targets) == pytest.approx(float(expected), rel=1e-12)


def test_teacher_forced_logits_equal_the_torch_forward(golden, golden_refs):
    gpt = golden.transformer
    codebook = golden.first_stage.quantize.embedding.weight.detach().numpy()
    tensors, _ = native_tensors(gpt, codebook, "fp32")
    shape = GPTShape(gpt.cfg.n_layer, gpt.cfg.n_head, gpt.cfg.n_embd, gpt.cfg.vocab_size,
                     gpt.cfg.block_size)
    tokens = golden_refs["gpt_tokens"]  # [2, 65]
    logits = teacher_forced_logits(NativeDecoder(shape, tensors, max_batch=2), tokens, 1)
    np.testing.assert_allclose(logits, golden_refs["gpt_logits"][:, :64], atol=1e-4)
    same = transformer_checks(shape, tensors, tensors, {}, tokens, 1)
    by_metric = {c.metric: c for c in same}
    assert by_metric["nll_increase"].value == 0.0 and by_metric["argmax_agreement"].value == 1.0
    int8, _ = native_tensors(gpt, codebook, "int8")
    checks = {c.metric: c for c in transformer_checks(shape, tensors, int8, {}, tokens, 1)}
    assert checks["nll_int8"].value != checks["nll_fp32"].value
    assert checks["nll_increase"].limit == 0.02

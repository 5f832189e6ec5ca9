"""Requests the bundle cannot serve fail before any work with one line naming the value and the
limit; GenerationParams checks its own fields."""
import re

import numpy as np
import pytest

from vqrt.runtime import BundleError, GenerationParams, Generator, RequestError


@pytest.fixture(scope="module")
def generator(golden_bundle):
    return Generator(golden_bundle, backend="onnxruntime", device="cpu", num_threads=1)


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("request_kwargs, expected", [
    (dict(class_labels=[1, 9]), ["class id 9", "8 classes"]),
    (dict(class_labels=[-1]), ["class id -1", "8 classes"]),
    (dict(class_labels=[1] * 9), ["batch 9", "max batch 8"]),
    (dict(class_labels=[1], batch_size=9), ["batch 9", "max batch 8"]),
    (dict(class_labels=[1, 2], batch_size=3), ["batch_size 3", "2 rows"]),
    (dict(class_labels=[1], params=GenerationParams(size=(60, 64))),
     ["width 60", "downsampling factor 8", "56 or 64"]),
    (dict(class_labels=[1], params=GenerationParams(size=(64, 72))),
     ["64x72", "largest 64x64"]),
    (dict(class_labels=[1], params=GenerationParams(top_k=300)), ["top_k 300", "256"]),
    (dict(), ["class-conditional", "class_labels"]),
    (dict(class_labels=[1], cond=np.zeros((1, 3, 64, 64), np.float32)), ["cond"]),
    (dict(class_labels=[1], prefix_tokens=np.full((1, 3), 256)), ["code 256", "[0, 256)"]),
    (dict(class_labels=[1], prefix_tokens=np.zeros((1, 64), np.int64)), ["K < 64"]),
    (dict(class_labels=[1], params="greedy"), ["GenerationParams"]),
    (dict(class_labels=[1], batch_size=2.0), ["batch_size must be an integer, got 2.0"]),
    (dict(class_labels=[1], batch_size=True), ["batch_size must be an integer, got True"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_requests_name_both_numbers(generator, request_kwargs, expected):
    with pytest.raises(RequestError) as error:
        generator.start(**request_kwargs)
    message = one_line(error)
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("fields, expected", [
    (dict(top_k=0), "top_k must be >= 1, got 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(top_p=0.0), "top_p must be in (0, 1], got 0.0"),
    (dict(top_p=1.5), "top_p must be in (0, 1]"),
    (dict(temperature=0), "temperature must be > 0, got 0"),
    (dict(temperature=1e-300), "temperature 1e-300 is outside float32's normal range"),
    (dict(temperature=1e300), "temperature 1e+300 is outside float32's normal range"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(seed=-1), "seed must be in [0, 18446744073709551616), got -1"),
    (dict(seed=2**64), "seed must be in"),
    (dict(greedy="yes"), "greedy must be True or False"),
    (dict(size=(64,)), "size must be (width, height)"),
    (dict(size=(0, 64)), "size width must be >= 1, got 0"),
])
def test_params_are_checked_on_construction(fields, expected):
    with pytest.raises(RequestError) as error:
        GenerationParams(**fields)
    assert expected in one_line(error)


def test_params_are_frozen_and_normalised():
    params = GenerationParams(top_k=np.int64(5), temperature=1, size=[64, 32])
    assert params.top_k == 5 and type(params.top_k) is int
    assert params.temperature == 1.0 and params.size == (64, 32)
    with pytest.raises(AttributeError):
        params.seed = 3
    assert list(GenerationParams(seed=2**64 - 1).row_seeds(3)) == [2**64 - 1, 0, 1]


def test_backend_and_device_choices(golden_bundle, tmp_path):
    with pytest.raises(RequestError,
                       match="backend must be one of auto, native, onnxruntime, cuda, tensorrt"):
        Generator(golden_bundle, backend="trt")
    with pytest.raises(RequestError, match="device must be one of auto, cpu, cuda"):
        Generator(golden_bundle, device="gpu")
    with pytest.raises(BundleError, match="no such directory"):
        Generator(tmp_path / "missing")
    for option, value, expected in (("tile", 2.5, "tile must be an integer"),
                                    ("num_threads", 10**6, "num_threads must be an integer in "
                                                           "[0, 1024]"),
                                    ("num_threads", None, "num_threads must be an integer"),
                                    ("max_memory", "1G", "max_memory must be a positive "
                                                         "integer")):
        with pytest.raises(RequestError, match=re.escape(expected)):
            Generator(golden_bundle, **{option: value})


def test_decode_and_encode_check_their_inputs(generator, golden_refs):
    with pytest.raises(RequestError, match=r"code 300, outside the codebook's \[0, 256\)"):
        generator.decode(np.full((1, 8, 8), 300))
    with pytest.raises(RequestError, match="batch 9 exceeds the bundle's max batch 8"):
        generator.decode(np.zeros((9, 8, 8), np.int64))
    with pytest.raises(RequestError, match=r"images must be float32 \[B, 3, H, W\]"):
        generator.encode(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(RequestError, match="height 60 is not a multiple"):
        generator.encode(np.zeros((1, 3, 60, 64), np.float32))
    with pytest.raises(RequestError,
                       match=r"with B, H and W at least 1, got float32 \[1, 3, 0, 0\]"):
        generator.encode(np.zeros((1, 3, 0, 0), np.float32))
    with pytest.raises(RequestError, match="images hold NaN or infinite values"):
        generator.encode(np.full((1, 3, 64, 64), np.nan, np.float32))
    pixels = np.full((1, 3, 64, 64), 255, np.float32)  # 0..255, not from_pixels' [-1, 1]
    with pytest.raises(RequestError, match=r"images must be in \[-1, 1\], got values in "
                                           r"\[255, 255\] \(from_pixels makes them"):
        generator.encode(pixels)
    generator.encode(np.full((1, 3, 64, 64), 1.2, np.float32))  # resampling overshoot: accepted

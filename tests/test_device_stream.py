"""vqrt._native.DeviceStream (csrc/device_stream.h), what the TensorRT backend drives engines
with: where no GPU is usable, constructing one says why in one line; on a GPU, copies, the
address checks, graph capture against eager execution, and its sampler against the CPU
sampler (vqrt.runtime.sampling, the oracle) for the same logits and seeds."""
import numpy as np
import pytest

from vqrt import _native
from vqrt.runtime.sampling import sample_logits


def _reason() -> str:
    try:
        _native.DeviceStream()
    except ValueError as e:
        return str(e)
    return ""


REASON = _reason()
needs_gpu = pytest.mark.skipif(bool(REASON), reason=f"no usable CUDA device: {REASON}")


def as_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


@pytest.mark.skipif(not REASON, reason="a CUDA device is usable here")
def test_without_a_gpu_construction_says_why():
    assert REASON.count("\n") == 0
    assert "without CUDA" in REASON or "no CUDA device" in REASON, REASON


@needs_gpu
def test_copies_rows_and_int64_add():
    s = _native.DeviceStream()
    src = np.arange(24, dtype=np.float32).reshape(4, 6)
    a, b = s.allocate(src.nbytes), s.allocate(4 * 2 * 4)
    s.upload(a, as_bytes(src))
    s.copy_rows(b, 2 * 4, a + 3 * 4, 6 * 4, 2 * 4, 4)  # columns 3..4 of every row
    out = np.empty((4, 2), dtype=np.float32)
    s.download(as_bytes(out), b)
    np.testing.assert_array_equal(out, src[:, 3:5])
    counter = s.allocate(8)
    for _ in range(3):
        s.add_int64(counter, 5)
    value = np.empty(1, dtype=np.int64)
    s.download(as_bytes(value), counter)
    assert value[0] == 15
    fresh = np.ones(6, dtype=np.float32)
    s.download(as_bytes(fresh), s.allocate(fresh.nbytes))
    assert not fresh.any()  # allocations start zeroed


@needs_gpu
def test_released_memory_is_refused_and_graphs_forbid_release():
    s = _native.DeviceStream()
    a, b = s.allocate(64), s.allocate(64)
    s.upload(a, as_bytes(np.ones(16, dtype=np.float32)))  # enqueued: release waits for it
    s.release(a)
    with pytest.raises(ValueError, match="not inside memory this DeviceStream allocated"):
        s.fill_zero(a, 64)
    with pytest.raises(ValueError, match="is not an allocation of this DeviceStream"):
        s.release(a)
    s.begin_capture()
    s.fill_zero(b, 64)
    s.end_capture()
    with pytest.raises(ValueError, match="captured graphs"):
        s.release(b)


@needs_gpu
def test_addresses_outside_its_memory_are_refused():
    s = _native.DeviceStream()
    a = s.allocate(64)
    with pytest.raises(ValueError, match="not inside memory this DeviceStream allocated"):
        s.upload(a + 32, as_bytes(np.zeros(64, dtype=np.uint8)))
    with pytest.raises(ValueError, match="not inside memory"):
        s.fill_zero(a - 8, 8)
    with pytest.raises(ValueError, match="not inside memory"):
        s.copy_rows(a, 16, a, 16, 16, 5)  # 4 rows fit, the fifth does not
    with pytest.raises(ValueError, match="no graph 0"):
        s.replay(0)


@needs_gpu
def test_a_captured_graph_replays_what_eager_execution_does():
    s = _native.DeviceStream()
    src = np.arange(12, dtype=np.float32)
    a, b, position = s.allocate(src.nbytes), s.allocate(src.nbytes), s.allocate(8)
    s.upload(a, as_bytes(src))
    s.begin_capture()
    s.copy_rows(b, 4 * 12, a, 4 * 12, 4 * 12, 1)
    s.add_int64(position, 1)
    graph = s.end_capture()
    value = np.empty(1, dtype=np.int64)
    s.download(as_bytes(value), position)
    assert value[0] == 0  # capturing records, it does not run
    for _ in range(4):
        s.replay(graph)
    out = np.empty_like(src)
    s.download(as_bytes(out), b)
    s.download(as_bytes(value), position)
    np.testing.assert_array_equal(out, src)
    assert value[0] == 4


@needs_gpu
@pytest.mark.parametrize("vocab,top_k,top_p,temperature,greedy", [
    (1024, 600, 1.0, 1.0, False), (1024, 1, 1.0, 1.0, False), (16384, 600, 0.9, 0.8, False),
    (16384, 16384, 1.0, 1.3, False), (1024, 100, 1.0, 1.0, True)])
def test_the_sampler_draws_the_cpu_samplers_tokens(vocab, top_k, top_p, temperature, greedy):
    rng = np.random.default_rng(vocab + top_k)
    batch = 16
    logits = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)
    seeds = rng.integers(0, 2**63, size=batch, dtype=np.uint64)
    s = _native.DeviceStream()
    d_logits, d_seeds = s.allocate(logits.nbytes), s.allocate(seeds.nbytes)
    d_tokens, d_status = s.allocate(batch * 8), s.allocate(batch * 4)
    s.upload(d_logits, as_bytes(logits))
    s.upload(d_seeds, as_bytes(seeds))
    for step in (0, 7, 4095):
        s.sample(d_logits, batch, vocab, d_seeds, step, top_k, top_p, temperature, greedy,
                 d_tokens, d_status)
        tokens, status = np.empty(batch, np.int64), np.empty(batch, np.int32)
        s.download(as_bytes(tokens), d_tokens)
        s.download(as_bytes(status), d_status)
        cpu = sample_logits(logits, top_k=top_k, top_p=top_p, temperature=temperature,
                            seeds=seeds, step=step, greedy=greedy)
        assert not status.any(), status
        np.testing.assert_array_equal(tokens, cpu)


@needs_gpu
def test_the_sampler_reports_bad_rows_per_row():
    s = _native.DeviceStream()
    logits = np.zeros((2, 2048), dtype=np.float32)
    logits[1, 5] = np.nan
    d_logits, d_seeds = s.allocate(logits.nbytes), s.allocate(16)
    d_tokens, d_status = s.allocate(16), s.allocate(8)
    s.upload(d_logits, as_bytes(logits))
    s.sample(d_logits, 2, 2048, d_seeds, 0, 10, 1.0, 1.0, False, d_tokens, d_status)
    tokens, status = np.empty(2, np.int64), np.empty(2, np.int32)
    s.download(as_bytes(tokens), d_tokens)
    s.download(as_bytes(status), d_status)
    assert status[0] == 0 and 0 <= tokens[0] < 2048
    assert status[1] == 1 and tokens[1] == -1  # kSampleNaN
    with pytest.raises(ValueError, match="top_k"):
        s.sample(d_logits, 2, 2048, d_seeds, 0, 0, 1.0, 1.0, False, d_tokens, d_status)

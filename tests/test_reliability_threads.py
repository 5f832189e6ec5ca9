"""Concurrency, per runtime/generator.py's thread model: one Generator shared by many threads,
each request its own Generation. 8 threads x 20 requests reproduce the serial tokens exactly
on both backends, and a cancel from another thread stops a generation within one step."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vqrt.runtime import GenerationParams, Generator, RequestError

THREADS, REQUESTS = 8, 20
SIZES = [(16, 16), (24, 16), (16, 24), (8, 24)]  # latent grids of 3 to 6 tokens


def request(i: int) -> dict:
    """Request i: its classes, batch, size and sampling differ from its neighbours'."""
    return dict(class_labels=[i % 8] if i % 3 else [i % 8, (i + 3) % 8],
                params=GenerationParams(top_k=None if i % 4 else 20, top_p=0.9 if i % 5 else 1.0,
                                        temperature=1.0 + 0.1 * (i % 3), seed=1000 + i,
                                        greedy=i % 7 == 0, size=SIZES[i % len(SIZES)]))


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_threads_reproduce_the_serial_tokens(golden_bundle, backend):
    generator = Generator(golden_bundle, backend=backend, device="cpu", num_threads=1)
    total = THREADS * REQUESTS
    serial = [generator.generate(**request(i)).tokens for i in range(total)]
    start = threading.Barrier(THREADS)

    def worker(t: int):
        start.wait()  # all threads begin together
        # Thread t takes requests t, t + 8, ... so neighbouring requests run at once.
        return {i: generator.generate(**request(i)) for i in range(t, total, THREADS)}

    with ThreadPoolExecutor(THREADS) as pool:
        results = {}
        for part in pool.map(worker, range(THREADS)):
            results.update(part)
    assert sorted(results) == list(range(total))
    for i in range(total):
        np.testing.assert_array_equal(results[i].tokens, serial[i], err_msg=f"request {i}")
        assert results[i].images.shape[0] == serial[i].shape[0]


class Gate:
    """A decoding whose logits(index) waits at `index` until released: holds a step open."""

    def __init__(self, decoding, index: int):
        self._decoding, self._index = decoding, index
        self.reached, self.release = threading.Event(), threading.Event()

    def logits(self, index: int) -> np.ndarray:
        if index == self._index:
            self.reached.set()
            assert self.release.wait(30)
        return self._decoding.logits(index)


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_cancel_from_another_thread_during_a_step(golden_bundle, backend):
    """The cancel arrives while a step computes the next logits: that step finishes its token,
    no other step runs, and the generation reports cancelled."""
    generator = Generator(golden_bundle, backend=backend, device="cpu", num_threads=1)
    generation = generator.start(class_labels=[3], params=GenerationParams(seed=5))
    gate = Gate(generation._decoding, index=10)
    generation._decoding = gate
    steps, errors = [], []

    def drive():
        try:
            while not generation.done:
                generation.step()
                steps.append(generation.position)
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    worker = threading.Thread(target=drive)
    worker.start()
    assert gate.reached.wait(30)  # the step drawing token 9 computes token 10's logits
    generation.cancel()
    gate.release.set()
    worker.join(30)
    assert not worker.is_alive() and errors == []
    assert steps[-1] == 10 and generation.cancelled and generation.position == 10
    with pytest.raises(RequestError, match="cancelled after 10 of 64"):
        generation.result()


def test_cancel_from_another_thread_during_sampling(golden_bundle, monkeypatch):
    """The sampler releases the GIL, so a cancel can land between its start and the next
    logits; the step then ends cleanly (it used to reach for the cleared KV cache and raise
    AttributeError) and computes nothing more."""
    import vqrt.runtime.generator as generator_module
    generator = Generator(golden_bundle, backend="native", device="cpu", num_threads=1)
    generation = generator.start(class_labels=[2], params=GenerationParams(seed=1))
    sampling, release = threading.Event(), threading.Event()
    real_sample = generator_module.sample_logits

    def held_sample(*args, **kwargs):
        if kwargs["step"] == 4:
            sampling.set()
            assert release.wait(30)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(generator_module, "sample_logits", held_sample)
    errors = []

    def drive():
        try:
            while not generation.done:
                generation.step()
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    worker = threading.Thread(target=drive)
    worker.start()
    assert sampling.wait(30)
    generation.cancel()
    release.set()
    worker.join(30)
    assert errors == [] and generation.cancelled and generation.position == 5


class Slow:
    """A decoding that takes a few milliseconds per token, so a watcher thread gets the GIL
    while the generation is still running."""

    def __init__(self, decoding):
        self._decoding = decoding

    def logits(self, index: int) -> np.ndarray:
        time.sleep(0.003)
        return self._decoding.logits(index)


def test_cancel_from_another_thread_stops_within_one_step(golden_bundle):
    """Without a gate: a watcher cancels once it sees progress; at most the step running then
    completes."""
    generator = Generator(golden_bundle, backend="native", device="cpu", num_threads=1)
    generation = generator.start(class_labels=[1], params=GenerationParams(seed=9))
    generation._decoding = Slow(generation._decoding)
    seen = threading.Event()
    at_cancel = []

    def watch():
        seen.wait(30)
        at_cancel.append(generation.position)
        generation.cancel()

    watcher = threading.Thread(target=watch)
    watcher.start()
    while not generation.done:
        generation.step()
        seen.set()
    watcher.join(30)
    assert generation.cancelled
    assert generation.position - at_cancel[0] <= 1 and generation.position < 64

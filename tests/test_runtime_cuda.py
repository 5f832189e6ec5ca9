"""The GPU decoder as the runtime's "cuda" backend (csrc/gpu_transformer.h): where it cannot
run, one line says why; on a GPU, its greedy tokens equal upstream's on golden set A and the CPU
decoder's on the demo model, its draw() equals the CPU sampler over the same GPU logits, and the
on-device loop (CudaDecoder.generate: CUDA graphs) equals the runtime's loop (step, draw),
sampled or greedy. Everywhere: the Generator's loop for states that keep their logits on the
device, run over the CPU decoder by a stand-in state."""
from pathlib import Path

import numpy as np
import pytest

from torch_threads import one_torch_thread
from vqrt.cli import main
from vqrt.runtime import GenerationParams, Generator, RequestError
from vqrt.runtime.backends import StatePool
from vqrt.runtime.cuda_decoder import cuda_unavailable_reason
from vqrt.runtime.sampling import sample_logits

REASON = cuda_unavailable_reason()
needs_gpu = pytest.mark.skipif(bool(REASON), reason=f"the GPU decoder cannot run: {REASON}")
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
GREEDY = GenerationParams(greedy=True)


class KeepsLogits:
    """A CPU decoding state behaving as the GPU states do: prefill and step return None and keep
    the logits, draw() samples them (here with the CPU sampler)."""

    def __init__(self, state, codes: int, fail: str = ""):
        self._state, self._codes, self._fail = state, codes, fail
        self._logits = None

    def prefill(self, tokens):
        self._logits = self._state.prefill(tokens)

    def step(self, tokens, position):
        self._logits = self._state.step(tokens, position)

    def draw(self, seeds, step, *, top_k, top_p, temperature, greedy):
        if self._fail:
            raise ValueError(self._fail)
        return sample_logits(np.ascontiguousarray(self._logits[:, :self._codes]), top_k=top_k,
                             top_p=top_p, temperature=temperature, seeds=seeds, step=step,
                             greedy=greedy)


def keep_logits_on_the_device(generator: Generator, fail: str = "") -> Generator:
    """The generator's states swapped for KeepsLogits over its own (CPU) states."""
    backend = generator._transformer
    generator._states = StatePool(
        lambda batch: KeepsLogits(backend.new_state(batch), generator.codebook_size, fail))
    return generator


@pytest.mark.parametrize("params", [GREEDY, GenerationParams(top_k=20, top_p=0.9, seed=7)])
def test_states_that_keep_their_logits_draw_the_same_tokens(golden_bundle, params):
    host = Generator(golden_bundle, backend="native").generate(class_labels=[1, 4, 4],
                                                               params=params)
    drawing = keep_logits_on_the_device(Generator(golden_bundle, backend="native"))
    result = drawing.generate(class_labels=[1, 4, 4], params=params)
    np.testing.assert_array_equal(result.tokens, host.tokens)


def test_a_refused_draw_is_one_request_error(golden_bundle):
    generator = keep_logits_on_the_device(Generator(golden_bundle, backend="native"),
                                          fail="logits row 1 contains NaN")
    generation = generator.start(class_labels=[1, 2])
    with pytest.raises(RequestError, match=r"^image token 0: logits row 1 contains NaN \(the "
                                           r"native backend over this bundle's weights\)$"):
        generation.step()


@pytest.mark.skipif(not REASON, reason="the GPU decoder runs here")
def test_without_a_gpu_the_backend_says_why(golden_bundle, tmp_path, capsys):
    with pytest.raises(RequestError, match=r"^backend cuda: .+; or use backend native"):
        Generator(golden_bundle, backend="cuda")
    assert main(["generate", str(golden_bundle), "-o", str(tmp_path / "x.png"), "--class", "1",
                 "--backend", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "backend cuda: " in err, err
    assert not (tmp_path / "x.png").exists()


@needs_gpu
def test_greedy_tokens_match_upstream_on_golden(golden_bundle, golden_refs):
    generator = Generator(golden_bundle, backend="cuda")
    result = generator.generate(class_labels=golden_refs["cond"][:, 0], params=GREEDY)
    assert result.backend == "cuda"
    np.testing.assert_array_equal(result.tokens, golden_refs["greedy_grid"])


@needs_gpu
@pytest.mark.parametrize("params", [GREEDY, GenerationParams(top_k=20, top_p=0.9, seed=7),
                                    GenerationParams(top_k=256, temperature=1.7, seed=3)])
def test_draw_equals_the_cpu_sampler_on_the_same_logits(golden_bundle, golden_refs, params):
    generator = Generator(golden_bundle, backend="cuda")
    classes = golden_refs["cond"][:, 0]
    seeds = params.row_seeds(len(classes))
    decoder = generator._transformer.new_state(len(classes))
    decoder.fetch_logits = True  # the logits come back too, for the CPU sampler
    logits = decoder.prefill(classes[:, None])
    for position in range(1, 9):
        drawn = decoder.draw(seeds, position - 1, top_k=params.top_k or 256, top_p=params.top_p,
                             temperature=params.temperature, greedy=params.greedy)
        cpu = sample_logits(logits, top_k=params.top_k or 256, top_p=params.top_p,
                            temperature=params.temperature, seeds=seeds, step=position - 1,
                            greedy=params.greedy)
        np.testing.assert_array_equal(drawn, cpu)
        logits = decoder.step(drawn, position)


def assert_the_device_loop_equals_the_generators(generator: Generator, classes,
                                                 params: GenerationParams) -> None:
    """A GPU state's generate() (the whole loop on the device) against the Generator's loop
    (step, draw) over the same backend, for class-conditional rows."""
    stepped = generator.generate(class_labels=classes, params=params).tokens
    state = generator._transformer.new_state(len(classes))
    device = state.generate(classes[:, None], params.row_seeds(len(classes)),
                            stepped.shape[1] * stepped.shape[2],
                            top_k=params.top_k or generator.codebook_size, top_p=params.top_p,
                            temperature=params.temperature, greedy=params.greedy)
    np.testing.assert_array_equal(device, stepped.reshape(len(classes), -1))


@needs_gpu
@pytest.mark.parametrize("params", [GREEDY, GenerationParams(top_k=20, top_p=0.9, seed=7)])
def test_the_device_loop_equals_the_generators_loop(golden_bundle, golden_refs, params):
    assert_the_device_loop_equals_the_generators(Generator(golden_bundle, backend="cuda"),
                                                 golden_refs["cond"][:, 0], params)


@needs_gpu
def test_greedy_tokens_match_the_cpu_on_the_demo_model(tmp_path):
    if not (DEMO / "transformer" / "model.safetensors").is_file():
        pytest.skip(f"no demo model at {DEMO}")
    from vqrt.export.build import BuildOptions, build_bundle
    with one_torch_thread():
        build_bundle(DEMO / "transformer", tmp_path / "bundle", BuildOptions(max_batch=2),
                     log=lambda line: None)
    runs = {backend: Generator(tmp_path / "bundle", backend=backend)
            .generate(batch_size=2, params=GREEDY).tokens for backend in ("native", "cuda")}
    np.testing.assert_array_equal(runs["cuda"], runs["native"])

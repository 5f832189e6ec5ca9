"""The GPU decoder as the runtime's "cuda" backend (csrc/gpu_transformer.h): where it cannot
run, one line says why; on a GPU, its greedy tokens equal upstream's on golden set A and the CPU
decoder's on the demo model, and the on-device loop (CudaDecoder.generate: CUDA graphs, the
device sampler) equals the runtime's host loop over the same GPU logits, sampled or greedy."""
from pathlib import Path

import numpy as np
import pytest

from torch_threads import one_torch_thread
from vqrt.cli import main
from vqrt.runtime import GenerationParams, Generator, RequestError
from vqrt.runtime.cuda_decoder import cuda_unavailable_reason

REASON = cuda_unavailable_reason()
needs_gpu = pytest.mark.skipif(bool(REASON), reason=f"the GPU decoder cannot run: {REASON}")
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
GREEDY = GenerationParams(greedy=True)


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
@pytest.mark.parametrize("params", [GREEDY, GenerationParams(top_k=20, top_p=0.9, seed=7)])
def test_the_device_loop_equals_the_host_loop(golden_bundle, golden_refs, params):
    generator = Generator(golden_bundle, backend="cuda")
    classes = golden_refs["cond"][:, 0]
    host = generator.generate(class_labels=classes, params=params).tokens
    decoder = generator._transformer.new_state(len(classes))
    device = decoder.generate(classes[:, None], params.row_seeds(len(classes)),
                              host.shape[1] * host.shape[2],
                              top_k=params.top_k or generator.codebook_size, top_p=params.top_p,
                              temperature=params.temperature, greedy=params.greedy)
    np.testing.assert_array_equal(device, host.reshape(len(classes), -1))


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

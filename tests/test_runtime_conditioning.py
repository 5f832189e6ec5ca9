"""Generator prefixes for every conditioning kind but class ids (tests/test_runtime_generate.py):
unconditional (SOS), a segmentation or depth map through the cond_encoder graph, an image through the
first stage as cond encoder (resized), coordinates. Greedy tokens of both backends against the
torch model, on the tiny random bundles of tests/test_export_conditioning.py.

Their vocabulary (72) is larger than the codebook (64): the runtime draws image tokens from the
64 codes only, so the torch reference takes its argmax over those too."""
import re

import numpy as np
import pytest
import torch

from test_export_conditioning import CASES, build_random_case
from torch_threads import one_torch_thread
from vqrt.export.build import BuildOptions
from vqrt.runtime import GenerationParams, Generator, RequestError, segmentation_one_hot
from vqrt.trainer.checkpoints import load_checkpoint

BATCH = 2


@pytest.fixture(scope="module",
                params=["unconditional", "segmentation", "depth", "first_stage_resized",
                        "coord"])
def case(request, tmp_path_factory):
    """-> (name, bundle path, the condition for the Generator, torch's greedy tokens)."""
    name = request.param
    root = tmp_path_factory.mktemp(f"runtime-{name}")
    with one_torch_thread():
        build_random_case(name, root, BuildOptions())
        loaded = load_checkpoint(root / "ckpt")
        cond, torch_cond = condition(name)
        prefix = loaded.model.encode_to_c(torch_cond)
        assert prefix.shape[1] == CASES[name][2]
        codes = loaded.first_stage.cfg.n_embed
        expected = torch_greedy(loaded, prefix, 64, codes)
    return name, root / "bundle", cond, expected


def condition(name: str):
    """-> (cond for the Generator or None, what the torch model's encode_to_c takes)."""
    rng = np.random.default_rng(5)
    if name == "unconditional":
        return None, BATCH
    if name == "segmentation":
        cond = segmentation_one_hot(rng.integers(0, 5, (BATCH, 16, 16)), 5)
    elif name == "coord":
        cond = rng.uniform(0, 1, (BATCH, 1, 16, 16)).astype(np.float32)
    elif name == "depth":
        cond = rng.uniform(-1, 1, (BATCH, 1, 16, 16)).astype(np.float32)
    else:
        cond = rng.uniform(-1, 1, (BATCH, 3, 16, 16)).astype(np.float32)
    return cond, torch.from_numpy(cond)


@torch.no_grad()
def torch_greedy(loaded, prefix: torch.Tensor, steps: int, codes: int) -> np.ndarray:
    """Full recomputation every step, argmax over the first `codes` logits."""
    sequence = prefix
    for _ in range(steps):
        logits = loaded.transformer(sequence)[:, -1, :codes]
        sequence = torch.cat([sequence, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return sequence[:, prefix.shape[1]:].numpy()


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_greedy_matches_torch(case, backend):
    name, bundle, cond, expected = case
    generator = Generator(bundle, backend=backend, device="cpu", num_threads=1)
    result = generator.generate(cond=cond, batch_size=BATCH, params=GenerationParams(greedy=True))
    np.testing.assert_array_equal(result.tokens.reshape(BATCH, -1), expected)


def test_condition_must_fit_the_bundle(case):
    name, bundle, cond, _ = case
    generator = Generator(bundle, backend="onnxruntime", device="cpu", num_threads=1)
    if name == "unconditional":
        with pytest.raises(RequestError, match="unconditional: class_labels"):
            generator.start(class_labels=[1])
        return
    with pytest.raises(RequestError, match="pass cond"):
        generator.start()
    with pytest.raises(RequestError, match=rf"cond must be float32 \[B, {cond.shape[1]}, H, W\]"):
        generator.start(cond=np.zeros((1, cond.shape[1] + 1, 16, 16), np.float32))
    if name in ("segmentation", "depth", "first_stage_resized"):  # checked before encoding
        rows = np.repeat(cond[:1], 9, axis=0)
        with pytest.raises(RequestError, match=r"^cond has 9 rows, more than the bundle's max "
                                               r"batch 8 \(split the request, or rebuild with "
                                               r"`vqrt build --max-batch 9`\)$"):
            generator.start(cond=rows)
    for bad in (np.nan, np.inf):  # coordinates too: NaN passed their [0, 1] check
        poisoned = cond.copy()
        poisoned[0, 0, 1, 1] = bad
        with pytest.raises(RequestError, match="cond holds NaN or infinite values"):
            generator.start(cond=poisoned)
    for empty in ((0, cond.shape[1], 16, 16), (1, cond.shape[1], 0, 16)):
        with pytest.raises(RequestError, match=r"with B, H and W at least 1, got float32 "
                                               + re.escape(str(list(empty)))):
            generator.start(cond=np.zeros(empty, np.float32))


def test_sessions_of_varying_shapes_run_without_a_memory_pattern(case):
    """With one, a long-lived session holds twice a megapixel call's need from its second call,
    and a prefill a block per length (BENCHMARKS.md, "Memory of ONNX Runtime sessions"): the
    encoders, the whole-image decoder and the prefill run without, the step graph with."""
    name, bundle, _, _ = case
    generator = Generator(bundle, backend="onnxruntime", device="cpu", num_threads=1)
    sessions = {"encoder": generator._first_stage._encoder.session,
                "decoder": generator._first_stage._decoder._whole.session,
                "prefill": generator._transformer._graphs.prefill,
                "step": generator._transformer._graphs.step}
    if name in ("segmentation", "depth", "first_stage_resized"):
        sessions["cond_encoder"] = generator._conditioner._cond_encoder.session
    patterns = {graph: s.get_session_options().enable_mem_pattern
                for graph, s in sessions.items()}
    assert patterns == {graph: graph == "step" for graph in sessions}

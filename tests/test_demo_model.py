"""The demo model (models/demo, trained here by `vqrt train`): its bundle decodes the same greedy
tokens on the native backend, the ONNX Runtime backend and the torch model, and its trainer
checkpoints load through the same loader as upstream ones."""
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_threads import one_torch_thread
from vqrt.runtime import GenerationParams, Generator

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    if not (DEMO / "transformer" / "model.safetensors").is_file():
        pytest.skip(f"no demo model at {DEMO}")
    from vqrt.export.build import BuildOptions, build_bundle
    out = tmp_path_factory.mktemp("demo-bundle") / "bundle"
    with one_torch_thread():
        build_bundle(DEMO / "transformer", out, BuildOptions(max_batch=2), log=lambda line: None)
    return out


def test_greedy_tokens_agree_across_native_onnxruntime_and_torch(demo_bundle):
    from vqrt.trainer.checkpoints import load_checkpoint
    from vqrt.trainer.models.mingpt import greedy_cached
    runs = {backend: Generator(demo_bundle, backend=backend, device="cpu", num_threads=1)
            .generate(batch_size=2, params=GenerationParams(greedy=True))
            for backend in ("native", "onnxruntime")}
    np.testing.assert_array_equal(runs["native"].tokens, runs["onnxruntime"].tokens)
    grid = runs["native"].tokens.shape[1:]  # (8, 8) at the 128 px training size
    loaded = load_checkpoint(DEMO / "transformer")
    sos = Generator(demo_bundle, backend="native").bundle.manifest.conditioning.sos_token
    with one_torch_thread():
        reference = greedy_cached(loaded.transformer, torch.full((2, 1), sos), grid[0] * grid[1])
    np.testing.assert_array_equal(runs["native"].tokens.reshape(2, -1), reference.numpy())


def test_both_demo_stages_load_and_describe_themselves():
    if not (DEMO / "vqgan" / "model.safetensors").is_file():
        pytest.skip(f"no demo model at {DEMO}")
    from vqrt.trainer.checkpoints import load_checkpoint
    from vqrt.trainer.model_card import model_card
    vqgan = model_card(load_checkpoint(DEMO / "vqgan")).to_dict()
    transformer = model_card(load_checkpoint(DEMO / "transformer")).to_dict()
    assert (vqgan["kind"], vqgan["codebook_size"], vqgan["downsampling_factor"]) == (
        "vqgan", 4096, 16)
    assert (transformer["latent_h"], transformer["latent_w"]) == (8, 8)
    assert transformer["transformer"]["block_size"] == 8 * 8 + 1
    assert transformer["conditioning"]["kind"] == "unconditional"
    # The transformer checkpoint carries the same first stage as the vqgan run it was trained on.
    assert transformer["stages"][0]["parameters"] == vqgan["stages"][0]["parameters"]

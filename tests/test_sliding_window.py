"""Sliding-window sampling (runtime/decoding.py over csrc/sliding_window.h) against a plain torch
implementation of the same scheme, written here the upstream way (taming's
scripts/sample_conditional.py): crop the window from the token grid, run the whole window
through the torch GPT, read the logits at the token's window position, argmax. Identical greedy
tokens on grids beyond the block for both backends, with stride 1 (the paper's scheme) and
stride > 1 (the window held for a run); image completion starting inside a run; a spatial
condition cropped with the window; the CLI end to end.

Golden set A: block 65 = 1 class token + the 8 x 8 training grid, so the window is 8 x 8. Its
bundle is rebuilt here with --max-size 128x128 (latents up to 16 x 16)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from test_export_conditioning import build_random_case
from test_runtime_cuda import keep_logits_on_the_device
from torch_threads import one_torch_thread
from vqrt import _native
from vqrt.cli import main
from vqrt.export.build import BuildOptions, build_bundle
from vqrt.runtime import GenerationParams, Generator, RequestError, segmentation_one_hot
from vqrt.runtime.decoding import WindowedDecoding
from vqrt.trainer.checkpoints import load_checkpoint
from vqrt.trainer.models.net2net import Net2NetTransformer
from shared_data import GOLDEN

BACKENDS = ("native", "onnxruntime")
CLASSES = [0, 3]


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory, golden_refs):  # golden_refs: skips without the data
    out = tmp_path_factory.mktemp("sliding-window") / "bundle"
    with one_torch_thread():
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(max_size=(128, 128)),
                     config=GOLDEN / "transformer.yaml", log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def generators(large_bundle):
    return {name: Generator(large_bundle, backend=name, device="cpu", num_threads=1)
            for name in BACKENDS}


@pytest.fixture(scope="module")
def golden_gpt(golden_refs):
    return load_checkpoint(GOLDEN / "model.ckpt", config=GOLDEN / "transformer.yaml").model


@torch.no_grad()
def torch_window_greedy(gpt, prefix: torch.Tensor, cond_grid, grid, window, stride: int,
                        codes: int, given: torch.Tensor = None) -> np.ndarray:
    """The scheme spelled out: prefix [B, P] (class / SOS), cond_grid [B, h, w] or None (a
    spatial condition on the image grid), given [B, K] image tokens to start from -> greedy
    tokens [B, h, w]. Each row is cut into runs of `stride` tokens; a run's window origin is
    the upstream origin of its first token, moved right just enough to hold the run; every
    token recomputes its whole window (full recomputation, no cache)."""
    (h, w), (h0, w0) = grid, (min(window[0], grid[0]), min(window[1], grid[1]))
    batch = prefix.shape[0]
    idx = torch.zeros(batch, h * w, dtype=torch.long)
    start = 0 if given is None else given.shape[1]
    if given is not None:
        idx[:, :start] = given
    idx = idx.view(batch, h, w)
    for i in range(h):
        top = min(max(i - h0 // 2, 0), h - h0)
        for run in range(0, w, stride):
            run_end = min(run + stride, w)
            left = max(min(max(run - w0 // 2, 0), w - w0), run_end - w0)
            for j in range(run, run_end):
                if i * w + j < start:
                    continue
                crop = [prefix]
                if cond_grid is not None:
                    crop.append(cond_grid[:, top:top + h0, left:left + w0].reshape(batch, -1))
                crop.append(idx[:, top:top + h0, left:left + w0].reshape(batch, -1))
                sequence = torch.cat(crop, dim=1)
                offset = sequence.shape[1] - h0 * w0  # logits[:, t] predict position t + 1
                logits = gpt(sequence[:, :-1])[:, offset - 1 + (i - top) * w0 + (j - left)]
                idx[:, i, j] = logits[:, :codes].argmax(dim=-1)
    return idx.numpy()


def size_of(grid):
    return (grid[1] * 8, grid[0] * 8)  # (width, height) pixels, f = 8


@pytest.mark.parametrize("grid, stride", [
    ((12, 16), 1), ((12, 16), 4), ((12, 16), 3), ((9, 8), 1), ((16, 5), 2), ((11, 13), 8)],
    ids=str)
def test_greedy_matches_torch(generators, golden_gpt, grid, stride):
    """(12, 16) is dec_large's latent; 3 does not divide 16 (a short last run); (9, 8) is one
    row taller than the window; (16, 5) is narrower than it (window 8 x 5); stride 8 = w0."""
    with one_torch_thread():
        expected = torch_window_greedy(golden_gpt.transformer, torch.tensor([[c] for c in CLASSES]),
                                       None, grid, (8, 8), stride, 256)
    params = GenerationParams(greedy=True, size=size_of(grid), window_stride=stride)
    for name, generator in generators.items():
        result = generator.generate(class_labels=CLASSES, params=params)
        np.testing.assert_array_equal(result.tokens, expected, err_msg=name)
        assert result.images.shape == (2, grid[0] * 8, grid[1] * 8, 3)


def test_image_completion_starts_inside_a_run(generators, golden_gpt):
    """22 given tokens of a 12 x 16 grid: token 22 = (1, 6) is the third of the run [4, 8)."""
    rng = np.random.default_rng(0)
    given = rng.integers(0, 256, (2, 22))
    with one_torch_thread():
        expected = torch_window_greedy(golden_gpt.transformer, torch.tensor([[c] for c in CLASSES]),
                                       None, (12, 16), (8, 8), 4, 256, torch.from_numpy(given))
    params = GenerationParams(greedy=True, size=size_of((12, 16)), window_stride=4)
    for name, generator in generators.items():
        result = generator.generate(class_labels=CLASSES, prefix_tokens=given, params=params)
        np.testing.assert_array_equal(result.tokens, expected, err_msg=name)


def test_window_equal_to_the_grid_is_plain_decoding(generators, golden_refs):
    """Forced through WindowedDecoding, the 8 x 8 training grid gives the golden greedy grid
    (upstream's KV-cached sample_with_past): the window is the whole grid."""
    for name, generator in generators.items():
        tokens = np.zeros((2, 64), dtype=np.int64)
        decoding = WindowedDecoding(generator._transformer.new_state(2),
                                    _native.SlidingWindow(8, 8, 8, 8, 1),
                                    golden_refs["cond"].astype(np.int64), None, tokens)
        for index in range(64):
            tokens[:, index] = decoding.logits(index).argmax(axis=1)
        np.testing.assert_array_equal(tokens.reshape(2, 8, 8), golden_refs["greedy_grid"],
                                      err_msg=name)


@pytest.mark.parametrize("stride", [1, 5])
def test_sampled_tokens_equal_across_backends(generators, stride):
    params = GenerationParams(top_k=50, temperature=0.9, seed=11, size=size_of((10, 12)),
                              window_stride=stride)
    native, ort = (generators[name].generate(class_labels=[1, 6], params=params).tokens
                   for name in BACKENDS)
    np.testing.assert_array_equal(native, ort)
    assert len(np.unique(native)) > 32  # really sampled


@pytest.mark.parametrize("stride", [1, 3])
def test_states_that_keep_their_logits_slide_the_same(large_bundle, stride):
    """The Generator's loop for GPU states (prefill and step keep the logits, draw() samples
    them) through sliding windows, over the CPU decoder (test_runtime_cuda.KeepsLogits)."""
    params = GenerationParams(top_k=50, temperature=0.9, seed=11, size=size_of((10, 12)),
                              window_stride=stride)
    host = Generator(large_bundle, backend="native").generate(class_labels=[1, 6], params=params)
    drawing = keep_logits_on_the_device(Generator(large_bundle, backend="native"))
    result = drawing.generate(class_labels=[1, 6], params=params)
    np.testing.assert_array_equal(result.tokens, host.tokens)


def test_stride_must_fit_the_window(generators):
    generator = generators["native"]
    with pytest.raises(RequestError,
                       match=r"window_stride \(--window-stride\) 9 must be in \[1, 8\] .*8x8"):
        generator.start(class_labels=[1], params=GenerationParams(window_stride=9))
    with pytest.raises(RequestError, match="window_stride must be >= 1, got 0"):
        GenerationParams(window_stride=0)


def conditioned_model(name: str, root: Path) -> Net2NetTransformer:
    """A case of tests/test_export_conditioning.py (f = 2, 16 x 16 pixels: an 8 x 8 grid; block
    128) as a random torch model, built into root / "bundle" with latents up to 16 x 16."""
    return build_random_case(name, root, BuildOptions(max_size=(32, 32)))


def test_spatial_condition_is_cropped_with_the_window(tmp_path):
    """Segmentation (64 condition tokens on the 8 x 8 image grid) at 24 x 20 pixels: a 10 x 12
    grid whose condition is cropped with each window."""
    rng = np.random.default_rng(5)
    cond = segmentation_one_hot(rng.integers(0, 5, (2, 20, 24)), 5)
    with one_torch_thread():
        model = conditioned_model("segmentation", tmp_path)
        cond_grid = model.encode_to_c(torch.from_numpy(cond)).view(2, 10, 12)
        expected = torch_window_greedy(model.transformer, cond_grid.new_zeros((2, 0)), cond_grid,
                                       (10, 12), (8, 8), 3, 64)
    for name in BACKENDS:
        generator = Generator(tmp_path / "bundle", backend=name, device="cpu", num_threads=1)
        result = generator.generate(cond=cond, params=GenerationParams(
            greedy=True, size=(24, 20), window_stride=3))
        np.testing.assert_array_equal(result.tokens, expected, err_msg=name)


def test_spatial_condition_must_lie_on_the_image_grid(tmp_path):
    """Coordinates downsampled by 4 on an f = 2 image: at 24 x 20 pixels 5 x 6 = 30 condition
    tokens beside a 10 x 12 image grid, which a window cannot crop alike."""
    with one_torch_thread():
        conditioned_model("coord", tmp_path)
    generator = Generator(tmp_path / "bundle", backend="native", num_threads=1)
    cond = np.random.default_rng(0).uniform(0, 1, (1, 1, 20, 24)).astype(np.float32)
    with pytest.raises(RequestError, match="must lie on the 10x12 image grid: it gives 30 "
                                           "tokens, not 120"):
        generator.start(cond=cond, params=GenerationParams(size=(24, 20)))


def test_cli_generates_beyond_the_block(large_bundle, generators, tmp_path, capsys):
    out, tokens = tmp_path / "out.png", tmp_path / "tokens.npy"
    code = main([str(a) for a in ("generate", large_bundle, "-o", out, "--class", 5,
                                  "--size", "128x96", "--window-stride", 4, "--seed", 3,
                                  "--top-k", 40, "--save-tokens", tokens)])
    assert code == 0, capsys.readouterr()
    assert "1 image 128x96" in capsys.readouterr().out
    expected = generators["native"].generate(class_labels=[5], params=GenerationParams(
        top_k=40, seed=3, size=(128, 96), window_stride=4)).tokens
    np.testing.assert_array_equal(np.load(tokens), expected)


def test_window_must_fit_the_block(golden_bundle, tmp_path):
    """A manifest edited to claim a 9 x 8 training grid (and 8 x 16 latents): a window then
    needs 1 + 72 - 1 positions, more than the block of 65."""
    bundle = tmp_path / "bundle"
    shutil.copytree(golden_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["first_stage"]["training_grid"] = [9, 8]
    manifest["first_stage"]["training_size"] = [72, 64]  # the grid times f = 8, as checked
    manifest["limits"]["max_latent"] = [16, 16]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    generator = Generator(bundle, backend="native", num_threads=1)
    with pytest.raises(RequestError, match="a 9x8 window after 1 condition token.s. needs 72 "
                                           "positions, more than the transformer's block size 65"):
        generator.start(class_labels=[1], params=GenerationParams(size=(128, 128)))

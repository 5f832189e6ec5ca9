"""The torch models against golden set A (../shared/golden, made by the upstream code in fp64).

Every float reference must match within 1e-4 absolute (measured fp32-vs-fp64 error is ~5e-6),
every integer reference exactly. Greedy decoding is checked two ways that must agree: full
recomputation (the oracle) and the KV-cached path.
"""

import numpy as np
import pytest
import torch

from vqrt.trainer.checkpoints import load_checkpoint
from vqrt.trainer.models.mingpt import GPT, GPTConfig, greedy_cached, greedy_full, top_k_filter
from shared_data import GOLDEN

pytestmark = pytest.mark.skipif(not (GOLDEN / "refs.npz").is_file(),
                                reason=f"golden data not found at {GOLDEN}")
ATOL = 1e-4


@pytest.fixture(scope="module")
def refs():
    with np.load(GOLDEN / "refs.npz") as data:
        return {name: torch.from_numpy(data[name]) for name in data.files}


@pytest.fixture(scope="module")
def net2net():
    return load_checkpoint(GOLDEN / "model.ckpt", config=GOLDEN / "transformer.yaml")


@pytest.fixture(scope="module")
def vqgan():
    return load_checkpoint(GOLDEN / "vqgan.ckpt", config=GOLDEN / "vqgan.yaml")


@pytest.fixture(params=["model.ckpt", "vqgan.ckpt"])
def first_stage(request, net2net, vqgan):
    return (net2net if request.param == "model.ckpt" else vqgan).first_stage


def assert_close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    error = (actual - expected).abs().max().item()
    assert error <= atol, f"max abs error {error:.3g} > {atol}"


@torch.no_grad()
def test_encode_path(first_stage, refs):
    enc_h = first_stage.encoder(refs["x"])
    assert_close(enc_h, refs["enc_h"])
    z_e = first_stage.quant_conv(enc_h)
    assert_close(z_e, refs["z_e"])
    indices = first_stage.quantize.indices(z_e)
    assert torch.equal(indices, refs["indices"])
    assert_close(first_stage.quantize.lookup(indices), refs["quant"])
    assert torch.equal(first_stage.encode_to_indices(refs["x"]), refs["indices"])


@torch.no_grad()
def test_decode_from_indices(first_stage, refs):
    assert_close(first_stage.decode_indices(refs["indices"]), refs["dec"])


@torch.no_grad()
def test_decode_non_square_latent(first_stage, refs):
    # 12x16 latent from a model trained at 8x8: attention levels still follow the config.
    assert_close(first_stage.decode_indices(refs["large_indices"]), refs["dec_large"])


@torch.no_grad()
def test_gpt_logits(net2net, refs):
    assert_close(net2net.transformer(refs["gpt_tokens"]), refs["gpt_logits"])


@torch.no_grad()
def test_cached_logits_match_full_recomputation(net2net, refs):
    gpt = net2net.transformer
    tokens = refs["gpt_tokens"][:, :20]
    full = gpt(tokens)
    cache = gpt.new_cache(batch=2)
    # A 5-token prefix in one call, then one token at a time.
    pieces = [gpt.forward_cached(tokens[:, :5], cache)]
    pieces += [gpt.forward_cached(tokens[:, t:t + 1], cache) for t in range(5, 20)]
    assert cache.length == 20
    assert_close(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_greedy_tokens_full_and_cached(net2net, refs):
    full = greedy_full(net2net.transformer, refs["cond"], steps=64)
    cached = greedy_cached(net2net.transformer, refs["cond"], steps=64)
    assert torch.equal(full, cached)
    assert torch.equal(cached, refs["greedy_tokens"])
    assert torch.equal(cached.view(2, 8, 8), refs["greedy_grid"])


def test_greedy_image(net2net, refs):
    image = net2net.model.decode_to_img(refs["greedy_tokens"], (8, 8))
    assert_close(image, refs["greedy_image"])


@torch.no_grad()
def test_top_k_probabilities_at_step_0(net2net, refs):
    # Temperature before the filter, as upstream.
    logits = net2net.transformer(refs["cond"])[:, -1] / 0.8
    probs = torch.softmax(top_k_filter(logits, 20), dim=-1)
    assert_close(probs, refs["topk_probs_step0"], atol=1e-5)
    assert ((probs > 0).sum(dim=-1) == 20).all()


def test_condition_tokens_are_class_ids(net2net):
    tokens = net2net.model.encode_to_c(torch.tensor([0, 3]))
    assert torch.equal(tokens, torch.tensor([[0], [3]]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        net2net.model.encode_to_c(torch.tensor([8]))


def test_top_k_filter_exact_small_case():
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    probs = torch.softmax(top_k_filter(logits, 3), dim=-1)
    assert torch.allclose(probs, torch.tensor([0.0, 2 / 9, 3 / 9, 4 / 9]))


def test_top_k_filter_keeps_ties():
    filtered = top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]]), 2)
    assert torch.isfinite(filtered).tolist() == [[False, True, True, True, False]]


@torch.no_grad()
def test_cache_respects_unmasked_prefix():
    # n_unmasked positions attend to each other both ways; the cache must see the same mask.
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=11, block_size=9, n_layer=2, n_head=2, n_embd=10,
                        n_unmasked=3)).eval()
    tokens = torch.randint(0, 11, (2, 9))
    cache = gpt.new_cache(batch=2)
    pieces = [gpt.forward_cached(tokens[:, :3], cache)]
    pieces += [gpt.forward_cached(tokens[:, t:t + 1], cache) for t in range(3, 9)]
    assert_close(torch.cat(pieces, dim=1), gpt(tokens), atol=1e-5)

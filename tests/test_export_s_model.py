"""A random model with the S transformer (12 layers, 12 heads, 768 wide, vocabulary 1024,
block 257) built into fp32 and fp16 bundles, and 256 greedy steps through the KV-cached step
graph checked against full recomputation.

The first stage is small on purpose (f = 4, 64 x 64 images: the same 16 x 16 grid a 256 x 256
f = 16 model has), so the two builds stay near 20 s each on 2 cores. Weights are N(0, 1/fan_in)
(head x3, codebook N(0, 1)) rather than minGPT's 0.02, so logits spread over several units
and greedy decoding does not collapse to one repeated token.
"""
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vqrt.export.build import BuildOptions, build_bundle
from vqrt.export.parity import psnr_db
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.ort_transformer import OrtTransformer
from vqrt.trainer.checkpoints import save_checkpoint
from vqrt.trainer.model_config import parse_model_config
from vqrt.trainer.models.net2net import Net2NetTransformer

STEPS = 256
S_CONFIG = {
    "target": "taming.models.cond_transformer.Net2NetTransformer",
    "params": {
        "first_stage_key": "image", "cond_stage_key": "class_label",
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {
            "vocab_size": 1024, "block_size": 257, "n_layer": 12, "n_head": 12, "n_embd": 768}},
        "first_stage_config": {"target": "taming.models.vqgan.VQModel", "params": {
            "embed_dim": 32, "n_embed": 1024, "ddconfig": {
                "double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3,
                "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1,
                "attn_resolutions": [16], "dropout": 0.0}}},
        "cond_stage_config": {"target": "taming.modules.util.Labelator",
                              "params": {"n_classes": 10}},
    },
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("s-model")
    torch.manual_seed(0)
    model = Net2NetTransformer(parse_model_config(S_CONFIG).config).eval()
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.normal_(0.0, (3.0 if name == "head.weight" else 1.0) / math.sqrt(p.shape[1]))
        model.first_stage_model.quantize.embedding.weight.normal_()
    save_checkpoint(root / "ckpt", model, S_CONFIG)
    built = {}
    for precision in ("fp32", "fp16"):
        out = root / precision
        build_bundle(root / "ckpt", out, BuildOptions(precision=precision, backend="onnxruntime"),
                     log=lambda line: None)
        built[precision] = load_bundle(out)
    return built


def test_parity_reports(bundles):
    for precision, bundle in bundles.items():
        m = bundle.manifest
        assert m.transformer.block_size == 257 and m.transformer.n_embd == 768
        assert m.first_stage.training_grid == (16, 16)
        assert m.parity.passed, precision
        step = {c.metric: c for c in m.parity.checks if c.graph == "transformer_step"}
        assert step["max_abs_error"].value <= (1e-4 if precision == "fp32" else 0.05)


def test_kv_cache_decoding_equals_full_recomputation_256_steps(bundles):
    """256 greedy steps through the step graph (one class token, then 256 image tokens), then
    one prefill of the finished sequence. Full recomputation before step n would run the
    prefill graph over sequence[:n + 1] and read its last logits; by the causal mask those are
    exactly the prefill logits at position n of the finished sequence, so one prefill gives
    every step's full-recomputation answer."""
    bundle = bundles["fp32"]
    cached = OrtTransformer.from_bundle(bundle, batch=1)
    logits = cached.prefill(np.array([[7]]))
    sequence, step_logits = [np.array([[7]])], []
    for step in range(STEPS):
        step_logits.append(logits[:, -1])
        sequence.append(logits[:, -1].argmax(axis=-1)[:, None])
        if step + 1 < STEPS:
            logits = cached.step(sequence[-1])
    sequence = np.concatenate(sequence, axis=1)  # [1, 257]
    cached.reset()
    full_logits = cached.prefill(sequence[:, :-1])  # [1, 256, V]
    np.testing.assert_array_equal(full_logits.argmax(axis=-1), sequence[:, 1:])
    np.testing.assert_allclose(np.stack(step_logits, axis=1), full_logits, rtol=0, atol=1e-4)
    assert len(np.unique(sequence[:, 1:])) > 10  # not a constant sequence


def test_fp16_decoder_psnr(bundles):
    indices = np.random.default_rng(1).integers(0, 1024, (2, 16, 16))
    images = {}
    for precision, bundle in bundles.items():
        session = ort.InferenceSession(str(bundle.graph_path("decoder")),
                                       providers=["CPUExecutionProvider"])
        images[precision] = session.run(None, {"indices": indices})[0]
    assert psnr_db(images["fp32"], images["fp16"]) >= 40.0

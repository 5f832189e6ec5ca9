"""Bundles of tiny random models for every conditioning kind and both quantizers: the manifest
says how prefix tokens are made, and the cond_encoder graph matches the torch cond stage."""
import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vqrt.export.build import BuildOptions, build_bundle
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.ort_transformer import OrtTransformer, greedy
from vqrt.trainer.checkpoints import load_checkpoint, save_checkpoint
from vqrt.trainer.model_config import parse_model_config
from vqrt.trainer.models.mingpt import greedy_full
from vqrt.trainer.models.net2net import Net2NetTransformer

VQ = {"target": "taming.models.vqgan.VQModel", "params": {
    "embed_dim": 32, "n_embed": 64, "ddconfig": {
        "double_z": False, "z_channels": 32, "resolution": 16, "in_channels": 3, "out_ch": 3,
        "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
        "dropout": 0.0}}}
GPT = {"target": "taming.modules.transformer.mingpt.GPT",
       "params": {"vocab_size": 72, "block_size": 128, "n_layer": 1, "n_head": 2, "n_embd": 32}}


def config(cond, **extra):
    params = {"first_stage_config": copy.deepcopy(VQ), "transformer_config": GPT,
              "cond_stage_config": cond, **extra}
    return {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": params}


def segmentation_stage():
    stage = copy.deepcopy(VQ)
    stage["target"] = "taming.models.vqgan.VQSegmentationModel"
    stage["params"]["n_labels"] = 5
    stage["params"]["ddconfig"].update(in_channels=5, out_ch=5)
    return stage


def depth_stage():
    """Upstream's depth cond stage: a VQModel reading one channel."""
    stage = copy.deepcopy(VQ)
    stage["params"]["ddconfig"].update(in_channels=1, out_ch=1)
    return stage


def gumbel_config():
    cfg = config({"target": "taming.modules.util.SOSProvider", "params": {"sos_token": 70}})
    cfg["params"]["first_stage_config"]["target"] = "taming.models.vqgan.GumbelVQ"
    return cfg


CASES = {
    "unconditional": (config("__is_unconditional__", sos_token=71), "sos", 1),
    "first_stage_resized": (config("__is_first_stage__", downsample_cond_size=8,
                                   cond_stage_key="image"), "cond_encoder", 16),
    "segmentation": (config(segmentation_stage(), cond_stage_key="segmentation"),
                     "cond_encoder", 64),
    "depth": (config(depth_stage(), cond_stage_key="depth"), "cond_encoder", 64),
    "coord": (config({"target": "taming.modules.misc.coord.CoordStage",
                      "params": {"n_embed": 64, "down_factor": 4}}, cond_stage_key="coord"),
              "coord", 16),
    "gumbel": (gumbel_config(), "sos", 1),
}


def build_random_case(name: str, root, options: BuildOptions) -> Net2NetTransformer:
    """CASES[name] as a random torch model with every embedding spread N(0, 1) (so its codes and
    logits are spread), saved to root / "ckpt" and built into root / "bundle" with `options`;
    for the runtime tests. Call under one_torch_thread()."""
    model_config = CASES[name][0]
    torch.manual_seed(0)
    model = Net2NetTransformer(parse_model_config(model_config).config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_()
    save_checkpoint(root / "ckpt", model, model_config)
    build_bundle(root / "ckpt", root / "bundle", options, log=lambda line: None)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    model_config, rule, prefix_tokens = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = Net2NetTransformer(parse_model_config(model_config).config).eval()
    with torch.no_grad():
        for module in model.modules():  # spread the codes and logits of the random model
            for name in ("embedding", "embed"):
                if hasattr(module, name) and isinstance(getattr(module, name), torch.nn.Embedding):
                    getattr(module, name).weight.normal_()
    save_checkpoint(root / "ckpt", model, model_config)
    build_bundle(root / "ckpt", root / "bundle", BuildOptions(), log=lambda line: None)
    return request.param, load_bundle(root / "bundle"), load_checkpoint(root / "ckpt"), rule, \
        prefix_tokens


def test_manifest_and_parity(case):
    name, bundle, loaded, rule, prefix_tokens = case
    m = bundle.manifest
    assert m.parity.passed
    assert m.tokenization.prefix == rule
    assert m.conditioning.prefix_tokens == prefix_tokens
    assert ("cond_encoder" in m.graphs) == (rule == "cond_encoder")
    if name == "unconditional":
        assert m.conditioning.sos_token == 71
    if name == "coord":
        assert (m.conditioning.coord_down_factor, m.conditioning.coord_n_embed) == (4, 64)
    if name == "first_stage_resized":
        assert m.conditioning.cond_resize == 8 and m.conditioning.cond_channels == 3
    if name == "gumbel":
        assert m.first_stage.quantizer == "gumbel" and "encoder" in m.graphs


def test_cond_encoder_matches_torch(case):
    name, bundle, loaded, rule, prefix_tokens = case
    if rule != "cond_encoder":
        pytest.skip(f"{name} has no cond_encoder graph")
    channels = bundle.manifest.conditioning.cond_channels
    cond = np.random.default_rng(3).uniform(-1, 1, (2, channels, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(bundle.graph_path("cond_encoder")),
                                   providers=["CPUExecutionProvider"])
    tokens = session.run(None, {"cond": cond})[0]
    expected = loaded.model.encode_to_c(torch.from_numpy(cond)).numpy()
    assert tokens.shape == (2, prefix_tokens)
    np.testing.assert_array_equal(tokens, expected)


def test_greedy_matches_torch(case):
    name, bundle, loaded, rule, prefix_tokens = case
    prefix = np.random.default_rng(4).integers(0, 64, (2, prefix_tokens))
    steps = 32
    expected = greedy_full(loaded.transformer, torch.from_numpy(prefix), steps).numpy()
    tokens = greedy(OrtTransformer.from_bundle(bundle, 2), prefix, steps)
    np.testing.assert_array_equal(tokens, expected)

"""Bundles of tiny random models for every conditioning kind and both quantizers: the manifest
says how prefix tokens are made, and the cond_encoder graph matches the torch cond stage."""
import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from torch_threads import one_torch_thread
from vqrt.export.build import BuildOptions, build_bundle
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.ort_transformer import OrtTransformer, greedy
from vqrt.trainer.checkpoints import load_checkpoint, save_checkpoint
from vqrt.runtime import Generator, RequestError
from vqrt.trainer.model_config import ConfigError, parse_model_config
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


def build_random_case(name: str, root, options: BuildOptions,
                      model_config=None) -> Net2NetTransformer:
    """CASES[name] (or model_config) as a random torch model with every embedding spread N(0, 1)
    (so its codes and logits are spread), saved to root / "ckpt" and built into root / "bundle"
    with `options`; for the runtime tests. Call under one_torch_thread()."""
    model_config = CASES[name][0] if model_config is None else model_config
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


def coord_config(n_embed: int):
    return config({"target": "taming.modules.misc.coord.CoordStage",
                   "params": {"n_embed": n_embed, "down_factor": 4}}, cond_stage_key="coord")


def vq_cond_config(n_embed: int):
    stage = segmentation_stage()
    stage["params"]["n_embed"] = n_embed
    return config(stage, cond_stage_key="segmentation")


@pytest.mark.parametrize("model_config, expected", [
    (config("__is_unconditional__", sos_token=72),
     "model.params.sos_token 72 puts the start token (72) outside the transformer's vocabulary "
     "[0, 72)"),
    (config({"target": "taming.modules.util.SOSProvider", "params": {"sos_token": -1}}),
     "model.params.cond_stage_config.params.sos_token -1 puts the start token (-1) outside"),
    (vq_cond_config(100),
     "model.params.cond_stage_config.params.n_embed 100 puts the cond stage's last code (99) "
     "outside"),
    (coord_config(73), "model.params.cond_stage_config.params.n_embed 73 puts the largest "
                       "coordinate token below 1.0 (72) outside"),
], ids=["sos", "sos_provider", "vq_cond_stage", "coord"])
def test_prefix_tokens_must_lie_in_the_vocabulary(model_config, expected):
    """Prefix tokens share the transformer's vocabulary of 72: a config whose tokens leave it
    is refused when read, naming the field (else it builds a bundle every command refuses)."""
    with pytest.raises(ConfigError) as error:
        parse_model_config(model_config)
    assert expected in str(error.value)


def test_coordinates_that_would_leave_the_vocabulary(tmp_path):
    """n_embed == vocab_size, as upstream's faceshq: accepted, since round(n_embed * x) reaches
    the vocabulary only at x ~ 1, which the runtime then refuses, naming the bound."""
    with one_torch_thread():
        build_random_case("coord", tmp_path, BuildOptions(backend="native"), coord_config(72))
    generator = Generator(tmp_path / "bundle", backend="native", device="cpu", num_threads=1)
    coordinates = np.full((1, 1, 16, 16), 0.5, np.float32)
    generator.start(cond=coordinates)
    coordinates[..., :4, :4] = 1.0
    with pytest.raises(RequestError, match=r"coordinates as high as 1 \(averaged over 4x4 "
                                           r"blocks\) make token 72, outside the transformer's "
                                           r"vocabulary \[0, 72\): keep them below 0.993056"):
        generator.start(cond=coordinates)

"""Checkpoint loading and saving: upstream .ckpt + YAML, vqrt safetensors + JSON, and errors."""
import argparse
import collections
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from vqrt.trainer.checkpoints import (
    CheckpointError, find_config, load_checkpoint, read_config, save_checkpoint)
from vqrt.trainer.model_config import ConfigError, parse_model_config
from vqrt.trainer.model_card import model_card
from shared_data import GOLDEN

needs_golden = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                  reason=f"golden data not found at {GOLDEN}")


def golden_state_dict(name="model.ckpt"):
    return torch.load(GOLDEN / name, map_location="cpu", weights_only=True)["state_dict"]


def transformer_config():
    return yaml.safe_load((GOLDEN / "transformer.yaml").read_text())


def write_yaml(path: Path, document) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def assert_same_weights(model, state):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


# --- files that are not checkpoints ----------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.ckpt", config=tmp_path / "absent.yaml")


@needs_golden
def test_random_bytes(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(os.urandom(4096).replace(b"\x80", b"\x81").replace(b"PK", b"pk"))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(path, config=GOLDEN / "vqgan.yaml")


@needs_golden
def test_random_bytes_after_a_pickle_header(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path, config=GOLDEN / "vqgan.yaml")


@needs_golden
def test_text_file_as_checkpoint():
    with pytest.raises(CheckpointError, match="a text file.*--config"):
        load_checkpoint(GOLDEN / "MANIFEST.txt", config=GOLDEN / "vqgan.yaml")


@needs_golden
def test_zip_that_is_not_torch(tmp_path):
    with pytest.raises(CheckpointError, match="without data.pkl"):
        load_checkpoint(GOLDEN / "refs.npz", config=GOLDEN / "vqgan.yaml")


@needs_golden
def test_checkpoint_given_as_config():
    with pytest.raises(CheckpointError, match="not a text file"):
        load_checkpoint(GOLDEN / "model.ckpt", config=GOLDEN / "model.ckpt")


# --- configs that do not match the weights ---------------------------------------------------

@needs_golden
@pytest.mark.parametrize("n_layer, keys, word", [(1, "transformer.blocks.1.*", "unexpected"),
                                                  (4, "transformer.blocks.2.*", "missing")])
def test_wrong_n_layer(tmp_path, n_layer, keys, word):
    document = transformer_config()
    document["model"]["params"]["transformer_config"]["params"]["n_layer"] = n_layer
    config = write_yaml(tmp_path / "wrong.yaml", document)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(GOLDEN / "model.ckpt", config=config)
    message = str(error.value)
    assert f"{keys}" in message and word in message
    assert (f"model.params.transformer_config.params.n_layer is {n_layer} but the checkpoint "
            "has 2 blocks") in message
    assert "\n" not in message


@needs_golden
def test_wrong_n_embd(tmp_path):
    document = transformer_config()
    document["model"]["params"]["transformer_config"]["params"]["n_embd"] = 64
    config = write_yaml(tmp_path / "wrong.yaml", document)
    with pytest.raises(CheckpointError, match=r"transformer_config\.params\.n_embd is 64 but "
                                              r"the checkpoint's is 48"):
        load_checkpoint(GOLDEN / "model.ckpt", config=config)


@needs_golden
def test_wrong_first_stage_fields(tmp_path):
    document = yaml.safe_load((GOLDEN / "vqgan.yaml").read_text())
    params = document["model"]["params"]
    params["n_embed"] = 512
    params["ddconfig"]["attn_resolutions"] = [16]
    config = write_yaml(tmp_path / "wrong.yaml", document)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(GOLDEN / "vqgan.ckpt", config=config)
    assert "model.params.n_embed x embed_dim is 512 x 48 but the checkpoint's codebook is " \
           "256 x 48" in str(error.value)
    assert "attn_resolutions [16]" in str(error.value)


@needs_golden
def test_mask_that_does_not_match_n_unmasked(tmp_path):
    document = transformer_config()
    document["model"]["params"]["transformer_config"]["params"]["n_unmasked"] = 3
    config = write_yaml(tmp_path / "unmasked.yaml", document)
    with pytest.raises(CheckpointError, match=r"transformer\.blocks\.0\.attn\.mask differs"):
        load_checkpoint(GOLDEN / "model.ckpt", config=config)


@needs_golden
def test_vqgan_config_for_a_net2net_checkpoint():
    with pytest.raises(CheckpointError, match="holds a Net2NetTransformer"):
        load_checkpoint(GOLDEN / "model.ckpt", config=GOLDEN / "vqgan.yaml")


@needs_golden
def test_unsupported_field_is_named(tmp_path):
    document = transformer_config()
    document["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["use_linear_attn"] = 1
    config = write_yaml(tmp_path / "extra.yaml", document)
    with pytest.raises(CheckpointError, match=r"first_stage_config\.params\.ddconfig: "
                                              r"unsupported field\(s\) use_linear_attn"):
        load_checkpoint(GOLDEN / "model.ckpt", config=config)


@needs_golden
def test_permuter_other_than_identity_is_named(tmp_path):
    document = transformer_config()
    document["model"]["params"]["permuter_config"] = {
        "target": "taming.modules.transformer.permuter.ZCurve", "params": {"H": 8, "W": 8}}
    config = write_yaml(tmp_path / "zcurve.yaml", document)
    with pytest.raises(CheckpointError, match="permuter taming.modules.transformer.permuter."
                                              "ZCurve is not supported"):
        load_checkpoint(GOLDEN / "model.ckpt", config=config)


# --- what loads ------------------------------------------------------------------------------

@needs_golden
def test_loss_keys_are_ignored():
    loaded = load_checkpoint(GOLDEN / "vqgan.ckpt", config=GOLDEN / "vqgan.yaml")
    assert len(loaded.ignored_keys) == 12
    assert all(key.startswith("loss.") for key in loaded.ignored_keys)
    state = {k: v for k, v in golden_state_dict("vqgan.ckpt").items()
             if not k.startswith("loss.")}
    assert_same_weights(loaded.model, state)
    assert not loaded.model.training
    tensors = list(loaded.model.parameters()) + list(loaded.model.buffers())
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


@needs_golden
def test_config_found_beside_the_checkpoint():
    loaded = load_checkpoint(GOLDEN / "vqgan.ckpt")
    assert loaded.config_path == GOLDEN / "vqgan.yaml"


@needs_golden
def test_config_found_in_the_run_folder(tmp_path):
    # Upstream layout: logs/<run>/checkpoints/last.ckpt and logs/<run>/configs/*-project.yaml.
    run = tmp_path / "logs" / "2021-01-01T00-00-00_demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "configs").mkdir()
    (run / "checkpoints" / "last.ckpt").symlink_to(GOLDEN / "model.ckpt")
    shutil.copy(GOLDEN / "transformer.yaml", run / "configs" / "2021-01-01T00-00-00-project.yaml")
    write_yaml(run / "configs" / "2021-01-01T00-00-00-lightning.yaml", {"lightning": {}})
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.config_path.name == "2021-01-01T00-00-00-project.yaml"
    assert loaded.kind == "net2net"


def test_no_config_found_says_where_it_looked(tmp_path):
    weights = tmp_path / "run" / "checkpoints" / "last.ckpt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"looked for last\.yaml beside it and "
                                              r".*configs/\*-project\.yaml.*--config"):
        find_config(weights)


def _write_with_fake_module(path: Path, content, module_name: str, monkeypatch):
    """torch.save content whose classes claim to live in module_name (never installed here):
    the module exists only while pickling."""
    with monkeypatch.context() as patch:
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            patch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
        for value in content.values():
            if isinstance(value, type):
                setattr(sys.modules[module_name], value.__qualname__, value)
        torch.save(content, path)


@needs_golden
def test_lightning_objects_load_through_the_allow_list(tmp_path, monkeypatch):
    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "logs/x/checkpoints/last.ckpt"
            self.best_model_score = torch.tensor(0.5)
    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"

    state = golden_state_dict()
    path = tmp_path / "lightning.ckpt"
    content = {
        "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.0.8",
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
        "checkpoint_callback": ModelCheckpoint(),
        "hparams": argparse.Namespace(base=["configs/x.yaml"], seed=23, name=b"run"),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}},
                              "param_groups": [{"betas": (0.9, 0.95), "params": [0]}]}],
        "state_dict": collections.OrderedDict(state),
        "model_class": ModelCheckpoint,
    }
    _write_with_fake_module(path, content, "pytorch_lightning.callbacks.model_checkpoint",
                            monkeypatch)
    assert "pytorch_lightning" not in sys.modules
    with pytest.raises(Exception):  # what the first, weights-only attempt meets
        torch.load(path, map_location="cpu", weights_only=True)
    loaded = load_checkpoint(path, config=GOLDEN / "transformer.yaml")
    assert_same_weights(loaded.model, state)
    assert "pytorch_lightning" not in sys.modules


def record_execution(marker):
    Path(marker).write_text("executed")


class Payload:
    """Unpickling this would call record_execution: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return record_execution, (self.marker,)


@needs_golden
def test_disallowed_global_is_refused_not_run(tmp_path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": golden_state_dict(), "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=rf"refused to unpickle {__name__}\.record_execution"):
        load_checkpoint(path, config=GOLDEN / "transformer.yaml")
    assert not marker.exists()


@needs_golden
def test_round_trip_vqrt_format(tmp_path):
    original = load_checkpoint(GOLDEN / "model.ckpt", config=GOLDEN / "transformer.yaml")
    directory = save_checkpoint(tmp_path / "exported", original.model,
                                read_config(GOLDEN / "transformer.yaml"))
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    assert read_config(directory / "config.json") == read_config(GOLDEN / "transformer.yaml")
    for path in (directory, directory / "model.safetensors"):
        again = load_checkpoint(path)
        assert again.weights_format == "vqrt"
        assert again.config_source == "bundled"
        assert_same_weights(again.model, original.model.state_dict())
        card, expected = model_card(again).to_dict(), model_card(original).to_dict()
        for field in ("weights", "weights_format", "config", "config_source"):
            del card[field], expected[field]
        assert card == expected


@needs_golden
def test_save_refuses_a_config_that_does_not_match(tmp_path):
    vqgan = load_checkpoint(GOLDEN / "vqgan.ckpt", config=GOLDEN / "vqgan.yaml")
    with pytest.raises(CheckpointError, match="holds no first_stage_model"):
        save_checkpoint(tmp_path / "out", vqgan.model, read_config(GOLDEN / "transformer.yaml"))
    assert not (tmp_path / "out").exists()


@needs_golden
def test_first_stage_as_cond_stage_shares_weights(tmp_path):
    # "__is_first_stage__": upstream saves the first stage under both prefixes; vqrt once.
    document = transformer_config()
    document["model"]["params"]["cond_stage_config"] = "__is_first_stage__"
    config = write_yaml(tmp_path / "self_cond.yaml", document)
    state = golden_state_dict()
    upstream_style = dict(state)
    upstream_style.update({"cond_stage_model." + k[len("first_stage_model."):]: v
                           for k, v in state.items() if k.startswith("first_stage_model.")})
    torch.save({"state_dict": upstream_style}, tmp_path / "self_cond.ckpt")
    loaded = load_checkpoint(tmp_path / "self_cond.ckpt", config=config)
    assert loaded.cond_stage is loaded.first_stage
    assert loaded.conditioning == "first_stage"
    directory = save_checkpoint(tmp_path / "exported", loaded.model, document["model"])
    again = load_checkpoint(directory)
    assert again.cond_stage is again.first_stage
    assert_same_weights(again.model, upstream_style)
    assert model_card(again).stages[1].parameters == 0  # counted under first_stage


# --- config parsing --------------------------------------------------------------------------

@needs_golden
@pytest.mark.parametrize("cond, kind, tokens", [
    ({"target": "taming.modules.util.SOSProvider", "params": {"sos_token": 5}},
     "unconditional", 1),
    ("__is_unconditional__", "unconditional", 1),
    ({"target": "taming.modules.misc.coord.CoordStage",
      "params": {"n_embed": 255, "down_factor": 16}}, "coord", 16),
])
def test_conditioning_kinds(tmp_path, cond, kind, tokens):
    document = transformer_config()
    document["model"]["params"]["cond_stage_config"] = cond
    loaded = load_checkpoint(GOLDEN / "model.ckpt",
                             config=write_yaml(tmp_path / "cond.yaml", document))
    card = model_card(loaded)
    assert card.conditioning.kind == kind
    assert card.conditioning.prefix_tokens == tokens


def tiny_ddconfig(**changes):
    ddconfig = {"double_z": False, "z_channels": 8, "resolution": 16, "in_channels": 3,
                "out_ch": 3, "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
                "attn_resolutions": [8], "dropout": 0.0}
    return dict(ddconfig, **changes)


def save_upstream_style(path, model_config, state=None):
    """An upstream-like checkpoint of a freshly initialised model built from model_config."""
    model = load_model_from_config(model_config)
    torch.save({"state_dict": model.state_dict() if state is None else state}, path)
    return model


def load_model_from_config(model_config):
    from vqrt.trainer.models.net2net import Net2NetTransformer
    from vqrt.trainer.models.vqgan import VQModel
    spec = parse_model_config(model_config)
    torch.manual_seed(0)
    return VQModel(spec.config) if spec.kind == "vqgan" else Net2NetTransformer(spec.config)


def test_segmentation_cond_stage(tmp_path):
    first = {"target": "taming.models.vqgan.VQModel",
             "params": {"embed_dim": 4, "n_embed": 16, "ckpt_path": "elsewhere.ckpt",
                        "lossconfig": {"target": "taming.modules.losses.DummyLoss"},
                        "ddconfig": tiny_ddconfig()}}
    cond = {"target": "taming.models.vqgan.VQSegmentationModel",
            "params": {"n_labels": 5, "embed_dim": 4, "n_embed": 16, "image_key":
                       "segmentation", "ddconfig": tiny_ddconfig(in_channels=5, out_ch=5)}}
    gpt = {"target": "taming.modules.transformer.mingpt.GPT",
           "params": {"vocab_size": 16, "block_size": 128, "n_layer": 1, "n_head": 1,
                      "n_embd": 8}}
    model_config = {"target": "taming.models.cond_transformer.Net2NetTransformer",
                    "params": {"first_stage_config": first, "cond_stage_config": cond,
                               "transformer_config": gpt, "cond_stage_key": "segmentation"}}
    config = write_yaml(tmp_path / "seg.yaml", {"model": model_config})
    original = save_upstream_style(tmp_path / "seg.ckpt", model_config)
    assert original.state_dict()["cond_stage_model.colorize"].shape == (3, 5, 1, 1)
    loaded = load_checkpoint(tmp_path / "seg.ckpt", config=config)
    assert_same_weights(loaded.model, original.state_dict())
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 16, 16)), 5)
    tokens = loaded.model.encode_to_c(one_hot.permute(0, 3, 1, 2).float())
    assert tokens.shape == (2, 64) and tokens.dtype == torch.int64
    card = model_card(loaded).conditioning
    assert (card.kind, card.prefix_tokens, card.cond_channels) == ("vq", 64, 5)

    without_cond = {k: v for k, v in original.state_dict().items()
                    if not k.startswith("cond_stage_model.")}
    torch.save({"state_dict": without_cond}, tmp_path / "no_cond.ckpt")
    with pytest.raises(CheckpointError, match="lacks cond_stage_model"):
        load_checkpoint(tmp_path / "no_cond.ckpt", config=config)


def test_gumbel_first_stage_decodes_indices(tmp_path):
    model_config = {"target": "taming.models.vqgan.GumbelVQ",
                    "params": {"embed_dim": 8, "n_embed": 32, "kl_weight": 1e-8,
                               "temperature_scheduler_config": {
                                   "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler"},
                               "lossconfig": {"target": "taming.modules.losses.DummyLoss"},
                               "ddconfig": tiny_ddconfig()}}
    config = write_yaml(tmp_path / "gumbel.yaml", {"model": model_config})
    original = save_upstream_style(tmp_path / "gumbel.ckpt", model_config)
    assert {"quantize.embed.weight", "quantize.proj.weight"} <= set(original.state_dict())
    loaded = load_checkpoint(tmp_path / "gumbel.ckpt", config=config)
    indices = torch.randint(0, 32, (1, 3, 5))
    with torch.no_grad():
        image = loaded.first_stage.decode_indices(indices)
        codes = original.quantize.embed.weight[indices].permute(0, 3, 1, 2)
        expected = original.decoder(original.post_quant_conv(codes))
    assert image.shape == (1, 3, 6, 10)  # f = 2
    assert torch.allclose(image, expected, atol=1e-6)
    assert loaded.first_stage.encode_to_indices(torch.zeros(1, 3, 16, 16)).shape == (1, 8, 8)

    vq_config = dict(model_config, target="taming.models.vqgan.VQModel")
    for field in ("kl_weight", "temperature_scheduler_config"):
        del vq_config["params"][field]
    with pytest.raises(CheckpointError, match="has a Gumbel quantizer but the config says "
                                              "VQModel"):
        load_checkpoint(tmp_path / "gumbel.ckpt",
                        config=write_yaml(tmp_path / "vq.yaml", {"model": vq_config}))


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(remap="used.npy"), r"model\.params\.remap: codebook remapping"),
    (lambda p: p["ddconfig"].update(ch_mult="abc"), r"ch_mult must be list or tuple"),
    (lambda p: p["ddconfig"].update(ch=48), r"channel width 48 .* multiple of 32"),
    (lambda p: p.pop("n_embed"), r"model\.params\.n_embed is missing"),
    (lambda p: p["ddconfig"].update(double_z=True), r"double_z must be false"),
])
def test_config_errors_name_the_field(edit, message):
    params = {"embed_dim": 4, "n_embed": 8, "ddconfig": {
        "double_z": False, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3,
        "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [16],
        "dropout": 0.0}}
    edit(params)
    with pytest.raises(ConfigError, match=message):
        parse_model_config({"target": "taming.models.vqgan.VQModel", "params": params})

"""Data-parallel training: two CPU processes under torchrun (gloo) end with identical
replicas, for both stages."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from train_helpers import (
    assert_same_tensors, image_subset, needs_data, tiny_vqgan_config, weights)
from vqrt.trainer.checkpoints import load_checkpoint

HERE = Path(__file__).resolve().parent


@needs_data
def test_two_processes_hold_identical_replicas(tmp_path):
    data = image_subset(tmp_path / "photos", 10)
    config = tiny_vqgan_config(tmp_path / "tiny.yaml", disc_start=0)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(HERE / "ddp_replicas.py"), str(out), str(data),
               str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("vqgan", "gpt"):
        rank0 = weights(out / f"{stage}_rank0.safetensors")
        assert_same_tensors(rank0, weights(out / f"{stage}_rank1.safetensors"))
    # The replicas trained (they moved away from the seed's initial weights) and rank 0's
    # checkpoint holds them.
    saved = load_checkpoint(out / "vqgan").model.state_dict()
    rank0 = weights(out / "vqgan_rank0.safetensors")
    assert torch.equal(saved["decoder.conv_out.weight"], rank0["decoder.conv_out.weight"])
    torch.manual_seed(0)
    from vqrt.trainer.models.vqgan import VQModel
    initial = VQModel(load_checkpoint(out / "vqgan").config).state_dict()
    assert not torch.equal(initial["decoder.conv_out.weight"], rank0["decoder.conv_out.weight"])

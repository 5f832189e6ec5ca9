"""Run under torchrun by test_train_ddp.py: trains a tiny VQGAN (discriminator on from step 0,
dead codes restarted every 2 steps) and a tiny transformer data-parallel, then every process
saves its own replica's weights as OUT/<stage>_rank<r>.safetensors for the test to compare.

usage: torchrun --nproc_per_node=2 tests/ddp_replicas.py OUT DATA CONFIG
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vqrt.trainer.train_transformer import TransformerSettings, TransformerTrainer
from vqrt.trainer.train_vqgan import VQGANSettings, VQGANTrainer, read_model_section
from vqrt.trainer.training import start_processes, stop_processes


def tensors(named):
    return {k: v.detach().clone().contiguous() for k, v in named}


def main(out: Path, data: Path, config: Path) -> None:
    torch.set_num_threads(1)
    processes = start_processes("cpu")
    vqgan = VQGANTrainer(VQGANSettings(
        data=str(data), config=str(config), out=str(out / "vqgan"), steps=4, size=32,
        batch_size=2, lr=1e-3, restart_dead_codes=2, world_size=processes.world_size),
        read_model_section(config), processes)
    vqgan.run(resume=False)
    save_file({**tensors(vqgan.model.state_dict().items()),
               **tensors(("discriminator." + k, v)
                         for k, v in vqgan.discriminator.named_parameters())},
              str(out / f"vqgan_rank{processes.rank}.safetensors"))
    gpt = TransformerTrainer(TransformerSettings(
        first_stage=str(out / "vqgan"), data=str(data), out=str(out / "gpt"), steps=4, size=32,
        n_layer=1, n_head=2, n_embd=32, batch_size=4, views=1, pkeep=0.9, dropout=0.1,
        world_size=processes.world_size), processes)
    gpt.run(resume=False)
    save_file(tensors(gpt.model.transformer.state_dict().items()),
              str(out / f"gpt_rank{processes.rank}.safetensors"))
    stop_processes()


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))

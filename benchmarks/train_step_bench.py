"""Training throughput of `vqrt train --precision fp32` against `--precision bf16`.

Times the trainers' own train_step (the code `vqrt train` runs) for the demo model's two stages
(models/demo): the VQGAN on batches of 8 crops of 64 x 64, without the GAN term (its
disc_start lies past the run), and the 4-layer GPT (192 wide) on batches of 8 sequences of
the codes of 128 x 128 images. fp32 and bf16 steps alternate in rounds, so both see the same
load on a shared machine; the median step time of each is reported. Inputs are random: a step's
cost does not depend on the pixels or codes. On a CPU without native bf16 (`vqrt train` refuses
bf16 there) the bf16 steps are emulated and slow: pass fewer rounds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_step_bench.py [--rounds 15] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vqrt.bench.suite import machine_info
from vqrt.trainer.train_transformer import TokenSet, TransformerSettings, TransformerTrainer
from vqrt.trainer.train_vqgan import VQGANSettings, VQGANTrainer, read_model_section
from vqrt.trainer.training import Processes, cpu_has_bf16

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
PRECISIONS = ("fp32", "bf16")
BATCH = 8


def vqgan_steps(precision: str, processes: Processes):
    settings = VQGANSettings(data="", out="", steps=1, size=64, batch_size=BATCH, lr=4e-4,
                             precision=precision)
    trainer = VQGANTrainer(settings, read_model_section(DEMO / "vqgan.yaml"), processes)
    x = torch.rand(BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return lambda step: trainer.train_step(x, step)


def gpt_steps(precision: str, processes: Processes):
    settings = TransformerSettings(first_stage=str(DEMO / "vqgan"), data="", out="", steps=10 ** 6,
                                   size=128, batch_size=BATCH, n_layer=4, n_head=4, n_embd=192,
                                   dropout=0.1, precision=precision)
    trainer = TransformerTrainer(settings, processes)
    trainer.build(trainer.model_section((), 1))
    trainer.set_mode(True)
    vocab = trainer.first.config.n_embed
    latent = (settings.size // trainer.first.config.ddconfig.downsampling_factor) ** 2
    codes = torch.randint(vocab, (64, latent), generator=torch.Generator().manual_seed(0))
    tokens = TokenSet(codes, torch.zeros(64, 1, dtype=torch.long))
    return lambda step: trainer.train_step(tokens, step)


def median_step_ms(stages, rounds: int, steps_per_round: int):
    """stages: {precision: step function}. -> {precision: median ms per step}."""
    times = {name: [] for name in stages}
    for name, step in stages.items():  # warm-up: oneDNN picks its kernels on first use
        for i in range(3):
            step(i)
    for _ in range(rounds):
        for name, step in stages.items():
            for i in range(steps_per_round):
                start = time.perf_counter()
                step(100 + i)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    processes = Processes(rank=0, world_size=1, device=torch.device("cpu"))
    results = {**machine_info(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "native_bf16": cpu_has_bf16()}
    for stage, build in (("vqgan", vqgan_steps), ("gpt", gpt_steps)):
        ms = median_step_ms({p: build(p, processes) for p in PRECISIONS}, args.rounds,
                            args.steps_per_round)
        results[stage] = {f"{p}_ms_per_step": round(ms[p], 2) for p in PRECISIONS}
        results[stage]["bf16_speedup"] = round(ms["fp32"] / ms["bf16"], 2)
        print(f"{stage:6s} fp32 {ms['fp32']:7.1f} ms/step  bf16 {ms['bf16']:7.1f} ms/step  "
              f"bf16 speed-up {ms['fp32'] / ms['bf16']:.2f}x ({torch.get_num_threads()} threads)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

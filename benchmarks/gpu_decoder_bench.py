"""Issue 7's GPU comparison in one run (not a test): model M (24 layers, 16 heads, 1024 wide,
vocabulary 1024, block 257, random weights) on one GPU, 256 tokens per row after one class token,
top-k 100, for each batch:

  torch upstream fp32     taming's sample_with_past style: fp32, the KV cache grown with
                          torch.cat each step, torch.topk then torch.multinomial (target: vqrt
                          at least 10x this)
  torch static fp16       a preallocated fp16 cache, fused qkv, scaled_dot_product_attention
                          (target: vqrt at least 1.5x this)
  vqrt cuda               CudaDecoder.generate: csrc/gpu_transformer.h, CUDA graphs, the device
                          sampler, tokens copied back once

Reported: tokens/s (B x 256 over the whole generation, prefill included, after a warm-up run;
median of --repeat), and vqrt's multiple of each torch contender. JSON with --json.

    python benchmarks/gpu_decoder_bench.py [--batches 1 8 64] [--repeat 3] [--json OUT]
    python benchmarks/gpu_decoder_bench.py --device cpu --model tiny   # a smoke run without a GPU

Where the GPU decoder cannot run (no device, a build without CUDA, no libcublas) its row says
why and the torch rows still run. scripts/gpu_check.sh runs this.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from vqrt.bench.baselines import StaticCacheSampler, UpstreamSampler
from vqrt.export.native_weights import native_tensors
from vqrt.runtime.cuda_decoder import CudaDecoder, CudaWeights, cuda_unavailable_reason
from vqrt.runtime.native_decoder import GPTShape
from vqrt.trainer.models.mingpt import GPT, GPTConfig

MODELS = {"M": GPTShape(n_layer=24, n_head=16, n_embd=1024, vocab_size=1024, block_size=257),
          "tiny": GPTShape(n_layer=2, n_head=2, n_embd=64, vocab_size=1024, block_size=257)}
TOKENS = 256
TOP_K = 100


def timed(run, device: str, repeat: int) -> float:
    """Median seconds of run() over repeat calls after one warm-up, synchronised."""
    seconds = []
    for i in range(repeat + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def torch_run(contender, batch: int):
    def run():
        contender.start(batch)
        for k in range(TOKENS):
            contender.draw(k, last=k == TOKENS - 1)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="M")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="where the torch contenders run (cpu: a smoke run)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_decoder_bench: torch {torch.__version__} sees no CUDA device, so the "
                 f"torch baselines cannot run on one; use --device cpu for a smoke run")

    shape = MODELS[args.model]
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=shape.vocab_size, block_size=shape.block_size,
                        n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd)).eval()
    tensors, _ = native_tensors(gpt, np.zeros((shape.vocab_size, 1), np.float32), "fp16")
    tensors.pop("codebook")
    gpt = gpt.to(args.device)

    def prefix(batch: int) -> np.ndarray:
        return (np.arange(batch, dtype=np.int64) % shape.vocab_size)[:, None]

    contenders = {
        "torch upstream fp32": lambda: UpstreamSampler(gpt, prefix, TOP_K, shape.vocab_size,
                                                       device=args.device),
        "torch static fp16": lambda: StaticCacheSampler(gpt, prefix, TOP_K, shape.vocab_size,
                                                        dtype=torch.float16, device=args.device),
    }
    reason = cuda_unavailable_reason()
    weights = CudaWeights(shape, tensors) if not reason else None
    report = {"model": args.model, "shape": shape.__dict__, "tokens_per_row": TOKENS,
              "top_k": TOP_K, "torch": torch.__version__, "torch_device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "vqrt_cuda": reason or "runs", "batches": []}
    for batch in args.batches:
        row = {"batch": batch}
        for name, make in contenders.items():
            seconds = timed(torch_run(make(), batch), args.device, args.repeat)
            row[name] = round(batch * TOKENS / seconds, 1)
        if weights is not None:
            decoder = CudaDecoder(weights, max_batch=batch)
            seeds = np.arange(batch, dtype=np.uint64)
            seconds = timed(lambda: decoder.generate(prefix(batch), seeds, TOKENS, top_k=TOP_K),
                            "cpu", args.repeat)  # generate() returns after its own sync
            row["vqrt cuda"] = round(batch * TOKENS / seconds, 1)
            for name in contenders:
                row[f"x {name}"] = round(row["vqrt cuda"] / row[name], 2)
        report["batches"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if reason:
        print(f"vqrt cuda: not run ({reason})")


if __name__ == "__main__":
    main()

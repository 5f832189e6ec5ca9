"""Micro-benchmark of the native CPU decoder (vqrt.runtime.native_decoder) against the
upstream-style torch sampler, in one run (not a test; numbers go to BENCHMARKS.md by hand).

Model S: 12 layers, 12 heads, 768 wide, vocabulary 1024, block 257, random weights. Each
measurement generates 256 tokens after one class token (a 1-token prefill, then 255 cached
steps; the last token is never fed back) with top-k 100 sampling, for batch 1 and 8. Reported:
tokens/s (median of --repeats runs, the configurations interleaved so machine noise hits them
alike), the ratio to the baseline measured in the same run, and the fraction of the
memory-bandwidth bound (weight bytes per step over the read bandwidth measured in this run).

Baseline (a): taming's sample_with_past style: fp32 torch, the keys and values of every layer
grown with torch.cat each step, torch.topk then torch.multinomial.

    .venv/bin/python benchmarks/native_decoder_bench.py [--repeats 3] [--threads 0]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from vqrt.bench.baselines import UpstreamSampler
from vqrt.bench.measure import read_bandwidth
from vqrt.bench.suite import matrix_bytes
from vqrt.runtime.native_decoder import GPTShape, NativeDecoder
from vqrt.runtime.sampling import sample_logits
from vqrt.trainer.models.mingpt import GPT, GPTConfig

SHAPE = GPTShape(n_layer=12, n_head=12, n_embd=768, vocab_size=1024, block_size=257)
TOKENS = 256
TOP_K = 100


# ---------------------------------------------------------------------------------------------
# Baseline (a): upstream-style sampling with a KV cache rebuilt by torch.cat (shared with
# `vqrt bench --baselines`).

def run_baseline(gpt: GPT, cond: np.ndarray) -> None:
    sampler = UpstreamSampler(gpt, prefix=lambda batch: cond, top_k=TOP_K,
                              codebook_size=SHAPE.vocab_size)
    sampler.start(cond.shape[0])
    for k in range(TOKENS):
        sampler.draw(k, last=k == TOKENS - 1)


# ---------------------------------------------------------------------------------------------
# Native decoder

def native_weights(rng: np.random.Generator, precision: str):
    """Random S-model weights in the "vqrt-native-1" layout -> (tensors, dtypes)."""
    C, V, M = SHAPE.n_embd, SHAPE.vocab_size, SHAPE.block_size
    tensors, dtypes = {}, {}

    def f32(name, shape, std=0.02, mean=0.0):
        tensors[name] = (mean + std * rng.standard_normal(shape)).astype(np.float32)

    def linear(name, n, k, bias=True):
        weight = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
        if precision == "bf16":
            bits = weight.view(np.uint32)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # to nearest even
            tensors[name + ".weight"] = rounded.astype(np.uint16)
            dtypes[name + ".weight"] = "BF16"
        elif precision == "int8":
            scale = (np.abs(weight).max(axis=1) / 127).astype(np.float32)
            tensors[name + ".weight"] = np.rint(weight / scale[:, None]).astype(np.int8)
            tensors[name + ".weight_scale"] = scale
        else:
            tensors[name + ".weight"] = weight
        if bias:
            f32(name + ".bias", (n,))

    f32("tok_emb", (V, C), 1.0)
    f32("pos_emb", (M, C), 0.5)
    for i in range(SHAPE.n_layer):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            f32(p + ln + ".weight", (C,), 0.1, 1.0)
            f32(p + ln + ".bias", (C,), 0.1)
        linear(p + "attn.qkv", 3 * C, C)
        linear(p + "attn.proj", C, C)
        linear(p + "mlp.fc", 4 * C, C)
        linear(p + "mlp.proj", C, 4 * C)
    f32("ln_f.weight", (C,), 0.1, 1.0)
    f32("ln_f.bias", (C,), 0.1)
    linear("head", V, C, bias=False)
    return tensors, dtypes


def run_native(decoder: NativeDecoder, cond: np.ndarray) -> None:
    seeds = np.arange(cond.shape[0], dtype=np.uint64)
    logits = decoder.prefill(cond)
    for pos in range(cond.shape[1], cond.shape[1] + TOKENS):
        token = sample_logits(logits, top_k=TOP_K, seeds=seeds, step=pos)
        if pos == cond.shape[1] + TOKENS - 1:
            break  # the last token is never fed back
        logits = decoder.step(token, pos)


# ---------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="native threads, 0 = all cores")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--bf16-activations", action="store_true",
                        help="also run bf16 weights with bf16 activations (vdpbf16ps)")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch_threads = torch.get_num_threads()
    gpt = GPT(GPTConfig(vocab_size=SHAPE.vocab_size, block_size=SHAPE.block_size,
                        n_layer=SHAPE.n_layer, n_head=SHAPE.n_head, n_embd=SHAPE.n_embd)).eval()
    rng = np.random.default_rng(0)
    variants = [(p, False) for p in args.precisions]
    if args.bf16_activations:
        variants.append(("bf16", True))
    weights = {p: native_weights(rng, p) for p in {v[0] for v in variants}}
    decoders = {}
    for b in args.batches:
        for precision, bf16_x in variants:
            tensors, dtypes = weights[precision]
            decoders[b, precision, bf16_x] = NativeDecoder(
                SHAPE, tensors, dtypes, max_batch=b, num_threads=args.threads,
                bf16_activations=bf16_x)
    some = next(iter(decoders.values()))
    bandwidth = read_bandwidth(some.num_threads)["bytes_per_s"]["median"]
    print(f"native: isa {some.isa}, {some.num_threads} threads; torch {torch.__version__}, "
          f"{torch_threads} threads; read bandwidth {bandwidth / 1e9:.1f} GB/s")

    times = {key: [] for key in [("baseline", b) for b in args.batches] + list(decoders)}
    for repeat in range(args.repeats):
        for b in args.batches:
            cond = np.arange(b, dtype=np.int64)[:, None] % SHAPE.vocab_size
            start = time.perf_counter()
            run_baseline(gpt, cond)
            times["baseline", b].append(time.perf_counter() - start)
            for key, decoder in decoders.items():
                if key[0] != b:
                    continue
                start = time.perf_counter()
                run_native(decoder, cond)
                times[key].append(time.perf_counter() - start)
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    print(f"\n{'configuration':34s} {'tok/s':>8s} {'x baseline':>10s} {'of bound':>9s}")
    for b in args.batches:
        base = b * TOKENS / statistics.median(times["baseline", b])
        print(f"{'torch upstream-style fp32, batch ' + str(b):34s} {base:8.1f} {1.0:10.2f}")
        for key in decoders:
            if key[0] != b:
                continue
            _, precision, bf16_x = key
            rate = b * TOKENS / statistics.median(times[key])
            steps_bound = bandwidth / matrix_bytes(SHAPE.n_layer, SHAPE.n_embd, SHAPE.vocab_size,
                                                   precision, row_scales=precision == "int8")
            name = f"native {precision}{' (bf16 x)' if bf16_x else ''}, batch {b}"
            print(f"{name:34s} {rate:8.1f} {rate / base:10.2f} {rate / b / steps_bound:9.2f}")


if __name__ == "__main__":
    main()

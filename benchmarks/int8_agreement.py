"""Issue 5's int8 quality point (not a test): on the demo model, teacher-forced next-token agreement
with fp32 of the native int8 decoder (int8 weights per row, inputs rounded to int16: csrc/linear.h)
and of ONNX Runtime's dynamic int8 (quantize_dynamic of the bundle's prefill graph: int8 weights
per tensor, uint8 activations per call), plus the NLL of each.

Sequences: the codes of the held-out photos of ../shared/data/images (the trainer's split by
file-name hash, center 128 x 128 crops, encoded by the bundle's encoder), after the start token.
Every position is scored with the true tokens before it; agreement = how often a decoder's argmax
equals fp32's. The native sides run on vqrt._native with the same fp32 weights quantized by the
build's rule (export/native_weights.quantize_int8).

    python benchmarks/int8_agreement.py [--json benchmarks/results/int8_agreement.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from vqrt.bench.baselines import quantize_transformer_graphs
from vqrt.calibration.quality import nll, teacher_forced_logits
from vqrt.export.build import BuildOptions, build_bundle
from vqrt.export.native_weights import quantize_int8
from vqrt.runtime import Generator
from vqrt.runtime.native_decoder import GPTShape, NativeDecoder
from vqrt.runtime.ort_transformer import OrtTransformer, OrtTransformerGraphs
from vqrt.runtime.safetensors_io import read_safetensors
from vqrt.trainer.data import apply_crop, center_crop, load_images

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo" / "transformer"
DATA = ROOT.parent / "shared" / "data" / "images"
SIZE = 128
BATCH = 8


def held_out_sequences(generator: Generator, sos: int) -> np.ndarray:
    """int64 [N, 1 + h*w]: the start token, then the codes of each held-out photo."""
    dataset = load_images(DATA, SIZE, 0.1, with_labels=False)
    crops = np.stack([apply_crop(e.image, center_crop(e, SIZE), SIZE).numpy()
                      for e in dataset.held_out])
    images = crops.astype(np.float32) / 127.5 - 1.0  # [N, 3, S, S] in [-1, 1]
    codes = np.concatenate([generator.encode(images[i:i + BATCH]).reshape(
        len(images[i:i + BATCH]), -1) for i in range(0, len(images), BATCH)])
    return np.concatenate([np.full((len(codes), 1), sos, np.int64), codes], axis=1)


def native_logits(shape: GPTShape, tensors, dtypes, sequences: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(sequences), BATCH):
        batch = sequences[i:i + BATCH]
        decoder = NativeDecoder(shape, tensors, dtypes, max_batch=len(batch))
        out.append(teacher_forced_logits(decoder, batch, 1))
    return np.concatenate(out)


def ort_logits(graphs: OrtTransformerGraphs, sequences: np.ndarray) -> np.ndarray:
    """One prefill of every position but the last: logits [N, T - 1, V]."""
    out = []
    for i in range(0, len(sequences), BATCH):
        batch = sequences[i:i + BATCH]
        out.append(OrtTransformer(graphs, len(batch)).prefill(batch[:, :-1]))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bundle_dir = Path(scratch) / "bundle"
        build_bundle(DEMO, bundle_dir, BuildOptions(max_batch=BATCH), log=lambda line: None)
        generator = Generator(bundle_dir, backend="native")
        m = generator.bundle.manifest
        t = m.transformer
        shape = GPTShape(t.n_layer, t.n_head, t.n_embd, t.vocab_size, t.block_size)
        sequences = held_out_sequences(generator, m.conditioning.sos_token)
        targets = sequences[:, 1:]

        arrays, infos, _ = read_safetensors(generator.bundle.file(m.native.file))
        fp32 = {name: array for name, array in arrays.items() if name != "codebook"}
        int8, int8_dtypes = {}, {}
        for name, array in fp32.items():
            if name.endswith(".weight") and array.ndim == 2:  # every Linear, the head too
                q, scale = quantize_int8(array)
                int8[name], int8[f"{name}_scale"] = q, scale
            else:
                int8[name] = array
        results = {"fp32": native_logits(shape, fp32, None, sequences),
                   "vqrt native int8": native_logits(shape, int8, None, sequences)}
        prefill, step = quantize_transformer_graphs(generator.bundle, Path(scratch))
        graphs = OrtTransformerGraphs(prefill, step, m.kv_cache)
        results["onnxruntime int8 (dynamic)"] = ort_logits(graphs, sequences)

    reference = results["fp32"].argmax(-1)
    report = {"model": "models/demo/transformer", "sequences": len(sequences),
              "tokens_per_sequence": int(targets.shape[1]), "rows": {}}
    for name, logits in results.items():
        row = {"nll_nats_per_token": round(nll(logits, targets), 4),
               "agreement_with_fp32": round(float(np.mean(logits.argmax(-1) == reference)), 4)}
        report["rows"][name] = row
        print(f"{name:28s} NLL {row['nll_nats_per_token']:.4f}  "
              f"agreement with fp32 {row['agreement_with_fp32']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

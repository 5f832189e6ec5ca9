"""Held-out NLL of a segmentation-conditioned transformer run, beside the baselines it must beat.

  python scripts/seg_heldout_nll.py RUN [--unconditional RUN2]

RUN is a `vqrt train transformer --cond segmentation` run (its train.json gives the data, crop
size, views, seed and held-out split). On the held-out photos' centre crops (the codes and maps
the trainer scores) it prints, in nats per image token:
  with its own map      the trainer's held-out NLL
  with another map      each photo scored under the next held-out photo's map (rotated), so a
                        model that reads the map gets worse here
  training crops        the same two on the training crops (how well it fits, and whether it
                        learned to read the maps there at all)
  training histogram    cross-entropy of the held-out codes under the training codes' histogram
                        (add-one smoothed): a model that ignores context and condition
  entropy               the training histogram's own entropy (what the trainer logs)
  unconditional RUN2    an unconditional transformer over the same first stage (start token 0)
Torch (the train extra); CPU.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vqrt.trainer.checkpoints import load_checkpoint
from vqrt.trainer.data import (
    apply_crop, center_crop, load_segmentations, one_hot, random_crop, to_model_range)


def nll(gpt, codes: torch.Tensor, cond: torch.Tensor, chunk: int = 16) -> float:
    """Mean cross-entropy in nats per image token; codes (N, h*w), cond (N, L)."""
    total = 0.0
    for start in range(0, len(codes), chunk):
        z, c = codes[start:start + chunk], cond[start:start + chunk]
        sequence = torch.cat([c, z], dim=1)
        logits = gpt(sequence[:, :-1])[:, c.shape[1] - 1:]  # (n, h*w, vocab)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), z.reshape(-1),
                                       reduction="sum"))
    return total / codes.numel()


def encode(model, examples, size: int, n_labels: int, views: int, seed: int):
    """-> (codes (N, h*w), cond (N, L)) of the crops the trainer caches: per example the centre
    crop, then views - 1 random crops seeded as in TransformerTrainer._views."""
    crops = []
    for index, example in enumerate(examples):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        crops += [(example, center_crop(example, size))] + [
            (example, random_crop(example, size, generator)) for _ in range(views - 1)]
    images = torch.stack([apply_crop(e.image, c, size) for e, c in crops])
    maps = torch.stack([apply_crop(e.segmentation, c, size) for e, c in crops])
    return (model.encode_to_z(to_model_range(images)),
            model.encode_to_c(one_hot(maps, n_labels)))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--unconditional", type=Path, metavar="RUN2")
    args = parser.parse_args()
    s = json.loads((args.run / "train.json").read_text())
    if s["cond"] != "segmentation":
        raise SystemExit(f"{args.run}: a --cond segmentation run is needed, not {s['cond']}")
    loaded = load_checkpoint(args.run)
    model = loaded.model.eval()
    n_labels = loaded.config.cond.colorize_nlabels
    dataset = load_segmentations(Path(s["data"]), s["size"], n_labels, s["val_fraction"],
                                 with_photos=True)
    train_codes, train_cond = encode(model, dataset.train, s["size"], n_labels, s["views"], s["seed"])
    codes, cond = encode(model, dataset.held_out, s["size"], n_labels, 1, s["seed"])
    counts = torch.bincount(train_codes.flatten(), minlength=loaded.config.first_stage.n_embed)
    counts = counts.double()
    empirical = counts[counts > 0] / counts.sum()
    smoothed = (counts + 1) / (counts.sum() + len(counts))
    rows = {
        "with its own map": nll(model.transformer, codes, cond),
        "with another map": nll(model.transformer, codes, cond.roll(1, dims=0)),
        "training crops, own map (fit)": nll(model.transformer, train_codes, train_cond),
        "training crops, another photo's map": nll(
            model.transformer, train_codes, train_cond.roll(s["views"], dims=0)),
        "training histogram": float(-smoothed[codes.flatten()].log().mean()),
        "entropy": float(-(empirical * empirical.log()).sum()),
    }
    if args.unconditional:
        other = load_checkpoint(args.unconditional).model.eval()
        start = torch.zeros(len(codes), 1, dtype=torch.long)
        rows[f"unconditional {args.unconditional}"] = nll(other.transformer, codes, start)
    print(f"{len(codes)} held-out photos ({', '.join(e.path for e in dataset.held_out)}), "
          f"{codes.shape[1]} tokens each; {len(train_codes)} training sequences")
    for name, value in rows.items():
        print(f"  {name:40s} {value:.3f} nats/token ({value / math.log(2):.3f} bits)")


if __name__ == "__main__":
    main()

"""Dead-code restart: codes that no training batch chose for `every` steps are moved onto
encoder outputs of the current batch.

Not part of upstream taming-transformers; off unless asked for (`--restart-dead-codes N`). Short
runs on small data often end with a handful of live codes (the rest never win an argmin and
never get a gradient); moving them onto encoder outputs brings them back. Only codebook rows
change, so the model's layout and inference are untouched.

Under several processes the usage counts are summed over processes and rank 0's choice of
vectors is broadcast, so every replica's codebook stays identical. The counts since the last
restart are training state: they are saved in checkpoints (module.code_usage.counts).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist

from vqrt.trainer.models.vqgan import VectorQuantizer


class DeadCodeRestart:
    """Watches quantizer.forward through a hook; `after_step` restarts dead codes every
    `every` steps. Has state_dict / load_state_dict like a module, for checkpoints."""

    def __init__(self, quantizer: VectorQuantizer, every: int, world_size: int):
        self.quantizer = quantizer
        self.every = every
        self.world_size = world_size
        self.counts = torch.zeros(quantizer.n_embed, dtype=torch.long,
                                  device=quantizer.embedding.weight.device)
        self.latest = None  # z_e of the last training batch, (B, C, h, w)
        quantizer.register_forward_hook(self._watch)

    def _watch(self, module, inputs, outputs) -> None:
        self.latest = inputs[0].detach()
        self.counts += torch.bincount(outputs[2].flatten(), minlength=len(self.counts))

    @torch.no_grad()
    def after_step(self, steps_done: int, generator: torch.Generator) -> int:
        """-> how many codes were restarted (0 between restarts)."""
        if steps_done % self.every:
            return 0
        counts = self.counts.clone()
        if self.world_size > 1:
            dist.all_reduce(counts)
        dead = (counts == 0).nonzero().flatten()
        if len(dead):
            z = self.latest
            candidates = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, C)
            picks = torch.randint(len(candidates), (len(dead),), generator=generator)
            vectors = candidates[picks.to(candidates.device)].contiguous()  # (n_dead, C)
            if self.world_size > 1:
                dist.broadcast(vectors, src=0)
            self.quantizer.embedding.weight[dead] = vectors
        self.counts.zero_()
        return len(dead)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"counts": self.counts}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.counts.copy_(state["counts"])

"""Stage 2: `vqrt train transformer` trains a GPT on the codes of a frozen first stage.

The first stage (and a segmentation or depth cond stage) encode every training image once,
before the first step: `views` crops per image (view 0 the center crop, the others random crops
and flips drawn from the seed), held in memory as code grids. Training then touches only tokens.

Sequence per image: [condition tokens c (B, L)] + [image tokens z (B, h*w), raster order].
  none          c = the start token 0 (upstream "__is_unconditional__", sos_token 0)
  class         c = the class id (upstream Labelator); classes are the data folder's
                first-level sub-folders, sorted by name
  segmentation  c = the cond stage's codes of the one-hot label map (L = its h_c * w_c)
  depth         c = the cond stage's codes of the depth map (a VQModel with in_channels 1)
The GPT reads cz[:, :-1] and is scored by cross-entropy on the image tokens only (upstream
Net2NetTransformer). With pkeep < 1 each input image token is replaced, with probability
1 - pkeep, by a uniform random token (targets stay clean). AdamW (betas 0.9, 0.95; weight
decay 0.01 on Linear weights only, as upstream) with linear warm-up and cosine decay.

Held-out numbers: NLL of the center-crop codes in nats per token and bits per dimension
(nats * h*w / (3 * H * W) / ln 2), next to the entropy of the training codes' histogram (the
NLL of a model that ignores context).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqrt.trainer.checkpoints import LoadedModel, load_checkpoint
from vqrt.trainer.data import (
    SEGMENTATION, DEPTH, Dataset, Example, StageInput, apply_crop, batch_indices, center_crop,
    load_images, random_crop, to_model_range)
from vqrt.trainer.evaluate import codebook_usage
from vqrt.trainer.model_config import (
    GPT_TARGET, LABELATOR, NET2NET, UNCONDITIONAL_COND, VQMODEL, VQSEGMENTATION,
    parse_model_config)
from vqrt.trainer.models.mingpt import top_k_filter
from vqrt.trainer.models.net2net import Net2NetTransformer
from vqrt.trainer.training import (
    MetricsLog, Processes, RunningMeans, StepTimer, TrainingError, TrainingState, SETTINGS_FILE,
    data_parallel, latest_checkpoint, load_training_checkpoint, mixed_precision, open_run,
    progress_bar, read_settings, samples_path, save_grid, save_training_checkpoint, seed_step,
    set_learning_rate, settings_to_json, warmup_cosine, write_json)

SAMPLES = 8
SAMPLE_TOP_K = 100
ENCODE_BATCH = 16
# --cond values whose condition is a map encoded by a VQ cond stage -> its model targets.
SPATIAL_CONDS = {SEGMENTATION: (VQSEGMENTATION,), DEPTH: (VQMODEL,)}


@dataclass
class TransformerSettings:
    """`vqrt train transformer` options, as stored in RUN/train.json."""
    first_stage: str
    data: str
    out: str
    steps: int
    cond: str = "none"
    cond_stage: Optional[str] = None
    stage: str = "transformer"
    size: Optional[int] = None  # default: the first stage run's image size
    batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 100
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    pkeep: float = 1.0
    views: int = 4
    seed: int = 0
    val_fraction: float = 0.1
    checkpoint_every: int = 1000
    sample_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 2
    device: str = "auto"
    precision: str = "fp32"  # or bf16: the step's forward pass under bfloat16 autocast
    world_size: int = 1




@dataclass
class TokenSet:
    """codes (N, h*w) int64 image tokens; cond (N, L) int64 condition tokens."""
    codes: torch.Tensor
    cond: torch.Tensor


def _load_stage(path: Path, targets: Tuple[str, ...], what: str) -> LoadedModel:
    loaded = load_checkpoint(path)
    if loaded.kind != "vqgan" or loaded.spec.target not in targets:
        raise TrainingError(f"{path}: holds a {loaded.spec.target}, not a {what} "
                            f"({' or '.join(targets)})")
    return loaded


def _stage_section(loaded: LoadedModel) -> Dict[str, Any]:
    raw = loaded.spec.raw
    return {"target": raw["target"], "params": raw["params"]}


class TransformerTrainer:
    def __init__(self, settings: TransformerSettings, processes: Processes):
        self.settings = s = settings
        self.processes = processes
        spatial = s.cond in SPATIAL_CONDS
        if spatial and not s.cond_stage:
            raise TrainingError(f"--cond {s.cond} needs --cond-stage RUN (a {s.cond} vqgan run)")
        if not spatial and s.cond_stage:
            raise TrainingError("--cond-stage is only used with --cond segmentation or depth")
        if not 0.0 < s.pkeep <= 1.0:
            raise TrainingError(f"--pkeep must lie in (0, 1], got {s.pkeep}")
        self.first = _load_stage(Path(s.first_stage), (VQMODEL,), "VQGAN first stage")
        self.cond_stage, self.cond_input = None, None
        if spatial:
            self.cond_stage = _load_stage(Path(s.cond_stage), SPATIAL_CONDS[s.cond],
                                          f"{s.cond} cond stage")
            self.cond_input = StageInput.of(self.cond_stage.config)
            if self.cond_input.kind != s.cond:
                raise TrainingError(f"{s.cond_stage}: a cond stage that reads "
                                    f"{self.cond_input.kind}, not {s.cond} maps")
        factor = self.first.config.ddconfig.downsampling_factor
        if s.size % factor:
            raise TrainingError(f"--size {s.size} is not a multiple of the first stage's "
                                f"downsampling factor {factor}")

    # --- data and codes ----------------------------------------------------------------------

    def load_data(self) -> Dataset:
        s = self.settings
        if self.cond_input is not None:
            return self.cond_input.load(Path(s.data), s.size, s.val_fraction, with_photos=True)
        return load_images(Path(s.data), s.size, s.val_fraction, with_labels=s.cond == "class")

    def _views(self, example: Example, index: int) -> List:
        """The crops whose codes are cached: the center crop, then views - 1 random ones."""
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + index)
        return [center_crop(example, self.settings.size)] + [
            random_crop(example, self.settings.size, generator)
            for _ in range(self.settings.views - 1)]

    @torch.no_grad()
    def encode(self, examples: List[Example], views: bool) -> TokenSet:
        """Codes of every example (all views, or the center crop only)."""
        s, device = self.settings, self.processes.device
        items = [(e, crop) for i, e in enumerate(examples)
                 for crop in (self._views(e, i) if views else [center_crop(e, s.size)])]
        codes, conds = [], []
        for start in range(0, len(items), ENCODE_BATCH):
            chunk = items[start:start + ENCODE_BATCH]
            images = torch.stack([apply_crop(e.image, c, s.size) for e, c in chunk])
            codes.append(self.model.encode_to_z(to_model_range(images).to(device)).cpu())
            if self.cond_input is not None:
                maps = self.cond_input.tensor([e for e, _ in chunk], [c for _, c in chunk],
                                              s.size)
                conds.append(self.model.encode_to_c(maps.to(device)).cpu())
            elif s.cond == "class":
                conds.append(torch.tensor([[e.label] for e, _ in chunk]))
            else:
                conds.append(torch.zeros(len(chunk), 1, dtype=torch.long))  # start token 0
        return TokenSet(torch.cat(codes), torch.cat(conds))

    # --- model -------------------------------------------------------------------------------

    def model_section(self, class_names: Tuple[str, ...], cond_length: int) -> Dict[str, Any]:
        s = self.settings
        first = self.first.config
        latent = (s.size // first.ddconfig.downsampling_factor) ** 2
        vocab = first.n_embed
        params: Dict[str, Any] = {"first_stage_key": "image", "pkeep": s.pkeep}
        if s.cond == "none":
            params.update(cond_stage_config=UNCONDITIONAL_COND, sos_token=0)
        elif s.cond == "class":
            params.update(cond_stage_config={"target": LABELATOR,
                                             "params": {"n_classes": len(class_names)}},
                          cond_stage_key="class_label")
            vocab = max(vocab, len(class_names))
        else:
            params.update(cond_stage_config=_stage_section(self.cond_stage),
                          cond_stage_key=s.cond)
            vocab = max(vocab, self.cond_stage.config.n_embed)
        params["first_stage_config"] = _stage_section(self.first)
        params["transformer_config"] = {"target": GPT_TARGET, "params": {
            "vocab_size": vocab, "block_size": cond_length + latent, "n_layer": s.n_layer,
            "n_head": s.n_head, "n_embd": s.n_embd, "embd_pdrop": s.dropout,
            "resid_pdrop": s.dropout, "attn_pdrop": s.dropout}}
        return {"target": NET2NET, "params": params}

    def build(self, section: Mapping[str, Any]) -> None:
        torch.manual_seed(self.settings.seed)  # the GPT's initial weights
        model = Net2NetTransformer(parse_model_config(section).config)
        model.first_stage_model.load_state_dict(self.first.model.state_dict())
        if self.cond_stage is not None:
            model.cond_stage_model.load_state_dict(self.cond_stage.model.state_dict())
        self.model = model.to(self.processes.device)
        for stage in (model.first_stage_model, model.cond_stage_model):
            stage.requires_grad_(False)
        self.gpt = data_parallel(model.transformer, self.processes)
        self.optimizer = _adamw(model.transformer, self.settings.lr)

    def set_mode(self, training: bool) -> None:
        """Only the GPT ever trains; the frozen stages stay in eval mode."""
        self.model.eval()
        self.model.transformer.train(training)

    # --- one step ----------------------------------------------------------------------------

    def loss(self, gpt: nn.Module, codes: torch.Tensor, cond: torch.Tensor,
             corrupt: bool) -> torch.Tensor:
        """Mean cross-entropy (nats per image token). codes (B, h*w), cond (B, L)."""
        inputs = codes
        if corrupt and self.settings.pkeep < 1.0:
            keep = torch.bernoulli(torch.full(codes.shape, self.settings.pkeep,
                                              device=codes.device)).long()
            random_tokens = torch.randint_like(codes, self.model.transformer.cfg.vocab_size)
            inputs = keep * codes + (1 - keep) * random_tokens
        sequence = torch.cat([cond, inputs], dim=1)  # (B, L + h*w)
        logits = gpt(sequence[:, :-1])[:, cond.shape[1] - 1:]  # (B, h*w, vocab)
        # fp32 softmax over the vocabulary also under --precision bf16
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1))

    def train_step(self, tokens: TokenSet, step: int) -> Dict[str, float]:
        s, p = self.settings, self.processes
        lr = warmup_cosine(step, s.lr, s.warmup_steps, s.steps)
        set_learning_rate(self.optimizer, lr)
        chosen = torch.tensor(batch_indices(s.seed, step, len(tokens.codes), s.batch_size,
                                            p.rank, p.world_size))
        with mixed_precision(s.precision, p.device):
            loss = self.loss(self.gpt, tokens.codes[chosen].to(p.device),
                             tokens.cond[chosen].to(p.device), corrupt=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "lr": lr}

    # --- held-out numbers and samples ---------------------------------------------------------

    @torch.no_grad()
    def held_out_nll(self, tokens: TokenSet) -> Dict[str, float]:
        self.set_mode(False)
        device, total = self.processes.device, 0.0
        for start in range(0, len(tokens.codes), ENCODE_BATCH):
            codes = tokens.codes[start:start + ENCODE_BATCH].to(device)
            cond = tokens.cond[start:start + ENCODE_BATCH].to(device)
            total += float(self.loss(self.model.transformer, codes, cond, corrupt=False)) * \
                len(codes)
        self.set_mode(True)
        nats = total / len(tokens.codes)
        tokens_per_image = tokens.codes.shape[1]
        dims = 3 * self.settings.size ** 2
        return {"nll_nats_per_token": nats,
                "bits_per_dim": nats * tokens_per_image / dims / math.log(2)}

    @torch.no_grad()
    def save_samples(self, cond: torch.Tensor, step: int) -> None:
        """Top-k samples (k = 100, temperature 1) from cond (N, L), decoded, as one PNG."""
        self.set_mode(False)
        gpt = self.model.transformer
        device = self.processes.device
        side = self.settings.size // self.first.config.ddconfig.downsampling_factor
        generator = torch.Generator(device=device).manual_seed(self.settings.seed + step)
        cache = gpt.new_cache(len(cond), cond.shape[1] + side * side - 1)
        step_input, tokens = cond.to(device), []
        k = min(SAMPLE_TOP_K, gpt.cfg.vocab_size)
        for _ in range(side * side):
            logits = top_k_filter(gpt.forward_cached(step_input, cache)[:, -1], k)
            # Image tokens only: a vocabulary larger than the codebook (class or cond-stage
            # tokens) must not be sampled as a code.
            logits = logits[:, :self.first.config.n_embed]
            step_input = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            tokens.append(step_input)
        images = self.model.decode_to_img(torch.cat(tokens, dim=1), (side, side))
        self.set_mode(True)
        save_grid(images, samples_path(Path(self.settings.out), step), columns=len(cond))

    # --- the loop ----------------------------------------------------------------------------

    def run(self, resume: bool) -> Path:
        s, p = self.settings, self.processes
        run = Path(s.out)
        dataset = self.load_data()
        section = self.model_section(dataset.class_names, self._cond_length())
        self.build(section)
        train_tokens = self.encode(dataset.train, views=True)
        held_tokens = self.encode(dataset.held_out, views=False)
        state = TrainingState({"transformer": self.optimizer}, {})
        start = 0
        checkpoint = latest_checkpoint(run) if resume else None
        if checkpoint is not None:
            start = load_training_checkpoint(checkpoint, self.model, state)
        histogram = codebook_usage(torch.bincount(train_tokens.codes.flatten(),
                                                  minlength=self.first.config.n_embed))
        log = MetricsLog(run, p.is_main, start)
        if p.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_json(run / SETTINGS_FILE, {**settings_to_json(s),
                                             "class_names": list(dataset.class_names)})
            log.write({"step": start, "train_sequences": len(train_tokens.codes),
                       "held_out_sequences": len(held_tokens.codes),
                       "code_histogram_entropy_nats": histogram.entropy_nats,
                       "codes_used": histogram.used})
        p.barrier()
        sample_cond = self._sample_cond(held_tokens, dataset)
        timer, means = StepTimer(), RunningMeans()
        bar = progress_bar(start, s.steps, p.is_main, "transformer")
        self.set_mode(True)
        for step in range(start, s.steps):
            seed_step(s.seed, step, p.rank)  # pkeep and dropout draws
            means.add(self.train_step(train_tokens, step))
            timer.tick()
            done = step + 1
            last = done == s.steps
            if done % s.log_every == 0 or last:
                logs = means.pop()
                log.write({"step": done, **logs, "steps_per_s": round(timer.rate(), 3)})
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if p.is_main and (done % s.sample_every == 0 or last):
                log.write({"step": done, "held_out": self.held_out_nll(held_tokens),
                           "code_histogram_entropy_nats": histogram.entropy_nats})
                self.save_samples(sample_cond, done)
            if p.is_main and (done % s.checkpoint_every == 0 or last):
                save_training_checkpoint(run, done, s.seed, self.model, section, state,
                                         s.keep_checkpoints)
            p.barrier()
            bar.update(1)
        bar.close()
        return run

    def _cond_length(self) -> int:
        if self.cond_stage is None:
            return 1
        factor = self.cond_stage.config.ddconfig.downsampling_factor
        return (self.settings.size // factor) ** 2

    def _sample_cond(self, held_tokens: TokenSet, dataset: Dataset) -> torch.Tensor:
        """Conditions of the sample grid: start tokens, the first classes, or held-out maps."""
        if self.settings.cond == "class":
            return torch.arange(min(SAMPLES, len(dataset.class_names))).view(-1, 1)
        return held_tokens.cond[:SAMPLES] if self.cond_input is not None else \
            torch.zeros(SAMPLES, 1, dtype=torch.long)


def _adamw(gpt: nn.Module, lr: float) -> torch.optim.AdamW:
    """Upstream's grouping: weight decay 0.01 on Linear weights; none on biases, LayerNorm and
    Embedding weights or the position embedding."""
    decay, no_decay = [], []
    for module in gpt.modules():
        for name, parameter in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(
                parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def _first_stage_size(path: Path) -> int:
    """The image side a first stage was trained at: its run's --resize or --size, else the
    config's resolution."""
    try:
        settings = read_settings(path)
    except TrainingError:
        settings = {}
    size = settings.get("resize") or settings.get("size")
    return size or load_checkpoint(path).config.ddconfig.resolution


def train_transformer(given: Mapping[str, Any], resume: bool) -> Path:
    """given: command-line values by TransformerSettings field (None = not given)."""
    positive = ("steps", "size", "batch_size", "lr", "n_layer", "n_head", "n_embd", "views",
                "checkpoint_every", "sample_every", "log_every", "keep_checkpoints")
    with open_run(given, resume, "transformer", TransformerSettings, positive) as (
            run, settings, processes):
        if settings.size is None:
            settings.size = _first_stage_size(Path(settings.first_stage))
        return TransformerTrainer(settings, processes).run(resume)

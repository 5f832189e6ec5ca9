"""Stage 1: `vqrt train vqgan` trains a VQGAN (photos), or a cond stage: a VQGAN on depth maps
(a VQModel with in_channels = out_ch = 1, as upstream's depth stages; the same objective, the
discriminator with disc_in_channels 1, no LPIPS) or a segmentation model.

VQModel objective (upstream VQLPIPSWithDiscriminator), images x and reconstructions x' in [-1, 1]:
  rec   = mean(|x - x'| + perceptual_weight * LPIPS(x, x'))   (LPIPS only with its weights)
          (--pixel-loss log-mse, not upstream: mean_i ln(MSE_i) in place of the L1 term)
  L_ae  = rec + codebook_weight * (commitment + codebook terms)
          + [step >= disc_start] * disc_factor * lambda * (-mean(D(x')))
  L_D   = [step >= disc_start] * disc_factor * hinge(D(x), D(x'))
lambda is the adaptive weight (losses.adaptive_weight) times disc_weight. Adam(lr, betas
(0.5, 0.9)) for both (the autoencoder's: --adam-betas), at a constant lr as upstream, or
(--lr-decay-from, not upstream) constant and then a cosine to 0 at the last step. Before
disc_start the discriminator is not run at all: upstream runs it with factor 0, which changes no
weight of the autoencoder.
The discriminator step scores the reconstructions of the autoencoder step (detached); upstream
(Lightning, one optimizer after the other) re-runs the autoencoder after its update first.

VQSegmentationModel (upstream BCELossWithQuant): inputs are one-hot label maps (B, n_labels,
S, S); L = BCE-with-logits(x', one-hot) + codebook_weight * quantizer loss; no discriminator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from vqrt.trainer.codebook_restart import DeadCodeRestart
from vqrt.trainer.data import (
    DEPTH, PHOTOS, DataError, Dataset, StageInput, batch_indices, center_crop, random_crop)
from vqrt.trainer.evaluate import evaluate_first_stage
from vqrt.trainer.losses import DISCRIMINATOR_LOSSES, PIXEL_LOSSES, NLayerDiscriminator, \
    adaptive_weight, load_lpips, pixel_loss
from vqrt.trainer.model_config import VQMODEL, VQSEGMENTATION, ConfigError, parse_model_config
from vqrt.trainer.models.vqgan import VQModel
from vqrt.trainer.training import (
    MetricsLog, Processes, RunningMeans, StepTimer, TrainingError, TrainingState, SETTINGS_FILE,
    data_parallel, latest_checkpoint, load_training_checkpoint, mixed_precision, open_run,
    progress_bar, samples_path, save_grid, save_training_checkpoint, seed_step,
    set_learning_rate, settings_to_json, warmup_cosine, write_json)

VQ_LOSS = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
SEGMENTATION_LOSS = "taming.modules.losses.segmentation.BCELossWithQuant"
GRID_IMAGES = 8


@dataclass
class VQGANSettings:
    """`vqrt train vqgan` options, as stored in RUN/train.json."""
    data: str
    out: str
    steps: int
    config: Optional[str] = None  # default: --init-from's config
    init_from: Optional[str] = None  # first stage to start from: run, checkpoint, upstream .ckpt
    init_partial: bool = False  # --config's model differs: take init_from's matching tensors
    extra_data: Optional[List[str]] = None  # more training folders; their held-out part unused
    stage: str = "vqgan"
    size: Optional[int] = None  # training crop side; default: the config's resolution
    resize: Optional[int] = None  # shorter image side before cropping; default: size
    batch_size: int = 8
    lr: Optional[float] = None  # default: base_learning_rate x batch_size x processes
    seed: int = 0
    val_fraction: float = 0.1
    n_labels: Optional[int] = None  # segmentation cond stage only; must match the config
    perceptual_weights: Optional[str] = None
    checkpoint_every: int = 1000
    sample_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 2
    restart_dead_codes: int = 0  # steps between dead-code restarts; 0: never (upstream)
    lr_decay_from: Optional[int] = None  # cosine decay to 0 from this step; None: constant
    # The autoencoder's Adam betas. Upstream's (0.5, 0.9) suit the GAN term; a run without it
    # (disc_start after the last step) may prefer the usual (0.9, 0.999).
    adam_betas: Tuple[float, float] = (0.5, 0.9)
    pixel_loss: str = "l1"  # or "log-mse" (not upstream): losses.pixel_loss
    device: str = "auto"
    precision: str = "fp32"  # or bf16: the step's forward passes under bfloat16 autocast
    world_size: int = 1


# Fields a resumed run may change: where it lives, how long and how often, not what is
# trained.


@dataclass(frozen=True)
class LossConfig:
    """lossconfig.params of the YAML. pixelloss_weight is accepted and unused, as upstream."""
    disc_start: int = 0
    codebook_weight: float = 1.0
    disc_weight: float = 1.0
    disc_factor: float = 1.0
    perceptual_weight: float = 1.0
    disc_num_layers: int = 3
    disc_in_channels: int = 3
    disc_ndf: int = 64
    disc_loss: str = "hinge"
    pixelloss_weight: float = 1.0


def parse_loss_config(model: Mapping[str, Any], segmentation: bool) -> LossConfig:
    where = "model.params.lossconfig"
    block = (model.get("params") or {}).get("lossconfig")
    expected = SEGMENTATION_LOSS if segmentation else VQ_LOSS
    if not isinstance(block, Mapping) or block.get("target") != expected:
        found = block.get("target") if isinstance(block, Mapping) else block
        raise ConfigError(f"{where}.target must be {expected} for this model, got {found!r}")
    params = dict(block.get("params") or {})
    for name, allowed in (("use_actnorm", False), ("disc_conditional", False)):
        if params.pop(name, allowed) != allowed:
            raise ConfigError(f"{where}.params.{name} {not allowed} is not supported")
    fields = LossConfig.__dataclass_fields__
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.params: unsupported field(s) {', '.join(unknown)}")
    for name, value in params.items():
        kind = fields[name].type
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            params[name] = float(value)
        elif type(value).__name__ != kind:
            raise ConfigError(f"{where}.params.{name} must be {kind}, got {value!r}")
    config = LossConfig(**params)
    if config.disc_loss not in DISCRIMINATOR_LOSSES:
        raise ConfigError(f"{where}.params.disc_loss must be hinge or vanilla, got "
                          f"{config.disc_loss!r}")
    return config


def read_model_section(path: Path) -> Dict[str, Any]:
    from vqrt.trainer.checkpoints import CheckpointError, read_config
    try:
        return dict(read_config(path))
    except CheckpointError as e:
        raise TrainingError(str(e)) from e


def learning_rate(s: VQGANSettings, step: int) -> float:
    """Upstream's constant rate, or with --lr-decay-from D: constant before step D, then a
    cosine to 0 at the last step. A function of the step alone, so resuming is exact."""
    if s.lr_decay_from is None or step < s.lr_decay_from:
        return s.lr
    return warmup_cosine(step - s.lr_decay_from, s.lr, 0, s.steps - s.lr_decay_from)


class VQGANTrainer:
    """One training run; `run()` trains to settings.steps and returns the run folder."""

    def __init__(self, settings: VQGANSettings, model_section: Mapping[str, Any],
                 processes: Processes):
        self.settings = settings
        self.processes = processes
        self.model_section = model_section
        spec = parse_model_config(model_section)
        if spec.kind != "vqgan" or spec.target not in (VQMODEL, VQSEGMENTATION):
            raise ConfigError(f"model.target must be {VQMODEL} or {VQSEGMENTATION} to train a "
                              f"first stage, got {spec.target}")
        self.segmentation = spec.target == VQSEGMENTATION
        self.loss = parse_loss_config(model_section, self.segmentation)
        cfg = spec.config
        try:
            self.input = StageInput.of(cfg)
        except DataError as e:
            raise ConfigError(f"model.params.{e}") from None
        if not self.segmentation:
            channels = cfg.ddconfig.in_channels
            if cfg.ddconfig.out_ch != channels:
                raise ConfigError(f"model.params.ddconfig.out_ch {cfg.ddconfig.out_ch} must equal "
                                  f"in_channels {channels} (the model reconstructs its input)")
            if self.loss.disc_in_channels != channels:
                raise ConfigError(f"model.params.lossconfig.params.disc_in_channels "
                                  f"{self.loss.disc_in_channels} must equal in_channels "
                                  f"{channels}: set it to {channels}")
            if settings.perceptual_weights and self.input.kind == DEPTH:
                raise TrainingError("--perceptual-weights: LPIPS compares RGB photos; a depth "
                                    "model (in_channels 1) trains without it")
        if self.segmentation and settings.n_labels != cfg.colorize_nlabels:
            raise TrainingError(f"--n-labels {settings.n_labels} does not match the config's "
                                f"model.params.n_labels {cfg.colorize_nlabels}")
        if not self.segmentation and settings.n_labels is not None:
            raise TrainingError("--n-labels is only for a segmentation cond stage "
                                f"({VQSEGMENTATION})")
        self.size = settings.size
        self.rest_size = settings.resize or settings.size
        if self.rest_size < self.size:
            raise TrainingError(f"--resize {self.rest_size} is smaller than --size {self.size}")
        factor = cfg.ddconfig.downsampling_factor
        if self.size % factor:
            raise TrainingError(f"--size {self.size} is not a multiple of the downsampling "
                                f"factor {factor}")
        device = processes.device
        torch.manual_seed(settings.seed)  # the initial weights depend on the seed only
        self.model = VQModel(cfg).to(device)
        self.ae = data_parallel(self.model, processes)
        self.optimizers = {"autoencoder": torch.optim.Adam(
            self.model.parameters(), lr=settings.lr, betas=tuple(settings.adam_betas))}
        self.modules = {}
        self.restart = None
        if settings.restart_dead_codes > 0:
            self.restart = DeadCodeRestart(self.model.quantize, settings.restart_dead_codes,
                                           processes.world_size)
            self.modules["code_usage"] = self.restart
        self.lpips = None
        if not self.segmentation:
            self.discriminator = NLayerDiscriminator(
                self.loss.disc_in_channels, self.loss.disc_ndf, self.loss.disc_num_layers
            ).to(device)
            self.disc = data_parallel(self.discriminator, processes)
            self.d_loss = DISCRIMINATOR_LOSSES[self.loss.disc_loss]
            self.optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), lr=settings.lr, betas=(0.5, 0.9))
            self.modules["discriminator"] = self.discriminator
            if settings.perceptual_weights and self.loss.perceptual_weight > 0:
                self.lpips = load_lpips(Path(settings.perceptual_weights)).to(device)

    # --- data --------------------------------------------------------------------------------

    def load_data(self) -> Dataset:
        """--data, split into training and held-out files, with the training files of each
        --extra-data folder added. Each extra folder is split on its own, as if it were --data,
        and its held-out files are left out: the --data held-out set stays the same whatever
        folders come with it, and an extra folder's held-out files stay unseen."""
        s = self.settings
        dataset = self.input.load(Path(s.data), self.rest_size, s.val_fraction)
        for folder in s.extra_data or ():
            dataset.train += self.input.load(Path(folder), self.rest_size, s.val_fraction).train
        return dataset

    def batch(self, dataset: Dataset, step: int, generator: torch.Generator) -> torch.Tensor:
        """-> (B, 3, S, S) photos or (B, 1, S, S) depth in [-1, 1], or (B, n_labels, S, S)
        one-hot."""
        s, p = self.settings, self.processes
        chosen = [dataset.train[i] for i in batch_indices(
            s.seed, step, len(dataset.train), s.batch_size, p.rank, p.world_size)]
        crops = [random_crop(e, self.size, generator) for e in chosen]
        return self.input.tensor(chosen, crops, self.size).to(p.device)

    # --- one step ----------------------------------------------------------------------------

    def train_step(self, x: torch.Tensor, step: int) -> Dict[str, float]:
        autocast = mixed_precision(self.settings.precision, self.processes.device)
        with autocast:
            total, reconstruction, logs, gan_active = self.autoencoder_loss(x, step)
        autoencoder = self.optimizers["autoencoder"]
        autoencoder.zero_grad(set_to_none=True)
        total.backward()
        autoencoder.step()
        if gan_active:
            fake = reconstruction.detach()
            with autocast:
                d_loss = self.loss.disc_factor * self.d_loss(self.disc(x), self.disc(fake))
            discriminator = self.optimizers["discriminator"]
            discriminator.zero_grad(set_to_none=True)
            d_loss.backward()
            discriminator.step()
            logs["d"] = float(d_loss.detach())
        return logs

    def autoencoder_loss(self, x: torch.Tensor, step: int):
        """-> (L_ae, reconstruction, logs, whether the GAN term is on)."""
        loss = self.loss
        reconstruction, quantizer_loss = self.ae(x)
        logs: Dict[str, float] = {"quant": float(quantizer_loss.detach())}
        gan_active = False
        if self.segmentation:
            rec_loss = F.binary_cross_entropy_with_logits(reconstruction, x)
            total = rec_loss + loss.codebook_weight * quantizer_loss
            logs["bce"] = float(rec_loss.detach())
        else:
            rec_loss = pixel_loss(x, reconstruction, self.settings.pixel_loss)
            # L1 is logged whichever loss trains, so runs compare; with l1 it is rec_loss.
            l1 = rec_loss if self.settings.pixel_loss == "l1" else \
                (x - reconstruction).abs().mean()
            logs["l1"] = float(l1.detach())
            if self.lpips is not None:
                perceptual = self.lpips(x, reconstruction)  # (B, 1, 1, 1)
                rec_loss = rec_loss + loss.perceptual_weight * perceptual.mean()
                logs["lpips"] = float(perceptual.detach().mean())
            total = rec_loss + loss.codebook_weight * quantizer_loss
            gan_active = step >= loss.disc_start and loss.disc_factor > 0
            if gan_active:
                # The generator's view of D: D's weights get no gradient from this term.
                self.discriminator.requires_grad_(False)
                g_loss = -self.discriminator(reconstruction).mean()
                self.discriminator.requires_grad_(True)
                weight = adaptive_weight(rec_loss, g_loss,
                                         self.model.decoder.conv_out.weight) * loss.disc_weight
                total = total + weight * loss.disc_factor * g_loss
                logs.update(g=float(g_loss.detach()), d_weight=float(weight))
        logs["loss"] = float(total.detach())
        return total, reconstruction, logs, gan_active

    # --- pictures and held-out numbers --------------------------------------------------------

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Photos pass through, depth maps as gray; one-hot maps are shown through the model's
        random colorize projection, rescaled to [-1, 1] as upstream's to_rgb."""
        if self.input.kind == PHOTOS:
            return x
        if self.input.kind == DEPTH:
            return x.repeat(1, 3, 1, 1)
        rgb = F.conv2d(x, self.model.colorize)
        return 2.0 * (rgb - rgb.min()) / (rgb.max() - rgb.min()) - 1.0

    @torch.no_grad()
    def save_reconstructions(self, dataset: Dataset, step: int) -> None:
        examples = dataset.held_out[:GRID_IMAGES]
        x = self.input.tensor(examples, [center_crop(e, self.size) for e in examples], self.size)
        self.model.eval()
        x = x.to(self.processes.device)
        reconstruction = self.model.decode_indices(self.model.encode_to_indices(x))
        if self.segmentation:  # show the decoded labels as a one-hot map
            reconstruction = F.one_hot(reconstruction.argmax(1), x.shape[1]).permute(0, 3, 1, 2)
            reconstruction = reconstruction.float()
        self.model.train()
        grid = torch.cat([self.to_rgb(x), self.to_rgb(reconstruction)])  # inputs above outputs
        save_grid(grid, samples_path(Path(self.settings.out), step), columns=len(examples))

    # --- the loop ----------------------------------------------------------------------------

    def run(self, resume: bool) -> Path:
        s, p = self.settings, self.processes
        run = Path(s.out)
        start = 0
        state = TrainingState(self.optimizers, self.modules)
        if resume:
            checkpoint = latest_checkpoint(run)
            if checkpoint is not None:
                start = load_training_checkpoint(checkpoint, self.model, state)
        dataset = self.load_data()
        if p.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_json(run / SETTINGS_FILE, settings_to_json(s))
            if self.input.kind == PHOTOS and self.lpips is None:
                print("vqrt train: perceptual loss off (no --perceptual-weights given)")
        p.barrier()
        log = MetricsLog(run, p.is_main, start)
        if start == 0:
            log.write({"step": 0, "train_images": len(dataset.train),
                       "held_out_images": len(dataset.held_out)})
        timer, means = StepTimer(), RunningMeans()
        bar = progress_bar(start, s.steps, p.is_main, "vqgan")
        self.model.train()
        for step in range(start, s.steps):
            generator = seed_step(s.seed, step, p.rank)
            for optimizer in self.optimizers.values():
                set_learning_rate(optimizer, learning_rate(s, step))
            means.add(self.train_step(self.batch(dataset, step, generator), step))
            timer.tick()
            done = step + 1
            last = done == s.steps
            restarted = self.restart.after_step(done, generator) if self.restart else 0
            if restarted:
                log.write({"step": done, "restarted_codes": restarted})
            if done % s.log_every == 0 or last:
                logs = means.pop()
                log.write({"step": done, **logs, "steps_per_s": round(timer.rate(), 3)})
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()
                                 if k in ("loss", "l1", "bce", "g", "d")})
            if p.is_main and (done % s.sample_every == 0 or last):
                self.save_reconstructions(dataset, done)
                self.model.eval()
                evaluation = evaluate_first_stage(self.model, dataset, self.size, self.input)
                self.model.train()
                log.write({"step": done, "held_out": evaluation.to_dict()})
            if p.is_main and (done % s.checkpoint_every == 0 or last):
                save_training_checkpoint(run, done, s.seed, self.model, self.model_section,
                                         state, s.keep_checkpoints)
            p.barrier()
            bar.update(1)
        bar.close()
        return run


def train_vqgan(given: Mapping[str, Any], resume: bool) -> Path:
    """given: command-line values by VQGANSettings field (None = not given)."""
    positive = ("steps", "size", "resize", "batch_size", "lr", "checkpoint_every",
                "sample_every", "log_every", "keep_checkpoints", "n_labels")
    with open_run(given, resume, "vqgan", VQGANSettings, positive) as (run, settings, processes):
        # A resumed run reads its model from its newest checkpoint, not from a YAML file
        # that may have changed since.
        checkpoint = latest_checkpoint(run) if resume else None
        if settings.init_partial and (settings.init_from is None or settings.config is None):
            raise TrainingError("--init-partial needs --init-from (the trained first stage) and "
                                "--config (the new model)")
        if not all(0 <= beta < 1 for beta in settings.adam_betas):
            raise TrainingError(f"--adam-betas must lie in [0, 1), got "
                                f"{' '.join(map(str, settings.adam_betas))}")
        if settings.pixel_loss not in PIXEL_LOSSES:
            raise TrainingError(f"--pixel-loss must be one of {', '.join(PIXEL_LOSSES)}, got "
                                f"{settings.pixel_loss!r}")
        initial = None
        if checkpoint is None and settings.init_from is not None:
            initial = load_initial_weights(Path(settings.init_from),
                                           None if settings.init_partial else settings.config)
        if checkpoint is not None:
            source = checkpoint / "config.json"
        elif initial is not None and not settings.init_partial:
            source = initial.config_path  # --config when given, else the checkpoint's own
        elif settings.config is not None:
            source = Path(settings.config)
        else:
            raise TrainingError("missing setting: --config (or --init-from, to start from a "
                                "trained first stage and its config)")
        model_section = read_model_section(source)
        if settings.size is None:
            settings.size = parse_model_config(model_section).config.ddconfig.resolution
        if settings.lr is None:
            base = model_section.get("base_learning_rate")
            if base is None:
                raise TrainingError(f"{source}: no model.base_learning_rate; pass --lr")
            # Upstream's rule: the learning rate grows with the global batch.
            settings.lr = float(base) * settings.batch_size * processes.world_size
        decay_from = settings.lr_decay_from
        if decay_from is not None and not 0 <= decay_from < settings.steps:
            raise TrainingError(f"--lr-decay-from {decay_from} must be at least 0 and below "
                                f"--steps {settings.steps}")
        trainer = VQGANTrainer(settings, model_section, processes)
        # Every process loads the same file: the replicas stay equal.
        if initial is not None and settings.init_partial:
            fresh = grow_from(trainer.model, initial.model.state_dict())
            if processes.is_main:
                total = len(trainer.model.state_dict())
                modules = dict.fromkeys(_module_of(name) for name in fresh)
                print(f"vqrt train: --init-partial: {total - len(fresh)} of {total} tensors "
                      f"from {settings.init_from}; fresh (new or reshaped): "
                      f"{', '.join(modules) or 'none'}")
        elif initial is not None:
            trainer.model.load_state_dict(initial.model.state_dict())
        return trainer.run(resume)


def _module_of(tensor_name: str) -> str:
    """'decoder.up.4.block.1.conv2.weight' -> 'decoder.up.4.block.1': what a user would add."""
    parts = tensor_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("block", "attn"):
            return ".".join(parts[:i + 2])
    return ".".join(parts[:-1])


def grow_from(model: VQModel, source: Mapping[str, torch.Tensor]) -> List[str]:
    """--init-partial: copies every tensor of source whose name and shape model shares (as
    upstream's init_from_ckpt loads with strict=False) and returns the names of the rest, which
    keep their fresh initialization, except that a new residual block starts as the identity
    (its conv2 zero, Goyal et al. 2017). So a model grown by a level (f = 8 -> 16) starts at the
    trained one's function but for the new down- and upsampling convolutions."""
    state = model.state_dict()
    fresh = [name for name, tensor in state.items()
             if name not in source or source[name].shape != tensor.shape]
    fresh_set = set(fresh)
    for name in state:
        if name not in fresh_set:
            state[name] = source[name]
        elif ".block." in name and ".conv2." in name:
            state[name] = torch.zeros_like(state[name])
    model.load_state_dict(state)
    return fresh


def load_initial_weights(path: Path, config: Optional[str]):
    """--init-from: a first stage (a vqgan run, a checkpoint folder, an upstream .ckpt), built
    from config (--config) when given; the loader checks that its weights fit."""
    from vqrt.trainer.checkpoints import CheckpointError, load_checkpoint
    try:
        initial = load_checkpoint(path, config)
    except CheckpointError as e:
        raise TrainingError(f"--init-from: {e}") from e
    if initial.kind != "vqgan":
        raise TrainingError(f"--init-from {path}: holds a {initial.kind} model; pass the "
                            "first stage (VQGAN) to start from")
    return initial


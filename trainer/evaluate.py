"""Reconstruction quality of a first stage: PSNR, SSIM and codebook usage on held-out images.

Images (photos, and depth maps alike) are compared in [0, 1] (the model's [-1, 1] output is
clamped first); segmentation models report the share of pixels whose argmax label is right.
SSIM is Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 0.01, K2 0.03, data
range 1, computed per channel over the 'valid' window positions and averaged, the convention of
skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from vqrt.trainer.data import PHOTOS, SEGMENTATION, Dataset, StageInput, center_crop


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> PSNR in dB per image (B,)."""
    mse = (reference - estimate).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum()
    return torch.outer(weights, weights)  # (size, size), sums to 1


def ssim(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1], H and W >= 11 -> mean SSIM per image (B,)."""
    channels = reference.shape[1]
    window = _gaussian_window().to(reference.device)
    window = window.expand(channels, 1, *window.shape)  # depthwise (C, 1, 11, 11)
    x, y = reference.double(), estimate.double()

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1).float()


@dataclass(frozen=True)
class CodebookUsage:
    codebook_size: int
    used: int
    dead: int  # codes never chosen on these images
    perplexity: float  # exp(entropy) of the code histogram, in codes
    entropy_nats: float


def codebook_usage(counts: torch.Tensor) -> CodebookUsage:
    """counts: (n_embed,) how often each code was chosen."""
    probabilities = counts.double() / counts.sum()
    nonzero = probabilities[probabilities > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    used = int((counts > 0).sum())
    return CodebookUsage(len(counts), used, len(counts) - used, math.exp(entropy), entropy)


@dataclass(frozen=True)
class Evaluation:
    images: int
    size: int
    psnr_db: Optional[float]  # photos and depth maps
    ssim: Optional[float]
    pixel_accuracy: Optional[float]  # segmentation models: argmax label == true label
    codebook: CodebookUsage
    lpips: Optional[float] = None  # only when LPIPS weights were given
    rfid: Optional[float] = None  # only when FID Inception weights were given (trainer/fid.py)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"held-out images  {self.images} at {self.size} x {self.size}"]
        if self.psnr_db is not None:
            lines += [f"PSNR             {self.psnr_db:.2f} dB",
                      f"SSIM             {self.ssim:.4f}"]
        if self.lpips is not None:
            lines.append(f"LPIPS            {self.lpips:.4f}")
        if self.rfid is not None:
            lines.append(f"rFID             {self.rfid:.2f} (over {self.images} images: compare "
                         f"only with rFIDs over as many)")
        if self.pixel_accuracy is not None:
            lines.append(f"pixel accuracy   {self.pixel_accuracy:.4f}")
        c = self.codebook
        lines.append(f"codebook         {c.used} of {c.codebook_size} codes used, {c.dead} dead, "
                     f"perplexity {c.perplexity:.1f}")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_first_stage(model, dataset: Dataset, size: int, stage: StageInput,
                         lpips=None, inception=None, batch_size: int = 8) -> Evaluation:
    """model: a VQModel in eval mode; dataset: its held-out examples (shorter side = size) are
    center-cropped and reconstructed. stage: what the model reads. lpips: an LPIPS module,
    inception: a FIDInception (rFID), for photo models."""
    from vqrt.trainer.fid import RFID
    rfid = RFID(inception) if inception is not None and stage.kind == PHOTOS else None
    device = next(model.parameters()).device
    examples = dataset.held_out
    counts = torch.zeros(model.cfg.n_embed, dtype=torch.long)
    psnrs, ssims, distances, correct, pixels = [], [], [], 0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        x = stage.tensor(chunk, [center_crop(e, size) for e in chunk], size).to(device)
        indices = model.encode_to_indices(x)
        counts += torch.bincount(indices.flatten().cpu(), minlength=model.cfg.n_embed)
        reconstruction = model.decode_indices(indices)
        if stage.kind == SEGMENTATION:
            labels = x.argmax(dim=1)  # (B, S, S): the one-hot input's labels
            correct += int((reconstruction.argmax(dim=1) == labels).sum())
            pixels += labels.numel()
        else:
            reference = (x + 1) / 2
            estimate = (reconstruction.clamp(-1, 1) + 1) / 2
            psnrs.append(psnr(reference, estimate).cpu())
            ssims.append(ssim(reference, estimate).cpu())
            if lpips is not None and stage.kind == PHOTOS:
                distances.append(lpips(x, estimate * 2 - 1).flatten().cpu())
            if rfid is not None:
                rfid.add(reference, estimate)
    return Evaluation(
        images=len(examples), size=size,
        psnr_db=float(torch.cat(psnrs).mean()) if psnrs else None,
        ssim=float(torch.cat(ssims).mean()) if ssims else None,
        pixel_accuracy=correct / pixels if pixels else None,
        codebook=codebook_usage(counts),
        lpips=float(torch.cat(distances).mean()) if distances else None,
        rfid=rfid.value() if rfid is not None else None)


def evaluate_run(run: Path, data: Path, size: Optional[int], val_fraction: Optional[float],
                 perceptual_weights: Optional[Path] = None,
                 inception_weights: Optional[Path] = None) -> Evaluation:
    """`vqrt eval vqgan`: the run's weights on the held-out side of data, split as in training
    (the run's val_fraction unless given). size defaults to the run's training size.
    perceptual_weights: LPIPS weights (see losses.load_lpips), to report LPIPS too;
    inception_weights: FID Inception weights (see fid.load_fid_inception), to report rFID."""
    from vqrt.trainer.checkpoints import load_checkpoint
    from vqrt.trainer.training import SETTINGS_FILE, read_settings
    loaded = load_checkpoint(run)
    if loaded.kind != "vqgan":
        from vqrt.trainer.training import TrainingError
        raise TrainingError(f"{run}: holds a {loaded.kind} model; vqrt eval vqgan needs a "
                            "first-stage run")
    settings = read_settings(run) if (run / SETTINGS_FILE).is_file() else {}
    size = size or settings.get("resize") or settings.get("size") or \
        loaded.config.ddconfig.resolution
    val_fraction = val_fraction or settings.get("val_fraction", 0.1)
    stage = StageInput.of(loaded.config)
    dataset = stage.load(data, size, val_fraction)
    lpips = None
    if perceptual_weights is not None:
        from vqrt.trainer.losses import load_lpips
        lpips = load_lpips(perceptual_weights)
    inception = None
    if inception_weights is not None:
        from vqrt.trainer.fid import load_fid_inception
        inception = load_fid_inception(inception_weights)
    return evaluate_first_stage(loaded.model, dataset, size, stage, lpips, inception)

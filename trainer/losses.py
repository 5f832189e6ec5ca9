"""The VQGAN objective's parts: pixel loss, patch discriminator, GAN losses, adaptive weight,
LPIPS.

Layouts follow upstream taming-transformers (taming.modules.discriminator.model.
NLayerDiscriminator, taming.modules.losses.lpips.LPIPS) so their state dicts are
interchangeable with the loss.discriminator.* and loss.perceptual_loss.* keys of an upstream
VQGAN checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F


PIXEL_LOSSES = ("l1", "log-mse")


def pixel_loss(x: torch.Tensor, reconstruction: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, C, H, W) images and reconstructions in [-1, 1] -> scalar loss.
    l1 (upstream): mean |x - x'|. log-mse (not upstream): the mean over images of ln(MSE_i),
    which is ln(4) - ln(10) / 10 * PSNR_i for PSNR on [0, 1] pixels: its mean is the mean
    per-image PSNR that `vqrt eval` reports, up to sign and scale. A mean of L1 or MSE over the
    batch counts a pixel's error the same in whichever image it lies; this scales each image's
    gradient by 1 / MSE_i, so halving any image's error gains the same, as in the mean PSNR."""
    error = x - reconstruction
    if kind == "l1":
        return error.abs().mean()
    if kind == "log-mse":
        # The floor keeps a perfect reconstruction's loss finite (PSNR 106 dB).
        return error.square().mean(dim=(1, 2, 3)).clamp_min(1e-10).log().mean()
    raise ValueError(f"unknown pixel loss {kind!r}: one of {', '.join(PIXEL_LOSSES)}")


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs, stride 2 for the first n_layers, then two stride-1 convs; widths
    ndf * min(2**i, 8); BatchNorm (no conv bias) on all but the first and last; LeakyReLU 0.2.
    x (B, in_channels, H, W) -> patch logits (B, 1, H', W'), e.g. 64 px -> 6 x 6 for
    n_layers 3. Parameters under main.<i> as upstream."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):
            next_width = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(next_width), nn.LeakyReLU(0.2, True)]
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_discriminator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _init_discriminator(module: nn.Module) -> None:
    # Upstream's DCGAN-style init: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISCRIMINATOR_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor,
                    last_layer: torch.Tensor) -> torch.Tensor:
    """The paper's lambda: |grad of rec_loss| / (|grad of gan_loss| + 1e-4) at last_layer (the
    decoder's conv_out.weight), clamped to [0, 1e4] and detached, as upstream. Both losses
    keep their graphs for the backward pass that follows."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()


# --- LPIPS perceptual loss ----------------------------------------------------------------

# (first, last) indices into torchvision's vgg16().features of each LPIPS slice: outputs are
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 with 64, 128, 256, 512, 512 channels.
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_VGG_CHANNELS = (64, 128, 256, 512, 512)
# VGG16 "D" feature stack: conv widths, "M" = 2x2 max pool.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512,
                 512, "M")
UPSTREAM_PREFIX = "loss.perceptual_loss."


def _vgg16_features() -> list:
    layers, width = [], 3
    for entry in _VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, entry, 3, padding=1), nn.ReLU(inplace=False)]
            width = entry
    return layers


class _LinearHead(nn.Module):
    """1x1 conv from a feature map to one channel, no bias (upstream NetLinLayer; model.0 is
    its dropout, model.1 the conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Learned perceptual distance on frozen VGG16 features. Keys as upstream: scaling_layer.
    {shift, scale}, net.slice<k>.<features index>.{weight, bias}, lin<k>.model.1.weight.
    forward(a, b) with images (B, 3, H, W) in [-1, 1] -> distance (B, 1, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = nn.Module()
        self.scaling_layer.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.scaling_layer.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        features = _vgg16_features()
        self.net = nn.Module()
        for k, (first, last) in enumerate(_VGG_SLICES, start=1):
            block = nn.Sequential()
            for index in range(first, last):
                block.add_module(str(index), features[index])
            setattr(self.net, f"slice{k}", block)
        for k, channels in enumerate(_VGG_CHANNELS):
            setattr(self, f"lin{k}", _LinearHead(channels))
        self.eval()
        self.requires_grad_(False)

    def _features(self, x: torch.Tensor):
        h = (x - self.scaling_layer.shift) / self.scaling_layer.scale
        outputs = []
        for k in range(1, len(_VGG_SLICES) + 1):
            h = getattr(self.net, f"slice{k}")(h)
            outputs.append(h)
        return outputs

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = 0.0
        for k, (fa, fb) in enumerate(zip(self._features(a), self._features(b))):
            # Unit-normalised along channels (eps 1e-10), squared difference, learned
            # per-channel weights, mean over space.
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            weighted = getattr(self, f"lin{k}").model((fa - fb) ** 2)
            distance = distance + weighted.mean(dim=(2, 3), keepdim=True)
        return distance


def read_weights_file(path: Path, what: str) -> Dict[str, torch.Tensor]:
    """A weights file the user supplies (`what` names it in errors): safetensors, or a torch
    file read safely (see below) -> name -> tensor; TrainingError if missing or unreadable."""
    from safetensors import SafetensorError
    from vqrt.trainer.checkpoints import CheckpointError, _lightning_state_dict
    from vqrt.trainer.training import TrainingError
    if not path.is_file():
        raise TrainingError(f"{path}: {what} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        # Torch files go through the checkpoint reader: weights_only, or its restricted
        # unpickler for Lightning files, so an upstream VQGAN .ckpt can lend its
        # loss.perceptual_loss.*.
        return _lightning_state_dict(path)
    except (SafetensorError, CheckpointError, OSError) as e:
        raise TrainingError(f"{path}: not a readable safetensors or torch weights file "
                            f"({' '.join(str(e).split())})")


def load_lpips(path: Path) -> LPIPS:
    """LPIPS with weights from path: a safetensors or torch file holding the LPIPS keys (bare,
    or under loss.perceptual_loss. as in an upstream VQGAN checkpoint)."""
    from vqrt.trainer.training import TrainingError
    state = read_weights_file(path, "perceptual weights")
    if any(k.startswith(UPSTREAM_PREFIX) for k in state):
        state = {k[len(UPSTREAM_PREFIX):]: v for k, v in state.items()
                 if k.startswith(UPSTREAM_PREFIX)}
    model = LPIPS()
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise TrainingError(f"{path}: not LPIPS weights (missing {', '.join(missing[:3])}"
                            f"{' and more' if len(missing) > 3 else ''}); expected the "
                            "upstream LPIPS layout: net.slice1.0.weight ... lin4.model.1.weight")
    model.load_state_dict({k: state[k].float() for k in expected})
    return model

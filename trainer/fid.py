"""rFID: the Frechet distance between Inception features of held-out photos and of their
reconstructions, with the FID Inception network whose weights the user supplies (nothing can be
downloaded; the file is pytorch-fid's pt_inception-2015-12-05 port of TensorFlow's FID graph,
or the same keys in safetensors).

Network (the FID variant of Inception v3, as pytorch-fid builds it): every conv is
conv (no bias) + BatchNorm (eps 1e-3) + ReLU; the average-pool branches of the A, C and first E
blocks leave the zero padding out of their means (TensorFlow's pooling); the last E block pools
its branch with a max instead. Images in [0, 1] are resized to 299 x 299 (bilinear,
align_corners False), mapped to [-1, 1], and the features are the 2048 channels after Mixed_7c,
averaged over space. The classifier (fc, 1008 classes) is loaded but never run.

Distance: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64, with
Tr((S_a S_b)^(1/2)) taken as the sum of the square roots of the eigenvalues of the symmetric
S_a^(1/2) S_b S_a^(1/2) (the same eigenvalues, without a non-symmetric square root). With fewer
images than 2048 features the covariances are rank-deficient and the value is biased upwards:
compare rFIDs over the same number of images only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURES = 2048
INPUT_SIDE = 299
FC_CLASSES = 1008

Kernel = Tuple[int, int]


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys conv.weight, bn.*."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _mean_pool(x: torch.Tensor) -> torch.Tensor:
    """3 x 3, stride 1, the zero padding left out of each mean."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # Mixed_5b..5d: 64 + 64 + 96 + pool_features channels
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_mean_pool(x))], 1)


class BlockB(nn.Module):  # Mixed_6a: 288 -> 384 + 96 + 288 channels, half the side
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2)], 1)


def _row(cin: int, cout: int) -> ConvBN:  # a 1 x 7 conv
    return ConvBN(cin, cout, (1, 7), padding=(0, 3))


def _column(cin: int, cout: int) -> ConvBN:  # a 7 x 1 conv
    return ConvBN(cin, cout, (7, 1), padding=(3, 0))


class BlockC(nn.Module):  # Mixed_6b..6e: 768 -> 4 x 192 channels, factorised 7 x 7 convs
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = _row(c7, c7)
        self.branch7x7_3 = _column(c7, 192)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _column(c7, c7)
        self.branch7x7dbl_3 = _row(c7, c7)
        self.branch7x7dbl_4 = _column(c7, c7)
        self.branch7x7dbl_5 = _row(c7, 192)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        double = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = conv(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_mean_pool(x))], 1)


class BlockD(nn.Module):  # Mixed_7a: 768 -> 320 + 192 + 768 channels, half the side
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _row(192, 192)
        self.branch7x7x3_3 = _column(192, 192)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        seven = self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(seven),
            F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # Mixed_7b, 7c: 320 + 768 + 768 + 192 = 2048 channels
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # Mixed_7c of the FID graph
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _mean_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> features (B, 2048); state-dict keys as pytorch-fid's."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, FC_CLASSES)  # part of the weights file; unused

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear",
                          align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def load_fid_inception(path: Path) -> FIDInception:
    """The FID Inception with weights from path (pytorch-fid's .pth, or safetensors with its
    keys); BatchNorm's num_batches_tracked may be present or not."""
    from vqrt.trainer.losses import read_weights_file
    from vqrt.trainer.training import TrainingError
    state = read_weights_file(path, "Inception weights")
    model = FIDInception()
    expected = {k: v for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or wrong:
        names = missing or wrong
        raise TrainingError(
            f"{path}: not FID Inception weights ({'missing' if missing else 'wrong shape of'} "
            f"{', '.join(names[:3])}{' and more' if len(names) > 3 else ''}); expected "
            f"pytorch-fid's pt_inception-2015-12-05 layout: Conv2d_1a_3x3.conv.weight ... "
            f"fc.bias")
    model.load_state_dict({k: state[k].float() for k in expected}, strict=False)
    return model.eval()


def feature_statistics(features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> mean (D,) and covariance (D, D) with N - 1 in the denominator, float64."""
    features = features.double()
    return features.mean(dim=0), torch.cov(features.T)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor,
                     cov_b: torch.Tensor) -> float:
    """The Frechet distance of two Gaussians (see the module doc), float64."""
    root_a = _psd_sqrt(cov_a.double())
    middle = root_a @ cov_b.double() @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    difference = mean_a.double() - mean_b.double()
    return float(difference @ difference + torch.trace(cov_a) + torch.trace(cov_b)
                 - 2 * trace_root)


class RFID:
    """Collects Inception features of reference and reconstructed batches; .value() at the end."""

    def __init__(self, inception: FIDInception):
        self.inception = inception
        self.features: Dict[str, List[torch.Tensor]] = {"reference": [], "reconstruction": []}

    def add(self, reference: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """(B, 3, H, W) in [0, 1] each."""
        self.features["reference"].append(self.inception(reference.cpu()))
        self.features["reconstruction"].append(self.inception(reconstruction.cpu()))

    def value(self) -> float:
        count = sum(len(f) for f in self.features["reference"])
        if count < 2:
            from vqrt.trainer.training import TrainingError
            raise TrainingError(f"rFID needs at least 2 held-out images, got {count}: hold out "
                                f"more (--val-fraction) or leave --inception-weights out")
        reference = feature_statistics(torch.cat(self.features["reference"]))
        reconstruction = feature_statistics(torch.cat(self.features["reconstruction"]))
        return frechet_distance(*reference, *reconstruction)

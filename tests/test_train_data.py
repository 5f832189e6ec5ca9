"""Bad training data stops before the first step with one line naming the file, and leaves
no checkpoint behind; the held-out split depends on file names only; SSIM matches a scipy
reference."""

import numpy as np
import pytest
import torch
from PIL import Image

from train_helpers import (
    depth_subset, image_subset, needs_data, segmentation_subset, tiny_depth_config,
    tiny_segmentation_config, tiny_vqgan_config)
from vqrt.cli import main
from vqrt.runtime.image_io import read_depth_map
from vqrt.trainer.data import split
from vqrt.trainer.evaluate import psnr, ssim

torch.set_num_threads(1)


def train_vqgan(tmp_path, data, *extra, config=None):
    config = config or tiny_vqgan_config(tmp_path / "tiny.yaml")
    return main(["train", "vqgan", "--data", str(data), "--config", str(config), "--out",
                 str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", *extra])


def assert_stops_naming(capsys, tmp_path, code, name, message):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("vqrt: error: "), err
    assert name in err and message in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = train_vqgan(tmp_path, tmp_path / "empty")
    assert_stops_naming(capsys, tmp_path, code, str(tmp_path / "empty"), "no JPEG or PNG")


@needs_data
def test_unreadable_image(tmp_path, capsys):
    data = image_subset(tmp_path / "photos", 3)
    (data / "broken.jpg").write_bytes(b"not a jpeg at all")
    code = train_vqgan(tmp_path, data)
    assert_stops_naming(capsys, tmp_path, code, "broken.jpg", "not a readable image")


@needs_data
def test_segmentation_without_its_photo(tmp_path, capsys):
    data = segmentation_subset(tmp_path / "ade", 3)
    orphan = sorted((data / "images").iterdir())[0]
    orphan.unlink()
    config = tiny_segmentation_config(tmp_path / "seg.yaml", 151)
    code = train_vqgan(tmp_path, data, "--n-labels", "151", config=config)
    assert_stops_naming(capsys, tmp_path, code, orphan.stem + ".png",
                        "segmentation without its photo")


@needs_data
def test_label_at_or_above_n_labels(tmp_path, capsys):
    data = segmentation_subset(tmp_path / "ade", 3)
    config = tiny_segmentation_config(tmp_path / "seg.yaml", 10)
    code = train_vqgan(tmp_path, data, "--n-labels", "10", config=config)
    first = sorted((data / "segmentations").iterdir())[0]
    assert_stops_naming(capsys, tmp_path, code, first.name, "is not below n_labels 10")


@needs_data
def test_depth_map_without_its_photo_and_of_another_size(tmp_path, capsys):
    data = depth_subset(tmp_path / "depth", 4)
    config = tiny_depth_config(tmp_path / "depth.yaml")
    orphan = sorted((data / "images").iterdir())[0]
    orphan.unlink()
    code = train_vqgan(tmp_path, data, config=config)
    assert_stops_naming(capsys, tmp_path, code, orphan.stem, "depth map without its photo")
    resized = sorted((data / "depth").glob("*.png"))[-1]
    Image.open(resized).resize((40, 30)).save(resized)
    (data / "depth" / (orphan.stem + ".png")).unlink()
    code = train_vqgan(tmp_path, data, config=config)
    assert_stops_naming(capsys, tmp_path, code, resized.name, "depth map is 40x30")


@needs_data
def test_unusable_depth_maps(tmp_path, capsys):
    data = depth_subset(tmp_path / "depth", 3)
    config = tiny_depth_config(tmp_path / "depth.yaml")
    color = sorted((data / "depth").glob("*.png"))[0]
    Image.open(sorted((data / "images").iterdir())[0]).save(color)  # an RGB photo
    code = train_vqgan(tmp_path, data, config=config)
    assert_stops_naming(capsys, tmp_path, code, color.name, "got mode RGB")
    nan = np.full((4, 4), np.nan, dtype="<f4").view(np.uint8).reshape(4, 4, 4)
    Image.fromarray(nan).save(color)  # RGBA whose bytes are no float32 depths
    code = train_vqgan(tmp_path, data, config=config)
    assert_stops_naming(capsys, tmp_path, code, color.name, "NaN or infinite")


def test_depth_maps_read_alike_in_every_format(tmp_path):
    """read_depth_map (trainer and runtime): every format scales per map to [-1, 1] as
    upstream, 2 (d - min) / (max - min) - 1; a flat map is all -1."""
    depth = np.array([[1.5, 3.0], [6.0, 4.5]], dtype=np.float32)
    expected = 2 * (depth - 1.5) / 4.5 - 1
    Image.fromarray((depth * 1000).astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray((depth * 40).astype(np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(depth.astype("<f4").view(np.uint8).reshape(2, 2, 4)).save(
        tmp_path / "rgba.png")
    np.save(tmp_path / "plain.npy", depth)
    for name in ("sixteen.png", "eight.png", "rgba.png", "plain.npy"):
        np.testing.assert_allclose(read_depth_map(tmp_path / name), expected, atol=1e-6,
                                   err_msg=name)
    np.save(tmp_path / "flat.npy", np.full((3, 3), 7.0))
    assert (read_depth_map(tmp_path / "flat.npy") == -1).all()


def test_split_depends_on_names_only():
    names = [f"photo_{i:03d}.jpg" for i in range(200)]
    train, held = split(names, 0.1)
    assert sorted(train + held) == list(range(200)) and 5 < len(held) < 40
    held_names = {names[i] for i in held}
    more = names + [f"extra_{i}.jpg" for i in range(50)]
    _, held_more = split(more, 0.1)
    assert held_names == {more[i] for i in held_more if more[i].startswith("photo_")}


def test_ssim_and_psnr_match_references():
    from scipy.ndimage import gaussian_filter
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 40, 48, generator=generator)
    b = (a + 0.1 * torch.randn(1, 3, 40, 48, generator=generator)).clamp(0, 1)

    def reference(x, y):  # Wang et al. with scipy's Gaussian (radius 5), borders cropped
        def blur(t):
            return gaussian_filter(t, 1.5, truncate=3.5)[5:-5, 5:-5]
        values = []
        for channel in range(3):
            xc, yc = x[0, channel].double().numpy(), y[0, channel].double().numpy()
            mx, my = blur(xc), blur(yc)
            vx, vy, cxy = blur(xc * xc) - mx ** 2, blur(yc * yc) - my ** 2, blur(xc * yc) - mx * my
            c1, c2 = 0.01 ** 2, 0.03 ** 2
            values.append(np.mean((2 * mx * my + c1) * (2 * cxy + c2)
                                  / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))))
        return float(np.mean(values))

    assert float(ssim(a, b)[0]) == pytest.approx(reference(a, b), abs=1e-6)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-9)
    mse = float(((a - b) ** 2).mean())
    assert float(psnr(a, b)[0]) == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)

"""rFID in `vqrt eval vqgan`: the Frechet distance against scipy's matrix square root, the FID
Inception's layout (pytorch-fid's keys, and the parameter count of torchvision's Inception v3
without its auxiliary head, with 1008 classes), and the CLI with a weights file."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from train_helpers import image_subset, needs_data, tiny_vqgan_config
from vqrt.cli import main
from vqrt.trainer.fid import FIDInception, feature_statistics, frechet_distance

torch.set_num_threads(1)

# torchvision's inception_v3 has 27,161,264 parameters; its AuxLogits head 3,326,696; the FID
# graph's classifier has 1008 outputs instead of 1000 (8 x 2048 weights + 8 biases more).
FID_INCEPTION_PARAMETERS = 27_161_264 - 3_326_696 + 8 * 2048 + 8


def test_frechet_distance_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 12)) @ rng.standard_normal((12, 12))
    b = rng.standard_normal((30, 12)) * 0.5 + 0.3
    mean_a, cov_a = feature_statistics(torch.from_numpy(a))
    mean_b, cov_b = feature_statistics(torch.from_numpy(b))
    root = linalg.sqrtm(cov_a.numpy() @ cov_b.numpy()).real
    expected = (np.sum((mean_a - mean_b).numpy() ** 2) + np.trace(cov_a.numpy())
                + np.trace(cov_b.numpy()) - 2 * np.trace(root))
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9)
    assert abs(frechet_distance(mean_a, cov_a, mean_a, cov_a)) < 1e-9


def test_the_network_has_the_fid_inception_layout():
    model = FIDInception().eval()
    assert sum(p.numel() for p in model.parameters()) == FID_INCEPTION_PARAMETERS
    keys = model.state_dict()
    assert keys["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert keys["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert keys["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert keys["fc.weight"].shape == (1008, 2048)
    assert model.Conv2d_1a_3x3.bn.eps == 1e-3
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2048)


@needs_data
def test_eval_reports_rfid_with_the_weights(tmp_path, capsys):
    data = image_subset(tmp_path / "photos", 12)
    run = tmp_path / "run"
    assert main(["train", "vqgan", "--data", str(data), "--config",
                 str(tiny_vqgan_config(tmp_path / "tiny.yaml")), "--out", str(run),
                 "--steps", "2", "--batch-size", "2"]) == 0
    torch.manual_seed(0)
    state = FIDInception().state_dict()  # random weights in the pytorch-fid layout
    torch.save(state, tmp_path / "pt_inception.pth")  # with num_batches_tracked
    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
              str(tmp_path / "inception.safetensors"))
    capsys.readouterr()
    for name in ("pt_inception.pth", "inception.safetensors"):
        assert main(["eval", "vqgan", str(run), "--data", str(data), "--val-fraction", "0.3",
                     "--inception-weights", str(tmp_path / name), "--json"]) == 0
        out = capsys.readouterr().out
        assert '"rfid": ' in out and '"rfid": null' not in out, out
    bad = {k: v for k, v in state.items() if not k.startswith("Mixed_7c")}
    torch.save(bad, tmp_path / "bad.pth")
    assert main(["eval", "vqgan", str(run), "--data", str(data), "--inception-weights",
                 str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not FID Inception weights (missing Mixed_7c." in err, err

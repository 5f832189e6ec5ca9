"""`vqrt generate`, `vqrt encode` and `vqrt decode` on the golden bundle: round trips against the
upstream references, the batch grid, one-line errors that leave no file behind, and a
generation in a process where torch cannot be imported."""
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from vqrt.cli import ProgressLine, main
from vqrt.runtime import to_pixels


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def test_generate_writes_a_grid_and_tokens(golden_bundle, golden_refs, tmp_path, capsys):
    out, tokens = tmp_path / "out.png", tmp_path / "tokens.npy"
    code, stdout, _ = run(capsys, "generate", golden_bundle, "-o", out, "--class", 0, "--class",
                          3, "--greedy", "--save-tokens", tokens, "--backend", "onnxruntime")
    assert code == 0 and "2 images 64x64, a grid" in stdout
    np.testing.assert_array_equal(np.load(tokens), golden_refs["greedy_grid"])
    grid = read_png(out)
    assert grid.shape == (64, 128, 3)  # ceil(sqrt(2)) = 2 columns, one row
    images = to_pixels(golden_refs["greedy_image"])
    for i in range(2):  # the decoder's ~3e-6 error moves at most a boundary pixel by 1
        tile = grid[:, 64 * i:64 * (i + 1)].astype(int)
        assert np.abs(tile - images[i]).max() <= 1 and (tile != images[i]).sum() <= 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "tokens.npy"]


def test_generate_batch_of_three_is_a_two_by_two_grid(golden_bundle, tmp_path, capsys):
    out, tokens = tmp_path / "out.png", tmp_path / "tokens.npy"
    code, _, _ = run(capsys, "generate", golden_bundle, "-o", out, "--class", 2, "--batch", 3,
                     "--seed", 7, "--top-k", 30, "--top-p", 0.95, "--temperature", 0.9,
                     "--save-tokens", tokens)
    assert code == 0
    grid = read_png(out)
    assert grid.shape == (128, 128, 3) and not grid[64:, 64:].any()  # the fourth cell is empty
    decoded = tmp_path / "decoded.png"
    assert run(capsys, "decode", golden_bundle, "--tokens", tokens, "-o", decoded)[0] == 0
    np.testing.assert_array_equal(read_png(decoded), grid)


def test_generate_one_file_per_row(golden_bundle, tmp_path, capsys):
    """{i} in -o's name: row i's image alone, the grid's cell i."""
    argv = ["--class", 2, "--batch", 3, "--seed", 7, "--top-k", 30]
    assert run(capsys, "generate", golden_bundle, "-o", tmp_path / "grid.png", *argv)[0] == 0
    code, stdout, _ = run(capsys, "generate", golden_bundle, "-o", tmp_path / "row-{i}.png",
                          *argv)
    assert code == 0 and "row-0.png .. " in stdout and "a grid" not in stdout
    grid = read_png(tmp_path / "grid.png")
    for i in range(3):
        cell = grid[64 * (i // 2):64 * (i // 2 + 1), 64 * (i % 2):64 * (i % 2 + 1)]
        np.testing.assert_array_equal(read_png(tmp_path / f"row-{i}.png"), cell)


def test_generate_per_row_files_are_all_written_or_none(golden_bundle, tmp_path, capsys):
    (tmp_path / "row-1.png").mkdir()  # row 1's file cannot be written
    code, _, err = run(capsys, "generate", golden_bundle, "-o", tmp_path / "row-{i}.png",
                       "--class", 1, "--batch", 2)
    assert code == 2 and "row-1.png: is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["row-1.png"]
    code, _, err = run(capsys, "generate", golden_bundle, "-o", tmp_path / "{i}" / "a.png",
                       "--class", 1)
    assert code == 2 and "{i} may stand in the file name only" in err


def test_decode_npy_is_the_raw_decoder_output(golden_bundle, golden_refs, tmp_path, capsys):
    tokens, out = tmp_path / "grid.npy", tmp_path / "raw.npy"
    np.save(tokens, golden_refs["greedy_grid"][1])  # one [h, w] grid
    assert run(capsys, "decode", golden_bundle, "--tokens", tokens, "-o", out)[0] == 0
    raw = np.load(out)
    assert raw.dtype == np.float32 and raw.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(raw[0], golden_refs["greedy_image"][1], rtol=0, atol=1e-4)
    assert raw.min() < -1 and raw.max() > 1  # unclamped


def test_encode_npy_and_png(golden_bundle, golden_refs, tmp_path, capsys):
    x, tokens = tmp_path / "x.npy", tmp_path / "tokens.npy"
    np.save(x, golden_refs["x"])
    assert run(capsys, "encode", golden_bundle, "--input", x, "--save-tokens", tokens)[0] == 0
    np.testing.assert_array_equal(np.load(tokens), golden_refs["indices"])
    photo = tmp_path / "photo.png"
    Image.fromarray(to_pixels(golden_refs["x"])[0]).save(photo)
    assert run(capsys, "encode", golden_bundle, "--input", photo, "--save-tokens", tokens)[0] == 0
    assert np.load(tokens).shape == (1, 8, 8)


@pytest.mark.parametrize("argv, expected", [
    (["generate", "{b}", "-o", "{o}", "--class", "8"], "class id 8 is out of range: the bundle "
                                                      "has 8 classes"),
    (["generate", "{b}", "-o", "{o}", "--class", "1", "--size", "64x60"],
     "size height 60 is not a multiple of the downsampling factor 8"),
    (["generate", "{b}", "-o", "{o}", "--class", "1", "--batch", "12"],
     "requested batch 12 exceeds the bundle's max batch 8"),
    (["generate", "{b}", "-o", "{o}", "--class", "1", "--top-k", "1000"],
     "top_k 1000 exceeds the bundle's vocabulary of 256 image codes"),
    (["generate", "{b}", "-o", "{o}", "--class", "1", "--size", "big"],
     "--size must be WIDTHxHEIGHT"),
    (["generate", "{b}", "-o", "{d}/out.jpg", "--class", "1"], "must end in .png"),
    (["decode", "{b}", "--tokens", "{d}/missing.npy", "-o", "{o}"], "missing.npy: no such file"),
    (["generate", "{b}", "-o", "{o}", "--class", "1.5"],  # argparse's, without its usage block
     "argument --class: invalid int value: '1.5' (see vqrt generate --help)"),
])
def test_errors_are_one_line_and_leave_no_file(golden_bundle, tmp_path, capsys, argv, expected):
    fill = dict(b=golden_bundle, o=tmp_path / "out.png", d=tmp_path)
    code, _, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2
    assert err.startswith("vqrt: error: ") and err.count("\n") == 1 and expected in err, err
    assert list(tmp_path.iterdir()) == []


def test_generates_without_torch(golden_bundle, golden_refs, tmp_path):
    """A process in which `import torch` fails (sys.modules entry None) imports the runtime and
    the CLI and generates; neither torch nor vqrt.trainer is loaded."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["vqrt.trainer"] = None
        from vqrt.cli import main
        assert main(["generate", {str(golden_bundle)!r}, "-o", {str(tmp_path / "g.png")!r},
                     "--class", "0", "--class", "3", "--greedy",
                     "--save-tokens", {str(tmp_path / "g.npy")!r}]) == 0
        import vqrt.runtime
        loaded = [m for m in sys.modules if m.startswith(("torch", "vqrt.trainer", "vqrt.export"))
                  and sys.modules[m] is not None]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ,
                                                                  "PYTHONWARNINGS": "error"})
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), golden_refs["greedy_grid"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_a_terminal():
    """A megapixel run samples for minutes: on a terminal one line says how far it is; in a log
    or a pipe nothing is written."""
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = ProgressLine(stream, interval_s=0.0)
        progress(1024, 4096)
        progress(4096, 4096)
        progress.clear()
    updates = terminal.getvalue().split("\r\033[K")
    assert updates[0] == "" and updates[-1] == "" and len(updates) == 4, updates
    assert updates[1].startswith("sampling: 1024/4096 tokens per row (25%), ")
    assert updates[1].endswith(" s left")
    assert updates[2] == "sampled 4096 tokens per row; decoding the image"
    assert log.getvalue() == ""

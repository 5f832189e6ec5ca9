"""The C++ example examples/generate_tokens.cpp (the C API of csrc/include/vqrt.h over a bundle)
against the Python Generator on the golden bundle: the same tokens for the same bundle, params
and seed, greedy and sampled, and the same refusals.

The example is built by CMake into build/cpp-cuda-OFF, the CPU-only folder of `make test-cpp`
(which runs first in `make test`, so there the build is a no-op); run alone, this test
configures and builds that folder itself (the first time takes minutes)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vqrt.runtime.generator import Generator
from vqrt.runtime.params import GenerationParams, RequestError

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp-cuda-OFF"


def _tool(name: str) -> str:
    """A build tool next to this interpreter (the venv's cmake / ninja), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: pip install {name}")
    return found


def _run(command) -> None:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert done.returncode == 0, (f"{' '.join(map(str, command))} failed:\n"
                                  f"{done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def example() -> Path:
    cmake = _tool("cmake")
    if not (BUILD / "CMakeCache.txt").is_file():
        _run([cmake, "-S", ROOT, "-B", BUILD, "-G", "Ninja",
              f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", "-DVQRT_CUDA=OFF"])
    _run([cmake, "--build", BUILD, "--target", "generate_tokens", "-j", str(os.cpu_count() or 1)])
    return BUILD / "generate_tokens"


@pytest.fixture(scope="module")
def generator(golden_bundle) -> Generator:
    return Generator(golden_bundle, backend="native")


def c_tokens(example: Path, bundle: Path, *args) -> np.ndarray:
    """The example's tokens, int64 [B, h*w]."""
    done = subprocess.run([str(example), str(bundle), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.array([[int(t) for t in line.split()] for line in done.stdout.splitlines()],
                    dtype=np.int64)


def python_tokens(generator: Generator, classes, params: GenerationParams,
                  batch=None) -> np.ndarray:
    """The Generator's tokens, int64 [B, h*w] (no image decoding)."""
    generation = generator.start(class_labels=classes, batch_size=batch, params=params)
    while not generation.done:
        generation.step()
    return generation.tokens


@pytest.mark.parametrize("classes, batch, params", [
    ([3, 5], None, GenerationParams(greedy=True)),
    ([0], 3, GenerationParams(top_k=50, top_p=0.9, temperature=0.9, seed=123)),
    ([7, 2], None, GenerationParams(seed=2**64 - 1)),  # row 1 wraps to seed 0
    ([6], None, GenerationParams(top_k=10, seed=9, size=(32, 48))),  # a 6 x 4 grid
], ids=["greedy", "top-k-top-p-batch", "all-codes-seed-wrap", "smaller-size"])
def test_c_api_tokens_equal_the_python_generator(example, golden_bundle, generator, classes,
                                                 batch, params):
    args = [a for c in classes for a in ("--class", c)] + ["--seed", params.seed]
    if batch is not None:
        args += ["--batch", batch]
    if params.top_k is not None:
        args += ["--top-k", params.top_k]
    args += ["--top-p", params.top_p, "--temperature", params.temperature, "--threads", 2]
    if params.greedy:
        args.append("--greedy")
    if params.size is not None:
        args += ["--size", f"{params.size[0]}x{params.size[1]}"]
    got = c_tokens(example, golden_bundle, *args)
    want = python_tokens(generator, classes, params, batch)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("args, python_call", [
    (["--class", 8], lambda g: python_tokens(g, [8], GenerationParams())),
    (["--class", 1, "--top-k", 300], lambda g: python_tokens(g, [1], GenerationParams(top_k=300))),
    (["--class", 1, "--size", "60x64"],
     lambda g: python_tokens(g, [1], GenerationParams(size=(60, 64)))),
    (["--class", 1, "--batch", 9], lambda g: python_tokens(g, [1], GenerationParams(), 9)),
], ids=["class", "top-k", "size", "batch"])
def test_c_api_refuses_what_python_refuses(example, golden_bundle, generator, args, python_call):
    done = subprocess.run([str(example), str(golden_bundle), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    with pytest.raises(RequestError) as python_error:
        python_call(generator)
    assert done.stderr.strip() == f"generate_tokens: {python_error.value}"


def test_c_api_refuses_a_changed_bundle(example, golden_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(golden_bundle, bundle)
    weights = bundle / "native_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    done = subprocess.run([str(example), str(bundle), "--class", "1"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"generate_tokens: {weights}: SHA-256 does not match the "
                                   "manifest (changed after the build); rebuild it with `vqrt "
                                   "build`")

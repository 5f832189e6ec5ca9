"""Fixtures shared across test files: golden set A (made by the upstream code, ../shared/golden)
and one fp32 bundle built from it per session. Tests that use them skip where the golden data
is absent."""
from pathlib import Path

import numpy as np
import pytest

from torch_threads import one_torch_thread
from shared_data import GOLDEN


def _require_golden() -> None:
    if not (GOLDEN / "model.ckpt").is_file():
        pytest.skip(f"golden data not found at {GOLDEN}")


@pytest.fixture(scope="session")
def golden_refs():
    """refs.npz of golden set A as a dict of arrays."""
    _require_golden()
    with np.load(GOLDEN / "refs.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def golden_bundle(tmp_path_factory) -> Path:
    """An fp32 bundle of golden set A (`vqrt build` defaults: native weights and every ONNX
    graph, max batch 8). Read-only: copy it before changing anything."""
    _require_golden()
    from vqrt.export.build import BuildOptions, build_bundle
    out = tmp_path_factory.mktemp("golden-bundle") / "bundle"
    with one_torch_thread():
        build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(),
                     config=GOLDEN / "transformer.yaml", log=lambda line: None)
    return out

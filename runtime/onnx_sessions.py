"""ONNX Runtime sessions over bundle graphs: which execution providers to ask for, and which
one really runs each graph.

ONNX Runtime falls back to the CPU provider silently when the CUDA provider cannot start (no
driver, no GPU, a missing cuDNN), so the providers asked for say little: `open_session`
reads `get_providers()` of the created session (`OrtGraph.providers`, `runs_on_cuda`), and
device "cuda" fails when the CUDA provider did not take the graph. A session opened with the
manifest's GraphSpec is checked against it: a graph swapped for another (hashes rewritten to
match) is refused when it opens, not as onnxruntime's missing-input error after sampling.
This module never imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from vqrt.runtime.bundle import REBUILD, BundleError, GraphSpec, TensorSpec
from vqrt.runtime.params import RequestError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def execution_providers(device: str) -> Tuple[str, ...]:
    """device "cpu": the CPU provider; "cuda": CUDA first (it must be installed); "auto": CUDA
    first where this onnxruntime has it, else the CPU. The CPU provider is always last: it runs
    the nodes the CUDA provider has no kernel for."""
    if device not in DEVICES:
        raise RequestError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cpu" or (device == "auto" and CUDA_PROVIDER not in available):
        return (CPU_PROVIDER,)
    if CUDA_PROVIDER not in available:
        raise RequestError(f"device cuda needs onnxruntime-gpu (this onnxruntime "
                           f"{ort.__version__} offers {', '.join(available)}): pip install "
                           "onnxruntime-gpu in place of onnxruntime, or use device cpu")
    return (CUDA_PROVIDER, CPU_PROVIDER)


def open_session(path: Path, providers: Tuple[str, ...], device: str, num_threads: int = 0, *,
                 spin: bool = True, arena: bool = True, pattern: bool = True
                 ) -> ort.InferenceSession:
    """A session for one graph; num_threads: intra-op threads, 0 = ONNX Runtime's default.
    spin=False: its intra-op threads sleep as soon as a run ends, for sessions run one after
    another (the tiled decoder's steps: each session has its own pool, and a finished session's
    spinning threads would take the cores from the next: 2x slower on 2 cores).
    arena=False: no memory arena, which would keep a run's temporaries for good (each of the
    tiled decoder's dozens of step sessions its largest tile's: gigabytes).
    pattern=False: no memory pattern, for graphs whose calls are large or vary in shape (the
    encoders, the whole-image decoder, the transformer's prefill). After a first run ONNX
    Runtime plans each run's memory as one block per set of input shapes, which the arena
    cannot serve from the chunks earlier runs left it, so it adds the block and keeps both:
    from its second call such a session held twice one call's need (a 1024x1024 decode 4.2 GiB
    against 2.1; without the pattern 2.1 GiB, and no slower: BENCHMARKS.md, "Memory of ONNX
    Runtime sessions").
    With device "cuda", a session the CUDA provider did not take is an error."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not arena:
        options.enable_cpu_mem_arena = False
    if not pattern:
        options.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph,
            ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.InvalidArgument,
            ort_errors.RuntimeException) as e:
        # A listed graph whose hash matches can still be garbage, name an operator this
        # onnxruntime lacks, or point its external data outside the bundle (which onnxruntime
        # refuses): one line naming the file, not onnxruntime's multi-line report.
        first = " ".join(str(e).split())[:300]
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({first}); "
                          f"{REBUILD}") from None
    if device == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
        raise RequestError(f"{path.name}: ONNX Runtime fell back to {session.get_providers()[0]} "
                           "(the CUDA provider did not start: check the NVIDIA driver and "
                           "CUDA/cuDNN libraries), or use device cpu")
    return session


# The manifest's dtype names as ONNX Runtime reports a tensor's type.
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
              "int32": "tensor(int32)", "uint8": "tensor(uint8)"}


def check_interface(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
    """The session's inputs and outputs (names and element types) are the manifest's."""
    def described(tensors) -> str:
        return ", ".join(f"{name} {kind}" for name, kind in sorted(tensors.items()))

    def expected(specs: Tuple[TensorSpec, ...]) -> Dict[str, str]:
        return {t.name: ORT_TYPES.get(t.dtype, t.dtype) for t in specs}

    found_in = {i.name: i.type for i in session.get_inputs()}
    found_out = {o.name: o.type for o in session.get_outputs()}
    want_in, want_out = expected(spec.inputs), expected(spec.outputs)
    if (found_in, found_out) != (want_in, want_out):
        raise BundleError(f"{path}: the graph takes {described(found_in)} and gives "
                          f"{described(found_out)}, but the manifest says {described(want_in)} "
                          f"-> {described(want_out)}; {REBUILD}")


class OrtGraph:
    """One graph on ONNX Runtime with the interface of the TensorRT runners
    (runtime/tensorrt_backend.py): run(feeds) -> the outputs in the graph's order. session.run
    is thread-safe. spin, arena, pattern: as open_session's. spec: the manifest's description
    of the graph, checked against the session (check_interface)."""

    def __init__(self, path: Path, providers: Tuple[str, ...], device: str, num_threads: int, *,
                 spin: bool = True, arena: bool = True, pattern: bool = True,
                 spec: Optional[GraphSpec] = None):
        self.session = open_session(path, providers, device, num_threads, spin=spin,
                                    arena=arena, pattern=pattern)
        if spec is not None:
            check_interface(self.session, spec, path)

    def providers(self) -> Tuple[str, ...]:
        return tuple(self.session.get_providers())

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self.session.run(None, feeds)


def runs_on_cuda(session: ort.InferenceSession) -> bool:
    """Whether the CUDA provider really took the session (get_providers lists the ones in use,
    best first)."""
    return session.get_providers()[0] == CUDA_PROVIDER

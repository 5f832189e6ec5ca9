"""ONNX Runtime sessions over bundle graphs: which execution providers to ask for, and which
one really runs each graph.

ONNX Runtime falls back to the CPU provider silently when the CUDA provider cannot start (no
driver, no GPU, a missing cuDNN), so the providers asked for say little: `session_providers`
reads `get_providers()` of the created session, and device "cuda" fails when the CUDA provider
did not take the graph. This module never imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import onnxruntime as ort

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


def open_session(path: Path, providers: Tuple[str, ...], device: str,
                 num_threads: int = 0) -> ort.InferenceSession:
    """A session for one graph; num_threads: intra-op threads, 0 = ONNX Runtime's default.
    With device "cuda", a session the CUDA provider did not take is an error."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(str(path), options, providers=list(providers))
    if device == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
        raise RequestError(f"{path.name}: ONNX Runtime fell back to {session.get_providers()[0]} "
                           "(the CUDA provider did not start: check the NVIDIA driver and "
                           "CUDA/cuDNN libraries), or use device cpu")
    return session


def runs_on_cuda(session: ort.InferenceSession) -> bool:
    """Whether the CUDA provider really took the session (get_providers lists the ones in use,
    best first)."""
    return session.get_providers()[0] == CUDA_PROVIDER

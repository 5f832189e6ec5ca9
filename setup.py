"""Builds the extension vqrt._native by driving CMakeLists.txt (the one list of sources and flags).

Environment: VQRT_CUDA=AUTO|ON|OFF (default AUTO: CUDA kernels when a CUDA compiler is found),
VQRT_CUDA_ARCHS (default sm_80/86/89/90 + PTX), VQRT_BUILD_JOBS (default: all cores).
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _drop_stale_cache(build_dir: Path) -> None:
    """Forget a CMake folder configured by a cmake that no longer exists (pip's isolated build
    environments are deleted after the build), since its build rules would call that binary."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return
    for line in cache.read_text().splitlines():
        if line.startswith("CMAKE_COMMAND:INTERNAL="):
            if not Path(line.split("=", 1)[1]).exists():
                shutil.rmtree(build_dir)
            return


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("building vqrt needs CMake >= 3.24: pip install cmake")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A stable build folder per interpreter, so rebuilding after a csrc change is incremental.
        tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
        build_dir = ROOT / "build" / f"python-{tag}"
        _drop_stale_cache(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "-DVQRT_PYTHON=ON",
            "-DVQRT_TESTS=OFF",
            f"-DVQRT_PYTHON_OUT_DIR={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DVQRT_CUDA={os.environ.get('VQRT_CUDA', 'AUTO')}",
        ]
        if os.environ.get("VQRT_CUDA_ARCHS"):
            args.append(f"-DVQRT_CUDA_ARCHS={os.environ['VQRT_CUDA_ARCHS']}")
        jobs = os.environ.get("VQRT_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call([cmake, "--build", str(build_dir), "--target", "_native", "-j", jobs])


setup(ext_modules=[CMakeExtension("vqrt._native")], cmdclass={"build_ext": CMakeBuild})

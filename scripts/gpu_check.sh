#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU (the device tool's H200 or your own):
#   scripts/gpu_check.sh OUTDIR
# builds csrc with CUDA for the local GPU, runs the C++ tests (the GPU twins run instead of
# skipping), the GPU micro-benchmarks and the Python tests, and writes logs plus results.json to
# OUTDIR. It needs only what that machine has (python3 with numpy, torch, cmake, nvcc); it
# installs nothing.
#   OUTDIR/bench_sampling.json   the sampler kernel (issue 7's target: top-k 600 over V 16384 at
#                                batch 64 in <= 20 us), also copied into results.json
#   OUTDIR/bench_decoder.json    the GPU decoder on model M (csrc/gpu_transformer.h): ms per step
#                                and its multiple of the HBM bound, tokens/s for batch 1..64
#   OUTDIR/gpu_decoder_bench.json  the same decoder from Python beside the torch upstream fp32 and
#                                torch static fp16 samplers on the GPU (issue 7: >= 10x, >= 1.5x)
# cuBLAS is opened at run time: the CUDA toolkit's lib64 and any pip nvidia-cublas wheel (torch
# brings one) go on LD_LIBRARY_PATH here.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1

status_build=0; status_ctest=0; status_bench=0; status_pytest=0
# The toolkit's root as nvcc reports it (nvcc may be a wrapper script outside the toolkit).
cuda_lib=$(nvcc --dryrun x.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)/lib64
wheel_libs=$(python3 - 2>/dev/null <<'PY'
import glob, site
print(":".join(d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/cublas/lib")))
PY
)
export LD_LIBRARY_PATH="$cuda_lib${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ cmake -S . -B build/gpu -DVQRT_CUDA=ON -DVQRT_CUDA_ARCHS=native -DVQRT_PYTHON=ON \
        -DVQRT_PYTHON_OUT_DIR="$PWD/vqrt" -DPython_EXECUTABLE="$(command -v python3)" &&
  cmake --build build/gpu -j "$(nproc)"; } > "$out/build.log" 2>&1 || status_build=$?
if [ $status_build -eq 0 ]; then
  ctest --test-dir build/gpu --output-on-failure > "$out/ctest.log" 2>&1 || status_ctest=$?
  # A few seconds; exits non-zero when the GPU's tokens differ from the CPU sampler's.
  timeout 120 build/gpu/bench_cuda_sampling --repeat 200 > "$out/bench_sampling.json" \
    2> "$out/bench_sampling.log" || status_bench=$?
  timeout 180 build/gpu/bench_cuda_decoder --repeat 3 > "$out/bench_decoder.json" \
    2> "$out/bench_decoder.log" || status_bench=$?
  # The packages import from the source tree through a throwaway stub package (nothing installed):
  # vqrt.<folder> resolves to the top-level folder, as pyproject's package-dir maps it.
  site=$(mktemp -d); python3 - "$site" <<'PY'
import pathlib, sys
root = pathlib.Path.cwd()
site = pathlib.Path(sys.argv[1]) / "vqrt"
site.mkdir()
(site / "__init__.py").write_text(
    f"__path__ = [{str(root / 'vqrt')!r}, {str(root)!r}]\n"
    f"exec(open({str(root / 'vqrt' / '__init__.py')!r}).read())\n")
PY
  PYTHONPATH="$site" timeout 300 python3 benchmarks/gpu_decoder_bench.py --batches 1 8 64 \
    --json "$out/gpu_decoder_bench.json" > "$out/gpu_decoder_bench.log" 2>&1 || status_bench=$?
  PYTHONPATH="$site" VQRT_EXPECT_CUDA_BUILD=ON python3 -m pytest -q tests > "$out/pytest.log" 2>&1 || status_pytest=$?
fi
python3 - "$out" "$status_build" "$status_ctest" "$status_bench" "$status_pytest" "$start" <<'PY'
import json, pathlib, sys, time
out, b, c, bench, p, start = sys.argv[1], *map(int, sys.argv[2:7])
res = {"build": b, "ctest": c, "bench": bench, "pytest": p, "seconds": round(time.time() - start, 1),
       "gpu": pathlib.Path(out, "gpu.txt").read_text().strip()}
for name in ("bench_sampling", "bench_decoder", "gpu_decoder_bench"):
    try:
        res[name] = json.loads(pathlib.Path(out, f"{name}.json").read_text())
    except (OSError, ValueError) as e:
        res[name] = {"error": f"no result: {e}"}
pathlib.Path(out, "results.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res))
PY
[ $status_build -eq 0 ] && [ $status_ctest -eq 0 ] && [ $status_bench -eq 0 ] && [ $status_pytest -eq 0 ]

// Device helpers shared by the kernels: warp and block reductions and a block prefix sum.
// Every function here must be called by all threads of the block (they synchronise), with
// blockDim.x a multiple of 32. Results are the same in every thread and do not depend on timing:
// each reduction combines the same values in the same order on every run.
#pragma once
#include <cuda_runtime.h>

namespace vqrt::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

struct MaxOp {  // inputs without NaN
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

// Butterfly reduction: every lane ends with op over the 32 lanes.
template <typename T, typename Op>
__device__ __forceinline__ T warp_all_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// op over the whole block, returned to every thread. scratch: [32] shared. Starts with a barrier,
// so scratch may be reused by back-to-back calls.
template <typename T, typename Op>
__device__ __forceinline__ T block_all_reduce(T v, Op op, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_all_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < warps; ++w) r = op(r, scratch[w]);
  return r;
}

// Exclusive prefix sum of v over the threads in index order; *total gets the block's sum.
// scratch: [32] shared.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int n = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += n;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < warps; ++w) {
    const int s = scratch[w];
    before += w < warp ? s : 0;
    sum += s;
  }
  *total = sum;
  return before + inclusive - v;
}

}  // namespace vqrt::cuda

// Run-time CUDA discovery. cudart is linked statically, so this file's code loads on machines
// with no GPU and no driver: cudaGetDeviceCount then fails (cudaErrorNoDevice or
// cudaErrorInsufficientDriver) and we report zero devices instead of failing to import.
#include <cuda_runtime.h>

#include "vqrt.h"

extern "C" VQRT_API int vqrt_cuda_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // reset the last-error state so later CUDA calls start clean
    return 0;
  }
  return count;
}

// Philox4x32-10 counter-based RNG (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011), the generator curand and Random123 call philox4x32_10.
//
// Header-only and usable from host and device code, so a CUDA kernel draws exactly the stream
// the CPU sampler draws. vqrt's sampling stream: key = the row's 64-bit seed, counter = the
// 64-bit step (plus a 64-bit sub-stream, 0 for sampling), so a row's draws depend on its seed and
// step only, never on the batch around it or on the thread that computes it.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define VQRT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VQRT_HOST_DEVICE inline
#endif

namespace vqrt {

struct Philox4x32 {
  uint32_t v[4];
};

VQRT_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// One block of 4 x 32 random bits for (counter, key).
VQRT_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, ctr.v[0], &hi0, &lo0);
    philox_mulhilo(M1, ctr.v[2], &hi1, &lo1);
    Philox4x32 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ key0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ key1;
    next.v[3] = lo0;
    ctr = next;
    key0 += W0;
    key1 += W1;
  }
  return ctr;
}

// Uniform double in [0, 1) with 53 random bits, from the block for (seed, step, stream).
VQRT_HOST_DEVICE double philox_uniform(uint64_t seed, uint64_t step, uint64_t stream) {
  Philox4x32 ctr;
  ctr.v[0] = static_cast<uint32_t>(step);
  ctr.v[1] = static_cast<uint32_t>(step >> 32);
  ctr.v[2] = static_cast<uint32_t>(stream);
  ctr.v[3] = static_cast<uint32_t>(stream >> 32);
  const Philox4x32 r = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ (static_cast<uint64_t>(r.v[1]) >> 11);
  return static_cast<double>(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

}  // namespace vqrt

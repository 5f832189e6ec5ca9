# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""vqrt._native: the compiled core (csrc/) for Python.

A thin layer: arrays come in as typed memoryviews (no numpy C headers), output arrays are
allocated by the caller (vqrt.runtime), the GIL is released around the C++ call, and vqrt::Error
becomes ValueError. Argument checking beyond shapes lives in C++, so Python and C callers get the
same messages. One section per op; add new ops the same way.
"""
from libc.stdint cimport int64_t, uint32_t, uint64_t

cimport vqrt_core as core


# ---------------------------------------------------------------------------------------------
# Build and machine

def cpu_isa():
    """The instruction set the CPU kernels use: 'generic', 'avx2' or 'avx512'.

    The best the CPU supports, capped by the environment variable VQRT_CPU_ISA (read once).
    Raises ValueError if VQRT_CPU_ISA is set to anything else.
    """
    return core.cpu_isa_name(core.cpu_isa_active()).decode()


def built_with_cuda():
    """True when the extension was built with the CUDA kernels."""
    return core.vqrt_built_with_cuda() != 0


def cuda_device_count():
    """Number of usable CUDA devices (0 without a CUDA build, a driver or a GPU)."""
    return core.vqrt_cuda_device_count()


# ---------------------------------------------------------------------------------------------
# Random numbers (Philox4x32-10, csrc/philox.h)

def philox4x32_10(counter, key):
    """One Philox4x32-10 block: counter 4 x uint32, key 2 x uint32 -> tuple of 4 uint32."""
    if len(counter) != 4 or len(key) != 2:
        raise ValueError(f"counter must have 4 words and key 2, got {len(counter)} and {len(key)}")
    cdef core.Philox4x32 ctr
    cdef int i
    for i in range(4):
        ctr.v[i] = <uint32_t>counter[i]
    cdef core.Philox4x32 r = core.philox4x32_10(ctr, <uint32_t>key[0], <uint32_t>key[1])
    return (r.v[0], r.v[1], r.v[2], r.v[3])


def philox_uniform(uint64_t seed, uint64_t step, uint64_t stream=0):
    """The sampler's uniform in [0, 1) (53 bits) for (seed, step, stream)."""
    return core.philox_uniform(seed, step, stream)


# ---------------------------------------------------------------------------------------------
# Sampling (csrc/sampling.h)

cdef core.SamplingParams _sampling_params(int64_t top_k, float top_p, float temperature,
                                          bint greedy, int num_threads):
    cdef core.SamplingParams p
    p.top_k = top_k
    p.top_p = top_p
    p.temperature = temperature
    p.greedy = greedy
    p.num_threads = num_threads
    return p


cdef const float* _logits_ptr(const float[:, ::1] logits):
    # An empty array has no element 0; C++ reports the zero batch or vocab.
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        return NULL
    return &logits[0, 0]


def sample_logits(const float[:, ::1] logits, const uint64_t[::1] seeds, uint64_t step,
                  int64_t top_k, float top_p, float temperature, bint greedy, int num_threads,
                  int64_t[::1] out):
    """Draws one token per row into out. logits [B, V] float32, seeds [B] uint64, out [B] int64.

    Use vqrt.runtime.sampling.sample_logits, which allocates out and documents the rules.
    """
    cdef int64_t batch = logits.shape[0], vocab = logits.shape[1]
    if seeds.shape[0] != batch or out.shape[0] != batch:
        raise ValueError(f"seeds and out must have B={batch} entries, got {seeds.shape[0]} "
                         f"and {out.shape[0]}")
    cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, num_threads)
    cdef const float* x = _logits_ptr(logits)
    cdef const uint64_t* s = &seeds[0] if batch > 0 else NULL
    cdef int64_t* o = &out[0] if batch > 0 else NULL
    with nogil:
        core.sample_logits(x, batch, vocab, s, step, p, o)


def sampling_probs(const float[:, ::1] logits, int64_t top_k, float top_p, float temperature,
                   bint greedy, double[:, ::1] probs):
    """The distribution sample_logits draws from, into probs [B, V] float64."""
    cdef int64_t batch = logits.shape[0], vocab = logits.shape[1]
    if probs.shape[0] != batch or probs.shape[1] != vocab:
        raise ValueError(f"probs must have shape ({batch}, {vocab}), got "
                         f"({probs.shape[0]}, {probs.shape[1]})")
    cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, 0)
    cdef const float* x = _logits_ptr(logits)
    cdef double* o = &probs[0, 0] if batch > 0 and vocab > 0 else NULL
    with nogil:
        core.sampling_probs(x, batch, vocab, p, o)

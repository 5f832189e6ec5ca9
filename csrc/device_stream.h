// A CUDA stream and the device memory it owns: what a program needs to drive an engine we did
// not compile (TensorRT, through its Python API) with our kernels around it. The TensorRT backend
// (runtime/tensorrt_backend.py) allocates its KV cache and I/O buffers here, binds their
// addresses to the engines once, enqueues the engines on handle(), captures its decode step in
// a CUDA graph and samples on the device with csrc/cuda/sampling.cuh (the CPU sampler's twin).
//
// Addresses cross the Python boundary as integers, so every call checks that the bytes it
// touches lie inside one allocation of this stream: a wrong address is an Error, not a fault.
// Copies and kernels are enqueued in order on the one stream; download() waits. One thread at a
// time (each generation owns its stream and the memory on it). This header has no CUDA types, so
// every build has it: without CUDA (device_stream_stub.cpp) the constructor throws, saying why.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "sampling.h"

namespace vqrt {

class DeviceStream {
 public:
  DeviceStream();  // on the current device; Error when no CUDA device is usable
  ~DeviceStream();  // waits for the stream, then frees its graphs and memory
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;

  uintptr_t handle() const;  // the cudaStream_t, for TensorRT's execute_async_v3

  // `bytes` of zeroed device memory, owned until the stream is destroyed -> its address.
  uintptr_t allocate(size_t bytes);
  // Frees an allocation (its base address) once everything enqueued has run; refused while
  // capturing and on a stream with captured graphs, which may still read it.
  void release(uintptr_t address);

  void upload(uintptr_t device, const void* host, size_t bytes);  // enqueued
  void download(void* host, uintptr_t device, size_t bytes);      // waits for it
  void fill_zero(uintptr_t device, size_t bytes);                 // enqueued
  // rows x width bytes, device to device: row r from src + r * src_pitch to dst + r * dst_pitch.
  void copy_rows(uintptr_t dst, size_t dst_pitch, uintptr_t src, size_t src_pitch, size_t width,
                 size_t rows);
  // *value += delta for one int64 on the device (a position the next replay reads).
  void add_int64(uintptr_t value, int64_t delta);

  // Everything enqueued between begin_capture() and end_capture() becomes one CUDA graph,
  // replayed by replay(index). end_capture() throws (and leaves no capture open) when something
  // enqueued could not be captured; the stream is then usable again.
  void begin_capture();
  int64_t end_capture();
  void replay(int64_t graph);

  // One token per row of logits [batch, vocab] float32 (device) drawn as vqrt::sample_logits
  // draws it (same Philox stream: seeds[b], counter `step`) -> tokens [batch] int64 and status
  // [batch] int32 (csrc/cuda/sampling.cuh's SamplingStatus; token -1 where it is not 0), all on
  // the device. Enqueued; the workspace is this stream's.
  void sample(uintptr_t logits, int64_t batch, int64_t vocab, uintptr_t seeds, uint64_t step,
              const SamplingParams& params, uintptr_t tokens, uintptr_t status);
  // Waits, then throws the CPU sampler's message for the lowest bad row of `status` (device,
  // [batch] int32, as sample() wrote it); returns when every row drew a token.
  void check_sampled(uintptr_t status, int64_t batch, const SamplingParams& params);

 private:
  struct State;  // csrc/cuda/device_stream.cu
  std::unique_ptr<State> state_;
};

}  // namespace vqrt

// DeviceStream (csrc/device_stream.h): one cudaStream_t, the allocations it owns (checked on
// every call: addresses arrive from Python as integers), the graphs captured on it, and the
// sampler's workspace.
#include <cstdint>
#include <map>
#include <vector>

#include "cuda_common.cuh"
#include "device_stream.h"
#include "errors.h"
#include "sampling.cuh"
#include "vqrt.h"

namespace vqrt {

namespace {

__global__ void add_int64_kernel(int64_t* value, int64_t delta) { *value += delta; }

}  // namespace

struct DeviceStream::State {
  cudaStream_t stream = nullptr;
  std::map<uintptr_t, size_t> allocations;  // base address -> bytes
  std::vector<cudaGraphExec_t> graphs;
  bool capturing = false;
  void* workspace = nullptr;  // the sampler's, sampling_workspace_bytes of the largest call
  size_t workspace_bytes = 0;
  std::vector<void*> retired;  // workspaces outgrown: graphs captured before may still use them

  // Error unless [address, address + bytes) lies inside one allocation.
  void check_span(uintptr_t address, size_t bytes, const char* what) const {
    auto it = allocations.upper_bound(address);
    const bool inside = it != allocations.begin() &&
                        (--it, address - it->first <= it->second &&
                                   bytes <= it->second - (address - it->first));
    VQRT_CHECK(inside, what << ": " << bytes << " bytes at device address 0x" << std::hex
                            << address << std::dec
                            << " are not inside memory this DeviceStream allocated");
  }
};

DeviceStream::DeviceStream() : state_(std::make_unique<State>()) {
  VQRT_CHECK(vqrt_cuda_device_count() > 0,
             "no CUDA device is usable here (no GPU, or no NVIDIA driver)");
  VQRT_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
}

DeviceStream::~DeviceStream() {
  State& s = *state_;
  if (s.capturing) {
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(s.stream, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
  cudaStreamSynchronize(s.stream);
  for (cudaGraphExec_t exec : s.graphs) cudaGraphExecDestroy(exec);
  for (const auto& [base, bytes] : s.allocations) cudaFree(reinterpret_cast<void*>(base));
  if (s.workspace != nullptr) cudaFree(s.workspace);
  for (void* old : s.retired) cudaFree(old);
  cudaStreamDestroy(s.stream);
}

uintptr_t DeviceStream::handle() const { return reinterpret_cast<uintptr_t>(state_->stream); }

uintptr_t DeviceStream::allocate(size_t bytes) {
  State& s = *state_;
  VQRT_CHECK(bytes > 0, "allocate: bytes must be > 0");
  VQRT_CHECK(!s.capturing, "allocate: not while a graph is being captured");
  void* ptr = nullptr;
  VQRT_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  const cudaError_t zeroed = cudaMemsetAsync(ptr, 0, bytes, s.stream);
  if (zeroed != cudaSuccess) {
    cudaFree(ptr);
    VQRT_CUDA_CHECK(zeroed);
  }
  s.allocations.emplace(reinterpret_cast<uintptr_t>(ptr), bytes);
  return reinterpret_cast<uintptr_t>(ptr);
}

void DeviceStream::release(uintptr_t address) {
  State& s = *state_;
  VQRT_CHECK(!s.capturing && s.graphs.empty(),
             "release: not on a stream with captured graphs, which may still read the memory");
  auto it = s.allocations.find(address);
  VQRT_CHECK(it != s.allocations.end(), "release: device address 0x"
                                            << std::hex << address << std::dec
                                            << " is not an allocation of this DeviceStream");
  VQRT_CUDA_CHECK(cudaStreamSynchronize(s.stream));  // enqueued work may still use it
  s.allocations.erase(it);
  VQRT_CUDA_CHECK(cudaFree(reinterpret_cast<void*>(address)));
}

void DeviceStream::upload(uintptr_t device, const void* host, size_t bytes) {
  state_->check_span(device, bytes, "upload");
  VQRT_CHECK(host != nullptr || bytes == 0, "upload: host is null");
  // A captured copy would read this host buffer at every replay, long after the caller freed it.
  VQRT_CHECK(!state_->capturing, "upload: not while a graph is being captured");
  if (bytes == 0) return;
  VQRT_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(device), host, bytes,
                                  cudaMemcpyHostToDevice, state_->stream));
}

void DeviceStream::download(void* host, uintptr_t device, size_t bytes) {
  state_->check_span(device, bytes, "download");
  VQRT_CHECK(host != nullptr || bytes == 0, "download: host is null");
  VQRT_CHECK(!state_->capturing, "download: not while a graph is being captured");
  if (bytes > 0) {
    VQRT_CUDA_CHECK(cudaMemcpyAsync(host, reinterpret_cast<const void*>(device), bytes,
                                    cudaMemcpyDeviceToHost, state_->stream));
  }
  VQRT_CUDA_CHECK(cudaStreamSynchronize(state_->stream));
}

void DeviceStream::fill_zero(uintptr_t device, size_t bytes) {
  state_->check_span(device, bytes, "fill_zero");
  if (bytes == 0) return;
  VQRT_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<void*>(device), 0, bytes, state_->stream));
}

void DeviceStream::copy_rows(uintptr_t dst, size_t dst_pitch, uintptr_t src, size_t src_pitch,
                             size_t width, size_t rows) {
  if (width == 0 || rows == 0) return;
  VQRT_CHECK(dst_pitch >= width && src_pitch >= width,
             "copy_rows: pitches " << dst_pitch << " and " << src_pitch
                                   << " must be >= the width " << width);
  const size_t last = rows - 1;  // (rows - 1) * pitch + width must not wrap around
  VQRT_CHECK(last <= (SIZE_MAX - width) / dst_pitch && last <= (SIZE_MAX - width) / src_pitch,
             "copy_rows: " << rows << " rows at pitches " << dst_pitch << " and " << src_pitch
                           << " overflow the address space");
  state_->check_span(dst, (rows - 1) * dst_pitch + width, "copy_rows destination");
  state_->check_span(src, (rows - 1) * src_pitch + width, "copy_rows source");
  VQRT_CUDA_CHECK(cudaMemcpy2DAsync(reinterpret_cast<void*>(dst), dst_pitch,
                                    reinterpret_cast<const void*>(src), src_pitch, width, rows,
                                    cudaMemcpyDeviceToDevice, state_->stream));
}

void DeviceStream::add_int64(uintptr_t value, int64_t delta) {
  state_->check_span(value, sizeof(int64_t), "add_int64");
  VQRT_CHECK(value % alignof(int64_t) == 0, "add_int64: the address is not 8-byte aligned");
  add_int64_kernel<<<1, 1, 0, state_->stream>>>(reinterpret_cast<int64_t*>(value), delta);
  VQRT_CUDA_CHECK(cudaGetLastError());
}

void DeviceStream::begin_capture() {
  State& s = *state_;
  VQRT_CHECK(!s.capturing, "begin_capture: a capture is already open");
  // Thread-local mode: other threads' CUDA calls (another generation's stream) stay legal.
  VQRT_CUDA_CHECK(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal));
  s.capturing = true;
}

int64_t DeviceStream::end_capture() {
  State& s = *state_;
  VQRT_CHECK(s.capturing, "end_capture: no capture is open");
  s.capturing = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(s.stream, &graph);
  if (ended != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();  // an invalidated capture leaves a non-sticky error: clear it
    VQRT_CUDA_CHECK(ended);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  VQRT_CUDA_CHECK(made);
  s.graphs.push_back(exec);
  return static_cast<int64_t>(s.graphs.size()) - 1;
}

void DeviceStream::replay(int64_t graph) {
  State& s = *state_;
  VQRT_CHECK(graph >= 0 && graph < static_cast<int64_t>(s.graphs.size()),
             "replay: no graph " << graph << " (this stream captured " << s.graphs.size() << ")");
  VQRT_CHECK(!s.capturing, "replay: not while a graph is being captured");
  VQRT_CUDA_CHECK(cudaGraphLaunch(s.graphs[static_cast<size_t>(graph)], s.stream));
}

void DeviceStream::sample(uintptr_t logits, int64_t batch, int64_t vocab, uintptr_t seeds,
                          uint64_t step, const SamplingParams& params, uintptr_t tokens,
                          uintptr_t status) {
  State& s = *state_;
  cuda::SamplingKernelParams p;
  p.batch = batch;
  p.vocab = vocab;
  p.step = step;
  p.params = params;
  p.logits = reinterpret_cast<const float*>(logits);
  p.seeds = reinterpret_cast<const uint64_t*>(seeds);
  p.tokens = reinterpret_cast<int64_t*>(tokens);
  p.status = reinterpret_cast<int32_t*>(status);
  // In range, the spans cannot overflow (batch < 2^31, vocab <= 2^30); out of range, p.check()
  // below names the bad argument.
  if (batch >= 1 && batch <= INT32_MAX && vocab >= 1 && vocab <= cuda::kSamplingMaxVocab) {
    const size_t rows = static_cast<size_t>(batch);
    s.check_span(logits, rows * static_cast<size_t>(vocab) * sizeof(float), "sample logits");
    s.check_span(seeds, rows * sizeof(uint64_t), "sample seeds");
    s.check_span(tokens, rows * sizeof(int64_t), "sample tokens");
    s.check_span(status, rows * sizeof(int32_t), "sample status");
    // The workspace before p.check(), which requires it (vocab > 1024).
    const size_t need = cuda::sampling_workspace_bytes(batch, vocab);
    if (need > s.workspace_bytes) {
      VQRT_CHECK(!s.capturing, "sample: a first call of this batch and vocabulary must come "
                               "before any capture (it allocates the workspace)");
      void* grown = nullptr;
      VQRT_CUDA_CHECK(cudaMalloc(&grown, need));
      // The old workspace stays allocated until the stream is destroyed: a graph captured
      // earlier may still replay a sample() that uses it.
      if (s.workspace != nullptr) s.retired.push_back(s.workspace);
      s.workspace = grown;
      s.workspace_bytes = need;
    }
  }
  p.workspace = s.workspace;
  p.workspace_bytes = s.workspace_bytes;
  p.check();
  cuda::sampling_launch(p, s.stream);
}

void DeviceStream::check_sampled(uintptr_t status, int64_t batch, const SamplingParams& params) {
  VQRT_CHECK(batch >= 1, "check_sampled: batch must be >= 1, got " << batch);
  std::vector<int32_t> rows(static_cast<size_t>(batch));
  download(rows.data(), status, rows.size() * sizeof(int32_t));
  cuda::check_sampling_status(rows.data(), batch, params);
}

}  // namespace vqrt

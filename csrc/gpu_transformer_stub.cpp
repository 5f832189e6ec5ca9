// The GPU decoder's entry points in a build without CUDA (VQRT_CUDA=OFF or no nvcc): they say
// so, so that callers (the Python binding, the runtime's "cuda" backend) need no #ifdef.
#include "errors.h"
#include "gpu_transformer.h"

namespace vqrt {

namespace {
constexpr const char* kNoCuda =
    "vqrt was built without CUDA: rebuild where nvcc is (pip install with VQRT_CUDA=ON)";
}  // namespace

class GpuWeights {};
struct GpuTransformer::State {};

std::string gpu_unavailable_reason() { return kNoCuda; }

std::shared_ptr<const GpuWeights> upload_gpu_weights(const GpuModelConfig&,
                                                     const std::map<std::string, TensorView>&) {
  VQRT_CHECK(false, "the GPU decoder cannot run: " << kNoCuda);
  return nullptr;
}

const GpuModelConfig& gpu_weights_config(const GpuWeights&) {
  VQRT_CHECK(false, kNoCuda);
  static const GpuModelConfig none;
  return none;
}

int64_t gpu_weight_matrix_bytes(const GpuWeights&) { return 0; }

GpuTransformer::GpuTransformer(std::shared_ptr<const GpuWeights>, const GpuDecoderOptions&) {
  VQRT_CHECK(false, "the GPU decoder cannot run: " << kNoCuda);
}

GpuTransformer::~GpuTransformer() = default;

// Unreachable: no GpuTransformer is ever constructed in this build.
const GpuModelConfig& GpuTransformer::model() const { return gpu_weights_config(GpuWeights()); }
const GpuDecoderOptions& GpuTransformer::options() const {
  static const GpuDecoderOptions none;
  return none;
}
int64_t GpuTransformer::length() const { return 0; }
int64_t GpuTransformer::batch() const { return 0; }
void GpuTransformer::prefill(const int64_t*, int64_t, int64_t, float*) {
  VQRT_CHECK(false, kNoCuda);
}
void GpuTransformer::step(const int64_t*, int64_t, int64_t, float*) {
  VQRT_CHECK(false, kNoCuda);
}
void GpuTransformer::sample(const uint64_t*, uint64_t, const SamplingParams&, int64_t*) {
  VQRT_CHECK(false, kNoCuda);
}
void GpuTransformer::generate(const int64_t*, int64_t, int64_t, int64_t, const uint64_t*,
                              const SamplingParams&, int64_t*) {
  VQRT_CHECK(false, kNoCuda);
}

}  // namespace vqrt

// DeviceStream in a build without CUDA (VQRT_CUDA=OFF or no nvcc): constructing one says so, so
// that callers (the Python binding, the TensorRT backend) need no #ifdef.
#include "device_stream.h"
#include "errors.h"

namespace vqrt {

struct DeviceStream::State {};

DeviceStream::DeviceStream() {
  VQRT_CHECK(false, "vqrt was built without CUDA: rebuild where nvcc is (pip install with "
                    "VQRT_CUDA=ON)");
}
DeviceStream::~DeviceStream() = default;

// Unreachable: no DeviceStream is ever constructed in this build.
uintptr_t DeviceStream::handle() const { return 0; }
uintptr_t DeviceStream::allocate(size_t) { return 0; }
void DeviceStream::release(uintptr_t) {}
void DeviceStream::upload(uintptr_t, const void*, size_t) {}
void DeviceStream::download(void*, uintptr_t, size_t) {}
void DeviceStream::fill_zero(uintptr_t, size_t) {}
void DeviceStream::copy_rows(uintptr_t, size_t, uintptr_t, size_t, size_t, size_t) {}
void DeviceStream::add_int64(uintptr_t, int64_t) {}
void DeviceStream::begin_capture() {}
int64_t DeviceStream::end_capture() { return -1; }
void DeviceStream::replay(int64_t) {}
void DeviceStream::sample(uintptr_t, int64_t, int64_t, uintptr_t, uint64_t, const SamplingParams&,
                          uintptr_t, uintptr_t) {}
void DeviceStream::check_sampled(uintptr_t, int64_t, const SamplingParams&) {}

}  // namespace vqrt

// A safetensors file held in memory: an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// tensor bytes (little-endian, C-contiguous, offsets relative to the end of the header).
//
// The same checks as runtime/safetensors_io.py, on untrusted bytes, before anything is used:
// the header length fits the file and the 100 MiB limit; the header is strict JSON
// (csrc/json.h); every dtype is known (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL); dims
// are non-negative integers whose product does not overflow; 0 <= begin <= end <= body size and
// end - begin = elements x item size. Stricter than the Python reader: entries have exactly
// those three fields and the metadata maps strings to strings. Nothing is allocated from a
// header value; tensors are views into the file's bytes (copied only where a tensor is not
// aligned to its item size). Errors are vqrt::Error, one line naming the file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vqrt {

struct SafetensorsTensor {
  std::string dtype;           // the safetensors name: F32, BF16, I8, ...
  std::vector<int64_t> shape;
  const void* data = nullptr;  // elements of dtype, aligned to the item size
  int64_t bytes = 0;
};

class SafetensorsFile {
 public:
  // Parses `bytes`, the whole file (kept alive by this object); `name` names it in errors.
  SafetensorsFile(std::vector<uint8_t> bytes, const std::string& name);

  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  static constexpr uint64_t kMaxHeader = 100 * 1024 * 1024;  // the reference implementation's

 private:
  std::vector<uint8_t> bytes_;
  std::vector<std::unique_ptr<uint64_t[]>> realigned_;  // copies of misaligned tensors
  std::map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Bytes per element of a safetensors dtype name; 0 when the name is not one of the above.
int64_t safetensors_item_size(const std::string& dtype);

}  // namespace vqrt

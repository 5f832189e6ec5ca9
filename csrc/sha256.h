// SHA-256 (FIPS 180-4), for checking the files of a bundle against its manifest.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace vqrt {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  // The digest of everything given so far; the object must not be updated afterwards.
  std::array<uint8_t, 32> finish();

 private:
  void block(const uint8_t* p);  // one 64-byte block into state_
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes
};

// Lowercase hex digest (as Python's hashlib hexdigest).
std::string sha256_hex(const void* data, size_t size);
std::string to_hex(const std::array<uint8_t, 32>& digest);

}  // namespace vqrt

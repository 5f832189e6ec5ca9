// The safetensors reader; format and checks in safetensors.h.
#include "safetensors.h"

#include <cstring>

#include "errors.h"
#include "json.h"

namespace vqrt {

int64_t safetensors_item_size(const std::string& dtype) {
  static const std::map<std::string, int64_t> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

namespace {

// One header entry checked against the body [body_size bytes]; `where` names it in errors.
// -> the tensor without its data pointer, and where its bytes begin in the body.
std::pair<SafetensorsTensor, int64_t> tensor_entry(const JsonValue& entry, const std::string& where,
                                                   uint64_t body_size) {
  entry.check_fields({"dtype", "shape", "data_offsets"}, where);
  SafetensorsTensor t;
  t.dtype = entry.at("dtype", where).as_string(where + ".dtype");
  const int64_t item = safetensors_item_size(t.dtype);
  VQRT_CHECK(item > 0, where << ".dtype " << t.dtype << " is not a safetensors dtype");
  uint64_t elements = 1;
  bool overflow = false;
  for (const JsonValue& dim : entry.at("shape", where).as_array(where + ".shape")) {
    const int64_t d = dim.as_int(where + ".shape[]");
    VQRT_CHECK(d >= 0, where << ".shape has a negative dimension " << d);
    t.shape.push_back(d);
    overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements);
  }
  const auto& offsets = entry.at("data_offsets", where).as_array(where + ".data_offsets");
  VQRT_CHECK(offsets.size() == 2, where << ".data_offsets must have 2 entries");
  const int64_t begin = offsets[0].as_int(where + ".data_offsets[0]");
  const int64_t end = offsets[1].as_int(where + ".data_offsets[1]");
  uint64_t bytes = 0;
  overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(item), &bytes);
  VQRT_CHECK(!overflow && 0 <= begin && begin <= end && static_cast<uint64_t>(end) <= body_size &&
                 static_cast<uint64_t>(end - begin) == bytes,
             where << " has offsets [" << begin << ", " << end << ") that do not match its shape"
                   << " and dtype " << t.dtype << " within the " << body_size
                   << "-byte data section");
  t.bytes = end - begin;
  return {t, begin};
}

}  // namespace

SafetensorsFile::SafetensorsFile(std::vector<uint8_t> bytes, const std::string& name)
    : bytes_(std::move(bytes)) {
  try {
    VQRT_CHECK(bytes_.size() >= 8, "too short for a safetensors file (" << bytes_.size()
                                                                         << " bytes)");
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = header_size << 8 | bytes_[i];
    VQRT_CHECK(header_size <= kMaxHeader && header_size <= bytes_.size() - 8,
               "header length " << header_size << " does not fit the file (" << bytes_.size()
                                << " bytes) or the " << kMaxHeader << "-byte limit");
    const JsonValue header =
        parse_json(reinterpret_cast<const char*>(bytes_.data()) + 8, header_size);
    const uint8_t* body = bytes_.data() + 8 + header_size;
    const uint64_t body_size = bytes_.size() - 8 - header_size;
    for (const auto& [key, value] : header.as_object("header")) {
      if (key == "__metadata__") {
        for (const auto& [field, text] : value.as_object("header.__metadata__")) {
          metadata_[field] = text.as_string("header.__metadata__." + field);
        }
        continue;
      }
      auto [t, begin] = tensor_entry(value, "tensor " + key, body_size);
      const uint8_t* at = body + begin;
      const int64_t item = safetensors_item_size(t.dtype);
      if (reinterpret_cast<uintptr_t>(at) % item != 0) {
        realigned_.emplace_back(new uint64_t[(t.bytes + 7) / 8]);
        std::memcpy(realigned_.back().get(), at, t.bytes);
        at = reinterpret_cast<const uint8_t*>(realigned_.back().get());
      }
      t.data = at;
      tensors_[key] = std::move(t);
    }
  } catch (const Error& e) {
    VQRT_CHECK(false, name << ": " << e.what());
  }
}

}  // namespace vqrt

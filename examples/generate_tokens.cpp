// Generates image tokens from a bundle through the C API (csrc/include/vqrt.h) alone, and prints
// them: one line per row, the h*w tokens in raster order separated by spaces.
//
//   generate_tokens BUNDLE [--class N]... [--batch B] [--seed S] [--top-k K] [--top-p P]
//                   [--temperature T] [--greedy] [--size WxH] [--threads N]
//
// Exit status: 0 on success, 1 when vqrt refuses the bundle or the request (its message on
// stderr), 2 for a bad command line.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "vqrt.h"

namespace {

const char kUsage[] =
    "usage: generate_tokens BUNDLE [--class N]... [--batch B] [--seed S] [--top-k K]\n"
    "                       [--top-p P] [--temperature T] [--greedy] [--size WxH] [--threads N]\n";

int usage_error(const std::string& why) {
  std::fprintf(stderr, "generate_tokens: %s\n%s", why.c_str(), kUsage);
  return 2;
}

// Whole-string numbers: "12x" or "" are errors, not 12 or 0.
bool parse_int(const char* text, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') return false;
  *out = value;
  return true;
}

bool parse_uint(const char* text, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-') return false;
  *out = value;
  return true;
}

bool parse_float(const char* text, float* out) {
  char* end = nullptr;
  const float value = std::strtof(text, &end);
  if (end == text || *end != '\0') return false;
  *out = value;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0) return usage_error("give a bundle");
  const char* bundle = argv[1];
  std::vector<int64_t> classes;
  vqrt_generate_request request = vqrt_generate_request_default();
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--greedy") {
      request.greedy = 1;
      continue;
    }
    if (i + 1 >= argc) return usage_error(flag + " needs a value");
    const char* value = argv[++i];
    int64_t number = 0;
    bool ok = true;
    if (flag == "--class") {
      ok = parse_int(value, &number);
      classes.push_back(number);
    } else if (flag == "--batch") {
      ok = parse_int(value, &request.batch);
    } else if (flag == "--seed") {
      ok = parse_uint(value, &request.seed);
    } else if (flag == "--top-k") {
      ok = parse_int(value, &request.top_k);
    } else if (flag == "--top-p") {
      ok = parse_float(value, &request.top_p);
    } else if (flag == "--temperature") {
      ok = parse_float(value, &request.temperature);
    } else if (flag == "--threads") {
      ok = parse_int(value, &number);
      request.n_threads = static_cast<int32_t>(number);
    } else if (flag == "--size") {
      long long width = 0, height = 0;
      char extra = 0;
      ok = std::sscanf(value, "%lldx%lld%c", &width, &height, &extra) == 2;
      request.width = width;
      request.height = height;
    } else {
      return usage_error("unknown option " + flag);
    }
    if (!ok) return usage_error("bad value for " + flag + ": " + value);
  }
  request.class_labels = classes.empty() ? nullptr : classes.data();
  request.n_class_labels = static_cast<int64_t>(classes.size());

  vqrt_model* model = vqrt_model_open(bundle);
  if (model == nullptr) {
    std::fprintf(stderr, "generate_tokens: %s\n", vqrt_last_error());
    return 1;
  }
  int64_t shape[3];  // batch, h, w
  std::vector<int64_t> tokens;
  int status = vqrt_generate_shape(model, &request, shape);
  if (status == VQRT_OK) {
    tokens.resize(shape[0] * shape[1] * shape[2]);
    status = vqrt_generate_tokens(model, &request, tokens.data());
  }
  if (status != VQRT_OK) {
    std::fprintf(stderr, "generate_tokens: %s\n", vqrt_last_error());
    vqrt_model_free(model);
    return 1;
  }
  const int64_t per_row = shape[1] * shape[2];
  for (int64_t b = 0; b < shape[0]; ++b) {
    for (int64_t k = 0; k < per_row; ++k) {
      std::printf(k ? " %lld" : "%lld", static_cast<long long>(tokens[b * per_row + k]));
    }
    std::printf("\n");
  }
  vqrt_model_free(model);
  return 0;
}

// Philox4x32-10 against the Random123 known-answer vectors, and the uniform built on it.
#include <cstdint>
#include <set>

#include "check.h"
#include "philox.h"

using vqrt::Philox4x32;

namespace {

void check_kat(Philox4x32 ctr, uint32_t key0, uint32_t key1, Philox4x32 expected) {
  const Philox4x32 got = vqrt::philox4x32_10(ctr, key0, key1);
  for (int i = 0; i < 4; ++i) CHECK_EQ(got.v[i], expected.v[i]);
}

}  // namespace

// Random123 kat_vectors, philox4x32 with 10 rounds.
TEST(kat_zero) {
  check_kat({{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
}

TEST(kat_all_ones) {
  const uint32_t f = 0xffffffffu;
  check_kat({{f, f, f, f}}, f, f, {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
}

TEST(kat_pi_digits) {
  check_kat({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
            {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

// philox_uniform(seed, step, stream): counter = (step lo, step hi, stream lo, stream hi),
// key = (seed lo, seed hi), 53 bits from the first two words.
TEST(uniform_layout) {
  const uint64_t seed = 0x0123456789abcdefull, step = 0x00000007fffffff3ull, stream = 5;
  const Philox4x32 r = vqrt::philox4x32_10(
      {{static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32),
        static_cast<uint32_t>(stream), 0}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = ((uint64_t(r.v[0]) << 21) ^ (r.v[1] >> 11)) & ((uint64_t(1) << 53) - 1);
  CHECK_EQ(vqrt::philox_uniform(seed, step, stream), static_cast<double>(bits) / 9007199254740992.0);
}

TEST(uniform_range_and_spread) {
  double sum = 0.0;
  std::set<double> seen;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = vqrt::philox_uniform(42, static_cast<uint64_t>(i), 0);
    CHECK(u >= 0.0 && u < 1.0);
    sum += u;
    seen.insert(u);
  }
  CHECK_NEAR(sum / n, 0.5, 0.005, 0.0);  // sd of the mean is 0.0009
  CHECK_EQ(seen.size(), static_cast<size_t>(n));
}

TEST(uniform_depends_on_seed_step_and_stream) {
  const double u = vqrt::philox_uniform(1, 2, 0);
  CHECK(u != vqrt::philox_uniform(2, 2, 0));
  CHECK(u != vqrt::philox_uniform(1, 3, 0));
  CHECK(u != vqrt::philox_uniform(1, 2, 1));
  CHECK(u != vqrt::philox_uniform(uint64_t(1) | (uint64_t(1) << 32), 2, 0));  // seed high word
  CHECK(u != vqrt::philox_uniform(1, 2 | (uint64_t(1) << 32), 0));            // step high word
  CHECK_EQ(u, vqrt::philox_uniform(1, 2, 0));
}

int main() { return check::run_tests(); }

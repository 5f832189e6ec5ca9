// A tiny test harness for the C++ tests: TEST(name) registers a test, CHECK* macros record
// failures (file:line and the values) and carry on, SKIP(msg) ends a test as skipped, and
// run_tests() prints "N passed, N failed, N skipped" and returns the process exit code.
#pragma once
#include <cmath>
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

namespace check {

struct Test {
  const char* name;
  void (*fn)();
};

inline std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}

inline int& failures() {  // failed checks in the running test
  static int n = 0;
  return n;
}

struct Skipped {
  std::string why;
};

inline bool add(const char* name, void (*fn)()) {
  registry().push_back({name, fn});
  return true;
}

inline void fail(const char* file, int line, const std::string& what) {
  std::printf("  %s:%d: %s\n", file, line, what.c_str());
  ++failures();
}

inline int run_tests() {
  int passed = 0, failed = 0, skipped = 0;
  for (const Test& t : registry()) {
    failures() = 0;
    try {
      t.fn();
    } catch (const Skipped& s) {
      std::printf("SKIP %s: %s\n", t.name, s.why.c_str());
      ++skipped;
      continue;
    } catch (const std::exception& e) {
      fail(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    std::printf("%s %s\n", failures() == 0 ? "PASS" : "FAIL", t.name);
    (failures() == 0 ? passed : failed) += 1;
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed == 0 ? 0 : 1;
}

}  // namespace check

#define TEST(name)                                                   \
  static void name();                                                \
  static const bool name##_registered = ::check::add(#name, name);   \
  static void name()

#define SKIP(why) throw ::check::Skipped{why}

#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) ::check::fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_EQ(a, b)                                               \
  do {                                                               \
    const auto check_a_ = (a);                                       \
    const auto check_b_ = (b);                                       \
    if (!(check_a_ == check_b_)) {                                   \
      std::ostringstream check_os_;                                  \
      check_os_ << #a " == " #b ": " << check_a_ << " vs " << check_b_; \
      ::check::fail(__FILE__, __LINE__, check_os_.str());            \
    }                                                                \
  } while (0)

// |a - b| <= atol + rtol * |b|, b being the reference.
#define CHECK_NEAR(a, b, atol, rtol)                                 \
  do {                                                               \
    const double check_a_ = (a);                                     \
    const double check_b_ = (b);                                     \
    if (!(std::fabs(check_a_ - check_b_) <= (atol) + (rtol) * std::fabs(check_b_))) { \
      std::ostringstream check_os_;                                  \
      check_os_.precision(17);                                       \
      check_os_ << #a " ~= " #b ": " << check_a_ << " vs " << check_b_; \
      ::check::fail(__FILE__, __LINE__, check_os_.str());            \
    }                                                                \
  } while (0)

// expr must throw `type` whose what() contains `text`.
#define CHECK_THROWS(expr, type, text)                               \
  do {                                                               \
    bool check_threw_ = false;                                       \
    try {                                                            \
      expr;                                                          \
    } catch (const type& check_e_) {                                 \
      check_threw_ = true;                                           \
      if (std::string(check_e_.what()).find(text) == std::string::npos) \
        ::check::fail(__FILE__, __LINE__,                            \
                      std::string("message '") + check_e_.what() + "' lacks '" + (text) + "'"); \
    }                                                                \
    if (!check_threw_) ::check::fail(__FILE__, __LINE__, "no " #type " from " #expr); \
  } while (0)

#pragma once
// A minimal test harness: TEST(name) registers a function; CHECK* record failures with file:line
// and keep going; the runner prints one line per failing test and a closing
// "native: N passed, N failed" line that scripts/test.mjs reads.
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace squall::test {
struct Case {
  const char* name;
  std::function<void()> body;
};
std::vector<Case>& Registry();
void Fail(const char* file, int line, const std::string& what);
struct Registrar {
  Registrar(const char* name, std::function<void()> body) { Registry().push_back({name, std::move(body)}); }
};
}  // namespace squall::test

#define SQ_CONCAT2(a, b) a##b
#define SQ_CONCAT(a, b) SQ_CONCAT2(a, b)
#define TEST(name)                                                                  \
  static void SQ_CONCAT(test_fn_, name)();                                          \
  static ::squall::test::Registrar SQ_CONCAT(test_reg_, name)(#name, SQ_CONCAT(test_fn_, name)); \
  static void SQ_CONCAT(test_fn_, name)()
#define CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) ::squall::test::Fail(__FILE__, __LINE__, "CHECK(" #cond ")");    \
  } while (0)
#define CHECK_EQ(a, b)                                                            \
  do {                                                                            \
    auto sq_a_ = (a);                                                             \
    auto sq_b_ = (b);                                                             \
    if (!(sq_a_ == sq_b_))                                                        \
      ::squall::test::Fail(__FILE__, __LINE__,                                    \
                           "CHECK_EQ(" #a ", " #b "): " + std::to_string(sq_a_) + \
                               " != " + std::to_string(sq_b_));                   \
  } while (0)

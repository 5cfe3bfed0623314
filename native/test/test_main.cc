#include <cstring>

#include "test.h"

namespace squall::test {
namespace {
int g_failures_in_case = 0;
}
std::vector<Case>& Registry() {
  static std::vector<Case> cases;
  return cases;
}
void Fail(const char* file, int line, const std::string& what) {
  ++g_failures_in_case;
  std::fprintf(stderr, "  %s:%d: %s\n", file, line, what.c_str());
}
}  // namespace squall::test

// Usage: squall_native_tests [substring-filter]
int main(int argc, char** argv) {
  using namespace squall::test;
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0;
  int failed = 0;
  for (auto& c : Registry()) {
    if (filter != nullptr && std::strstr(c.name, filter) == nullptr) continue;
    g_failures_in_case = 0;
    try {
      c.body();
    } catch (const std::exception& e) {
      Fail(__FILE__, __LINE__, std::string("uncaught exception: ") + e.what());
    }
    if (g_failures_in_case == 0) {
      ++passed;
      std::printf("ok %s\n", c.name);
    } else {
      ++failed;
      std::printf("not ok %s\n", c.name);
    }
  }
  std::printf("native: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

#include <cstring>

#include "test.h"
#include "version.h"

TEST(build_description_names_wire_version) {
  CHECK(std::strstr(squall::BuildDescription(), "wire v1") != nullptr);
  CHECK_EQ(static_cast<int>(squall::kWireVersion), 2);
}

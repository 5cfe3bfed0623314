#pragma once
#include <cstdint>

namespace squall {
// Wire protocol version carried in every packet header; bump on any incompatible change.
inline constexpr uint8_t kWireVersion = 1;
const char* BuildDescription();
}  // namespace squall

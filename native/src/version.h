#pragma once
#include <cstdint>

namespace squall {
// Wire protocol version carried in every packet header; bump on any incompatible change.
// 2: PING/PONG both ways with the client's session census (orphaned server sessions are reaped;
// a version-1 client would send no census and lose its idle sessions), so the versions do not
// talk: each drops the other's packets as kBadVersion (counted).
inline constexpr uint8_t kWireVersion = 2;
const char* BuildDescription();
}  // namespace squall

#pragma once
// Message buffers that are not zero-filled on resize.
//
// A request or response being assembled from packets is sized at its first packet and then
// written packet by packet (copied, or opened straight into place); the bytes beyond the
// packets received so far are never read. std::vector<uint8_t>::resize would first write
// zeros over all of it -- for a 1 MiB message a full extra pass over memory per message on
// the receive path. `Bytes` is a vector whose resize leaves new elements uninitialized
// (default-initialized, which for uint8_t means untouched); every other use is unchanged.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace squall::transport {

template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() noexcept = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}  // NOLINT: rebinding
  // resize(n) and vector(n) construct with no arguments: default-initialize (no zeroing).
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

using Bytes = std::vector<uint8_t, DefaultInitAllocator<uint8_t>>;

inline Bytes ToBytes(std::span<const uint8_t> bytes) { return Bytes(bytes.begin(), bytes.end()); }

// Comparisons with plain byte vectors (tests compare event bytes with expected vectors); found
// by argument-dependent lookup through the allocator's namespace.
inline bool operator==(const Bytes& a, const std::vector<uint8_t>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}
inline bool operator==(const std::vector<uint8_t>& a, const Bytes& b) { return b == a; }
inline bool operator!=(const Bytes& a, const std::vector<uint8_t>& b) { return !(a == b); }
inline bool operator!=(const std::vector<uint8_t>& a, const Bytes& b) { return !(b == a); }

}  // namespace squall::transport

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

// Large message buffers kept for reuse: the receive side assembles each large request or
// response into a buffer taken here, and the driver gives it back once the application is done
// with it (the addon: when JS collects the ArrayBuffer over it). A fresh MiB is a MiB of page
// faults (the kernel zeroes every page on first touch); a reused one is not.
// Ownership: a buffer is in the pool or with exactly one owner (a slot being assembled, an event,
// the application), never both, so a buffer the application still reads is never written.
// Single-threaded, like the endpoint that uses it.
class BufferPool {
 public:
  // Buffers below min_bytes are not pooled; at most bytes_max of capacity is kept.
  BufferPool(size_t min_bytes, size_t bytes_max) : min_bytes_(min_bytes), bytes_max_(bytes_max) {}
  // A buffer of `bytes` (contents undefined): a kept one whose capacity fits (at least `bytes`,
  // at most twice that), else a fresh one.
  Bytes Take(size_t bytes) {
    size_t best = kept_.size();
    for (size_t i = 0; i < kept_.size(); ++i) {
      const size_t c = kept_[i].capacity();
      if (c >= bytes && c / 2 <= bytes && (best == kept_.size() || c < kept_[best].capacity())) {
        best = i;
      }
    }
    Bytes out;
    if (best < kept_.size()) {
      out = std::move(kept_[best]);
      kept_[best] = std::move(kept_.back());
      kept_.pop_back();
      kept_bytes_ -= out.capacity();
      ++reused_;
    } else {
      ++fresh_;
    }
    out.resize(bytes);  // within capacity when reused: no allocation, no zero-fill
    return out;
  }
  // Takes a buffer back (the caller is done with it); kept if large and there is room.
  void Give(Bytes buffer) {
    const size_t c = buffer.capacity();
    if (c < min_bytes_ || kept_bytes_ + c > bytes_max_) return;  // freed here
    kept_bytes_ += c;
    kept_.push_back(std::move(buffer));
  }
  size_t min_bytes() const { return min_bytes_; }
  size_t kept_bytes() const { return kept_bytes_; }
  uint64_t reused() const { return reused_; }  // Take calls served from the pool
  uint64_t fresh() const { return fresh_; }    // Take calls that allocated

 private:
  size_t min_bytes_, bytes_max_;
  size_t kept_bytes_ = 0;
  std::vector<Bytes> kept_;
  uint64_t reused_ = 0, fresh_ = 0;
};

// Comparisons with plain byte vectors (tests compare event bytes with expected vectors); found
// by argument-dependent lookup through the allocator's namespace.
inline bool operator==(const Bytes& a, const std::vector<uint8_t>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}
inline bool operator==(const std::vector<uint8_t>& a, const Bytes& b) { return b == a; }
inline bool operator!=(const Bytes& a, const std::vector<uint8_t>& b) { return !(a == b); }
inline bool operator!=(const std::vector<uint8_t>& a, const Bytes& b) { return !(b == a); }

}  // namespace squall::transport

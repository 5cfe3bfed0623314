#pragma once
// Message buffers that are not zero-filled on resize.
//
// A request or response being assembled from packets is sized at its first packet and then
// written packet by packet (copied, or opened straight into place); the bytes beyond the
// packets received so far are never read. std::vector<uint8_t>::resize would first write
// zeros over all of it -- for a 1 MiB message a full extra pass over memory per message on
// the receive path. `Bytes` is a vector whose resize leaves new elements uninitialized
// (default-initialized, which for uint8_t means untouched); every other use is unchanged.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
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
// response into a buffer taken here, and the driver lends it to the application (Lend) and gets
// it back either explicitly (Release: the application says it is done) or when the
// application's handle is collected (Collected: the addon's ArrayBuffer finalizer, the
// fallback). A fresh MiB is a MiB of page faults (the kernel zeroes every page on first touch);
// a reused one is not. Waiting for the collector alone meant most large messages got a fresh
// buffer under load, and the collector ran on "external memory pressure".
// Ownership: a buffer is kept here, with exactly one owner (a slot being assembled, an event), or
// lent (one loan, one id), never two of these, so a buffer the application still reads is never
// written. The addon makes Release safe: it detaches the ArrayBuffer before it releases, so no
// JS handle can reach the memory afterwards, and it pins a loan while a lent call reads it
// (Pin/Unpin): a released loan that is pinned comes back only at its last Unpin.
// Single-threaded, like the endpoint that uses it.
class BufferPool {
 public:
  // What Release did.
  enum class ReleaseStatus {
    kReleased,  // the loan ended; its buffer is kept (or freed, above the bound or after Close)
    kDeferred,  // the loan ended for the application, but a lent call still reads it (pinned)
    kNotLent,   // no loan starts at that address with that size: a double release (the first
                // one detached the handle) or a foreign buffer. Changes nothing; counted.
  };
  struct Loan {
    uint64_t id = 0;
    uint8_t* data = nullptr;
    size_t size = 0;
  };

  // Buffers below min_bytes are not pooled; at most bytes_max of capacity is kept.
  BufferPool(size_t min_bytes, size_t bytes_max) : min_bytes_(min_bytes), bytes_max_(bytes_max) {}
  // Fresh buffers of at least this many bytes get headroom and are prefaulted (see Take).
  static constexpr size_t kHeadroomBytesMin = 256 * 1024;

  // A buffer of `bytes` (contents undefined): a kept one whose capacity fits (at least `bytes`,
  // at most twice that), else a fresh one. A fresh one of kHeadroomBytesMin or more gets 1/16
  // of its size's power of two on top (rounded to pages; untouched, so it costs address space,
  // not memory), so that a message a few bytes longer reuses it: a multicast frame is a MiB
  // plus a 44-byte header, and the transport ceiling's exact MiB buffers used to sit in the
  // pool unusable for it (every frame took a fresh MiB). Its first `bytes` are prefaulted in
  // one call (MADV_POPULATE_WRITE, Linux 5.14+; ignored where missing): the kernel zeroes the
  // pages all at once instead of one trap per page as the message is written (measured on this
  // VM: ~133 instead of ~285 us per MiB).
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
      if (bytes >= kHeadroomBytesMin) {
        out.reserve(FreshCapacity(bytes));
        Prefault(out.data(), bytes);
      }
    }
    out.resize(bytes);  // within capacity: no allocation, no zero-fill
    return out;
  }
  // The capacity Take gives a fresh buffer of `bytes` (kHeadroomBytesMin or more).
  static size_t FreshCapacity(size_t bytes) {
    constexpr size_t kPage = 4096;
    const size_t headroom = std::bit_floor(bytes) / 16;
    return (bytes + headroom + kPage - 1) / kPage * kPage;
  }
  // Maps the whole pages of [data, data + bytes) writable now, in one call.
  static void Prefault(uint8_t* data, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#else
    (void)data;
    (void)bytes;
#endif
  }
  // Takes a buffer back (the caller is done with it); kept if large and there is room (and the
  // pool is not closed).
  void Give(Bytes buffer) {
    const size_t c = buffer.capacity();
    if (closed_ || c < min_bytes_ || kept_bytes_ + c > bytes_max_) return;  // freed here
    kept_bytes_ += c;
    kept_.push_back(std::move(buffer));
  }

  // Lends `buffer` to the application: its memory stays where it is (a vector's move keeps its
  // heap block) until the loan ends. Ids are never reused.
  Loan Lend(Bytes buffer) {
    Loan loan{++last_loan_id_, buffer.data(), buffer.size()};
    loans_.emplace(reinterpret_cast<uintptr_t>(loan.data), Lent{loan.id, std::move(buffer)});
    ++lent_;
    return loan;
  }
  // The application is done with the loan whose memory starts at `data` and is `size` bytes
  // long (its handle's address and length: a handle that was detached has none, so a second
  // release through it finds nothing).
  ReleaseStatus Release(const uint8_t* data, size_t size) {
    auto it = loans_.find(reinterpret_cast<uintptr_t>(data));
    if (data == nullptr || it == loans_.end() || it->second.released ||
        it->second.bytes.size() != size) {
      ++releases_ignored_;
      return ReleaseStatus::kNotLent;
    }
    ++released_;
    return EndLoan(it) ? ReleaseStatus::kReleased : ReleaseStatus::kDeferred;
  }
  // True if a loan not yet released starts at `data` and is `size` bytes long.
  bool IsLent(const uint8_t* data, size_t size) const {
    auto it = loans_.find(reinterpret_cast<uintptr_t>(data));
    return data != nullptr && it != loans_.end() && !it->second.released &&
           it->second.bytes.size() == size;
  }
  // The application's handle of loan `id` (at `data`) was collected. A loan released before has
  // ended (or was lent again under a new id): nothing to do.
  void Collected(uint64_t id, const uint8_t* data) {
    auto it = loans_.find(reinterpret_cast<uintptr_t>(data));
    if (it == loans_.end() || it->second.id != id || it->second.released) return;
    ++collected_;
    EndLoan(it);
  }
  // A lent call reads [data, data + size) until Unpin: if that lies in a loan, the loan is pinned
  // and *pin names it (returns true). Pinning is counted, so a loan may be pinned many times.
  bool Pin(const uint8_t* data, size_t size, Loan* pin) {
    if (data == nullptr || loans_.empty()) return false;
    const uintptr_t at = reinterpret_cast<uintptr_t>(data);
    auto it = loans_.upper_bound(at);
    if (it == loans_.begin()) return false;
    --it;
    const Lent& lent = it->second;
    if (at + size > it->first + lent.bytes.size() || lent.released) return false;
    ++it->second.pins;
    *pin = Loan{lent.id, reinterpret_cast<uint8_t*>(it->first), lent.bytes.size()};
    return true;
  }
  void Unpin(const Loan& pin) {
    auto it = loans_.find(reinterpret_cast<uintptr_t>(pin.data));
    if (it == loans_.end() || it->second.id != pin.id || it->second.pins == 0) return;
    if (--it->second.pins == 0 && it->second.released) EndLoan(it);
  }
  // The endpoint closed: kept buffers are freed, and so is every buffer given or released from
  // now on (loans still out end as before: Release still detaches and reports kReleased).
  void Close() {
    closed_ = true;
    kept_.clear();
    kept_.shrink_to_fit();
    kept_bytes_ = 0;
  }

  size_t min_bytes() const { return min_bytes_; }
  size_t kept_bytes() const { return kept_bytes_; }
  size_t loans() const { return loans_.size(); }  // lent and not yet back (pinned ones included)
  uint64_t reused() const { return reused_; }  // Take calls served from the pool
  uint64_t fresh() const { return fresh_; }    // Take calls that allocated
  uint64_t lent() const { return lent_; }
  uint64_t released() const { return released_; }    // loans the application released
  uint64_t collected() const { return collected_; }  // loans that came back by collection
  uint64_t releases_ignored() const { return releases_ignored_; }  // kNotLent releases

 private:
  struct Lent {
    uint64_t id;
    Bytes bytes;
    uint32_t pins = 0;
    bool released = false;  // the application let go; waits for its pins
  };
  using Loans = std::map<uintptr_t, Lent>;
  // Ends the loan for the application; gives the buffer back unless pinned. True if given back.
  bool EndLoan(Loans::iterator it) {
    if (it->second.pins > 0) {
      it->second.released = true;
      return false;
    }
    Bytes bytes = std::move(it->second.bytes);
    loans_.erase(it);
    Give(std::move(bytes));
    return true;
  }

  size_t min_bytes_, bytes_max_;
  size_t kept_bytes_ = 0;
  bool closed_ = false;
  std::vector<Bytes> kept_;
  Loans loans_;  // by start address: Pin looks up the loan an address falls in
  uint64_t last_loan_id_ = 0;
  uint64_t reused_ = 0, fresh_ = 0;
  uint64_t lent_ = 0, released_ = 0, collected_ = 0, releases_ignored_ = 0;
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

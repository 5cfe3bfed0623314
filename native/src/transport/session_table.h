#pragma once
// Session number -> object, for the packet path: one flat open-addressing array of
// {number, pointer} pairs (16 bytes each, linear probing, at most half full), so a lookup is one
// cache line of the table and then the object itself. std::unordered_map costs a bucket, a node
// and its list link: with 20,000 sessions (every call touching a different one) those misses were
// the largest item of the core's per-call cost that grows with the session count (README,
// "Session scale"). Number 0 is never a key (the endpoint never hands it out): it marks a free
// entry. Deletion shifts the probe run back (no tombstones), so a table under connect/disconnect
// churn never degrades.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace squall::transport {

template <typename T>
class SessionTable {
 public:
  SessionTable() : entries_(kInitialCapacity) {}

  T* Find(uint32_t key) const {
    for (size_t i = Home(key);; i = (i + 1) & mask()) {
      const Entry& e = entries_[i];
      if (e.key == key) return e.value.get();
      if (e.key == 0) return nullptr;
    }
  }
  bool Contains(uint32_t key) const { return Find(key) != nullptr; }
  // Starts loading the table line where a lookup of `key` begins (a cache hint; see
  // Endpoint::PrefetchPackets).
  void Prefetch(uint32_t key) const { __builtin_prefetch(&entries_[Home(key)]); }
  // key must be non-zero and absent.
  T* Insert(uint32_t key, std::unique_ptr<T> value) {
    if (2 * (size_ + 1) > entries_.size()) Grow();
    T* raw = value.get();
    Place(key, std::move(value));
    ++size_;
    return raw;
  }
  // Frees the object; false if the key was absent.
  bool Erase(uint32_t key) {
    size_t i = Home(key);
    for (;; i = (i + 1) & mask()) {
      if (entries_[i].key == key) break;
      if (entries_[i].key == 0) return false;
    }
    entries_[i] = Entry{};
    --size_;
    // Backward shift: move later entries of the probe run into the hole when their home allows.
    for (size_t j = (i + 1) & mask(); entries_[j].key != 0; j = (j + 1) & mask()) {
      const size_t home = Home(entries_[j].key);
      // Entry j may move to hole i if its home is not in (i, j] (cyclically).
      const bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
      if (stays) continue;
      entries_[i] = std::move(entries_[j]);
      entries_[j] = Entry{};
      i = j;
    }
    return true;
  }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Bytes of the table itself (for the per-session memory figure).
  size_t TableBytes() const { return entries_.capacity() * sizeof(Entry); }
  // Calls f(key, T&) for every entry, in table order (not sorted: callers that need a
  // deterministic order collect and sort the keys). f must not insert or erase.
  template <typename F>
  void ForEach(F&& f) const {
    for (const Entry& e : entries_) {
      if (e.key != 0) f(e.key, *e.value);
    }
  }

 private:
  static constexpr size_t kInitialCapacity = 16;
  struct Entry {
    uint32_t key = 0;
    std::unique_ptr<T> value;
  };
  size_t mask() const { return entries_.size() - 1; }
  size_t Home(uint32_t key) const {
    // Fibonacci hashing: consecutive session numbers land far apart, any pattern spreads.
    return static_cast<size_t>((uint64_t{key} * 0x9E3779B97F4A7C15ull) >> 32) & mask();
  }
  void Place(uint32_t key, std::unique_ptr<T> value) {
    size_t i = Home(key);
    while (entries_[i].key != 0) i = (i + 1) & mask();
    entries_[i].key = key;
    entries_[i].value = std::move(value);
  }
  void Grow() {
    std::vector<Entry> old(entries_.size() * 2);
    old.swap(entries_);
    for (Entry& e : old) {
      if (e.key != 0) Place(e.key, std::move(e.value));
    }
  }

  std::vector<Entry> entries_;
  size_t size_ = 0;
};

}  // namespace squall::transport

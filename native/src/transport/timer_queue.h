#pragma once
// A min-queue of timer entries for deadlines that mostly arrive in order: an entry no earlier
// than the last one queued goes to the back of a FIFO (O(1), memory touched in order), any
// other to a binary heap; top() is the earlier of the two fronts. The endpoint's retransmission
// entries are this case: one is queued per call that makes an idle client session busy, at now +
// RTO, and with thousands of sessions the RTOs are nearly all the same (the floor or the initial
// value), so almost every entry goes to the FIFO. A plain heap cost O(log n) scattered sift steps
// per push and per pop, ~8% of the core's CPU per call at 20,000 sessions (README, "Session
// scale"). Same interface as std::priority_queue with std::greater (T needs operator>), so the
// order popped is by time; entries with equal times may come out in another order than a heap's.
#include <cstddef>
#include <functional>
#include <queue>
#include <vector>

namespace squall::transport {

template <typename T>
class TimerQueue {
 public:
  bool empty() const { return head_ == fifo_.size() && heap_.empty(); }
  size_t size() const { return fifo_.size() - head_ + heap_.size(); }

  void push(const T& entry) {
    if (head_ == fifo_.size() || !(fifo_.back() > entry)) {
      fifo_.push_back(entry);
    } else {
      heap_.push(entry);
    }
  }

  const T& top() const { return FromFifo() ? fifo_[head_] : heap_.top(); }

  void pop() {
    if (!FromFifo()) return heap_.pop();
    if (++head_ == fifo_.size()) {
      fifo_.clear();
      head_ = 0;
    } else if (head_ >= kCompactAt && 2 * head_ >= fifo_.size()) {
      fifo_.erase(fifo_.begin(), fifo_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }

 private:
  static constexpr size_t kCompactAt = 1024;
  // Whether top() is the FIFO's front (the queue must not be empty).
  bool FromFifo() const {
    if (head_ == fifo_.size()) return false;
    return heap_.empty() || !(fifo_[head_] > heap_.top());
  }

  std::vector<T> fifo_;  // non-decreasing from head_
  size_t head_ = 0;
  std::priority_queue<T, std::vector<T>, std::greater<T>> heap_;
};

}  // namespace squall::transport

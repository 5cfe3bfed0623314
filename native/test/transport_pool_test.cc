// Received message buffers lent to the application (BufferPool::Lend): back to the pool at once
// on an explicit release, by collection otherwise, never while a lent call still reads them.
#include <sys/mman.h>
#include <unistd.h>

#include <memory>

#include "test.h"
#include "transport/bytes.h"
#include "transport/endpoint.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
using Status = BufferPool::ReleaseStatus;

// A server endpoint with a pool, a client, a lossless in-order wire, in virtual time.
struct PoolRig : WirePair {
  std::shared_ptr<BufferPool> pool = std::make_shared<BufferPool>(10'000, 1u << 20);
  Endpoint client{EndpointConfig{}, &client_port};
  std::unique_ptr<Endpoint> server = std::make_unique<Endpoint>(EndpointConfig{}, &server_port);
  uint64_t now = 1;
  uint32_t session = 0;

  PoolRig() : WirePair(7) {
    server->SetHandled(3, true);
    server->SetBufferPool(pool);
    wire.Attach(client_address, &client);
    wire.Attach(server_address, server.get());
    session = client.Connect(server_address, now);
    wire.DeliverAll(now);
    std::vector<Event> events;
    client.TakeEvents(&events);
    server->TakeEvents(&events);
  }
  // Sends `request`; returns the server's request event (its bytes a pool buffer), answered.
  Event Request(uint64_t tag, const std::vector<uint8_t>& request) {
    CHECK(client.Call(session, 3, tag, request, 0, now) == CallStatus::kOk);
    Event out;
    for (int turn = 0; turn < 100 && out.bytes.empty(); ++turn) {
      now += 10;
      wire.DeliverAll(now);
      std::vector<Event> events;
      server->TakeEvents(&events);
      for (Event& e : events) {
        if (e.kind != EventKind::kRequest) continue;
        server->Respond({e.session, e.slot, e.id}, CallStatus::kOk, std::vector<uint8_t>(4, 1), now);
        out = std::move(e);
      }
      wire.DeliverAll(now);
      events.clear();
      client.TakeEvents(&events);
    }
    CHECK(out.bytes == request);
    return out;
  }
};
}  // namespace

TEST(transport_pool_a_released_loan_is_reused_at_once) {
  PoolRig r;
  const std::vector<uint8_t> first = Pattern(30'000, 1), second = Pattern(30'000, 2);
  const BufferPool::Loan a = r.pool->Lend(r.Request(1, first).bytes);
  CHECK_EQ(r.pool->loans(), 1u);
  CHECK(std::equal(first.begin(), first.end(), a.data));
  // Still lent: the next request gets other memory, and the loan is untouched.
  const BufferPool::Loan b = r.pool->Lend(r.Request(2, second).bytes);
  CHECK(b.data != a.data && b.id != a.id);
  CHECK(std::equal(first.begin(), first.end(), a.data));
  CHECK_EQ(r.pool->reused(), 0u);
  // Released: the next request is assembled in that very memory, without waiting for anything.
  CHECK(r.pool->Release(a.data, a.size) == Status::kReleased);
  CHECK_EQ(r.pool->released(), 1u);
  CHECK_EQ(r.pool->loans(), 1u);
  const std::vector<uint8_t> third = Pattern(25'000, 3);
  Event e = r.Request(3, third);
  CHECK_EQ(r.pool->reused(), 1u);
  CHECK(e.bytes.data() == a.data);
  CHECK(std::equal(second.begin(), second.end(), b.data));
  // The old loan's collection, arriving late (the detached handle's finalizer), ends nothing:
  // the memory is lent again under a new id.
  const BufferPool::Loan c = r.pool->Lend(std::move(e.bytes));
  CHECK(c.data == a.data && c.id != a.id);
  r.pool->Collected(a.id, a.data);
  CHECK_EQ(r.pool->collected(), 0u);
  CHECK(r.pool->IsLent(c.data, c.size));
  // Collection of a loan never released gives it back (the fallback).
  r.pool->Collected(b.id, b.data);
  CHECK_EQ(r.pool->collected(), 1u);
  CHECK(r.pool->kept_bytes() >= 30'000u);
}

TEST(transport_pool_double_and_foreign_releases_change_nothing_and_are_counted) {
  BufferPool pool(1000, 1u << 20);
  const BufferPool::Loan loan = pool.Lend(pool.Take(5000));
  CHECK(pool.Release(loan.data, loan.size) == Status::kReleased);
  CHECK_EQ(pool.kept_bytes(), 5000u);
  // Twice: nothing happens (the binding detached the first handle; this is what a stale
  // address would do), counted.
  CHECK(pool.Release(loan.data, loan.size) == Status::kNotLent);
  CHECK_EQ(pool.releases_ignored(), 1u);
  CHECK_EQ(pool.kept_bytes(), 5000u);
  // Lent again at the same address: a release with the wrong length is foreign, not this loan.
  const BufferPool::Loan again = pool.Lend(pool.Take(4000));
  CHECK(again.data == loan.data);
  CHECK(pool.Release(again.data, 5000) == Status::kNotLent);
  CHECK(pool.IsLent(again.data, again.size));
  // A buffer never lent, an address inside a loan, no address: foreign.
  Bytes other(5000);
  CHECK(pool.Release(other.data(), other.size()) == Status::kNotLent);
  CHECK(pool.Release(again.data + 8, again.size - 8) == Status::kNotLent);
  CHECK(pool.Release(nullptr, 0) == Status::kNotLent);
  CHECK_EQ(pool.releases_ignored(), 5u);
  CHECK_EQ(pool.released(), 1u);
  CHECK_EQ(pool.loans(), 1u);
  CHECK(pool.Release(again.data, again.size) == Status::kReleased);
  CHECK_EQ(pool.loans(), 0u);
}

TEST(transport_pool_a_pinned_loan_comes_back_only_after_its_last_pin) {
  BufferPool pool(1000, 1u << 20);
  const BufferPool::Loan loan = pool.Lend(pool.Take(8000));
  // Two lent calls read parts of it (a relay forwarding a block that sits inside the message).
  BufferPool::Loan pin1, pin2, none;
  CHECK(pool.Pin(loan.data + 100, 7000, &pin1));
  CHECK(pool.Pin(loan.data, 8000, &pin2));
  CHECK(pin1.id == loan.id && pin1.data == loan.data);
  CHECK(!pool.Pin(loan.data + 100, 8000, &none));  // runs past the loan's end
  Bytes other(8000);
  CHECK(!pool.Pin(other.data(), 10, &none));  // not lent
  CHECK(pool.Release(loan.data, loan.size) == Status::kDeferred);
  CHECK(!pool.IsLent(loan.data, loan.size));
  CHECK(pool.Release(loan.data, loan.size) == Status::kNotLent);
  CHECK(!pool.Pin(loan.data, 10, &none));  // released: nothing new may pin it
  // Not back while a call reads it: the next buffer is fresh.
  Bytes next = pool.Take(8000);
  CHECK(next.data() != loan.data);
  CHECK_EQ(pool.fresh(), 2u);
  pool.Unpin(pin1);
  CHECK_EQ(pool.kept_bytes(), 0u);
  pool.Unpin(pin2);
  CHECK_EQ(pool.kept_bytes(), 8000u);
  CHECK_EQ(pool.loans(), 0u);
  pool.Unpin(pin2);  // a stale pin: nothing
  CHECK(pool.Take(8000).data() == loan.data);
  // A collection while pinned waits for the pin as well.
  const BufferPool::Loan second = pool.Lend(std::move(next));
  BufferPool::Loan pin3;
  CHECK(pool.Pin(second.data, 10, &pin3));
  pool.Collected(second.id, second.data);
  CHECK_EQ(pool.kept_bytes(), 0u);
  pool.Unpin(pin3);
  CHECK_EQ(pool.kept_bytes(), 8000u);
}

TEST(transport_pool_release_after_the_endpoint_closed_frees_the_buffer) {
  PoolRig r;
  const std::vector<uint8_t> request = Pattern(40'000, 9);
  const BufferPool::Loan loan = r.pool->Lend(r.Request(1, request).bytes);
  // The endpoint goes (the binding's close() closes the pool as well); the loan is still out.
  r.server->Shutdown(false, r.now);
  r.server.reset();
  r.pool->Close();
  CHECK(std::equal(request.begin(), request.end(), loan.data));
  CHECK(r.pool->Release(loan.data, loan.size) == Status::kReleased);
  CHECK_EQ(r.pool->loans(), 0u);
  CHECK_EQ(r.pool->kept_bytes(), 0u);  // freed, not kept for a pool nobody takes from
  CHECK(r.pool->Release(loan.data, loan.size) == Status::kNotLent);
  r.pool->Give(Bytes(20'000));
  CHECK_EQ(r.pool->kept_bytes(), 0u);
}

// Whole pages of [data, data + bytes) that are not resident (mincore).
size_t PagesNotResident(const uint8_t* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  std::vector<unsigned char> resident((end - begin) / page);
  CHECK_EQ(mincore(reinterpret_cast<void*>(begin), end - begin, resident.data()), 0);
  size_t missing = 0;
  for (unsigned char r : resident) missing += (r & 1) == 0;
  return missing;
}

TEST(transport_pool_fresh_large_buffers_have_headroom_and_come_prefaulted) {
  BufferPool pool(64 * 1024, 64u << 20);
  // A MiB gets 1/16 MiB on top, so a MiB plus a frame header reuses it (the transport
  // ceiling's requests vs the multicast's frames in one process).
  Bytes mib = pool.Take(1u << 20);
  CHECK_EQ(mib.size(), 1u << 20);
  CHECK_EQ(mib.capacity(), (1u << 20) + (64u << 10));
  const uint8_t* memory = mib.data();
  pool.Give(std::move(mib));
  Bytes frame = pool.Take((1u << 20) + 44);
  CHECK(frame.data() == memory);
  CHECK_EQ(pool.fresh(), 1u);
  CHECK_EQ(pool.reused(), 1u);
  // Below 256 KiB: exactly the size asked for (no headroom, no prefault).
  CHECK_EQ(pool.Take(200'000).capacity(), 200'000u);
  CHECK_EQ(BufferPool::FreshCapacity(300'000), 319'488u);  // 300,000 + 262,144 / 16, in pages
  // Prefaulted: every whole page is resident before anything is written. 40 MiB is above
  // glibc's largest mmap threshold, so the memory is a fresh mapping, not reused heap.
  Bytes big = pool.Take(40u << 20);
  CHECK_EQ(PagesNotResident(big.data(), big.size()), 0u);
}

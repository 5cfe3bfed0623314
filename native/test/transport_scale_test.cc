// Session scale helpers (README, "Session scale"): the retransmission TimerQueue, the cache
// hints a driver gives for a batch (Endpoint::PrefetchPackets / PrefetchSessions), and the
// UdpSocket hook that hands a receive batch to them.
#include <poll.h>

#include <algorithm>
#include <queue>
#include <random>

#include "test.h"
#include "transport/timer_queue.h"
#include "transport/udp_socket.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {

struct Entry {
  uint64_t when_us;
  uint32_t id;
  bool operator>(const Entry& other) const { return when_us > other.when_us; }
};

}  // namespace

TEST(timer_queue_pops_in_time_order_whatever_the_push_order) {
  // Mostly in order (the FIFO), with earlier entries mixed in (the heap), pops interleaved, and
  // enough entries to compact the FIFO's consumed front many times.
  std::mt19937_64 rng(7);
  TimerQueue<Entry> queue;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> reference;
  uint64_t clock = 1'000;
  uint32_t id = 0;
  std::vector<uint64_t> popped, expected;
  for (int round = 0; round < 200'000; ++round) {
    const uint64_t r = rng() % 100;
    if (r < 55) {
      clock += rng() % 3;
      const uint64_t when = r < 45 ? clock + 5'000 : clock + rng() % 5'000;  // 10%: earlier
      queue.push(Entry{when, id});
      reference.push(Entry{when, id});
      ++id;
    } else if (!reference.empty()) {
      CHECK(!queue.empty());
      popped.push_back(queue.top().when_us);
      expected.push_back(reference.top().when_us);
      queue.pop();
      reference.pop();
    }
    CHECK_EQ(queue.size(), reference.size());
  }
  while (!reference.empty()) {
    popped.push_back(queue.top().when_us);
    expected.push_back(reference.top().when_us);
    queue.pop();
    reference.pop();
  }
  CHECK(queue.empty());
  CHECK(popped == expected);
}

namespace {

// Two endpoints over the in-memory wire, 64 sessions, calls round robin; with `hints`, every
// step first hands both endpoints hostile cache hints: real and unknown session numbers (0 and
// kNoSession among them), short and random packets, headers naming real sessions of either role
// with any request number.
struct HintRun {
  std::vector<std::string> responses;
  Stats client, server;
};

HintRun RunWithHints(bool hints) {
  EndpointConfig config;
  config.credits_per_session = 2;  // multi-packet requests wait for credits: state shows in order
  MemoryWire wire(0.05, true, 11);
  const PeerAddress client_address = Addr("10.0.0.1:1000"), server_address = Addr("10.0.0.2:2000");
  MemoryWire::Port client_port(&wire, client_address), server_port(&wire, server_address);
  Endpoint client(config, &client_port), server(config, &server_port);
  wire.Attach(client_address, &client);
  wire.Attach(server_address, &server);
  server.SetHandled(1, true);
  std::vector<uint32_t> sessions;
  for (int i = 0; i < 64; ++i) sessions.push_back(client.Connect(server_address, 0));
  std::mt19937_64 rng(3);
  HintRun run;
  uint64_t now = 0, tag = 1;
  std::vector<Event> events;
  for (int step = 0; step < 4'000 && now < 60'000'000; ++step) {
    if (hints) {
      std::vector<uint32_t> numbers = {0, kNoSession, static_cast<uint32_t>(rng())};
      for (int i = 0; i < 70; ++i) numbers.push_back(static_cast<uint32_t>(rng() % 200));
      client.PrefetchSessions(numbers);
      server.PrefetchSessions(numbers);
      std::vector<std::vector<uint8_t>> packets;
      for (int i = 0; i < 70; ++i) {
        Header h;
        h.type = static_cast<PacketType>(rng() % kPacketTypeCount);
        h.dest_session = static_cast<uint32_t>(rng() % 200);
        h.request_number = rng();
        std::vector<uint8_t> packet = Packet(h);
        if (i % 5 == 0) packet.resize(rng() % kHeaderBytes);
        if (i % 7 == 0) for (auto& b : packet) b = static_cast<uint8_t>(rng());
        packets.push_back(std::move(packet));
      }
      std::vector<std::span<const uint8_t>> spans(packets.begin(), packets.end());
      client.PrefetchPackets(spans);
      server.PrefetchPackets(spans);
    }
    if (step % 4 == 0) {
      const std::vector<uint8_t> request = Pattern(32 + step % 3000, static_cast<uint8_t>(step));
      client.Call(sessions[step % sessions.size()], 1, tag++, request, 0, now);
    }
    if (!wire.DeliverOne(now)) now = std::max(now + 1, std::min(client.NextTimerUs(), server.NextTimerUs()));
    now += 5;
    client.OnTimers(now);
    server.OnTimers(now);
    events.clear();
    server.TakeEvents(&events);
    for (const Event& e : events) {
      if (e.kind == EventKind::kRequest) server.Respond({e.session, e.slot, e.id}, CallStatus::kOk, e.bytes, now);
    }
    events.clear();
    client.TakeEvents(&events);
    for (const Event& e : events) {
      if (e.kind == EventKind::kResponse) {
        run.responses.push_back(std::to_string(e.id) + ":" + std::to_string(static_cast<int>(e.code)) +
                                ":" + std::to_string(e.bytes.size()));
      }
    }
  }
  run.client = client.stats();
  run.server = server.stats();
  return run;
}

}  // namespace

TEST(transport_cache_hints_with_any_input_change_nothing) {
  const HintRun plain = RunWithHints(false);
  const HintRun hinted = RunWithHints(true);
  CHECK(plain.responses.size() > 500);
  CHECK(plain.responses == hinted.responses);
  CHECK_EQ(plain.client.packets_sent, hinted.client.packets_sent);
  CHECK_EQ(plain.server.packets_sent, hinted.server.packets_sent);
  CHECK_EQ(plain.client.packets_received, hinted.client.packets_received);
  CHECK_EQ(plain.server.DropsTotal(), hinted.server.DropsTotal());
  CHECK_EQ(plain.client.retransmissions, hinted.client.retransmissions);
}

TEST(udp_socket_batch_hook_sees_a_receive_batch_before_its_packets_are_handled) {
  std::string error;
  auto sender = UdpSocket::Open("127.0.0.1", 0, 65000, &error);
  auto receiver = UdpSocket::Open("127.0.0.1", 0, 65000, &error);
  CHECK(sender != nullptr && receiver != nullptr);
  if (!sender || !receiver) return;
  // Ten small packets (bundled into one datagram) and one large one.
  std::vector<std::vector<uint8_t>> sent;
  for (uint32_t i = 0; i < 11; ++i) {
    Header h;
    h.type = PacketType::kRequest;
    h.dest_session = 100 + i;
    std::vector<uint8_t> packet = Packet(h, Pattern(i == 10 ? 20'000 : 10 + i, static_cast<uint8_t>(i)));
    sender->Send(receiver->local(), std::span<const uint8_t>(packet.data(), kHeaderBytes),
                 std::span<const uint8_t>(packet.data() + kHeaderBytes, packet.size() - kHeaderBytes));
    sent.push_back(std::move(packet));
  }
  sender->Flush();
  std::vector<std::vector<uint8_t>> hooked, handled;
  size_t handled_when_hooked = SIZE_MAX;
  receiver->SetBatchHook([&](std::span<const std::span<const uint8_t>> packets) {
    handled_when_hooked = std::min(handled_when_hooked, handled.size());
    for (auto p : packets) hooked.emplace_back(p.begin(), p.end());
  });
  const uint64_t start = MonotonicNowUs();
  while (handled.size() < sent.size() && MonotonicNowUs() - start < 5'000'000) {
    pollfd fd{receiver->fd(), POLLIN, 0};
    poll(&fd, 1, 10);
    receiver->Receive([&](const PeerAddress&, std::span<const uint8_t> packet) {
      handled.emplace_back(packet.begin(), packet.end());
    }, 64);
  }
  CHECK(handled == sent);
  CHECK(hooked == sent);
  CHECK_EQ(handled_when_hooked, size_t{0});
  CHECK(sender->stats().bundled_packets >= 10);
}

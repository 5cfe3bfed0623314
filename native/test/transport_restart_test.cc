// A client process that restarts at the same address while the server still holds its old
// session (the server has not yet noticed the death) must get a new session, and its first calls
// must run the handler and get their own answers -- never the old incarnation's cached responses.
// Each incarnation passes a fresh EndpointConfig::incarnation (the binding draws it from the OS);
// session tokens and numbers derive from it.
#include <memory>

#include "test.h"
#include "transport_support.h"

using namespace squall::test;
using namespace squall::transport;

namespace {
struct Restartable : WirePair {
  EndpointConfig config;
  std::unique_ptr<Endpoint> client;
  Endpoint server;
  uint64_t now_us = 0;
  uint64_t handler_runs = 0;
  std::map<uint64_t, std::vector<uint8_t>> responses;

  Restartable() : WirePair(3), server(Config(), &server_port) {
    wire.Attach(server_address, &server);
    server.SetHandled(3, true);
  }
  static EndpointConfig Config() {
    EndpointConfig c;
    c.peer_failure_timeout_us = 60'000'000;  // the server will not notice the client's death
    return c;
  }
  // Starts a client incarnation; `incarnation` is what the binding would draw.
  void StartClient(uint64_t incarnation) {
    EndpointConfig c = Config();
    c.incarnation = incarnation;
    client = std::make_unique<Endpoint>(c, &client_port);
    wire.Attach(client_address, client.get());
    responses.clear();
  }
  // Every answer is "run <n>" for the n-th handler run, so a replayed answer shows.
  void Run(size_t want) {
    for (int spins = 0; spins < 100'000 && responses.size() < want; ++spins) {
      std::vector<Event> events;
      server.TakeEvents(&events);
      for (auto& e : events) {
        if (e.kind != EventKind::kRequest) continue;
        ++handler_runs;
        const std::string answer = "run " + std::to_string(handler_runs);
        server.Respond({e.session, e.slot, e.id}, CallStatus::kOk,
                       std::vector<uint8_t>(answer.begin(), answer.end()), now_us);
      }
      events.clear();
      client->TakeEvents(&events);
      for (auto& e : events) {
        if (e.kind == EventKind::kResponse) responses[e.id].assign(e.bytes.begin(), e.bytes.end());
      }
      if (!wire.DeliverOne(now_us)) now_us += 1000;
      now_us += 5;
      client->OnTimers(now_us);
      server.OnTimers(now_us);
    }
  }
};

const std::vector<uint8_t> kRequest = {1};
std::string Text(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }
}  // namespace

TEST(transport_restarted_client_gets_a_new_session_not_the_old_ones_answers) {
  Restartable r;
  r.StartClient(0x1111);
  uint32_t session = r.client->Connect(r.server_address, r.now_us);
  CHECK(r.client->Call(session, 3, 1, kRequest, 0, r.now_us) == CallStatus::kOk);
  r.Run(1);
  CHECK(Text(r.responses[1]) == "run 1");

  // kill -9 and restart at the same address, before the server notices.
  r.StartClient(0x2222);
  session = r.client->Connect(r.server_address, r.now_us);
  CHECK(r.client->Call(session, 3, 1, kRequest, 0, r.now_us) == CallStatus::kOk);
  r.Run(1);
  CHECK_EQ(r.handler_runs, 2u);
  CHECK(Text(r.responses[1]) == "run 2");
  CHECK_EQ(r.server.stats().sessions_opened, 2u);
}

TEST(transport_incarnation_changes_tokens_and_session_numbers) {
  // Same seed, different incarnations: the first session's number and handshake token differ,
  // so nothing of one incarnation's sessions is mistaken for the other's.
  RecordingIo io_a, io_b;
  EndpointConfig a, b;
  a.incarnation = 1;
  b.incarnation = 2;
  Endpoint ea(a, &io_a), eb(b, &io_b);
  const uint32_t sa = ea.Connect(Addr("10.0.0.2:2000"), 0);
  const uint32_t sb = eb.Connect(Addr("10.0.0.2:2000"), 0);
  CHECK(sa != sb);
  CHECK(io_a.packets.size() == 1 && io_b.packets.size() == 1);
  CHECK(io_a.packets[0].header.request_number != io_b.packets[0].header.request_number);
}

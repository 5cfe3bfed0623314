#include "endpoint.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <limits>

namespace squall::transport {
namespace {
constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kPacketBytesMin = 256;
constexpr uint32_t kSlotsMax = 64;
constexpr uint32_t kDisconnectTriesMax = 3;
// Off loopback the path MTU is unknown; 1500-byte Ethernet minus IP and UDP headers is the
// largest datagram that is not fragmented on the networks we target.
constexpr uint32_t kPathPacketBytesV4 = 1472;
constexpr uint32_t kPathPacketBytesV6 = 1452;

uint32_t PathPacketBytes(const PeerAddress& peer) {
  if (peer.IsLoopback()) return kDatagramBytesMax;
  return peer.family() == AF_INET6 ? kPathPacketBytesV6 : kPathPacketBytesV4;
}
bool IsPowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }
uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint32_t SliceBytes(uint32_t message_bytes, uint32_t data_bytes_per_packet, uint32_t index) {
  const uint64_t offset = static_cast<uint64_t>(index) * data_bytes_per_packet;
  if (offset >= message_bytes) return 0;
  return static_cast<uint32_t>(
      std::min<uint64_t>(data_bytes_per_packet, message_bytes - offset));
}
}  // namespace

const char* DropReasonName(DropReason reason) {
  static const char* const kNames[] = {
      "truncated", "bad_magic", "bad_version", "bad_type", "bad_flags", "unknown_session",
      "wrong_peer", "too_large", "bad_length", "bad_packet_number", "stale", "injected",
      "failed_peer", "duplicate", "handler_running", "bad_state", "out_of_order"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(DropReason::kCount));
  return kNames[static_cast<size_t>(reason)];
}

uint64_t Stats::DropsTotal() const {
  uint64_t total = 0;
  for (uint64_t d : drops) total += d;
  return total;
}

std::string ValidateConfig(const EndpointConfig& c) {
  if (c.packet_bytes_max < kPacketBytesMin || c.packet_bytes_max > kDatagramBytesMax) {
    return "packet_bytes_max must be in [256, 65507]";
  }
  if (c.message_bytes_max == 0 || c.message_bytes_max > (256u << 20)) {
    return "message_bytes_max must be in [1, 268435456]";
  }
  if (!IsPowerOfTwo(c.slots_per_session) || c.slots_per_session > kSlotsMax) {
    return "slots_per_session must be a power of two up to 64";
  }
  if (c.credits_per_session == 0 || c.credits_per_session > 1024) {
    return "credits_per_session must be in [1, 1024]";
  }
  if (c.sessions_max == 0 || c.sessions_max > (1u << 20)) return "sessions_max out of range";
  if (c.queued_requests_per_session_max == 0) return "queued_requests_per_session_max is 0";
  if (c.retransmit_timeout_us < 100) return "retransmit_timeout_us must be at least 100";
  if (c.peer_failure_timeout_us < 4 * c.retransmit_timeout_us) {
    return "peer_failure_timeout_us must be at least 4 retransmit timeouts";
  }
  if (c.connect_retry_us == 0 || c.connect_timeout_us < c.connect_retry_us) {
    return "connect_timeout_us must be at least connect_retry_us (> 0)";
  }
  return "";
}

struct Endpoint::ClientSlot {
  uint32_t index = 0;
  bool busy = false;
  uint64_t request_number = 0;  // slot index + k * slots_per_session
  uint64_t tag = 0;
  uint8_t request_type = 0;
  std::vector<uint8_t> request;
  uint32_t request_packets = 0;
  std::vector<uint8_t> response;
  uint32_t response_packets = 0;  // 0 until response packet 0 arrives
  CallStatus response_status = CallStatus::kOk;
  uint32_t num_tx = 0;  // client packets sent (REQ + RFR) in the current Go-Back-N window
  uint32_t num_rx = 0;  // server packets received in order
  uint64_t progress_us = 0;
};

struct Endpoint::QueuedCall {
  uint64_t tag;
  uint8_t request_type;
  std::vector<uint8_t> request;
};

struct Endpoint::ServerSlot {
  uint64_t request_number = 0;
  uint32_t num_rx = 0;  // client packets (REQ + RFR) of this request received in order
  uint32_t request_packets = 0;
  uint32_t request_bytes = 0;
  uint8_t request_type = 0;
  std::vector<uint8_t> request;
  bool handler_running = false;
  bool response_ready = false;
  CallStatus status = CallStatus::kOk;
  std::vector<uint8_t> response;  // kept until the next request on this slot (at-most-once)
  uint32_t response_packets = 0;
};

struct Endpoint::Session {
  enum class State : uint8_t { kConnecting, kConnected, kDisconnecting };
  uint32_t number = 0;
  bool is_client = true;
  State state = State::kConnecting;
  PeerAddress peer;
  uint32_t remote_number = kNoSession;
  uint64_t token = 0;
  uint32_t packet_bytes = 0;
  uint32_t data_bytes_per_packet = 0;
  uint32_t credits = 0;
  std::vector<ClientSlot> client_slots;
  std::vector<ServerSlot> server_slots;
  std::deque<QueuedCall> backlog;
  uint64_t started_us = 0, last_rx_us = 0, last_ping_us = 0, last_handshake_tx_us = 0;
  uint32_t disconnect_tries = 0;
  uint32_t kick_cursor = 0;
  bool active = false;  // listed in active_sessions_
  uint64_t timer_at_us = kNever;
  uint64_t timer_generation = 0;
};

Endpoint::Endpoint(const EndpointConfig& config, PacketIo* io)
    : config_(config), io_(io), handled_types_(256, false), rng_state_(config.seed) {
  const std::string problem = ValidateConfig(config);
  if (!problem.empty()) throw std::invalid_argument("EndpointConfig: " + problem);
}

Endpoint::~Endpoint() = default;

Endpoint::Session* Endpoint::Find(uint32_t number) {
  auto it = sessions_.find(number);
  return it == sessions_.end() ? nullptr : it->second.get();
}
const Endpoint::Session* Endpoint::Find(uint32_t number) const {
  auto it = sessions_.find(number);
  return it == sessions_.end() ? nullptr : it->second.get();
}

uint32_t Endpoint::NewSessionNumber() {
  // Numbers are not reused soon after a session ends, so late packets of an old session find no
  // session rather than a new one with the same number.
  for (;;) {
    const uint32_t n = next_session_number_++;
    if (next_session_number_ == kNoSession) next_session_number_ = 1;
    if (n != 0 && n != kNoSession && sessions_.count(n) == 0) return n;
  }
}

uint32_t Endpoint::SessionDataBytesPerPacket(uint32_t number) const {
  const Session* s = Find(number);
  return s == nullptr ? 0 : s->data_bytes_per_packet;
}
bool Endpoint::SessionIsConnected(uint32_t number) const {
  const Session* s = Find(number);
  return s != nullptr && s->state == Session::State::kConnected;
}
std::string Endpoint::SessionPeer(uint32_t number) const {
  const Session* s = Find(number);
  return s == nullptr ? "" : s->peer.ToString();
}

void Endpoint::EmitSession(uint32_t session, SessionEventKind kind, uint64_t reason,
                           std::vector<uint8_t> bytes) {
  Event e;
  e.kind = EventKind::kSession;
  e.code = static_cast<uint8_t>(kind);
  e.session = session;
  e.id = reason;
  e.bytes = std::move(bytes);
  Emit(std::move(e));
}

void Endpoint::EmitResponse(uint32_t session, uint64_t tag, CallStatus status,
                            std::vector<uint8_t> bytes) {
  Event e;
  e.kind = EventKind::kResponse;
  e.code = static_cast<uint8_t>(status);
  e.session = session;
  e.id = tag;
  e.bytes = std::move(bytes);
  deadline_tags_.erase(tag);
  ++stats_.requests_completed;
  if (status == CallStatus::kTimeout) ++stats_.timeouts;
  Emit(std::move(e));
}

void Endpoint::TakeEvents(std::vector<Event>* out) {
  if (out->empty()) {
    out->swap(events_);
  } else {
    for (auto& e : events_) out->push_back(std::move(e));
    events_.clear();
  }
}

bool Endpoint::RollDrop() {
  if (drop_next_count_ > 0) {
    --drop_next_count_;
    return true;
  }
  if (drop_probability_ <= 0) return false;
  const double roll = static_cast<double>(SplitMix(&rng_state_) >> 11) * 0x1.0p-53;
  return roll < drop_probability_;
}

void Endpoint::SetPeerFailed(const PeerAddress& peer, bool failed) {
  auto it = std::find(failed_peers_.begin(), failed_peers_.end(), peer);
  if (failed && it == failed_peers_.end()) failed_peers_.push_back(peer);
  if (!failed && it != failed_peers_.end()) failed_peers_.erase(it);
}

void Endpoint::SendRaw(const PeerAddress& to, const Header& header,
                       std::span<const uint8_t> payload) {
  uint8_t bytes[kHeaderBytes];
  Encode(header, bytes);
  ++stats_.packets_sent_by_type[static_cast<size_t>(header.type)];
  if (RollDrop() ||
      std::find(failed_peers_.begin(), failed_peers_.end(), to) != failed_peers_.end()) {
    Drop(DropReason::kInjected);
    return;
  }
  ++stats_.packets_sent;
  stats_.bytes_sent += kHeaderBytes + payload.size();
  io_->Send(to, std::span<const uint8_t>(bytes, kHeaderBytes), payload);
}

void Endpoint::SendPacket(const Session& session, const Header& header,
                          std::span<const uint8_t> payload) {
  SendRaw(session.peer, header, payload);
}

void Endpoint::ArmSessionTimer(Session* session, uint64_t when_us) {
  // One live heap entry per session: a later deadline waits for the earlier entry to fire and
  // recompute; an earlier one supersedes it (the old entry is recognised as stale by its
  // generation). Timers therefore cost O(log n) per change, never a scan of all sessions.
  if (when_us >= session->timer_at_us) return;
  session->timer_at_us = when_us;
  ++session->timer_generation;
  timers_.push(Timer{when_us, TimerKind::kSession, session->number, session->timer_generation});
}

uint64_t Endpoint::NextTimerUs() const { return timers_.empty() ? kNever : timers_.top().when_us; }

uint32_t Endpoint::PacketsFor(const Session& session, uint32_t message_bytes) const {
  if (message_bytes == 0) return 1;
  return (message_bytes + session.data_bytes_per_packet - 1) / session.data_bytes_per_packet;
}

std::span<const uint8_t> Endpoint::Slice(const Session& session,
                                         const std::vector<uint8_t>& message,
                                         uint32_t index) const {
  const uint32_t size = static_cast<uint32_t>(message.size());
  const uint32_t bytes = SliceBytes(size, session.data_bytes_per_packet, index);
  if (bytes == 0) return {};
  return std::span<const uint8_t>(message.data() + static_cast<size_t>(index) *
                                                       session.data_bytes_per_packet,
                                  bytes);
}

void Endpoint::Bury(Session* session, uint64_t /*now_us*/) {
  if (session->is_client) {
    --stats_.sessions_client;
  } else {
    --stats_.sessions_server;
    accepted_by_token_.erase(session->peer.ToString() + "/" + std::to_string(session->token));
  }
  ++stats_.sessions_closed;
  sessions_.erase(session->number);  // pending timer entries become stale
}

// ------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------

uint32_t Endpoint::Connect(const PeerAddress& peer, uint64_t now_us) {
  const uint32_t number = NewSessionNumber();
  if (shut_down_ || sessions_.size() >= config_.sessions_max) {
    EmitSession(number, SessionEventKind::kConnectFailed,
                static_cast<uint64_t>(shut_down_ ? ConnectError::kRefused
                                                 : ConnectError::kTooManySessions));
    return number;
  }
  auto owned = std::make_unique<Session>();
  Session* s = owned.get();
  s->number = number;
  s->is_client = true;
  s->state = Session::State::kConnecting;
  s->peer = peer;
  s->token = SplitMix(&rng_state_);
  s->packet_bytes = std::min(config_.packet_bytes_max, PathPacketBytes(peer));
  s->started_us = now_us;
  s->client_slots.resize(config_.slots_per_session);
  for (uint32_t i = 0; i < config_.slots_per_session; ++i) {
    s->client_slots[i].index = i;
    s->client_slots[i].request_number = i;
  }
  s->credits = config_.credits_per_session;
  sessions_.emplace(number, std::move(owned));
  ++stats_.sessions_client;
  ++stats_.sessions_opened;
  OnClientSessionTimer(s, now_us);  // sends the first connect request and arms the retry
  return number;
}

CallStatus Endpoint::Call(uint32_t number, uint8_t request_type, uint64_t tag,
                          std::span<const uint8_t> request, uint64_t timeout_us,
                          uint64_t now_us) {
  Session* s = Find(number);
  if (s == nullptr || !s->is_client || s->state == Session::State::kDisconnecting) {
    return CallStatus::kUnknownSession;
  }
  if (request.size() > config_.message_bytes_max) return CallStatus::kTooLarge;
  if (s->backlog.size() >= config_.queued_requests_per_session_max) {
    return CallStatus::kBacklogFull;
  }
  ++stats_.requests_started;
  s->backlog.push_back(
      QueuedCall{tag, request_type, std::vector<uint8_t>(request.begin(), request.end())});
  if (timeout_us > 0) {
    deadline_tags_.insert(tag);
    timers_.push(Timer{now_us + timeout_us, TimerKind::kDeadline, number, tag});
    CompactTimers();
  }
  if (s->state == Session::State::kConnected) {
    StartQueued(s, now_us);
    Kick(s, now_us);
  }
  return CallStatus::kOk;
}

void Endpoint::StartQueued(Session* s, uint64_t now_us) {
  for (ClientSlot& slot : s->client_slots) {
    if (s->backlog.empty()) return;
    if (slot.busy) continue;
    QueuedCall call = std::move(s->backlog.front());
    s->backlog.pop_front();
    slot.busy = true;
    slot.request_number += config_.slots_per_session;
    slot.tag = call.tag;
    slot.request_type = call.request_type;
    slot.request = std::move(call.request);
    slot.request_packets = PacketsFor(*s, static_cast<uint32_t>(slot.request.size()));
    slot.response.clear();
    slot.response_packets = 0;
    slot.response_status = CallStatus::kOk;
    slot.num_tx = 0;
    slot.num_rx = 0;
    slot.progress_us = now_us;
  }
}

void Endpoint::Kick(Session* s, uint64_t now_us) {
  const uint32_t n = static_cast<uint32_t>(s->client_slots.size());
  for (uint32_t i = 0; i < n && s->credits > 0; ++i) {
    ClientSlot& slot = s->client_slots[(s->kick_cursor + i) % n];
    if (slot.busy) KickSlot(s, &slot, now_us);
  }
  s->kick_cursor = (s->kick_cursor + 1) % n;
}

void Endpoint::KickSlot(Session* s, ClientSlot* slot, uint64_t now_us) {
  const uint32_t total = slot->response_packets == 0
                             ? slot->request_packets
                             : slot->request_packets + slot->response_packets - 1;
  bool sent = false;
  while (slot->num_tx < total && s->credits > 0) {
    const bool is_request = slot->num_tx < slot->request_packets;
    std::span<const uint8_t> payload;
    if (is_request) payload = Slice(*s, slot->request, slot->num_tx);
    if (gate_ != nullptr && !gate_->MaySend(s->number, kHeaderBytes + payload.size(), now_us)) {
      break;  // the congestion controller will kick again when it admits more
    }
    Header h;
    h.type = is_request ? PacketType::kRequest : PacketType::kRequestForResponse;
    h.request_type = slot->request_type;
    h.dest_session = s->remote_number;
    h.message_bytes = static_cast<uint32_t>(slot->request.size());
    h.packet_number = slot->num_tx;
    h.request_number = slot->request_number;
    SendPacket(*s, h, payload);
    ++slot->num_tx;
    --s->credits;
    sent = true;
  }
  if (sent) MarkActive(s, now_us);
}

void Endpoint::CompleteSlot(Session* s, ClientSlot* slot, CallStatus status, uint64_t now_us) {
  // Packets still unanswered will be dropped as stale when their answers come; give their
  // credits back now.
  s->credits += slot->num_tx - slot->num_rx;
  slot->busy = false;
  std::vector<uint8_t> response;
  if (status == CallStatus::kOk || status == CallStatus::kHandlerError) {
    response.swap(slot->response);
  }
  std::vector<uint8_t>().swap(slot->request);
  std::vector<uint8_t>().swap(slot->response);
  EmitResponse(s->number, slot->tag, status, std::move(response));
  if (s->state == Session::State::kConnected) {
    StartQueued(s, now_us);
    Kick(s, now_us);
  }
}

void Endpoint::FailSession(Session* s, CallStatus status, SessionEventKind kind,
                           uint64_t now_us) {
  for (ClientSlot& slot : s->client_slots) {
    if (slot.busy) {
      slot.busy = false;
      EmitResponse(s->number, slot.tag, status, {});
    }
  }
  for (QueuedCall& call : s->backlog) EmitResponse(s->number, call.tag, status, {});
  s->backlog.clear();
  if (kind == SessionEventKind::kPeerFailed) ++stats_.peer_failures;
  EmitSession(s->number, kind, 0);
  Bury(s, now_us);
}

bool Endpoint::Disconnect(uint32_t number, uint64_t now_us) {
  Session* s = Find(number);
  if (s == nullptr || !s->is_client) return false;
  if (s->state == Session::State::kDisconnecting) return true;
  for (ClientSlot& slot : s->client_slots) {
    if (slot.busy) {
      s->credits += slot.num_tx - slot.num_rx;
      slot.busy = false;
      EmitResponse(s->number, slot.tag, CallStatus::kSessionClosed, {});
    }
  }
  for (QueuedCall& call : s->backlog) {
    EmitResponse(s->number, call.tag, CallStatus::kSessionClosed, {});
  }
  s->backlog.clear();
  if (s->state == Session::State::kConnecting) {
    EmitSession(s->number, SessionEventKind::kDisconnected, 0);
    Bury(s, now_us);
    return true;
  }
  s->state = Session::State::kDisconnecting;
  s->disconnect_tries = 0;
  s->last_handshake_tx_us = 0;
  OnClientSessionTimer(s, now_us);
  return true;
}

void Endpoint::OnClientSessionTimer(Session* s, uint64_t now_us) {
  using State = Session::State;
  if (s->state == State::kConnecting) {
    if (now_us - s->started_us >= config_.connect_timeout_us) {
      EmitSession(s->number, SessionEventKind::kConnectFailed,
                  static_cast<uint64_t>(ConnectError::kTimedOut));
      Bury(s, now_us);
      return;
    }
    if (s->last_handshake_tx_us == 0 ||
        now_us - s->last_handshake_tx_us >= config_.connect_retry_us) {
      Header h;
      h.type = PacketType::kConnectRequest;
      h.dest_session = kNoSession;
      h.aux = s->number;
      h.packet_number = s->packet_bytes;
      h.request_type = static_cast<uint8_t>(config_.slots_per_session);
      h.message_bytes = config_.message_bytes_max;
      h.request_number = s->token;
      SendPacket(*s, h);
      s->last_handshake_tx_us = now_us == 0 ? 1 : now_us;
    }
    ArmSessionTimer(s, std::min(s->last_handshake_tx_us + config_.connect_retry_us,
                                s->started_us + config_.connect_timeout_us));
    return;
  }
  if (s->state == State::kDisconnecting) {
    if (s->disconnect_tries >= kDisconnectTriesMax) {
      EmitSession(s->number, SessionEventKind::kDisconnected, 0);
      Bury(s, now_us);
      return;
    }
    Header h;
    h.type = PacketType::kDisconnectRequest;
    h.dest_session = s->remote_number;
    h.aux = s->number;
    h.request_number = s->token;
    SendPacket(*s, h);
    ++s->disconnect_tries;
    ArmSessionTimer(s, now_us + config_.connect_retry_us);
    return;
  }
  // Connected. A peer that has sent nothing (not even a pong) for the failure timeout is dead.
  if (now_us - s->last_rx_us >= config_.peer_failure_timeout_us) {
    FailSession(s, CallStatus::kPeerFailed, SessionEventKind::kPeerFailed, now_us);
    return;
  }
  uint64_t next = s->last_rx_us + config_.peer_failure_timeout_us;
  // Keepalive: ask for a pong when we have heard nothing for a quarter of the failure timeout,
  // so a live peer whose handler runs long is not declared failed.
  const uint64_t keepalive_us = config_.peer_failure_timeout_us / 4;
  const uint64_t quiet_since = std::max(s->last_rx_us, s->last_ping_us);
  if (now_us - quiet_since >= keepalive_us) {
    Header h;
    h.type = PacketType::kPing;
    h.dest_session = s->remote_number;
    SendPacket(*s, h);
    s->last_ping_us = now_us;
  }
  next = std::min(next, std::max(s->last_rx_us, s->last_ping_us) + keepalive_us);
  ArmSessionTimer(s, std::max(next, now_us + 1));
}

void Endpoint::CompactTimers() {
  // Completed calls leave their deadline entries behind; with long deadlines and a high call
  // rate they would pile up. Rebuild the heap from live entries once dead ones dominate, which
  // keeps its size within a constant factor of what is pending (amortised O(log n) per call).
  const size_t live_bound = 2 * (deadline_tags_.size() + sessions_.size()) + 4096;
  if (timers_.size() <= live_bound) return;
  std::vector<Timer> live;
  live.reserve(deadline_tags_.size() + sessions_.size());
  while (!timers_.empty()) {
    const Timer t = timers_.top();
    timers_.pop();
    if (t.kind == TimerKind::kDeadline) {
      if (deadline_tags_.count(t.key) != 0) live.push_back(t);
    } else if (t.kind == TimerKind::kRetransmitScan) {
      live.push_back(t);
    } else {
      const Session* s = Find(t.session);
      if (s != nullptr && s->timer_generation == t.key) live.push_back(t);
    }
  }
  timers_ = decltype(timers_)(std::greater<Timer>(), std::move(live));
}

void Endpoint::MarkActive(Session* s, uint64_t now_us) {
  if (!s->active) {
    s->active = true;
    active_sessions_.push_back(s->number);
  }
  if (!scan_armed_) {
    scan_armed_ = true;
    timers_.push(Timer{now_us + config_.retransmit_timeout_us / 2, TimerKind::kRetransmitScan, 0, 0});
  }
}

void Endpoint::OnRetransmitScan(uint64_t now_us) {
  scan_armed_ = false;
  size_t kept = 0;
  for (size_t i = 0; i < active_sessions_.size(); ++i) {
    Session* s = Find(active_sessions_[i]);
    if (s == nullptr) continue;  // buried since
    bool busy = false;
    bool rolled_back = false;
    if (s->state == Session::State::kConnected) {
      for (ClientSlot& slot : s->client_slots) {
        if (!slot.busy) continue;
        busy = true;
        if (slot.num_tx == slot.num_rx) continue;  // waiting for credits, nothing unanswered
        if (now_us - slot.progress_us >= config_.retransmit_timeout_us) {
          // Go-Back-N: forget everything after the first unanswered packet, resend from there.
          s->credits += slot.num_tx - slot.num_rx;
          slot.num_tx = slot.num_rx;
          slot.progress_us = now_us;
          ++stats_.retransmissions;
          rolled_back = true;
        }
      }
    }
    if (!busy) {
      s->active = false;
      continue;
    }
    active_sessions_[kept++] = s->number;
    if (rolled_back) Kick(s, now_us);
  }
  active_sessions_.resize(kept);
  if (!active_sessions_.empty() && !scan_armed_) {
    scan_armed_ = true;
    timers_.push(Timer{now_us + config_.retransmit_timeout_us / 2, TimerKind::kRetransmitScan, 0, 0});
  }
}

void Endpoint::OnDeadline(uint32_t number, uint64_t tag, uint64_t now_us) {
  if (deadline_tags_.count(tag) == 0) return;  // the call completed before its deadline
  Session* s = Find(number);
  if (s == nullptr) return;
  for (ClientSlot& slot : s->client_slots) {
    if (slot.busy && slot.tag == tag) {
      CompleteSlot(s, &slot, CallStatus::kTimeout, now_us);
      return;
    }
  }
  for (auto it = s->backlog.begin(); it != s->backlog.end(); ++it) {
    if (it->tag == tag) {
      s->backlog.erase(it);
      EmitResponse(number, tag, CallStatus::kTimeout, {});
      return;
    }
  }
}

Endpoint::ClientSlot* Endpoint::InOrderClientSlot(Session* s, const Header& h) {
  // eRPC's in_order_client: the packet must be for the slot's current request and be the next
  // one we are waiting for; anything else is a duplicate or from before a rollback.
  ClientSlot& slot = s->client_slots[h.request_number % s->client_slots.size()];
  if (!slot.busy || slot.request_number != h.request_number) return nullptr;
  if (h.packet_number != slot.num_rx || h.packet_number >= slot.num_tx) return nullptr;
  return &slot;
}

void Endpoint::HandleCreditReturn(Session* s, const Header& h, std::span<const uint8_t> payload,
                                  uint64_t now_us) {
  if (!payload.empty()) return Drop(DropReason::kBadLength);
  ClientSlot* slot = InOrderClientSlot(s, h);
  if (slot == nullptr) return Drop(DropReason::kStale);
  if (h.packet_number + 1 >= slot->request_packets) return Drop(DropReason::kBadPacketNumber);
  ++slot->num_rx;
  ++s->credits;
  slot->progress_us = now_us;
  Kick(s, now_us);
}

void Endpoint::HandleResponse(Session* s, const Header& h, std::span<const uint8_t> payload,
                              uint64_t now_us) {
  ClientSlot* slot = InOrderClientSlot(s, h);
  if (slot == nullptr) return Drop(DropReason::kStale);
  if (h.packet_number + 1 < slot->request_packets) return Drop(DropReason::kBadPacketNumber);
  const uint32_t index = h.packet_number - (slot->request_packets - 1);
  if (index == 0) {
    if (h.aux > static_cast<uint32_t>(CallStatus::kBacklogFull)) {
      return Drop(DropReason::kBadState);
    }
    if (h.message_bytes > config_.message_bytes_max) {
      // The server answered with more than we accept: fail the call rather than retry forever.
      ++slot->num_rx;
      ++s->credits;
      return CompleteSlot(s, slot, CallStatus::kTooLarge, now_us);
    }
    if (payload.size() != SliceBytes(h.message_bytes, s->data_bytes_per_packet, 0)) {
      return Drop(DropReason::kBadLength);
    }
    slot->response_status = static_cast<CallStatus>(h.aux);
    slot->response.resize(h.message_bytes);
    slot->response_packets = PacketsFor(*s, h.message_bytes);
  } else {
    if (h.message_bytes != slot->response.size() || index >= slot->response_packets) {
      return Drop(DropReason::kBadPacketNumber);
    }
    if (payload.size() != SliceBytes(h.message_bytes, s->data_bytes_per_packet, index)) {
      return Drop(DropReason::kBadLength);
    }
  }
  if (!payload.empty()) {
    std::memcpy(slot->response.data() + static_cast<size_t>(index) * s->data_bytes_per_packet,
                payload.data(), payload.size());
  }
  ++slot->num_rx;
  ++s->credits;
  slot->progress_us = now_us;
  if (slot->num_rx == slot->request_packets + slot->response_packets - 1) {
    return CompleteSlot(s, slot, slot->response_status, now_us);
  }
  Kick(s, now_us);
}

// ------------------------------------------------------------------------------------------
// Server side
// ------------------------------------------------------------------------------------------

void Endpoint::SetHandled(uint8_t request_type, bool handled) {
  handled_types_[request_type] = handled;
}

void Endpoint::HandleConnectRequest(const PeerAddress& from, const Header& h, uint64_t now_us) {
  Header reply;
  reply.type = PacketType::kConnectResponse;
  reply.dest_session = h.aux;
  reply.request_number = h.request_number;
  const uint32_t slots = h.request_type;
  if (h.packet_number < kPacketBytesMin || h.packet_number > kDatagramBytesMax ||
      !IsPowerOfTwo(slots) || slots > kSlotsMax || h.aux == kNoSession || h.aux == 0) {
    return Drop(DropReason::kBadState);
  }
  const std::string key = from.ToString() + "/" + std::to_string(h.request_number);
  auto known = accepted_by_token_.find(key);
  if (known != accepted_by_token_.end()) {
    // A duplicate (our answer was lost or is late): answer again, do not open a second session.
    Session* s = Find(known->second);
    if (s != nullptr) {
      reply.aux = s->number;
      reply.packet_number = s->packet_bytes;
      SendRaw(from, reply, {});
      return;
    }
  }
  if (shut_down_ || sessions_.size() >= config_.sessions_max) {
    reply.aux = kNoSession;
    reply.message_bytes = static_cast<uint32_t>(shut_down_ ? ConnectError::kRefused
                                                           : ConnectError::kTooManySessions);
    SendRaw(from, reply, {});
    return;
  }
  auto owned = std::make_unique<Session>();
  Session* s = owned.get();
  s->number = NewSessionNumber();
  s->is_client = false;
  s->state = Session::State::kConnected;
  s->peer = from;
  s->remote_number = h.aux;
  s->token = h.request_number;
  s->packet_bytes = std::min({h.packet_number, config_.packet_bytes_max, PathPacketBytes(from)});
  s->data_bytes_per_packet = s->packet_bytes - kHeaderBytes - kTagBytes;
  s->server_slots.resize(slots);
  for (uint32_t i = 0; i < slots; ++i) s->server_slots[i].request_number = i;
  s->started_us = now_us;
  s->last_rx_us = now_us;
  sessions_.emplace(s->number, std::move(owned));
  accepted_by_token_[key] = s->number;
  ++stats_.sessions_server;
  ++stats_.sessions_opened;
  const std::string peer_text = from.ToString();
  EmitSession(s->number, SessionEventKind::kAccepted, 0,
              std::vector<uint8_t>(peer_text.begin(), peer_text.end()));
  ArmSessionTimer(s, now_us + config_.peer_failure_timeout_us);
  reply.aux = s->number;
  reply.packet_number = s->packet_bytes;
  SendRaw(from, reply, {});
}

void Endpoint::SendCreditReturn(Session* s, const Header& request_header) {
  Header h;
  h.type = PacketType::kCreditReturn;
  h.request_type = request_header.request_type;
  h.dest_session = s->remote_number;
  h.packet_number = request_header.packet_number;
  h.request_number = request_header.request_number;
  SendPacket(*s, h);
}

void Endpoint::SendResponsePacket(Session* s, ServerSlot* slot, uint32_t packet_number) {
  const uint32_t index = packet_number - (slot->request_packets - 1);
  Header h;
  h.type = PacketType::kResponse;
  h.request_type = slot->request_type;
  h.dest_session = s->remote_number;
  h.message_bytes = static_cast<uint32_t>(slot->response.size());
  h.packet_number = packet_number;
  h.aux = static_cast<uint32_t>(slot->status);
  h.request_number = slot->request_number;
  SendPacket(*s, h, Slice(*s, slot->response, index));
}

void Endpoint::HandleRequest(Session* s, const Header& h, std::span<const uint8_t> payload,
                             uint64_t now_us) {
  ServerSlot& slot = s->server_slots[h.request_number % s->server_slots.size()];
  if (h.request_number < slot.request_number) return Drop(DropReason::kStale);
  if (h.message_bytes > config_.message_bytes_max) return Drop(DropReason::kTooLarge);
  if (h.request_number > slot.request_number) {
    // A new request on this slot. The client only moves to the next request number once the
    // previous call completed, so its arrival also tells us the kept response can go.
    if (h.packet_number != 0) return Drop(DropReason::kOutOfOrder);
    if (payload.size() != SliceBytes(h.message_bytes, s->data_bytes_per_packet, 0)) {
      return Drop(DropReason::kBadLength);
    }
    slot.request_number = h.request_number;
    slot.num_rx = 0;
    slot.request_bytes = h.message_bytes;
    slot.request_packets = PacketsFor(*s, h.message_bytes);
    slot.request_type = h.request_type;
    slot.handler_running = false;
    slot.response_ready = false;
    std::vector<uint8_t>().swap(slot.response);
    slot.request.assign(h.message_bytes, 0);
  }
  if (h.message_bytes != slot.request_bytes || h.request_type != slot.request_type) {
    return Drop(DropReason::kBadState);
  }
  if (h.packet_number >= slot.request_packets) return Drop(DropReason::kBadPacketNumber);
  const bool last = h.packet_number + 1 == slot.request_packets;
  if (h.packet_number < slot.num_rx) {
    // Duplicate (the client rolled back). A non-last packet gets its credit return again; the
    // last one gets response packet 0 again if the handler has answered.
    if (!last) return SendCreditReturn(s, h);
    if (!slot.response_ready) return Drop(DropReason::kHandlerRunning);
    ++stats_.duplicate_responses;
    return SendResponsePacket(s, &slot, h.packet_number);
  }
  if (h.packet_number > slot.num_rx) return Drop(DropReason::kOutOfOrder);
  if (payload.size() != SliceBytes(h.message_bytes, s->data_bytes_per_packet, h.packet_number)) {
    return Drop(DropReason::kBadLength);
  }
  if (!payload.empty()) {
    std::memcpy(slot.request.data() + static_cast<size_t>(h.packet_number) *
                                          s->data_bytes_per_packet,
                payload.data(), payload.size());
  }
  ++slot.num_rx;
  if (!last) return SendCreditReturn(s, h);
  if (!handled_types_[slot.request_type]) {
    slot.status = CallStatus::kNoHandler;
    slot.response_ready = true;
    slot.response_packets = 1;
    std::vector<uint8_t>().swap(slot.request);
    return SendResponsePacket(s, &slot, h.packet_number);
  }
  slot.handler_running = true;
  ++stats_.handlers_run;
  Event e;
  e.kind = EventKind::kRequest;
  e.code = slot.request_type;
  e.session = s->number;
  e.slot = static_cast<uint32_t>(h.request_number % s->server_slots.size());
  e.id = slot.request_number;
  e.bytes = std::move(slot.request);
  slot.request = {};
  Emit(std::move(e));
  (void)now_us;
}

void Endpoint::HandleRequestForResponse(Session* s, const Header& h, uint64_t /*now_us*/) {
  ServerSlot& slot = s->server_slots[h.request_number % s->server_slots.size()];
  if (h.request_number != slot.request_number) return Drop(DropReason::kStale);
  if (!slot.response_ready) return Drop(DropReason::kBadState);
  if (h.packet_number < slot.request_packets ||
      h.packet_number - (slot.request_packets - 1) >= slot.response_packets) {
    return Drop(DropReason::kBadPacketNumber);
  }
  if (h.packet_number > slot.num_rx) return Drop(DropReason::kOutOfOrder);
  if (h.packet_number < slot.num_rx) {
    ++stats_.duplicate_responses;
  } else {
    ++slot.num_rx;
  }
  SendResponsePacket(s, &slot, h.packet_number);
}

void Endpoint::Respond(const ServerRequest& request, CallStatus status,
                       std::span<const uint8_t> response, uint64_t /*now_us*/) {
  Session* s = Find(request.session);
  if (s == nullptr || s->is_client || request.slot >= s->server_slots.size()) {
    ++stats_.stale_responds;
    return;
  }
  ServerSlot& slot = s->server_slots[request.slot];
  if (slot.request_number != request.request_number || !slot.handler_running) {
    ++stats_.stale_responds;  // the client gave up on this request and moved on
    return;
  }
  slot.handler_running = false;
  slot.response_ready = true;
  if (response.size() > config_.message_bytes_max) {
    slot.status = CallStatus::kTooLarge;
    slot.response.clear();
  } else {
    slot.status = status;
    slot.response.assign(response.begin(), response.end());
  }
  slot.response_packets = PacketsFor(*s, static_cast<uint32_t>(slot.response.size()));
  SendResponsePacket(s, &slot, slot.request_packets - 1);
}

// ------------------------------------------------------------------------------------------
// Driver entry points
// ------------------------------------------------------------------------------------------

void Endpoint::HandleConnectResponse(Session* s, const Header& h, uint64_t now_us) {
  using State = Session::State;
  if (s->state != State::kConnecting || h.request_number != s->token) {
    return Drop(DropReason::kDuplicate);
  }
  if (h.aux == kNoSession) {
    EmitSession(s->number, SessionEventKind::kConnectFailed, h.message_bytes);
    return Bury(s, now_us);
  }
  if (h.packet_number < kPacketBytesMin || h.packet_number > s->packet_bytes) {
    return Drop(DropReason::kBadState);
  }
  s->remote_number = h.aux;
  s->packet_bytes = h.packet_number;
  s->data_bytes_per_packet = s->packet_bytes - kHeaderBytes - kTagBytes;
  s->state = State::kConnected;
  s->last_rx_us = now_us;
  s->timer_at_us = kNever;  // the connect retry entry is now stale
  ++s->timer_generation;
  EmitSession(s->number, SessionEventKind::kConnected, 0);
  StartQueued(s, now_us);
  Kick(s, now_us);
  ArmSessionTimer(s, now_us + config_.peer_failure_timeout_us / 4);
}

void Endpoint::HandleDisconnectResponse(Session* s, const Header& h, uint64_t now_us) {
  using State = Session::State;
  if (s->state == State::kDisconnecting) {
    EmitSession(s->number, SessionEventKind::kDisconnected, 0);
    return Bury(s, now_us);
  }
  if (s->state == State::kConnected && h.aux == 1 && h.request_number == s->token) {
    // The server is closing and told us: fail now rather than after the failure timeout.
    return FailSession(s, CallStatus::kSessionClosed, SessionEventKind::kDisconnected, now_us);
  }
  return Drop(DropReason::kDuplicate);
}

void Endpoint::OnPacket(const PeerAddress& from, std::span<const uint8_t> packet,
                        uint64_t now_us) {
  ++stats_.packets_received;
  stats_.bytes_received += packet.size();
  if (!failed_peers_.empty() &&
      std::find(failed_peers_.begin(), failed_peers_.end(), from) != failed_peers_.end()) {
    return Drop(DropReason::kFailedPeer);
  }
  Header h;
  switch (Decode(packet, &h)) {
    case DecodeError::kNone: break;
    case DecodeError::kTruncated: return Drop(DropReason::kTruncated);
    case DecodeError::kBadMagic: return Drop(DropReason::kBadMagic);
    case DecodeError::kBadVersion: return Drop(DropReason::kBadVersion);
    case DecodeError::kBadType: return Drop(DropReason::kBadType);
    case DecodeError::kBadFlags: return Drop(DropReason::kBadFlags);
  }
  if (shut_down_) return Drop(DropReason::kBadState);
  ++stats_.packets_received_by_type[static_cast<size_t>(h.type)];
  const std::span<const uint8_t> payload = packet.subspan(kHeaderBytes);
  if (h.type == PacketType::kConnectRequest) {
    if (!payload.empty()) return Drop(DropReason::kBadLength);
    return HandleConnectRequest(from, h, now_us);
  }
  if (h.type == PacketType::kDisconnectRequest) {
    // Answered even for a session we no longer know, so a client whose first answer was lost
    // still completes its disconnect.
    Session* s = Find(h.dest_session);
    if (s != nullptr && !s->is_client && s->peer == from && s->token == h.request_number) {
      EmitSession(s->number, SessionEventKind::kDisconnected, 0);
      Bury(s, now_us);
    } else if (s != nullptr) {
      return Drop(DropReason::kWrongPeer);
    }
    Header reply;
    reply.type = PacketType::kDisconnectResponse;
    reply.dest_session = h.aux;
    reply.request_number = h.request_number;
    return SendRaw(from, reply, {});
  }
  Session* s = Find(h.dest_session);
  if (s == nullptr) return Drop(DropReason::kUnknownSession);
  if (!(s->peer == from)) return Drop(DropReason::kWrongPeer);
  if (payload.size() > s->packet_bytes) return Drop(DropReason::kTooLarge);
  const bool for_client = h.type == PacketType::kCreditReturn ||
                          h.type == PacketType::kResponse ||
                          h.type == PacketType::kConnectResponse ||
                          h.type == PacketType::kDisconnectResponse || h.type == PacketType::kPong;
  if (for_client != s->is_client) return Drop(DropReason::kBadState);
  using State = Session::State;
  if (h.type == PacketType::kConnectResponse) return HandleConnectResponse(s, h, now_us);
  if (h.type == PacketType::kDisconnectResponse) return HandleDisconnectResponse(s, h, now_us);
  if (s->state != State::kConnected) return Drop(DropReason::kBadState);
  s->last_rx_us = now_us;
  switch (h.type) {
    case PacketType::kRequest: return HandleRequest(s, h, payload, now_us);
    case PacketType::kRequestForResponse:
      if (!payload.empty()) return Drop(DropReason::kBadLength);
      return HandleRequestForResponse(s, h, now_us);
    case PacketType::kCreditReturn: return HandleCreditReturn(s, h, payload, now_us);
    case PacketType::kResponse: return HandleResponse(s, h, payload, now_us);
    case PacketType::kPing: {
      Header reply;
      reply.type = PacketType::kPong;
      reply.dest_session = s->remote_number;
      return SendPacket(*s, reply);
    }
    case PacketType::kPong: return;
    default: return Drop(DropReason::kBadType);
  }
}

void Endpoint::OnTimers(uint64_t now_us) {
  while (!timers_.empty() && timers_.top().when_us <= now_us) {
    const Timer t = timers_.top();
    timers_.pop();
    if (t.kind == TimerKind::kDeadline) {
      OnDeadline(t.session, t.key, now_us);
      continue;
    }
    if (t.kind == TimerKind::kRetransmitScan) {
      OnRetransmitScan(now_us);
      continue;
    }
    Session* s = Find(t.session);
    if (s == nullptr || s->timer_generation != t.key) continue;  // stale entry
    s->timer_at_us = kNever;
    if (s->is_client) {
      OnClientSessionTimer(s, now_us);
    } else if (now_us - s->last_rx_us >= config_.peer_failure_timeout_us) {
      ++stats_.peer_failures;
      EmitSession(s->number, SessionEventKind::kPeerFailed, 0);
      Bury(s, now_us);
    } else {
      ArmSessionTimer(s, s->last_rx_us + config_.peer_failure_timeout_us);
    }
  }
}

void Endpoint::Shutdown(bool tell_peers, uint64_t now_us) {
  if (shut_down_) return;
  std::vector<uint32_t> numbers;
  numbers.reserve(sessions_.size());
  for (auto& [number, session] : sessions_) numbers.push_back(number);
  std::sort(numbers.begin(), numbers.end());
  for (uint32_t number : numbers) {
    Session* s = Find(number);
    if (s == nullptr) continue;
    if (tell_peers && s->state == Session::State::kConnected) {
      Header h;
      if (s->is_client) {
        h.type = PacketType::kDisconnectRequest;
        h.aux = s->number;
      } else {
        h.type = PacketType::kDisconnectResponse;
        h.aux = 1;  // "server closing", see OnPacket
      }
      h.dest_session = s->remote_number;
      h.request_number = s->token;
      SendPacket(*s, h);
    }
    if (s->is_client) {
      FailSession(s, CallStatus::kSessionClosed, SessionEventKind::kDisconnected, now_us);
    } else {
      EmitSession(s->number, SessionEventKind::kDisconnected, 0);
      Bury(s, now_us);
    }
  }
  shut_down_ = true;
  while (!timers_.empty()) timers_.pop();
  active_sessions_.clear();
  scan_armed_ = false;
}

}  // namespace squall::transport

#include "endpoint.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstring>
#include <iterator>
#include <limits>

namespace squall::transport {
namespace {
constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kPacketBytesMin = 256;
constexpr uint32_t kSlotsMax = 64;
constexpr uint32_t kDisconnectTriesMax = 3;
// Fast retransmit (TCP's three duplicate ACKs): a slot rolls back without waiting for its RTO
// once this many packets after a missing one have shown up -- answers beyond the missing answer
// at the client, or request packets beyond the missing one at the server (which then sends a
// NACK). Three, not one, so that reordering on a real network does not trigger it.
constexpr uint32_t kFastRetransmitEvidence = 3;
// aux of a credit return that is a NACK: "packet `packet_number` of this request is missing".
constexpr uint32_t kCreditReturnNack = 1;
// Packets up to this size (header included) may share a sealed batch; larger ones are sealed
// alone (their AES-GCM cost is per byte, not per call). Small enough that a batch of them still
// fits a 1,472-byte path datagram several times over.
constexpr size_t kSealBatchItemBytesMax = 1024;
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
// The low n bits (n <= 64).
uint64_t SlotMask(uint32_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }
}  // namespace

const char* DropReasonName(DropReason reason) {
  static const char* const kNames[] = {
      "truncated", "bad_magic", "bad_version", "bad_type", "bad_flags", "unknown_session",
      "wrong_peer", "too_large", "bad_length", "bad_packet_number", "stale", "injected",
      "failed_peer", "duplicate", "handler_running", "bad_state", "out_of_order", "unsealed",
      "crypto"};
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
  if (c.retransmit_timeout_min_us < 100 ||
      c.retransmit_timeout_min_us > c.retransmit_timeout_us) {
    return "retransmit_timeout_min_us must be in [100, retransmit_timeout_us]";
  }
  if (c.peer_failure_timeout_us < 4 * c.retransmit_timeout_us) {
    return "peer_failure_timeout_us must be at least 4 retransmit timeouts";
  }
  if (c.connect_retry_us == 0 || c.connect_timeout_us < c.connect_retry_us) {
    return "connect_timeout_us must be at least connect_retry_us (> 0)";
  }
  return ValidateEncryption(c.encryption);
}

// A request's bytes: `head`, a copy, followed by `body`, lent by the caller (CallLent) and kept
// alive by `lender`; Call copies the whole request into `head`.
struct Endpoint::RequestBytes {
  Bytes head;
  std::span<const uint8_t> body;
  Lender lender;
  size_t size() const { return head.size() + body.size(); }
  size_t capacity() const { return head.capacity(); }  // lent bytes are the caller's memory
  void Release() {
    Bytes().swap(head);
    body = {};
    lender.reset();
  }
};

struct Endpoint::QueuedCall {
  uint64_t tag;
  uint8_t request_type;
  RequestBytes request;
};

// Calls waiting for a free slot: a vector with a moving front (std::deque allocates ~600 bytes
// per session up front, for a queue that is empty in most sessions most of the time).
class Endpoint::CallQueue {
 public:
  bool empty() const { return head_ == calls_.size(); }
  size_t size() const { return calls_.size() - head_; }
  void push_back(QueuedCall call) { calls_.push_back(std::move(call)); }
  QueuedCall pop_front() {
    QueuedCall call = std::move(calls_[head_++]);
    if (head_ == calls_.size()) {
      calls_.clear();
      head_ = 0;
    } else if (head_ >= 64 && 2 * head_ >= calls_.size()) {
      calls_.erase(calls_.begin(), calls_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    return call;
  }
  void clear() {
    std::vector<QueuedCall>().swap(calls_);
    head_ = 0;
  }
  // Removes the call with this tag; false if there is none.
  bool EraseTag(uint64_t tag) {
    for (size_t i = head_; i < calls_.size(); ++i) {
      if (calls_[i].tag != tag) continue;
      calls_.erase(calls_.begin() + static_cast<std::ptrdiff_t>(i));
      return true;
    }
    return false;
  }
  QueuedCall* begin() { return calls_.data() + head_; }
  QueuedCall* end() { return calls_.data() + calls_.size(); }
  const QueuedCall* begin() const { return calls_.data() + head_; }
  const QueuedCall* end() const { return calls_.data() + calls_.size(); }
  size_t CapacityBytes() const { return calls_.capacity() * sizeof(QueuedCall); }

 private:
  std::vector<QueuedCall> calls_;
  size_t head_ = 0;
};

struct Endpoint::ClientSlot {
  uint32_t index = 0;  // busy when bit `index` of the session's busy_slots is set
  uint64_t request_number = 0;  // slot index + k * slots_per_session
  uint64_t tag = 0;
  uint8_t request_type = 0;
  RequestBytes request;
  uint32_t request_packets = 0;
  Bytes response;
  uint32_t response_packets = 0;  // 0 until response packet 0 arrives
  CallStatus response_status = CallStatus::kOk;
  uint32_t num_tx = 0;  // client packets sent (REQ + RFR) in the current Go-Back-N window
  uint32_t num_rx = 0;  // server packets received in order
  uint64_t progress_us = 0;
  // Transmit time (µs, mod 2^32) of each packet in flight, by packet number % credits: every
  // answer is an RTT sample (eRPC's per-slot tx_ts). Allocated on the slot's first send.
  std::vector<uint32_t> tx_us;
  uint32_t rtx_until = 0;  // packets below this were sent more than once: no samples (Karn)
  // After a rollback the slot sends one packet until an answer arrives (TCP's loss window): if
  // the originals were only queued at the receiver (an incast), resending the whole window
  // would add a window of duplicates to that queue at every timeout.
  bool loss_window = false;
  // Answers that arrived for packets beyond num_rx since the last in-order one (fast retransmit).
  uint32_t answers_beyond = 0;
  // An RTO expiry resent only packet probe_from (then num_rx: a probe) while packets up to
  // probe_until were in flight. Cleared once all of those are answered, or by a rollback.
  bool probed = false;
  uint32_t probe_from = 0, probe_until = 0;
};

struct Endpoint::ServerSlot {
  uint64_t request_number = 0;
  uint32_t num_rx = 0;  // client packets (REQ + RFR) of this request received in order
  uint32_t request_packets = 0;
  uint32_t request_bytes = 0;
  uint8_t request_type = 0;
  Bytes request;
  bool handler_running = false;
  bool response_ready = false;
  CallStatus status = CallStatus::kOk;
  Bytes response;  // kept until the next request on this slot (at-most-once)
  uint32_t response_packets = 0;
  // Client packets that arrived beyond the next expected one (Go-Back-N drops them); after
  // kFastRetransmitEvidence of them one NACK names the missing packet. Reset by progress.
  uint64_t gap_request_number = 0;
  uint32_t gap_packet = 0, gap_seen = 0;
  bool gap_nacked = false;
};

// Field order follows the packet path (README, "Session scale"): with 20,000 sessions each call
// touches a session no cache holds, so what one call reads is packed into few 64-byte lines
// (the struct is line-aligned): line 0 what every packet of an established session reads on
// either side, line 1 the client's call path (slots, queue), line 2 the client's round-trip
// and retransmission state, then the server's slots, then what only handshakes, timers,
// keepalives and teardown read (the peer's address among them: the packet path compares and
// sends to the peer record's copy, Endpoint::PeerOf).
struct alignas(64) Endpoint::Session {
  enum class State : uint8_t { kConnecting, kConnected, kDisconnecting };
  // -- line 0: every packet, both roles
  uint32_t number = 0;
  bool is_client = true;
  State state = State::kConnecting;
  // peer is byte for byte liveness->address (set by JoinPeer): the packet path uses that copy,
  // which every session of the record shares and so stays in cache (PeerOf).
  bool peer_in_record = false;
  uint32_t remote_number = kNoSession;
  uint32_t packet_bytes = 0;
  uint32_t data_bytes_per_packet = 0;
  uint32_t credits = 0;
  // Bit i set: client_slots[i] holds a call. The packet path visits busy slots only, so a call
  // touches its own slot's memory and not the other seven (20,000 sessions do not fit a cache).
  uint64_t busy_slots = 0;
  // Established sessions belong to the record of their remote endpoint incarnation, which owns
  // keepalive and failure ("Peers"); peer_index is the session's place in its role's list there.
  Peer* liveness = nullptr;
  uint64_t last_rx_us = 0;
  std::unique_ptr<SessionSecurity> security;  // encrypting endpoints only
  // ICMP port-unreachable reports of this session's datagrams since the peer was last heard
  // from (OnUnreachable); any packet from the peer resets it.
  uint32_t unreachable_reports = 0;
  uint32_t kick_cursor = 0;
  // -- line 1: the client's calls
  std::vector<ClientSlot> client_slots;
  CallQueue backlog;
  uint32_t rto_index = 0;       // client: its place in rto_due_ (see ArmRetransmitTimer)
  // -- line 2: client: round-trip estimate and retransmission timer (see ArmRetransmitTimer)
  uint64_t srtt_us = 0, rttvar_us = 0, rto_us = 0;
  uint64_t rto_base_us = 0;  // rto_us before backoff: srtt + 4 x rttvar clamped, or the initial
  uint64_t rto_at_us = kNever;  // when the live retransmit timer entry fires; kNever: none
  // Client: when the session last went from no call in a slot to one (StartQueued). A session
  // waiting on answers that hears nothing for the failure timeout since the later of this and
  // last_rx_us fails on its own, even while its peer answers on other sessions.
  uint64_t busy_since_us = 0;
  // -- the server's requests
  std::vector<ServerSlot> server_slots;
  // -- handshakes, timers, keepalives, teardown
  PeerAddress peer;
  uint64_t token = 0;
  uint64_t started_us = 0, last_ping_us = 0, last_handshake_tx_us = 0;
  uint32_t disconnect_tries = 0;
  uint32_t peer_index = 0;
  uint64_t timer_at_us = kNever;
  uint64_t timer_generation = 0;
  // Client: counted in its peer record's census (connected; not once it starts disconnecting).
  bool in_census = false;
};

// One remote endpoint incarnation: every established session (either role) with the same peer
// address and the same incarnation tag (learnt in the handshake). See "Peers".
struct Endpoint::Peer {
  uint32_t id = 0;
  std::string key;  // peer_ids_ key: "<address>/<tag>"
  PeerAddress address;
  uint64_t last_rx_us = 0;    // the last packet on any established session of this peer
  uint64_t last_ping_us = 0;  // the last keepalive sent to it
  uint64_t timer_at_us = kNever;
  uint64_t timer_generation = 0;
  uint32_t ping_session = 0;  // client session last heard from: the next keepalive goes there
  uint32_t ping_cursor = 0;   // after an unanswered keepalive, the next ones go round the rest
  std::vector<uint32_t> clients, servers;  // established session numbers, by role
  // Orphans: the census our PINGs carry (connected client sessions, and the sum of their remote
  // session numbers), the sum of our server session numbers, and the server side's audit.
  uint32_t census_count = 0;
  uint64_t census_sum = 0;
  uint64_t server_sum = 0;
  uint64_t census_us = 0;   // the client's last census (or when our first server session joined)
  uint64_t walked_us = 0;   // the last audit that looked at every server session of the record
  uint64_t audit_us = 0;    // when the running audit started; 0: none
  uint64_t probed_us = 0;   // its last round of PINGs
  std::vector<uint32_t> suspects;  // the server sessions it asked about
};

const PeerAddress& Endpoint::PeerOf(const Session& s) {
  return s.peer_in_record ? s.liveness->address : s.peer;
}

Endpoint::Endpoint(const EndpointConfig& config, PacketIo* io)
    : config_(config), io_(io), handled_types_(256, false), rng_state_(config.seed),
      token_state_(config.incarnation) {
  const std::string problem = ValidateConfig(config);
  if (!problem.empty()) throw std::invalid_argument("EndpointConfig: " + problem);
  if (config.encryption.enabled) security_ = std::make_unique<EndpointSecurity>(config.encryption);
  config_.encryption.keys.clear();  // the keyring holds what it needs; drop the copies
  // Incarnation 0 (tests) keeps the seed-only sequences: numbers from 1, tokens from the seed.
  if (config.incarnation != 0) {
    uint64_t state = config.incarnation ^ 0x5bd1e9955bd1e995ull;
    const uint32_t first = static_cast<uint32_t>(SplitMix(&state));
    next_session_number_ = (first == 0 || first == kNoSession) ? 1 : first;
    uint64_t tag_state = config.incarnation ^ 0x2545f4914f6cdd1dull;
    incarnation_tag_ = static_cast<uint32_t>(SplitMix(&tag_state));
  }
}

uint64_t Endpoint::NewToken() {
  return config_.incarnation == 0 ? SplitMix(&rng_state_) : SplitMix(&token_state_);
}

Endpoint::~Endpoint() = default;

bool Endpoint::IsBusy(const Session& s, const ClientSlot& slot) {
  return ((s.busy_slots >> slot.index) & 1) != 0;
}

Endpoint::Session* Endpoint::Find(uint32_t number) { return sessions_.Find(number); }
const Endpoint::Session* Endpoint::Find(uint32_t number) const { return sessions_.Find(number); }

uint32_t Endpoint::NewSessionNumber() {
  // Numbers are not reused soon after a session ends, so late packets of an old session find no
  // session rather than a new one with the same number.
  for (;;) {
    const uint32_t n = next_session_number_++;
    if (next_session_number_ == kNoSession) next_session_number_ = 1;
    if (n != 0 && n != kNoSession && !sessions_.Contains(n)) return n;
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
uint64_t Endpoint::SessionSrttUs(uint32_t number) const {
  const Session* s = Find(number);
  return s == nullptr ? 0 : s->srtt_us;
}
uint64_t Endpoint::SessionRtoUs(uint32_t number) const {
  const Session* s = Find(number);
  return s == nullptr ? 0 : s->rto_us;
}

size_t Endpoint::BytesPerSession() const {
  if (sessions_.empty()) return 0;
  // Hash-table nodes: the value plus a next pointer and cached hash, rounded to the allocator's
  // 16-byte granule; buckets are a pointer each.
  auto node = [](size_t value_bytes) { return (value_bytes + 16 + 15) & ~size_t{15}; };
  size_t total = sessions_.TableBytes() + accepted_by_token_.bucket_count() * sizeof(void*) +
                 peers_.TableBytes() + by_remote_.bucket_count() * sizeof(void*) +
                 rto_due_.capacity() * sizeof(RtoDue);
  peers_.ForEach([&](uint32_t, const Peer& p) {
    total += sizeof(Peer) + p.key.capacity() +
             (p.clients.capacity() + p.servers.capacity()) * sizeof(uint32_t);
  });
  sessions_.ForEach([&](uint32_t, const Session& session) {
    const Session* s = &session;
    total += sizeof(Session);
    total += s->client_slots.capacity() * sizeof(ClientSlot) +
             s->server_slots.capacity() * sizeof(ServerSlot);
    for (const ClientSlot& slot : s->client_slots) {
      total += slot.request.capacity() + slot.response.capacity() +
               slot.tx_us.capacity() * sizeof(uint32_t);
    }
    for (const ServerSlot& slot : s->server_slots) {
      total += slot.request.capacity() + slot.response.capacity();
    }
    if (s->liveness != nullptr) total += node(sizeof(std::pair<const uint64_t, uint32_t>));
    total += s->backlog.CapacityBytes();
    for (const QueuedCall& call : s->backlog) total += call.request.capacity();
    if (!s->is_client) {
      // accepted_by_token_: "<peer>/<token>" key (heap-allocated beyond 15 characters).
      total += node(sizeof(std::pair<const std::string, uint32_t>)) + 48;
    } else if (gate_ != nullptr) {
      total += gate_->BytesPerSession();
    }
  });
  return total / sessions_.size();
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
  e.bytes.assign(bytes.begin(), bytes.end());
  Emit(std::move(e));
}

void Endpoint::EmitResponse(uint32_t session, uint64_t tag, CallStatus status,
                            Bytes bytes) {
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
                       std::span<const uint8_t> payload, bool pinned) {
  uint8_t bytes[kHeaderBytes];
  Encode(header, bytes);
  Transmit(to, header.type, std::span<const uint8_t>(bytes, kHeaderBytes), payload, 1, pinned);
}

void Endpoint::Transmit(const PeerAddress& to, PacketType type, std::span<const uint8_t> header,
                        std::span<const uint8_t> payload, uint32_t packets, bool pinned) {
  if (!Admit(to, type, header.size() + payload.size(), packets)) return;
  if (pinned) {
    io_->SendPinned(to, header, payload);
  } else {
    io_->Send(to, header, payload);
  }
}

bool Endpoint::Admit(const PeerAddress& to, PacketType type, size_t bytes, uint32_t packets) {
  ++stats_.packets_sent_by_type[static_cast<size_t>(type)];
  // Injected loss acts on the datagram, as the network would: a sealed batch is lost whole.
  if (RollDrop() ||
      std::find(failed_peers_.begin(), failed_peers_.end(), to) != failed_peers_.end()) {
    Drop(DropReason::kInjected);
    return false;
  }
  stats_.packets_sent += packets;
  stats_.bytes_sent += bytes;
  return true;
}

void Endpoint::SendPacket(const Session& session, const Header& header,
                          std::span<const uint8_t> payload, bool pinned) {
  if (session.security != nullptr && session.security->crypto != nullptr) {
    return SendSealed(session, header, payload);  // sealing is the copy (out of place)
  }
  SendRaw(PeerOf(session), header, payload, pinned);
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

uint64_t Endpoint::NextTimerUs() const {
  const uint64_t heap = std::min(timers_.empty() ? kNever : timers_.top().when_us,
                                 rto_timers_.empty() ? kNever : rto_timers_.top().when_us);
  return gate_ == nullptr ? heap : std::min(heap, gate_->NextDueUs());
}

uint32_t Endpoint::PacketsFor(const Session& session, uint32_t message_bytes) const {
  if (message_bytes == 0) return 1;
  return (message_bytes + session.data_bytes_per_packet - 1) / session.data_bytes_per_packet;
}

Bytes Endpoint::MessageBuffer(Bytes previous, size_t bytes) {
  if (pool_ == nullptr || bytes < pool_->min_bytes()) {
    previous.resize(bytes);
    return previous;
  }
  pool_->Give(std::move(previous));
  return pool_->Take(bytes);
}

std::span<const uint8_t> Endpoint::RequestSlice(const Session& session,
                                                const RequestBytes& request, uint32_t index,
                                                bool* lent) {
  if (lent != nullptr) *lent = false;
  const size_t bytes =
      SliceBytes(static_cast<uint32_t>(request.size()), session.data_bytes_per_packet, index);
  const size_t begin = static_cast<size_t>(index) * session.data_bytes_per_packet;
  const size_t head = request.head.size();
  if (bytes == 0) return {};
  if (begin + bytes <= head) return std::span<const uint8_t>(request.head.data() + begin, bytes);
  if (begin >= head) {
    if (lent != nullptr) *lent = true;
    return request.body.subspan(begin - head, bytes);
  }
  // The packet that spans both (a lent request's head is a few bytes: the first packet).
  slice_scratch_.resize(bytes);
  std::memcpy(slice_scratch_.data(), request.head.data() + begin, head - begin);
  std::memcpy(slice_scratch_.data() + (head - begin), request.body.data(), bytes - (head - begin));
  return std::span<const uint8_t>(slice_scratch_.data(), bytes);
}

std::span<const uint8_t> Endpoint::Slice(const Session& session,
                                         const Bytes& message,
                                         uint32_t index) const {
  const uint32_t size = static_cast<uint32_t>(message.size());
  const uint32_t bytes = SliceBytes(size, session.data_bytes_per_packet, index);
  if (bytes == 0) return {};
  return std::span<const uint8_t>(message.data() + static_cast<size_t>(index) *
                                                       session.data_bytes_per_packet,
                                  bytes);
}

void Endpoint::Bury(Session* session, uint64_t /*now_us*/) {
  FlushSealed();  // its queued packets (a disconnect, say) leave before its keys go
  if (session->liveness != nullptr) LeavePeer(session);
  if (session->is_client) {
    --stats_.sessions_client;
    rto_due_[session->rto_index] = RtoDue{kNever, 0};
    rto_free_.push_back(session->rto_index);
  } else {
    --stats_.sessions_server;
    accepted_by_token_.erase(session->peer.ToString() + "/" + std::to_string(session->token));
  }
  ++stats_.sessions_closed;
  if (gate_ != nullptr && session->is_client) gate_->OnClosed(session->number);
  sessions_.Erase(session->number);  // pending timer entries become stale
}

// ------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------

uint32_t Endpoint::Connect(const PeerAddress& peer, uint64_t now_us) {
  BatchScope scope(this);
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
  s->token = NewToken();
  s->packet_bytes = std::min(config_.packet_bytes_max, PathPacketBytes(peer));
  s->started_us = now_us;
  s->client_slots.resize(config_.slots_per_session);
  for (uint32_t i = 0; i < config_.slots_per_session; ++i) {
    s->client_slots[i].index = i;
    s->client_slots[i].request_number = i;
  }
  s->credits = config_.credits_per_session;
  if (rto_free_.empty()) {
    s->rto_index = static_cast<uint32_t>(rto_due_.size());
    rto_due_.push_back(RtoDue{kNever, number});
  } else {
    s->rto_index = rto_free_.back();
    rto_free_.pop_back();
    rto_due_[s->rto_index] = RtoDue{kNever, number};
  }
  sessions_.Insert(number, std::move(owned));
  ++stats_.sessions_client;
  ++stats_.sessions_opened;
  OnClientSessionTimer(s, now_us);  // sends the first connect request and arms the retry
  return number;
}

CallStatus Endpoint::Call(uint32_t number, uint8_t request_type, uint64_t tag,
                          std::span<const uint8_t> request, uint64_t timeout_us,
                          uint64_t now_us) {
  return CallLent(number, request_type, tag, request, {}, nullptr, timeout_us, now_us);
}

CallStatus Endpoint::CallLent(uint32_t number, uint8_t request_type, uint64_t tag,
                              std::span<const uint8_t> head, std::span<const uint8_t> body,
                              Lender lender, uint64_t timeout_us, uint64_t now_us) {
  BatchScope scope(this);
  Session* s = Find(number);
  if (s == nullptr || !s->is_client || s->state == Session::State::kDisconnecting) {
    return CallStatus::kUnknownSession;
  }
  if (head.size() + body.size() > config_.message_bytes_max) return CallStatus::kTooLarge;
  if (s->backlog.size() >= config_.queued_requests_per_session_max) {
    return CallStatus::kBacklogFull;
  }
  ++stats_.requests_started;
  if (body.empty()) lender.reset();  // nothing lent: nothing to keep
  else ++stats_.requests_lent;
  s->backlog.push_back(QueuedCall{
      tag, request_type, RequestBytes{ToBytes(head), body, std::move(lender)}});
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
  const uint64_t all = SlotMask(static_cast<uint32_t>(s->client_slots.size()));
  if (s->busy_slots == 0 && !s->backlog.empty()) s->busy_since_us = now_us;
  while (!s->backlog.empty() && s->busy_slots != all) {
    const uint32_t index = static_cast<uint32_t>(std::countr_one(s->busy_slots));
    ClientSlot& slot = s->client_slots[index];
    QueuedCall call = s->backlog.pop_front();
    s->busy_slots |= uint64_t{1} << index;
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
    slot.rtx_until = 0;
    slot.loss_window = false;
    slot.answers_beyond = 0;
    slot.probed = false;
    slot.progress_us = now_us;
  }
}

void Endpoint::Kick(Session* s, uint64_t now_us) {
  // Busy slots in round-robin order from the cursor: rotate the mask so the cursor is bit 0.
  const uint32_t n = static_cast<uint32_t>(s->client_slots.size());
  const uint32_t cursor = s->kick_cursor;
  s->kick_cursor = (cursor + 1) % n;
  uint64_t pending = s->busy_slots;
  if (cursor != 0) pending = ((pending >> cursor) | (pending << (n - cursor))) & SlotMask(n);
  while (pending != 0 && s->credits > 0) {
    const uint32_t offset = static_cast<uint32_t>(std::countr_zero(pending));
    pending &= pending - 1;
    KickSlot(s, &s->client_slots[(cursor + offset) % n], now_us);
  }
}

void Endpoint::KickSlot(Session* s, ClientSlot* slot, uint64_t now_us) {
  const uint32_t total = slot->response_packets == 0
                             ? slot->request_packets
                             : slot->request_packets + slot->response_packets - 1;
  bool sent = false;
  while (slot->num_tx < total && s->credits > 0) {
    if (slot->loss_window && slot->num_tx > slot->num_rx) break;
    // Until the session's first RTT sample, one packet of a slot in flight (an initial window,
    // as TCP's slow start begins small): 50 senders opening with whole 1 MiB windows queue
    // ~50 MiB at the receiver, ~100 ms, and each session's first window then outlives the
    // initial RTO several times over and is rolled back and resent while merely queued.
    if (s->srtt_us == 0 && slot->num_tx > slot->num_rx) break;
    const size_t payload_bytes =
        slot->num_tx < slot->request_packets
            ? SliceBytes(static_cast<uint32_t>(slot->request.size()), s->data_bytes_per_packet,
                         slot->num_tx)
            : 0;
    if (gate_ != nullptr && !gate_->MaySend(s->number, kHeaderBytes + payload_bytes, now_us)) {
      ++stats_.gate_deferrals;
      break;  // the gate lists the session in TakeDue() when it may send again (KickDue)
    }
    SendClientPacket(s, *slot, slot->num_tx);
    if (slot->tx_us.empty()) slot->tx_us.resize(config_.credits_per_session);
    slot->tx_us[slot->num_tx % config_.credits_per_session] = static_cast<uint32_t>(now_us);
    ++slot->num_tx;
    --s->credits;
    sent = true;
  }
  if (sent) MarkActive(s, now_us);
}

void Endpoint::SendClientPacket(Session* s, const ClientSlot& slot, uint32_t packet_number) {
  // REQ below request_packets, RFR from there (a retransmission is resealed by SendPacket with
  // a fresh nonce like any other packet).
  const bool is_request = packet_number < slot.request_packets;
  std::span<const uint8_t> payload;
  bool lent = false;
  const RequestBytes& request = slot.request;
  const size_t begin = static_cast<size_t>(packet_number) * s->data_bytes_per_packet;
  // A plaintext packet that spans a lent request's head and body: the head's part goes with
  // the wire header (copied: a few bytes), the body's part is sent pinned from where it is,
  // instead of both being joined in a scratch buffer (a copy of a whole packet, ~1 in 17 of a
  // lent MiB: the multicast's first packet of every block frame).
  const bool spans = is_request && s->security == nullptr && !request.body.empty() &&
                     begin < request.head.size() &&
                     begin + SliceBytes(static_cast<uint32_t>(request.size()),
                                        s->data_bytes_per_packet, packet_number) >
                         request.head.size();
  if (is_request && !spans) payload = RequestSlice(*s, request, packet_number, &lent);
  Header h;
  h.type = is_request ? PacketType::kRequest : PacketType::kRequestForResponse;
  h.request_type = slot.request_type;
  h.dest_session = s->remote_number;
  h.message_bytes = static_cast<uint32_t>(slot.request.size());
  h.packet_number = packet_number;
  h.request_number = slot.request_number;
  if (spans) {
    const size_t head_part = request.head.size() - begin;
    const size_t bytes =
        SliceBytes(static_cast<uint32_t>(request.size()), s->data_bytes_per_packet, packet_number);
    spanning_header_.resize(kHeaderBytes + head_part);
    Encode(h, spanning_header_.data());
    std::memcpy(spanning_header_.data() + kHeaderBytes, request.head.data() + begin, head_part);
    ++stats_.spanning_packets_pinned;
    return Transmit(PeerOf(*s), h.type, spanning_header_, request.body.subspan(0, bytes - head_part),
                    1, true);
  }
  SendPacket(*s, h, payload, lent);
}

void Endpoint::CompleteSlot(Session* s, ClientSlot* slot, CallStatus status, uint64_t now_us) {
  // Packets still unanswered will be dropped as stale when their answers come; give their
  // credits back now.
  s->credits += slot->num_tx - slot->num_rx;
  s->busy_slots &= ~(uint64_t{1} << slot->index);
  Bytes response;
  if (status == CallStatus::kOk || status == CallStatus::kHandlerError) {
    response.swap(slot->response);
  }
  slot->request.Release();  // a lent request goes back to its lender here
  Bytes().swap(slot->response);
  EmitResponse(s->number, slot->tag, status, std::move(response));
  if (s->state == Session::State::kConnected) {
    StartQueued(s, now_us);
    Kick(s, now_us);
  }
  if (s->busy_slots == 0) {  // idle: nothing for a retransmission timer to do
    s->rto_at_us = kNever;
    rto_due_[s->rto_index].when_us = kNever;
  }
}

void Endpoint::FailSession(Session* s, CallStatus status, SessionEventKind kind,
                           uint64_t now_us, PeerFailure why) {
  // A peer failure tells its calls why in one byte (JS names the signal in PeerFailedError).
  const bool failed = kind == SessionEventKind::kPeerFailed;
  auto detail = [&]() {
    return failed ? Bytes{static_cast<uint8_t>(why)} : Bytes{};
  };
  for (ClientSlot& slot : s->client_slots) {
    if (IsBusy(*s, slot)) EmitResponse(s->number, slot.tag, status, detail());
  }
  s->busy_slots = 0;
  for (QueuedCall& call : s->backlog) EmitResponse(s->number, call.tag, status, detail());
  s->backlog.clear();
  if (failed) ++stats_.peer_failures;
  EmitSession(s->number, kind, failed ? static_cast<uint64_t>(why) : 0);
  Bury(s, now_us);
}

void Endpoint::FailServerSession(Session* s, PeerFailure why, uint64_t now_us) {
  ++stats_.peer_failures;
  EmitSession(s->number, SessionEventKind::kPeerFailed, static_cast<uint64_t>(why));
  Bury(s, now_us);
}

bool Endpoint::Disconnect(uint32_t number, uint64_t now_us) {
  BatchScope scope(this);
  Session* s = Find(number);
  if (s == nullptr || !s->is_client) return false;
  if (s->state == Session::State::kDisconnecting) return true;
  for (ClientSlot& slot : s->client_slots) {
    if (IsBusy(*s, slot)) {
      s->credits += slot.num_tx - slot.num_rx;
      slot.request.Release();  // ends here: a lent request goes back now
      EmitResponse(s->number, slot.tag, CallStatus::kSessionClosed, {});
    }
  }
  s->busy_slots = 0;
  for (QueuedCall& call : s->backlog) {
    EmitResponse(s->number, call.tag, CallStatus::kSessionClosed, {});
  }
  s->backlog.clear();
  if (s->state == Session::State::kConnecting) {
    EmitSession(s->number, SessionEventKind::kDisconnected, 0);
    Bury(s, now_us);
    return true;
  }
  Uncount(s);  // the server may drop it any moment now: no longer in our census
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
      h.message_bytes = incarnation_tag_;  // the server's session joins our peer record by it
      h.request_number = s->token;
      SendConnectAttempt(s, h);
      if (!sessions_.Contains(s->number)) return;  // the handshake could not start
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
  // Connected: keepalive and failure are the peer's (OnPeerTimer, "Peers"). This timer only
  // resends a pending rekey message while the session is idle (busy sessions resend from
  // OpenIncoming), once per keepalive interval.
  if (s->security != nullptr && s->security->rekeying) {
    ResendHandshake(s);
    ArmSessionTimer(s, now_us + KeepaliveUs());
  }
}

void Endpoint::CompactTimers() {
  // Completed calls leave their deadline entries behind; with long deadlines and a high call
  // rate they would pile up. Rebuild the heap from live entries once dead ones dominate, which
  // keeps its size within a constant factor of what is pending (amortised O(log n) per call).
  const size_t live_bound = 2 * (deadline_tags_.size() + sessions_.size() + peers_.size()) + 4096;
  if (timers_.size() <= live_bound) return;
  std::vector<Timer> live;
  live.reserve(deadline_tags_.size() + sessions_.size());
  while (!timers_.empty()) {
    const Timer t = timers_.top();
    timers_.pop();
    if (t.kind == TimerKind::kDeadline) {
      if (deadline_tags_.count(t.key) != 0) live.push_back(t);
    } else if (t.kind == TimerKind::kPeer) {
      const Peer* p = peers_.Find(t.session);
      if (p != nullptr && p->timer_generation == t.key) live.push_back(t);
    } else {
      const Session* s = Find(t.session);
      if (s != nullptr && s->timer_generation == t.key) live.push_back(t);
    }
  }
  timers_ = decltype(timers_)(std::greater<Timer>(), std::move(live));
}

void Endpoint::MarkActive(Session* s, uint64_t now_us) {
  if (s->rto_us == 0) s->rto_us = config_.retransmit_timeout_us;
  ArmRetransmitTimer(s, now_us + s->rto_us);  // no-op unless earlier than the live entry
}

void Endpoint::ArmRetransmitTimer(Session* s, uint64_t when_us) {
  // One live heap entry per client session with packets in flight, as for the session timer.
  // Progress only moves a slot's progress_us; the entry is checked and moved when it fires, so
  // loss detection costs O(log n) per timeout per session, never a scan of all sessions and
  // nothing per packet.
  // rto_due_ holds the live entry's time too, in a dense array of all client sessions, so that
  // an entry left behind by a session that went idle (one per call when calls spread over
  // thousands of sessions) is recognised and dropped without touching the session.
  if (when_us >= s->rto_at_us) return;
  s->rto_at_us = when_us;
  rto_due_[s->rto_index].when_us = when_us;
  rto_timers_.push(Timer{when_us, TimerKind::kRetransmit, s->number, s->rto_index});
}

void Endpoint::OnRetransmitTimer(Session* s, uint64_t now_us) {
  s->rto_at_us = kNever;
  if (s->state != Session::State::kConnected) return;
  ++stats_.retransmit_timer_fires;
  // This session's own silence ("Peers"): its peer may answer on other sessions but not on this
  // one (it dropped the session). Packets in flight and nothing heard on this session for the
  // failure timeout since it got busy: it fails alone. Quiet for a keepalive interval: it PINGs
  // on its own, so a live peer whose handler runs long keeps it alive with PONGs.
  const uint64_t heard = std::max(s->last_rx_us, s->busy_since_us);
  if (now_us - heard >= config_.peer_failure_timeout_us) {
    return FailSession(s, CallStatus::kPeerFailed, SessionEventKind::kPeerFailed, now_us);
  }
  if (now_us - std::max(heard, s->last_ping_us) >= KeepaliveUs()) SendPing(s, now_us);
  uint64_t next = kNever;
  bool rolled_back = false, probed = false;
  for (uint64_t busy = s->busy_slots; busy != 0; busy &= busy - 1) {
    ClientSlot& slot = s->client_slots[static_cast<size_t>(std::countr_zero(busy))];
    if (slot.num_tx == slot.num_rx) continue;  // waiting for credits
    if (now_us - slot.progress_us < s->rto_us) {
      next = std::min(next, slot.progress_us + s->rto_us);
      continue;
    }
    // Silence for an RTO is, on these machines, mostly a receiver that was descheduled with
    // the window queued in its socket buffer, not a loss (losses in a window's middle are
    // repaired by fast retransmit before any RTO). So an expiry resends one packet (the first
    // unanswered) and keeps the window in flight; still no answer at the next (backed-off)
    // expiry, it probes again (a rollback would also resend just that packet: loss window).
    // Only a slot answered partway through the window it had out at its probe, then silent,
    // rolls back: the answers stopped at a loss, and the packets after it need resending.
    if ((slot.probed && slot.num_rx > slot.probe_from) || s->srtt_us == 0) {
      RollBack(s, &slot, now_us);
      rolled_back = true;
    } else {
      Probe(s, &slot, now_us);
      probed = true;
    }
  }
  if (rolled_back || probed) {
    // Back off until a fresh sample (RFC 6298 5.5): a peer slower than our estimate must not
    // see the same packets again every RTO.
    s->rto_us = std::min(2 * s->rto_us, RtoMaxUs());
  }
  if (probed) next = std::min(next, now_us + s->rto_us);
  if (rolled_back) Kick(s, now_us);  // re-arms through MarkActive when it sends
  if (next != kNever) ArmRetransmitTimer(s, next);
}

void Endpoint::Probe(Session* s, ClientSlot* slot, uint64_t now_us) {
  // Resend the first unanswered packet only, outside credits (its original holds one) and
  // outside the send gate (one packet per RTO, as TCP's timeout retransmission ignores cwnd).
  // Its answer, from whichever copy, gives no RTT sample (Karn).
  SendClientPacket(s, *slot, slot->num_rx);
  slot->rtx_until = std::max(slot->rtx_until, slot->num_rx + 1);
  slot->probed = true;
  slot->probe_from = slot->num_rx;
  slot->probe_until = slot->num_tx;
  slot->progress_us = now_us;
  ++stats_.rto_probes;
  ++stats_.retransmissions;
}

void Endpoint::RollBack(Session* s, ClientSlot* slot, uint64_t now_us) {
  // Go-Back-N: forget everything after the first unanswered packet, resend from there.
  slot->rtx_until = std::max(slot->rtx_until, slot->num_tx);
  slot->loss_window = true;
  s->credits += slot->num_tx - slot->num_rx;
  slot->num_tx = slot->num_rx;
  slot->progress_us = now_us;
  slot->answers_beyond = 0;
  slot->probed = false;
  ++stats_.rollbacks;
  ++stats_.retransmissions;
}

void Endpoint::FastRetransmit(Session* s, ClientSlot* slot, uint64_t now_us) {
  // A loss shown by the packets after it, not by silence: resend now rather than after the RTO
  // (>= 5 ms here), and do not back the RTO off (the path answered; only one packet was lost).
  RollBack(s, slot, now_us);
  ++stats_.fast_retransmits;
  if (gate_ != nullptr) gate_->OnLoss(s->number, now_us);
  Kick(s, now_us);
}

void Endpoint::OnConnectedRtt(Session* s, uint64_t now_us) {
  // The RTO starts at retransmit_timeout_us and adapts from data samples only: a handshake
  // is a few small packets, while a session's first window of data may queue behind other
  // senders' at the receiver (an incast) for far longer, and an RTO derived from the
  // handshake would roll that window back while it is merely queued. The congestion gate
  // takes the handshake RTT (if the request was sent once: Karn) as the path's base RTT.
  s->rto_us = s->rto_base_us = config_.retransmit_timeout_us;
  const bool sent_once = s->last_handshake_tx_us <= s->started_us + 1;
  const uint64_t rtt = sent_once && now_us > s->last_handshake_tx_us
                           ? now_us - s->last_handshake_tx_us : 0;
  if (gate_ != nullptr) {
    gate_->OnConnected(s->number, rtt, size_t{config_.credits_per_session} * s->packet_bytes,
                       now_us);
  }
}

void Endpoint::OnAnswered(Session* s, ClientSlot& slot, const Header& h, size_t bytes,
                          uint64_t now_us) {
  slot.loss_window = false;  // the peer is answering: the whole window may go again
  slot.answers_beyond = 0;
  if (slot.probed) {
    // An answer after a probe ends the backoff even without a sample (Karn): the peer is alive,
    // and a slot answered only partway must roll back one plain RTO later, not a backed-off one.
    s->rto_us = s->rto_base_us;
    if (slot.num_rx >= slot.probe_until) slot.probed = false;  // a stall, nothing lost
    else ArmRetransmitTimer(s, now_us + s->rto_us);  // the live entry may be a backed-off one
  }
  if (h.packet_number < slot.rtx_until || slot.tx_us.empty()) return;  // Karn's rule
  const uint32_t sent = slot.tx_us[h.packet_number % config_.credits_per_session];
  const uint64_t rtt = std::max<uint32_t>(static_cast<uint32_t>(now_us) - sent, 1);
  // An answer that waited for the handler (response packet 0) tells the RTO, not congestion.
  const bool via_handler = h.packet_number + 1 == slot.request_packets;
  ++stats_.rtt_samples;
  if (s->srtt_us == 0) {
    s->srtt_us = rtt;
    s->rttvar_us = rtt / 2;
  } else {
    const uint64_t error = s->srtt_us > rtt ? s->srtt_us - rtt : rtt - s->srtt_us;
    s->rttvar_us = (3 * s->rttvar_us + error) / 4;
    s->srtt_us = (7 * s->srtt_us + rtt) / 8;
  }
  s->rto_base_us = std::clamp(s->srtt_us + 4 * s->rttvar_us, config_.retransmit_timeout_min_us,
                              RtoMaxUs());
  s->rto_us = s->rto_base_us;
  if (gate_ != nullptr && !via_handler) gate_->OnRttSample(s->number, rtt, bytes, now_us);
}

void Endpoint::KickDue(uint64_t now_us) {
  if (gate_ == nullptr) return;
  due_sessions_.clear();
  gate_->TakeDue(now_us, &due_sessions_);
  for (uint32_t number : due_sessions_) {
    Session* s = Find(number);
    if (s != nullptr && s->is_client && s->state == Session::State::kConnected) Kick(s, now_us);
  }
}

void Endpoint::OnDeadline(uint32_t number, uint64_t tag, uint64_t now_us) {
  if (deadline_tags_.count(tag) == 0) return;  // the call completed before its deadline
  Session* s = Find(number);
  if (s == nullptr) return;
  for (ClientSlot& slot : s->client_slots) {
    if (IsBusy(*s, slot) && slot.tag == tag) {
      CompleteSlot(s, &slot, CallStatus::kTimeout, now_us);
      return;
    }
  }
  if (s->backlog.EraseTag(tag)) EmitResponse(number, tag, CallStatus::kTimeout, {});
}

Endpoint::ClientSlot* Endpoint::InOrderClientSlot(Session* s, const Header& h,
                                                  uint64_t now_us) {
  // eRPC's in_order_client: the packet must be for the slot's current request and be the next
  // one we are waiting for; anything else is a duplicate or from before a rollback.
  // slots_per_session is a power of two (ValidateConfig): a mask, not a division.
  ClientSlot& slot = s->client_slots[h.request_number & (s->client_slots.size() - 1)];
  if (!IsBusy(*s, slot) || slot.request_number != h.request_number) return nullptr;
  if (h.packet_number > slot.num_rx && h.packet_number < slot.num_tx &&
      h.packet_number >= slot.rtx_until) {
    // An answer from beyond a missing one: the missing answer (or its packet) was lost, unless
    // the network reordered them. Enough of these and the slot resends without its RTO. (Below
    // rtx_until the answer may be a late one to a packet sent before the last rollback.)
    if (++slot.answers_beyond == kFastRetransmitEvidence) {
      FastRetransmit(s, &slot, now_us);
    }
    return nullptr;
  }
  if (h.packet_number != slot.num_rx || h.packet_number >= slot.num_tx) return nullptr;
  return &slot;
}

void Endpoint::HandleCreditReturn(Session* s, const Header& h, std::span<const uint8_t> payload,
                                  uint64_t now_us) {
  if (!payload.empty()) return Drop(DropReason::kBadLength);
  if (h.aux == kCreditReturnNack) return HandleNack(s, h, now_us);
  ClientSlot* slot = InOrderClientSlot(s, h, now_us);
  if (slot == nullptr) return Drop(DropReason::kStale);
  if (h.packet_number + 1 >= slot->request_packets) return Drop(DropReason::kBadPacketNumber);
  ++slot->num_rx;
  ++s->credits;
  slot->progress_us = now_us;
  OnAnswered(s, *slot, h,
             SliceBytes(static_cast<uint32_t>(slot->request.size()), s->data_bytes_per_packet,
                        h.packet_number),
             now_us);
  Kick(s, now_us);
}

void Endpoint::HandleNack(Session* s, const Header& h, uint64_t now_us) {
  // The server saw packets beyond packet_number of this request but not packet_number itself.
  ClientSlot& slot = s->client_slots[h.request_number % s->client_slots.size()];
  if (!IsBusy(*s, slot) || slot.request_number != h.request_number ||
      h.packet_number != slot.num_rx || h.packet_number >= slot.num_tx) {
    return Drop(DropReason::kStale);  // answered meanwhile, or already rolled back
  }
  FastRetransmit(s, &slot, now_us);
}

void Endpoint::HandleResponse(Session* s, const Header& h, std::span<const uint8_t> payload,
                              uint64_t now_us) {
  ClientSlot* slot = InOrderClientSlot(s, h, now_us);
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
    slot->response = MessageBuffer(std::move(slot->response), h.message_bytes);
    slot->response_packets = PacketsFor(*s, h.message_bytes);
  } else {
    if (h.message_bytes != slot->response.size() || index >= slot->response_packets) {
      return Drop(DropReason::kBadPacketNumber);
    }
    if (payload.size() != SliceBytes(h.message_bytes, s->data_bytes_per_packet, index)) {
      return Drop(DropReason::kBadLength);
    }
  }
  uint8_t* const destination =
      slot->response.data() + static_cast<size_t>(index) * s->data_bytes_per_packet;
  // An encrypted packet may already have been opened straight into place (OpenDestination).
  if (!payload.empty() && payload.data() != destination) {
    std::memcpy(destination, payload.data(), payload.size());
  }
  ++slot->num_rx;
  ++s->credits;
  slot->progress_us = now_us;
  OnAnswered(s, *slot, h, payload.size(), now_us);
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

void Endpoint::HandleConnectRequest(const PeerAddress& from, const Header& h,
                                    std::span<const uint8_t> payload, uint64_t now_us,
                                    PendingAccept* confirmed) {
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
      AcceptedReply(*s, &reply);
      SendPacket(*s, reply);  // sealed when the session has keys
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
  if (security_ != nullptr && confirmed == nullptr) {
    return BeginAccept(from, h, payload, reply, key, now_us);  // the session comes on Confirm
  }
  if (security_ == nullptr && !payload.empty()) {
    return RefuseConnect(from, reply, ConnectError::kEncryptionMismatch,
                         "the peer encrypts and this endpoint does not. Fix: turn encryption on "
                         "(with the group key file) on both nodes, or off on both", {});
  }
  auto owned = std::make_unique<Session>();
  Session* s = owned.get();
  s->number = confirmed != nullptr ? confirmed->number : NewSessionNumber();
  if (confirmed != nullptr) {
    s->security = std::make_unique<SessionSecurity>();
    s->security->crypto = std::move(confirmed->crypto);
  }
  s->is_client = false;
  s->state = Session::State::kConnected;
  s->peer = from;
  s->remote_number = h.aux;
  s->token = h.request_number;
  s->packet_bytes = std::min({h.packet_number, config_.packet_bytes_max, PathPacketBytes(from)});
  s->data_bytes_per_packet = s->packet_bytes - kHeaderBytes - TrailerReserveBytes();
  s->server_slots.resize(slots);
  for (uint32_t i = 0; i < slots; ++i) s->server_slots[i].request_number = i;
  s->started_us = now_us;
  s->last_rx_us = now_us;
  sessions_.Insert(s->number, std::move(owned));
  accepted_by_token_[key] = s->number;
  ++stats_.sessions_server;
  ++stats_.sessions_opened;
  const std::string peer_text = from.ToString();
  EmitSession(s->number, SessionEventKind::kAccepted, 0,
              std::vector<uint8_t>(peer_text.begin(), peer_text.end()));
  JoinPeer(s, h.message_bytes, now_us);  // the client's incarnation tag
  AcceptedReply(*s, &reply);
  SendPacket(*s, reply);  // sealed when the session has keys: the client's proof
}

void Endpoint::AcceptedReply(const Session& s, Header* reply) const {
  reply->aux = s.number;
  reply->packet_number = s.packet_bytes;
  reply->message_bytes = incarnation_tag_;  // the client's session joins our peer record by it
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

void Endpoint::NoteGap(Session* s, ServerSlot* slot, const Header& h, uint32_t expected) {
  // Go-Back-N drops a packet beyond the expected one. After kFastRetransmitEvidence of them for
  // the same missing packet, one NACK tells the client, which resends from there at once; the
  // client's RTO remains the backstop if the NACK (or the resend) is lost too.
  Drop(DropReason::kOutOfOrder);
  if (slot->gap_request_number != h.request_number || slot->gap_packet != expected) {
    slot->gap_request_number = h.request_number;
    slot->gap_packet = expected;
    slot->gap_seen = 0;
    slot->gap_nacked = false;
  }
  if (slot->gap_nacked || ++slot->gap_seen < kFastRetransmitEvidence) return;
  slot->gap_nacked = true;
  ++stats_.nacks_sent;
  Header nack;
  nack.type = PacketType::kCreditReturn;
  nack.request_type = h.request_type;
  nack.dest_session = s->remote_number;
  nack.packet_number = expected;
  nack.request_number = h.request_number;
  nack.aux = kCreditReturnNack;
  SendPacket(*s, nack);
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
    if (h.packet_number != 0) return NoteGap(s, &slot, h, 0);
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
    Bytes().swap(slot.response);
    // Not zero-filled (bytes.h): the handler runs only once every packet was written in.
    slot.request = MessageBuffer(std::move(slot.request), h.message_bytes);
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
  if (h.packet_number > slot.num_rx) return NoteGap(s, &slot, h, slot.num_rx);
  if (payload.size() != SliceBytes(h.message_bytes, s->data_bytes_per_packet, h.packet_number)) {
    return Drop(DropReason::kBadLength);
  }
  uint8_t* const destination =
      slot.request.data() + static_cast<size_t>(h.packet_number) * s->data_bytes_per_packet;
  // An encrypted packet may already have been opened straight into place (OpenDestination), a
  // plaintext one received there (OnPlacedPacket).
  if (!payload.empty() && payload.data() != destination) {
    std::memcpy(destination, payload.data(), payload.size());
  } else if (placed_packet_) {
    ++stats_.received_into_message;
  }
  ++slot.num_rx;
  if (!last) {
    // The next datagrams are likely this request's next packets (PlanReceive).
    receive_hint_ = true;
    receive_hint_session_ = h.dest_session;
    receive_hint_request_ = h.request_number;
    return SendCreditReturn(s, h);
  }
  if (!handled_types_[slot.request_type]) {
    slot.status = CallStatus::kNoHandler;
    slot.response_ready = true;
    slot.response_packets = 1;
    Bytes().swap(slot.request);
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
  if (h.packet_number > slot.num_rx) return NoteGap(s, &slot, h, slot.num_rx);
  if (h.packet_number < slot.num_rx) {
    ++stats_.duplicate_responses;
  } else {
    ++slot.num_rx;
  }
  SendResponsePacket(s, &slot, h.packet_number);
}

void Endpoint::Respond(const ServerRequest& request, CallStatus status,
                       std::span<const uint8_t> response, uint64_t /*now_us*/) {
  BatchScope scope(this);
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
// Encryption (endpoint_crypto.h): the seal/open step at the PacketIo boundary, the handshake
// inside session management, rekeying and group-key rotation.
// ------------------------------------------------------------------------------------------

void Endpoint::SendSealed(const Session& s, Header h, std::span<const uint8_t> payload) {
  h.flags |= kFlagEncrypted;
  crypto::SessionCrypto* session_crypto = s.security->crypto.get();
  if (!s.is_client && (session_crypto->RekeyDue() ||
                       session_crypto->key_id() != security_->keyring().Primary()->key_id)) {
    h.flags |= kFlagRekeyRequested;  // only the client starts handshakes; ask it to
  }
  const size_t bytes = kHeaderBytes + payload.size();
  if (batch_depth_ == 0 || bytes > kSealBatchItemBytesMax) {
    // Alone: a large packet gains nothing from sharing a seal. Whatever is queued goes first,
    // so the session's packets leave in the order they were sent.
    FlushSealed();
    uint8_t header[kHeaderBytes];
    Encode(h, header);
    return SealAndTransmit(s, header, payload, 1);
  }
  // Queued until the batch ends (FlushSealed): [u32 session][u16 bytes][header][payload].
  const size_t at = seal_queue_.size();
  seal_queue_.resize(at + 6 + bytes);
  uint8_t* out = seal_queue_.data() + at;
  std::memcpy(out, &s.number, 4);
  const uint16_t length = static_cast<uint16_t>(bytes);
  std::memcpy(out + 4, &length, 2);
  Encode(h, out + 6);
  if (!payload.empty()) std::memcpy(out + 6 + kHeaderBytes, payload.data(), payload.size());
  ++seal_queued_packets_;
}

void Endpoint::SealAndTransmit(const Session& s, const uint8_t* header,
                               std::span<const uint8_t> body, uint32_t packets) {
  // Out of place: the body (a message's slice, or a batch) is read once and written encrypted
  // where the datagram will be sent from, so encryption replaces the copy a plaintext send
  // makes instead of adding to it.
  const size_t bytes = crypto::SealedBytes(kHeaderBytes, body.size());
  uint8_t* room = SealRoom(PeerOf(s), bytes);
  const crypto::SealStatus status = s.security->crypto->SealInto(
      crypto::MutableBytes(room, bytes), crypto::Bytes(header, kHeaderBytes), body);
  TransmitSealed(s, room, bytes, status, packets);
}

uint8_t* Endpoint::SealRoom(const PeerAddress& to, size_t bytes) {
  // Small datagrams go through PacketIo::Send, which bundles them (udp_socket.h).
  seal_room_in_io_ = bytes > kBundleItemBytesMax;
  uint8_t* room = seal_room_in_io_ ? io_->Reserve(to, bytes) : nullptr;
  if (room != nullptr) return room;
  seal_room_in_io_ = false;
  if (seal_room_.size() < bytes) seal_room_.resize(bytes);
  return seal_room_.data();
}

void Endpoint::TransmitSealed(const Session& s, uint8_t* room, size_t bytes,
                              crypto::SealStatus status, uint32_t packets) {
  const uint8_t type = room[3] < kPacketTypeCount ? room[3] : 0;
  if (status != crypto::SealStatus::kOk) {
    // The key reached its hard limit (a rekey is overdue): nothing unsealed ever leaves. The
    // packets count as lost; Go-Back-N resends them once the rekey has switched keys.
    if (seal_room_in_io_) io_->Unreserve();
    stats_.packets_sent_by_type[type] += packets;
    return Drop(DropReason::kCrypto);
  }
  if (seal_room_in_io_) {
    if (!Admit(PeerOf(s), static_cast<PacketType>(type), bytes, packets)) return io_->Unreserve();
    ++stats_.sealed_into_send_batch;
    return;
  }
  Transmit(PeerOf(s), static_cast<PacketType>(type), std::span<const uint8_t>(room, kHeaderBytes),
           std::span<const uint8_t>(room + kHeaderBytes, bytes - kHeaderBytes), packets);
}

void Endpoint::FlushSealed() {
  if (seal_queued_packets_ == 0) return;
  // Group the queued packets by session, keeping each session's order: one sealed batch (or
  // several, each within the session's packet size) per session.
  seal_order_.clear();
  for (size_t at = 0; at < seal_queue_.size();) {
    uint32_t number;
    uint16_t bytes;
    std::memcpy(&number, seal_queue_.data() + at, 4);
    std::memcpy(&bytes, seal_queue_.data() + at + 4, 2);
    seal_order_.emplace_back(number, at);
    at += 6 + size_t{bytes};
  }
  std::stable_sort(seal_order_.begin(), seal_order_.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < seal_order_.size();) {
    const uint32_t number = seal_order_[i].first;
    size_t end = i;
    while (end < seal_order_.size() && seal_order_[end].first == number) ++end;
    const Session* s = Find(number);
    if (s != nullptr && s->security != nullptr && s->security->crypto != nullptr) {
      SealRun(*s, i, end);
    }
    i = end;
  }
  seal_queue_.clear();
  seal_queued_packets_ = 0;
}

void Endpoint::SealRun(const Session& s, size_t begin, size_t end) {
  // Batches fill the session's packet size: what the path carries in one datagram.
  const size_t limit = s.packet_bytes - kHeaderBytes - kSealTrailerBytes;
  auto item = [&](size_t k) {
    uint16_t bytes;
    std::memcpy(&bytes, seal_queue_.data() + seal_order_[k].second + 4, 2);
    return std::span<const uint8_t>(seal_queue_.data() + seal_order_[k].second + 6, bytes);
  };
  for (size_t k = begin; k < end;) {
    size_t body = 0, last = k;
    while (last < end && body + 2 + item(last).size() <= limit) body += 2 + item(last++).size();
    if (last - k <= 1) {
      const std::span<const uint8_t> one = item(k);
      SealAndTransmit(s, one.data(), one.subspan(kHeaderBytes), 1);
      k = std::max(last, k + 1);
      continue;
    }
    // Built where it is sent from (SealRoom) and sealed there in place: [outer header]
    // [u16 length][packet]... [trailer]. The outer header is the first packet's, marked as a
    // batch (its fields route and authenticate).
    const size_t bytes = crypto::SealedBytes(kHeaderBytes, body);
    uint8_t* room = SealRoom(PeerOf(s), bytes);
    std::memcpy(room, item(k).data(), kHeaderBytes);
    room[4] = static_cast<uint8_t>(room[4] | kFlagBatch);
    size_t at = kHeaderBytes;
    for (size_t j = k; j < last; ++j) {
      const std::span<const uint8_t> one = item(j);
      const uint16_t length = static_cast<uint16_t>(one.size());
      std::memcpy(room + at, &length, 2);
      std::memcpy(room + at + 2, one.data(), one.size());
      at += 2 + one.size();
      if (j > k) ++stats_.packets_sent_by_type[one[3] < kPacketTypeCount ? one[3] : 0];
    }
    ++stats_.sealed_batches;
    stats_.sealed_batch_packets += last - k;
    const crypto::SealStatus status =
        s.security->crypto->Seal(crypto::MutableBytes(room, bytes), kHeaderBytes, body);
    TransmitSealed(s, room, bytes, status, static_cast<uint32_t>(last - k));
    k = last;
  }
}

crypto::MutableBytes Endpoint::OpenDestination(Session& s, const Header& h, size_t bytes) {
  // Where a sealed packet's plaintext belongs, if it is the next packet of a request (server) or
  // response (client) its slot is assembling: then it is opened straight into the message's
  // buffer and decryption replaces HandleRequest's / HandleResponse's copy. The header is not
  // authenticated yet, so it only chooses where to write, never what is accepted: the place lies
  // past everything accepted (the packet number is the next one expected), so a packet that
  // fails its tag leaves zeros only where the genuine packet will be written, and the handler
  // checks every field again once the packet opened. Anything else (packet 0 of a message,
  // batches, duplicates, packets out of order) is opened in place.
  if ((h.flags & kFlagBatch) != 0 || bytes <= kHeaderBytes + kSealTrailerBytes) return {};
  const size_t body = bytes - kHeaderBytes - kSealTrailerBytes;
  Bytes* message = nullptr;
  size_t index = 0;
  if (!s.is_client && h.type == PacketType::kRequest && !s.server_slots.empty()) {
    ServerSlot& slot = s.server_slots[h.request_number % s.server_slots.size()];
    if (slot.request_number != h.request_number || slot.handler_running ||
        h.packet_number != slot.num_rx || h.packet_number >= slot.request_packets ||
        h.message_bytes != slot.request_bytes) {
      return {};
    }
    message = &slot.request;
    index = h.packet_number;
  } else if (s.is_client && h.type == PacketType::kResponse && !s.client_slots.empty()) {
    ClientSlot& slot = s.client_slots[h.request_number % s.client_slots.size()];
    // Response packet 0 sizes the response buffer (HandleResponse), so it opens in place.
    if (!IsBusy(s, slot) || slot.request_number != h.request_number ||
        h.packet_number != slot.num_rx || h.packet_number >= slot.num_tx ||
        h.packet_number < slot.request_packets || h.message_bytes != slot.response.size()) {
      return {};
    }
    index = h.packet_number - (slot.request_packets - 1);
    if (index >= slot.response_packets) return {};
    message = &slot.response;
  } else {
    return {};
  }
  const size_t offset = index * s.data_bytes_per_packet;
  if (offset + body > message->size()) return {};
  return crypto::MutableBytes(message->data() + offset, body);
}

bool Endpoint::OpenIncoming(Header* h, std::span<const uint8_t> packet,
                            std::span<const uint8_t>* payload, uint64_t now_us) {
  if ((h->flags & kFlagEncrypted) == 0) {
    // Only the handshake travels in plaintext: a connect request (ClientHello), the server's
    // ServerHello or refusal, and the client's Confirm. Each carries its own MAC; a plaintext
    // connect response is accepted only by a client session still connecting.
    const bool handshake = h->type == PacketType::kConnectRequest ||
                           h->type == PacketType::kConnectResponse ||
                           h->type == PacketType::kConnectConfirm;
    if (handshake && (h->flags & kFlagRekeyRequested) == 0) return true;
    Drop(DropReason::kUnsealed);
    return false;
  }
  Session* s = Find(h->dest_session);
  if (s == nullptr) {
    Drop(DropReason::kUnknownSession);
    return false;
  }
  SessionSecurity* sec = s->security.get();
  if (security_ == nullptr || sec == nullptr || sec->crypto == nullptr) {
    Drop(DropReason::kUnsealed);  // we have no keys for it (or do not encrypt at all)
    return false;
  }
  // Decrypted into the request being assembled (OpenDestination), else in place: OnPacket's
  // contract gives the endpoint the datagram's buffer.
  const crypto::MutableBytes writable(const_cast<uint8_t*>(packet.data()), packet.size());
  const crypto::OpenResult opened =
      sec->crypto->Open(writable, kHeaderBytes, OpenDestination(*s, *h, packet.size()));
  if (opened.status != crypto::OpenStatus::kOk) {
    Drop(DropReason::kCrypto);  // the reason is in CryptoCounters
    return false;
  }
  if (opened.body != packet.data() + kHeaderBytes) ++stats_.opened_into_message;
  // Only now are the header's fields (and the rekey bit) trusted.
  *payload = std::span<const uint8_t>(opened.body, opened.body_bytes);
  if (sec->retire_previous_at_us != 0 && now_us >= sec->retire_previous_at_us) {
    sec->crypto->RetirePreviousReceiveKey();
    sec->retire_previous_at_us = 0;
  }
  if (!s->is_client || s->state != Session::State::kConnected) return true;
  if (sec->rekeying && sec->rekey_adopted && !sec->crypto->send_switch_pending()) {
    // The server's packet opened under the new epoch: it has the Confirm, we send under the
    // new key now (SessionCrypto switched). The old receive key serves packets in flight.
    sec->rekeying = false;
    sec->rekey_adopted = false;
    sec->client_handshake.reset();
    sec->resend.clear();
    sec->retire_previous_at_us = now_us + config_.retransmit_timeout_us * 4;
    ++security_->stats().rekeys_completed;
  }
  if (sec->rekeying) {
    // Rekey messages travel in sealed packets that may be lost like any other. While the
    // session is busy, resend after a retransmission timeout without an answer (the keepalive
    // timer covers idle sessions).
    if (now_us - sec->rekey_sent_us >= config_.retransmit_timeout_us) {
      sec->rekey_sent_us = now_us;
      ResendHandshake(s);
    }
    return true;
  }
  const bool requested = (h->flags & kFlagRekeyRequested) != 0 &&
                         now_us >= sec->rekey_request_ignored_until_us;
  if (requested || sec->crypto->RekeyDue()) {
    if (requested) {
      sec->rekey_request_ignored_until_us = now_us + config_.peer_failure_timeout_us / 4;
    }
    StartRekey(s, now_us);
  }
  return true;
}

void Endpoint::SendConnectAttempt(Session* s, const Header& connect) {
  if (security_ == nullptr) return SendPacket(*s, connect);
  if (s->security == nullptr) s->security = std::make_unique<SessionSecurity>();
  SessionSecurity& sec = *s->security;
  if (sec.crypto != nullptr) return ResendHandshake(s);  // keys derived; Confirm unanswered
  if (sec.client_handshake == nullptr) {
    sec.client_handshake = std::make_unique<crypto::ClientHandshake>(
        security_->handshake_config(), &security_->counters());
    crypto::ClientHelloParams params;
    params.client_session = s->number;
    params.server_address = EndpointSecurity::Identity(s->peer);
    params.epoch_proposed = 0;
    crypto::HandshakeStep step = sec.client_handshake->Start(security_->keyring(), params);
    if (step.status != crypto::HandshakeStatus::kInProgress) {
      const std::string why = RefusalText(s->peer.ToString(), step.status, step.peer_reason);
      EmitSession(s->number, SessionEventKind::kConnectFailed,
                  static_cast<uint64_t>(ConnectError::kAuthenticationFailed),
                  std::vector<uint8_t>(why.begin(), why.end()));
      return Bury(s, 0);
    }
    sec.resend = std::move(step.reply);  // the same ClientHello on every retry
  }
  SendRaw(s->peer, connect, sec.resend);
}

void Endpoint::ResendHandshake(Session* s) {
  SessionSecurity& sec = *s->security;
  if (sec.resend.empty()) return;
  if (s->state == Session::State::kConnected) return SendRekeyMessage(s, sec.resend);
  Header confirm;
  confirm.type = PacketType::kConnectConfirm;
  confirm.dest_session = s->remote_number;
  confirm.aux = s->number;
  confirm.request_number = s->token;
  SendRaw(s->peer, confirm, sec.resend);
}

void Endpoint::BeginAccept(const PeerAddress& from, const Header& h,
                           std::span<const uint8_t> payload, Header reply,
                           const std::string& key, uint64_t now_us) {
  if (payload.empty()) {
    return RefuseConnect(from, reply, ConnectError::kEncryptionMismatch,
                         "the peer does not encrypt and this endpoint requires it. Fix: give "
                         "both nodes the group key file with encryption on",
                         {});
  }
  auto it = pending_accepts_.find(key);
  if (it == pending_accepts_.end()) {
    if (pending_accepts_.size() >= security_->pending_handshakes_max()) {
      // Forget handshakes whose client has given up (a replayed hello never confirms).
      std::erase_if(pending_accepts_, [&](const auto& entry) {
        return now_us - entry.second.started_us >= config_.connect_timeout_us;
      });
    }
    if (pending_accepts_.size() >= security_->pending_handshakes_max()) {
      reply.aux = kNoSession;
      reply.message_bytes = static_cast<uint32_t>(ConnectError::kTooManySessions);
      return SendRaw(from, reply, {});
    }
    PendingAccept pending;
    pending.number = NewSessionNumber();
    pending.connect = h;
    pending.started_us = now_us;
    pending.handshake = std::make_unique<crypto::ServerHandshake>(security_->handshake_config(),
                                                                  &security_->counters());
    it = pending_accepts_.emplace(key, std::move(pending)).first;
  }
  PendingAccept& pending = it->second;
  // A repeated hello (our ServerHello was lost) gets the same ServerHello again.
  crypto::HandshakeStep step = pending.handshake->OnClientHello(
      payload, security_->keyring(), pending.number, 0, EndpointSecurity::KeyringMs(now_us));
  if (step.status == crypto::HandshakeStatus::kInProgress) {
    reply.aux = pending.number;
    reply.packet_number = std::min({h.packet_number, config_.packet_bytes_max,
                                    PathPacketBytes(from)});
    security_->stats().pending_handshakes = pending_accepts_.size();
    return SendRaw(from, reply, step.reply);
  }
  pending_accepts_.erase(it);
  security_->stats().pending_handshakes = pending_accepts_.size();
  RefuseConnect(from, reply, ConnectError::kAuthenticationFailed,
                crypto::Describe(step.status), step.reply);
}

void Endpoint::RefuseConnect(const PeerAddress& from, Header reply, ConnectError error,
                             const std::string& why, std::span<const uint8_t> refuse_message) {
  reply.aux = kNoSession;
  reply.message_bytes = static_cast<uint32_t>(error);
  SendRaw(from, reply, refuse_message);
  if (security_ != nullptr) ++security_->stats().handshakes_refused;
  const std::string text = "refused a session from " + from.ToString() + ": " + why;
  EmitSession(0, SessionEventKind::kRefused, static_cast<uint64_t>(error),
              std::vector<uint8_t>(text.begin(), text.end()));
}

void Endpoint::HandleConnectConfirm(const PeerAddress& from, const Header& h,
                                    std::span<const uint8_t> payload, uint64_t now_us) {
  if (security_ == nullptr) return Drop(DropReason::kBadType);
  const std::string key = from.ToString() + "/" + std::to_string(h.request_number);
  auto it = pending_accepts_.find(key);
  if (it == pending_accepts_.end() || it->second.number != h.dest_session) {
    auto known = accepted_by_token_.find(key);
    Session* s = known == accepted_by_token_.end() ? nullptr : Find(known->second);
    if (s == nullptr) return Drop(DropReason::kUnknownSession);
    // A repeated Confirm: our sealed answer was lost. Answer again.
    if (s->is_client || !(s->peer == from)) return Drop(DropReason::kWrongPeer);
    Header reply;
    reply.type = PacketType::kConnectResponse;
    reply.dest_session = h.aux;
    reply.request_number = h.request_number;
    AcceptedReply(*s, &reply);
    return SendPacket(*s, reply);
  }
  crypto::HandshakeStep step = it->second.handshake->OnMessage(payload);
  if (step.status == crypto::HandshakeStatus::kOk) {
    it->second.crypto = crypto::SessionCrypto::Create(crypto::Role::kServer, std::move(*step.keys),
                                                      &security_->counters(), security_->limits());
    PendingAccept accepted = std::move(it->second);
    pending_accepts_.erase(it);
    security_->stats().pending_handshakes = pending_accepts_.size();
    if (accepted.crypto == nullptr) return Drop(DropReason::kCrypto);  // out of memory
    return HandleConnectRequest(from, accepted.connect, {}, now_us, &accepted);
  }
  if (step.status == crypto::HandshakeStatus::kWrongState ||
      step.status == crypto::HandshakeStatus::kInProgress) {
    return Drop(DropReason::kDuplicate);
  }
  pending_accepts_.erase(it);
  security_->stats().pending_handshakes = pending_accepts_.size();
  Header reply;
  reply.type = PacketType::kConnectResponse;
  reply.dest_session = h.aux;
  reply.request_number = h.request_number;
  RefuseConnect(from, reply, ConnectError::kAuthenticationFailed,
                RefusalText(from.ToString(), step.status, step.peer_reason), step.reply);
}

void Endpoint::HandleHandshakeReply(Session* s, const Header& h,
                                    std::span<const uint8_t> payload, uint64_t now_us) {
  SessionSecurity& sec = *s->security;
  crypto::HandshakeStep step;
  if (h.aux == kNoSession) {
    // Refused. The Refuse message (if any) says why; it is unauthenticated (the peer may share
    // no key with us), so it only ever ends this attempt.
    step.status = crypto::HandshakeStatus::kRefusedByPeer;
    if (sec.client_handshake != nullptr && !payload.empty()) {
      step = sec.client_handshake->OnMessage(payload);
    }
    if (step.status == crypto::HandshakeStatus::kWrongState) {
      // Our handshake already completed: the server refused our Confirm. Its reason byte is
      // informative only (unauthenticated), as for every refusal.
      step.status = crypto::HandshakeStatus::kRefusedByPeer;
      step.peer_reason = payload.size() >= 3 ? static_cast<crypto::HandshakeStatus>(payload[2])
                                             : crypto::HandshakeStatus::kOk;
      step.reply.clear();
    }
  } else if (sec.client_handshake == nullptr) {
    return Drop(DropReason::kBadState);
  } else {
    step = sec.client_handshake->OnMessage(payload);
  }
  using Status = crypto::HandshakeStatus;
  if (step.status == Status::kOk && step.keys->server_session != h.aux) {
    step.status = Status::kMalformed;  // the MAC'd hello names another session than the header
    step.reply = crypto::EncodeRefuse(Status::kMalformed, step.keys->key_id);
  }
  if (step.status == Status::kOk) {
    sec.crypto = crypto::SessionCrypto::Create(crypto::Role::kClient, std::move(*step.keys),
                                               &security_->counters(), security_->limits());
    if (sec.crypto == nullptr) return Drop(DropReason::kCrypto);  // out of memory; retried
    s->remote_number = h.aux;
    sec.resend = std::move(step.reply);  // the Confirm, resent until the sealed answer
    return ResendHandshake(s);
  }
  if (step.status == Status::kInProgress) return ResendHandshake(s);  // repeated ServerHello
  if (step.status == Status::kWrongState) return Drop(DropReason::kDuplicate);
  std::string why;
  ConnectError error = ConnectError::kAuthenticationFailed;
  if (h.aux == kNoSession && payload.empty()) {
    error = static_cast<ConnectError>(h.message_bytes);  // sessions_max, closing, mismatch
    why = "session with " + s->peer.ToString() + " refused by the peer (connect error " +
          std::to_string(h.message_bytes) + ")";
  } else {
    why = RefusalText(s->peer.ToString(), step.status, step.peer_reason);
  }
  if (!step.reply.empty()) {
    Header refuse;
    refuse.type = PacketType::kConnectConfirm;
    refuse.dest_session = h.aux;
    refuse.aux = s->number;
    refuse.request_number = s->token;
    SendRaw(s->peer, refuse, step.reply);
  }
  ++security_->stats().connects_refused_by_peer;
  EmitSession(s->number, SessionEventKind::kConnectFailed, static_cast<uint64_t>(error),
              std::vector<uint8_t>(why.begin(), why.end()));
  Bury(s, now_us);
}

void Endpoint::SendRekeyMessage(Session* s, std::span<const uint8_t> message) {
  Header h;
  h.type = PacketType::kRekey;
  h.dest_session = s->remote_number;
  SendPacket(*s, h, message);
}

bool Endpoint::StartRekey(Session* s, uint64_t now_us) {
  SessionSecurity* sec = s->security.get();
  if (!s->is_client || s->state != Session::State::kConnected || sec == nullptr ||
      sec->crypto == nullptr || sec->rekeying) {
    return false;
  }
  if (sec->crypto->NextEpoch() > 0xFFFF) {
    // 65,535 rekeys spent the epochs: a new session gets new keys from epoch 0.
    FailSession(s, CallStatus::kSessionClosed, SessionEventKind::kDisconnected, now_us);
    return false;
  }
  sec->client_handshake = std::make_unique<crypto::ClientHandshake>(
      security_->handshake_config(), &security_->counters());
  crypto::ClientHelloParams params;
  params.client_session = s->number;
  params.server_address = EndpointSecurity::Identity(s->peer);
  params.epoch_proposed = static_cast<uint16_t>(sec->crypto->NextEpoch());
  crypto::HandshakeStep step = sec->client_handshake->Start(security_->keyring(), params);
  if (step.status != crypto::HandshakeStatus::kInProgress) return false;
  sec->rekeying = true;
  sec->rekey_adopted = false;
  sec->resend = std::move(step.reply);
  sec->rekey_sent_us = now_us;
  ++security_->stats().rekeys_started;
  SendRekeyMessage(s, sec->resend);
  ArmSessionTimer(s, now_us + KeepaliveUs());  // resends it while the session is idle
  return true;
}

void Endpoint::HandleRekey(Session* s, std::span<const uint8_t> payload, uint64_t now_us) {
  if (s->security == nullptr || s->security->crypto == nullptr || payload.empty()) {
    return Drop(DropReason::kBadState);
  }
  if (s->is_client) return HandleClientRekey(s, payload, now_us);
  SessionSecurity& sec = *s->security;
  using Type = crypto::HandshakeMessageType;
  const auto type = static_cast<Type>(payload[0]);
  if (type == Type::kClientHello) {
    const bool repeated = sec.server_handshake != nullptr &&
                          std::equal(payload.begin(), payload.end(),
                                     sec.server_hello_request.begin(),
                                     sec.server_hello_request.end());
    if (!repeated) {
      sec.server_handshake = std::make_unique<crypto::ServerHandshake>(
          security_->handshake_config(), &security_->counters());
      sec.server_hello_request.assign(payload.begin(), payload.end());
    }
    crypto::HandshakeStep step = sec.server_handshake->OnClientHello(
        payload, security_->keyring(), s->number,
        static_cast<uint16_t>(std::min<uint32_t>(sec.crypto->NextEpoch(), 0xFFFF)),
        EndpointSecurity::KeyringMs(now_us));
    if (step.status != crypto::HandshakeStatus::kInProgress) {
      if (repeated && step.status == crypto::HandshakeStatus::kWrongState) {
        return Drop(DropReason::kDuplicate);  // a late copy of a rekey that completed
      }
      ++security_->stats().rekeys_failed;
    }
    if (!step.reply.empty()) SendRekeyMessage(s, step.reply);
    return;
  }
  if (sec.server_handshake == nullptr) return Drop(DropReason::kBadState);
  crypto::HandshakeStep step = sec.server_handshake->OnMessage(payload);
  if (step.status == crypto::HandshakeStatus::kOk) {
    if (!sec.crypto->Adopt(std::move(*step.keys))) return Drop(DropReason::kCrypto);
    sec.retire_previous_at_us = now_us + config_.retransmit_timeout_us * 4;
    ++security_->stats().rekeys_completed;
  } else if (step.status != crypto::HandshakeStatus::kWrongState) {
    ++security_->stats().rekeys_failed;
    return;
  }
  // Answer every Confirm (repeats too) with a packet under the new epoch: the client's proof
  // that we switched, so it switches its sending key even on an idle session.
  Header pong;
  pong.type = PacketType::kPong;
  pong.dest_session = s->remote_number;
  SendPacket(*s, pong);
}

void Endpoint::HandleClientRekey(Session* s, std::span<const uint8_t> payload,
                                 uint64_t /*now_us*/) {
  SessionSecurity& sec = *s->security;
  if (!sec.rekeying || sec.client_handshake == nullptr) return Drop(DropReason::kDuplicate);
  crypto::HandshakeStep step = sec.client_handshake->OnMessage(payload);
  switch (step.status) {
    case crypto::HandshakeStatus::kOk:
      if (!sec.crypto->Adopt(std::move(*step.keys))) return Drop(DropReason::kCrypto);
      sec.rekey_adopted = true;
      sec.resend = std::move(step.reply);  // Confirm, resent until the server's proof arrives
      return SendRekeyMessage(s, sec.resend);
    case crypto::HandshakeStatus::kInProgress: return SendRekeyMessage(s, sec.resend);
    case crypto::HandshakeStatus::kWrongState: return Drop(DropReason::kDuplicate);
    default:
      // Refused (e.g. the server does not hold our new primary key yet). The session keeps its
      // current keys; the next rotation step or the server's request starts another attempt.
      if (!step.reply.empty()) SendRekeyMessage(s, step.reply);
      sec.rekeying = false;
      sec.client_handshake.reset();
      sec.resend.clear();
      ++security_->stats().rekeys_failed;
      return;
  }
}

bool Endpoint::RotateKey(const crypto::GroupKey& new_key, uint64_t grace_us, uint64_t now_us) {
  BatchScope scope(this);
  if (security_ == nullptr) return false;
  const uint64_t grace_ms = grace_us / 1000;
  if (security_->keyring().Rotate(new_key, EndpointSecurity::KeyringMs(now_us), grace_ms) !=
      crypto::KeyringStatus::kOk) {
    return false;
  }
  ++security_->stats().key_rotations;
  security_->grace_end_us = now_us + grace_us;
  if (security_->grace_end_us == 0) security_->grace_end_us = 1;
  std::vector<uint32_t> numbers;
  sessions_.ForEach([&](uint32_t number, const Session& session) {
    if (session.is_client) numbers.push_back(number);
  });
  std::sort(numbers.begin(), numbers.end());
  for (uint32_t number : numbers) StartRekey(Find(number), now_us);
  return true;
}

bool Endpoint::Rekey(uint32_t number, uint64_t now_us) {
  BatchScope scope(this);
  Session* s = Find(number);
  return s != nullptr && StartRekey(s, now_us);
}

void Endpoint::MaintainCrypto(uint64_t now_us) {
  if (security_->grace_end_us == 0 || now_us < security_->grace_end_us) return;
  // The rotation's grace is over: superseded keys go, and so do sessions still keyed from one
  // (their peer never took the new key; it must reconnect with the current key file).
  security_->grace_end_us = 0;
  security_->keyring().PruneExpired(EndpointSecurity::KeyringMs(now_us));
  std::vector<uint32_t> numbers;
  sessions_.ForEach([&](uint32_t number, const Session& session) {
    const SessionSecurity* sec = session.security.get();
    if (sec != nullptr && sec->crypto != nullptr &&
        security_->keyring().FindAccepted(sec->crypto->key_id(),
                                          EndpointSecurity::KeyringMs(now_us)) == nullptr) {
      numbers.push_back(number);
    }
  });
  std::sort(numbers.begin(), numbers.end());
  for (uint32_t number : numbers) {
    Session* s = Find(number);
    ++security_->stats().sessions_closed_key_retired;
    if (s->is_client) {
      FailSession(s, CallStatus::kSessionClosed, SessionEventKind::kDisconnected, now_us);
    } else {
      EmitSession(s->number, SessionEventKind::kDisconnected, 0);
      Bury(s, now_us);
    }
  }
}

SecurityStats Endpoint::security_stats() const {
  SecurityStats out;
  if (security_ == nullptr) return out;
  out.enabled = true;
  out.crypto = security_->counters();
  out.endpoint = security_->stats();
  return out;
}

int Endpoint::SessionSendEpoch(uint32_t number) const {
  const Session* s = Find(number);
  if (s == nullptr || s->security == nullptr || s->security->crypto == nullptr) return -1;
  return s->security->crypto->send_epoch();
}

uint32_t Endpoint::SessionKeyId(uint32_t number) const {
  const Session* s = Find(number);
  if (s == nullptr || s->security == nullptr || s->security->crypto == nullptr) return 0;
  return s->security->crypto->key_id();
}

// ------------------------------------------------------------------------------------------
// Driver entry points
// ------------------------------------------------------------------------------------------

void Endpoint::HandleConnectResponse(Session* s, const Header& h,
                                     std::span<const uint8_t> payload, uint64_t now_us) {
  using State = Session::State;
  if (s->state != State::kConnecting || h.request_number != s->token) {
    return Drop(DropReason::kDuplicate);
  }
  if (s->security != nullptr && (h.flags & kFlagEncrypted) == 0) {
    return HandleHandshakeReply(s, h, payload, now_us);  // ServerHello or refusal
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
  s->data_bytes_per_packet = s->packet_bytes - kHeaderBytes - TrailerReserveBytes();
  s->state = State::kConnected;
  if (s->security != nullptr) {
    s->security->client_handshake.reset();  // done: the server proved it holds the keys
    s->security->resend.clear();
  }
  s->last_rx_us = now_us;
  s->timer_at_us = kNever;  // the connect retry entry is now stale
  ++s->timer_generation;
  OnConnectedRtt(s, now_us);
  EmitSession(s->number, SessionEventKind::kConnected, 0);
  JoinPeer(s, h.message_bytes, now_us);  // the server's incarnation tag
  StartQueued(s, now_us);
  Kick(s, now_us);
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
  if ((h.flags & kFlagBatch) != 0 && (h.flags & kFlagEncrypted) == 0) {
    return Drop(DropReason::kBadFlags);  // a batch exists only sealed
  }
  std::span<const uint8_t> payload = packet.subspan(kHeaderBytes);
  if ((security_ != nullptr || (h.flags & kFlagEncrypted) != 0) &&
      !OpenIncoming(&h, packet, &payload, now_us)) {
    return;  // dropped and counted
  }
  BatchScope scope(this);
  if ((h.flags & kFlagBatch) != 0) return DispatchBatch(from, h, payload, now_us);
  Dispatch(from, h, payload, now_us);
}

// Receiving in place (endpoint.h, ReceivePlacement). Only plaintext requests: an encrypting
// endpoint opens sealed packets straight into the message instead (OpenDestination), and a
// response's buffer is sized by its packet 0 (the packets after it are few: responses here are
// small). The guesses are the request's next packets in order, from its next expected one on:
// all in the part of its buffer no packet was accepted into yet.
size_t Endpoint::PlanReceive(std::span<ReceivePlacement> out) const {
  if (!receive_hint_ || security_ != nullptr || shut_down_) return 0;
  const Session* s = Find(receive_hint_session_);
  if (s == nullptr || s->is_client || s->server_slots.empty()) return 0;
  const ServerSlot& slot = s->server_slots[receive_hint_request_ % s->server_slots.size()];
  if (slot.request_number != receive_hint_request_ || slot.handler_running ||
      slot.num_rx == 0 || slot.num_rx >= slot.request_packets) {
    return 0;
  }
  const size_t n = std::min<size_t>(out.size(), slot.request_packets - slot.num_rx);
  Header h;
  h.type = PacketType::kRequest;
  h.request_type = slot.request_type;
  h.dest_session = receive_hint_session_;
  h.message_bytes = slot.request_bytes;
  h.request_number = receive_hint_request_;
  for (size_t k = 0; k < n; ++k) {
    const uint32_t packet = slot.num_rx + static_cast<uint32_t>(k);
    h.packet_number = packet;
    Encode(h, out[k].header);
    // const: the request's buffer is the endpoint's; the socket writes the unreceived part.
    out[k].body = const_cast<uint8_t*>(slot.request.data()) +
                  static_cast<size_t>(packet) * s->data_bytes_per_packet;
    out[k].body_bytes = SliceBytes(slot.request_bytes, s->data_bytes_per_packet, packet);
  }
  return n;
}

void Endpoint::OnPlacedPacket(const PeerAddress& from, std::span<const uint8_t> header,
                              std::span<const uint8_t> body, uint64_t now_us) {
  ++stats_.packets_received;
  stats_.bytes_received += header.size() + body.size();
  if (!failed_peers_.empty() &&
      std::find(failed_peers_.begin(), failed_peers_.end(), from) != failed_peers_.end()) {
    return Drop(DropReason::kFailedPeer);
  }
  Header h;
  // A guess's header has passed Decode's checks (the socket matched it): only the packet number
  // and aux may differ.
  if (header.size() != kHeaderBytes || Decode(header, &h) != DecodeError::kNone ||
      h.type != PacketType::kRequest || h.flags != 0) {
    return Drop(DropReason::kBadState);
  }
  if (shut_down_) return Drop(DropReason::kBadState);
  ++stats_.packets_received_by_type[static_cast<size_t>(h.type)];
  // The body must lie in the buffer its request is still being assembled in: a packet handled
  // before this one in the same receive may have ended the session or moved its slot on, and
  // then these bytes may be in memory no longer the endpoint's.
  Session* s = Find(h.dest_session);
  if (s == nullptr || s->is_client || s->server_slots.empty()) {
    return Drop(DropReason::kStale);
  }
  const ServerSlot& slot = s->server_slots[h.request_number % s->server_slots.size()];
  // Compared as addresses: the body may lie in another (or freed) allocation.
  const auto begin = reinterpret_cast<uintptr_t>(slot.request.data());
  const auto at = reinterpret_cast<uintptr_t>(body.data());
  if (slot.request_number != h.request_number || at < begin ||
      at + body.size() > begin + slot.request.size()) {
    return Drop(DropReason::kStale);
  }
  BatchScope scope(this);
  placed_packet_ = true;
  Dispatch(from, h, body, now_us);
  placed_packet_ = false;
}

// Cache hints for a batch (PrefetchPackets / PrefetchSessions in endpoint.h). Three passes over
// at most kPrefetchBatch items, each issuing the loads the next one depends on: the table lines,
// then the sessions' first three lines (Session's layout puts what a packet reads there), then
// the slot the packet or call will use. A pass costs a few ns per item; a miss it hides ~100.
namespace {
constexpr size_t kPrefetchBatch = 64;
constexpr uint64_t kNoSlotHint = UINT64_MAX;

void PrefetchLines(const void* at, size_t bytes) {
  const auto* p = static_cast<const char*>(at);
  for (size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset);
}
}  // namespace

void Endpoint::PrefetchPackets(std::span<const std::span<const uint8_t>> packets) const {
  uint32_t numbers[kPrefetchBatch];
  uint64_t request_numbers[kPrefetchBatch];
  for (size_t begin = 0; begin < packets.size(); begin += kPrefetchBatch) {
    const size_t n = std::min(kPrefetchBatch, packets.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      const std::span<const uint8_t> packet = packets[begin + i];
      numbers[i] = 0;
      if (packet.size() < kHeaderBytes) continue;
      std::memcpy(&numbers[i], packet.data() + 8, 4);  // dest_session (wire.h), little-endian
      std::memcpy(&request_numbers[i], packet.data() + 24, 8);  // request number
      if (numbers[i] != 0) sessions_.Prefetch(numbers[i]);
    }
    PrefetchFound(std::span<const uint32_t>(numbers, n), request_numbers);
  }
}

void Endpoint::PrefetchSessions(std::span<const uint32_t> sessions) const {
  uint64_t hints[kPrefetchBatch];
  std::fill(std::begin(hints), std::end(hints), kNoSlotHint);
  for (size_t begin = 0; begin < sessions.size(); begin += kPrefetchBatch) {
    const size_t n = std::min(kPrefetchBatch, sessions.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      if (sessions[begin + i] == 0) continue;
      sessions_.Prefetch(sessions[begin + i]);
      if (gate_ != nullptr) gate_->PrefetchEntry(sessions[begin + i]);  // MaySend's lookup
    }
    PrefetchFound(sessions.subspan(begin, n), hints);
    if (gate_ != nullptr) {
      for (size_t i = 0; i < n; ++i) gate_->PrefetchState(sessions[begin + i]);
    }
  }
}

void Endpoint::PrefetchFound(std::span<const uint32_t> numbers,
                             const uint64_t* request_numbers) const {
  const Session* found[kPrefetchBatch];
  const void* slots[kPrefetchBatch];
  for (size_t i = 0; i < numbers.size(); ++i) {
    found[i] = numbers[i] == 0 ? nullptr : sessions_.Find(numbers[i]);
    if (found[i] != nullptr) PrefetchLines(found[i], 3 * 64);
  }
  for (size_t i = 0; i < numbers.size(); ++i) {
    const Session* s = found[i];
    slots[i] = nullptr;
    if (s == nullptr) continue;
    if (s->is_client) {
      if (s->client_slots.empty()) continue;
      // A packet answers the slot its request number names; a call takes the first free slot.
      const uint64_t mask = s->client_slots.size() - 1;
      const uint64_t index = request_numbers[i] != kNoSlotHint
                                 ? request_numbers[i] & mask
                                 : static_cast<uint64_t>(std::countr_one(s->busy_slots)) & mask;
      slots[i] = &s->client_slots[index];
      PrefetchLines(slots[i], sizeof(ClientSlot));
    } else if (!s->server_slots.empty() && request_numbers[i] != kNoSlotHint) {
      slots[i] = &s->server_slots[request_numbers[i] & (s->server_slots.size() - 1)];
      PrefetchLines(slots[i], sizeof(ServerSlot));
    }
  }
  // What the slots point to: a call's transmit stamps; on a server, the response kept from the
  // slot's previous request, which a new request frees (the allocator reads its header).
  for (size_t i = 0; i < numbers.size(); ++i) {
    if (slots[i] == nullptr) continue;
    if (found[i]->is_client) {
      const auto* slot = static_cast<const ClientSlot*>(slots[i]);
      if (!slot->tx_us.empty()) __builtin_prefetch(slot->tx_us.data());
    } else {
      const auto* slot = static_cast<const ServerSlot*>(slots[i]);
      if (!slot->response.empty()) __builtin_prefetch(slot->response.data() - 16);
    }
  }
}

void Endpoint::DispatchBatch(const PeerAddress& from, const Header& outer,
                             std::span<const uint8_t> body, uint64_t now_us) {
  // Authenticated as a whole: each packet inside is handled as if it had arrived opened on its
  // own. Its header must name the same session as the batch's (the one whose key opened it).
  std::span<const uint8_t> rest = body;
  bool first = true;
  while (!rest.empty()) {
    uint16_t bytes = 0;
    if (rest.size() < 2) return Drop(DropReason::kBadLength);
    std::memcpy(&bytes, rest.data(), 2);
    if (rest.size() < size_t{2} + bytes) return Drop(DropReason::kBadLength);
    const std::span<const uint8_t> item = rest.subspan(2, bytes);
    rest = rest.subspan(size_t{2} + bytes);
    Header h;
    if (Decode(item, &h) != DecodeError::kNone || h.dest_session != outer.dest_session ||
        (h.flags & kFlagBatch) != 0 || (h.flags & kFlagEncrypted) == 0) {
      return Drop(DropReason::kBadState);
    }
    if (!first) {
      ++stats_.packets_received;
      ++stats_.packets_received_by_type[static_cast<size_t>(h.type)];
    }
    first = false;
    Dispatch(from, h, item.subspan(kHeaderBytes), now_us);
  }
}

void Endpoint::Dispatch(const PeerAddress& from, const Header& h,
                        std::span<const uint8_t> payload, uint64_t now_us) {
  if (h.type == PacketType::kConnectRequest) {
    if (payload.size() > crypto::kClientHelloBytes) return Drop(DropReason::kBadLength);
    return HandleConnectRequest(from, h, payload, now_us);
  }
  if (h.type == PacketType::kConnectConfirm) return HandleConnectConfirm(from, h, payload, now_us);
  if (h.type == PacketType::kDisconnectRequest) {
    // Answered even for a session we no longer know, so a client whose first answer was lost
    // still completes its disconnect (an encrypting endpoint only answers sealed requests of
    // sessions it knows: it has no keys for the others).
    Header reply;
    reply.type = PacketType::kDisconnectResponse;
    reply.dest_session = h.aux;
    reply.request_number = h.request_number;
    Session* s = Find(h.dest_session);
    if (s != nullptr && !s->is_client && s->peer == from && s->token == h.request_number) {
      EmitSession(s->number, SessionEventKind::kDisconnected, 0);
      SendPacket(*s, reply);
      return Bury(s, now_us);
    } else if (s != nullptr) {
      return Drop(DropReason::kWrongPeer);
    }
    return SendRaw(from, reply, {});
  }
  Session* s = Find(h.dest_session);
  if (s == nullptr) return Drop(DropReason::kUnknownSession);
  if (!(PeerOf(*s) == from)) return Drop(DropReason::kWrongPeer);
  if (payload.size() > s->packet_bytes) return Drop(DropReason::kTooLarge);
  const bool for_client = h.type == PacketType::kCreditReturn ||
                          h.type == PacketType::kResponse ||
                          h.type == PacketType::kConnectResponse ||
                          h.type == PacketType::kDisconnectResponse || h.type == PacketType::kPong;
  // PING/PONG run either way: a server PINGs a client only to ask about a session ("Orphans").
  const bool either_way = h.type == PacketType::kRekey || h.type == PacketType::kPing ||
                          h.type == PacketType::kPong;
  if (for_client != s->is_client && !either_way) return Drop(DropReason::kBadState);
  using State = Session::State;
  if (h.type == PacketType::kConnectResponse) return HandleConnectResponse(s, h, payload, now_us);
  if (h.type == PacketType::kDisconnectResponse) return HandleDisconnectResponse(s, h, now_us);
  if (s->state != State::kConnected) return Drop(DropReason::kBadState);
  s->last_rx_us = now_us;
  // Heard from: the whole peer incarnation is alive ("Peers"), and earlier port-unreachable
  // reports about this session are void.
  Peer* peer = s->liveness;
  peer->last_rx_us = now_us;
  if (s->is_client) peer->ping_session = s->number;
  s->unreachable_reports = 0;
  switch (h.type) {
    case PacketType::kRequest: return HandleRequest(s, h, payload, now_us);
    case PacketType::kRequestForResponse:
      if (!payload.empty()) return Drop(DropReason::kBadLength);
      return HandleRequestForResponse(s, h, now_us);
    case PacketType::kCreditReturn: return HandleCreditReturn(s, h, payload, now_us);
    case PacketType::kResponse: return HandleResponse(s, h, payload, now_us);
    case PacketType::kPing: {
      if (!s->is_client) OnCensus(peer, h, now_us);
      Header reply;
      reply.type = PacketType::kPong;
      reply.dest_session = s->remote_number;
      return SendPacket(*s, reply);
    }
    case PacketType::kPong: return;
    case PacketType::kRekey: return HandleRekey(s, payload, now_us);
    default: return Drop(DropReason::kBadType);
  }
}

void Endpoint::OnTimers(uint64_t now_us) {
  BatchScope scope(this);
  if (security_ != nullptr) MaintainCrypto(now_us);
  // Retransmission entries are at most one live per session with packets in flight (superseded
  // ones are recognised by their time), so this heap never needs compaction.
  while (!rto_timers_.empty() && rto_timers_.top().when_us <= now_us) {
    const Timer t = rto_timers_.top();
    rto_timers_.pop();
    const RtoDue& due = rto_due_[t.key];
    if (due.when_us != t.when_us || due.session != t.session) continue;  // superseded or idle
    Session* s = Find(t.session);
    if (s != nullptr && s->rto_at_us == t.when_us) OnRetransmitTimer(s, now_us);
  }
  while (!timers_.empty() && timers_.top().when_us <= now_us) {
    const Timer t = timers_.top();
    timers_.pop();
    if (t.kind == TimerKind::kDeadline) {
      OnDeadline(t.session, t.key, now_us);
      continue;
    }
    if (t.kind == TimerKind::kPeer) {
      Peer* p = peers_.Find(t.session);
      if (p == nullptr || p->timer_generation != t.key) continue;  // stale entry
      p->timer_at_us = kNever;
      OnPeerTimer(p, now_us);
      continue;
    }
    Session* s = Find(t.session);
    if (s == nullptr || s->timer_generation != t.key) continue;  // stale entry
    s->timer_at_us = kNever;
    ++stats_.session_timer_fires;
    // Server sessions arm none: their liveness is the peer's.
    if (s->is_client) OnClientSessionTimer(s, now_us);
  }
  KickDue(now_us);
}

// ------------------------------------------------------------------------------------------
// Peers
// ------------------------------------------------------------------------------------------
//
// Liveness is a property of the remote endpoint, not of each session: every established session
// (either role) belongs to the record of its peer's incarnation -- the peer's address plus the
// 32-bit incarnation tag it announced in the handshake (CONNECT's and an accepting CONNECT_RESP's
// message bytes; derived from EndpointConfig::incarnation, 0 when that is 0). Any packet on any
// of those sessions proves the incarnation alive, so:
//
//  - One timer per peer record (TimerKind::kPeer), not per session. When nothing has been heard
//    from the peer for a keepalive interval (peer_failure_timeout_us / 4) and we hold client
//    sessions to it, one PING goes out on one of them -- the client session last heard from,
//    or, if the previous keepalive went unanswered, the next one in turn (so a session the peer
//    has dropped cannot hold the PINGs). Nothing heard for peer_failure_timeout_us: every
//    session of the record fails at once (kPeerFailed, kSilence). Idle sessions cost nothing:
//    O(peers) PINGs and timer fires per interval, whatever the number of sessions. A server
//    sends no PINGs (as before); its records are kept alive by the clients' packets.
//  - A peer that restarted at the same address announces another tag: its sessions form a new
//    record, and the old incarnation's record, hearing nothing (the new process drops packets
//    for sessions it never had), fails its sessions after the timeout as before. (Endpoints
//    with incarnation 0 -- tests only; the binding always draws one -- all announce tag 0.)
//  - What changes for a single session whose peer stays alive but no longer answers on it (it
//    dropped the session: a lost disconnect, a session it failed on its side): it is no longer
//    kept alive or failed by its own keepalive. A client session waiting on answers is judged by
//    its retransmission timer (OnRetransmitTimer): nothing heard on it for the failure timeout
//    since it got busy (or last heard) and it fails alone; it PINGs on its own when quiet for a
//    keepalive interval, so a long-running handler still keeps it alive. An idle client session
//    the peer dropped lives on until it is used (its first call then fails after the timeout)
//    or the peer goes. A server session whose client dropped it without a DISCONNECT getting
//    through (three tries lost, or a connect the client gave up on after we accepted) is found
//    by the census the client's PINGs carry and reaped ("Orphans").
//  - The session timer remains for the handshake, disconnect retries and rekey resends.

void Endpoint::JoinPeer(Session* s, uint32_t remote_tag, uint64_t now_us) {
  const std::string key = s->peer.ToString() + "/" + std::to_string(remote_tag);
  auto it = peer_ids_.find(key);
  Peer* p = it == peer_ids_.end() ? nullptr : peers_.Find(it->second);
  if (p == nullptr) {
    auto owned = std::make_unique<Peer>();
    p = owned.get();
    do {
      p->id = next_peer_id_++;
      if (next_peer_id_ == 0) next_peer_id_ = 1;
    } while (p->id == 0 || peers_.Contains(p->id));
    p->key = key;
    p->address = s->peer;
    p->last_rx_us = now_us;
    peers_.Insert(p->id, std::move(owned));
    peer_ids_[key] = p->id;
    ++stats_.peers;
  }
  p->last_rx_us = std::max(p->last_rx_us, now_us);  // the handshake's answer is a packet
  std::vector<uint32_t>& list = s->is_client ? p->clients : p->servers;
  if (s->is_client) {
    s->in_census = true;
    ++p->census_count;
    p->census_sum += s->remote_number;
  } else {
    if (p->servers.empty()) p->census_us = now_us;  // the client's census is due from now
    p->server_sum += s->number;
  }
  s->liveness = p;
  s->peer_in_record = p->address.length == s->peer.length &&
                      std::memcmp(&p->address.storage, &s->peer.storage, s->peer.length) == 0;
  s->peer_index = static_cast<uint32_t>(list.size());
  list.push_back(s->number);
  by_remote_.emplace(RemoteKey(p->id, s->remote_number), s->number);
  if (s->is_client && p->ping_session == 0) p->ping_session = s->number;
  ArmPeerTimer(p, p->last_rx_us + (p->clients.empty() ? config_.peer_failure_timeout_us
                                                      : KeepaliveUs()));
}

void Endpoint::LeavePeer(Session* s) {
  Uncount(s);
  Peer* p = s->liveness;
  s->liveness = nullptr;
  s->peer_in_record = false;
  if (!s->is_client) p->server_sum -= s->number;
  std::vector<uint32_t>& list = s->is_client ? p->clients : p->servers;
  const uint32_t moved = list.back();
  list[s->peer_index] = moved;
  list.pop_back();
  if (moved != s->number) Find(moved)->peer_index = s->peer_index;
  auto indexed = by_remote_.find(RemoteKey(p->id, s->remote_number));
  if (indexed != by_remote_.end() && indexed->second == s->number) by_remote_.erase(indexed);
  if (p->ping_session == s->number) p->ping_session = 0;
  if (p->clients.empty() && p->servers.empty()) {
    peer_ids_.erase(p->key);
    peers_.Erase(p->id);  // its timer entry becomes stale
    --stats_.peers;
  }
}

void Endpoint::ArmPeerTimer(Peer* p, uint64_t when_us) {
  // One live heap entry per peer record, as ArmSessionTimer does for sessions.
  if (when_us >= p->timer_at_us) return;
  p->timer_at_us = when_us;
  ++p->timer_generation;
  timers_.push(Timer{when_us, TimerKind::kPeer, p->id, p->timer_generation});
}

void Endpoint::SendPing(Session* s, uint64_t now_us) {
  Header h;
  h.type = PacketType::kPing;
  h.dest_session = s->remote_number;
  if (s->is_client) {  // the census ("Orphans"); a server's PING carries none
    h.message_bytes = s->liveness->census_count;
    h.request_number = s->liveness->census_sum;
  }
  SendPacket(*s, h);
  s->last_ping_us = now_us;
}

void Endpoint::OnPeerTimer(Peer* p, uint64_t now_us) {
  ++stats_.peer_timer_fires;
  const uint64_t failure_us = config_.peer_failure_timeout_us;
  if (now_us - p->last_rx_us >= failure_us) {
    // The incarnation is silent: all its sessions fail (in number order, deterministically).
    // The record goes with its last session; a client session still disconnecting keeps it
    // until its own retries end.
    std::vector<uint32_t> numbers(p->clients);
    numbers.insert(numbers.end(), p->servers.begin(), p->servers.end());
    std::sort(numbers.begin(), numbers.end());
    for (uint32_t number : numbers) {
      Session* s = Find(number);
      if (s == nullptr || s->state != Session::State::kConnected) continue;
      if (s->is_client) {
        FailSession(s, CallStatus::kPeerFailed, SessionEventKind::kPeerFailed, now_us);
      } else {
        FailServerSession(s, PeerFailure::kSilence, now_us);
      }
    }
    return;
  }
  if (p->audit_us != 0 || (!p->servers.empty() && now_us - p->census_us >= failure_us)) {
    const uint32_t id = p->id;
    OnAudit(p, now_us);  // may fail the record's last sessions, and the record with them
    p = peers_.Find(id);
    if (p == nullptr) return;
  }
  uint64_t next = p->last_rx_us + failure_us;
  const uint64_t keepalive = KeepaliveUs();
  if (p->audit_us != 0) next = std::min(next, p->probed_us + keepalive);
  if (!p->servers.empty()) next = std::min(next, p->census_us + failure_us);
  if (!p->clients.empty()) {
    // Quiet for a keepalive interval: a keepalive. Busy, the census still goes out every half
    // failure timeout ("Orphans"): a client's traffic must not hide the server's orphans.
    if (now_us - std::max(p->last_rx_us, p->last_ping_us) >= keepalive ||
        now_us - p->last_ping_us >= failure_us / 2) {
      // The session last heard from, unless the last keepalive went unanswered: then the
      // others in turn.
      Session* target = nullptr;
      if (p->ping_session != 0 && p->last_ping_us <= p->last_rx_us) target = Find(p->ping_session);
      for (size_t tries = 0; (target == nullptr || target->state != Session::State::kConnected) &&
                             tries < p->clients.size();
           ++tries) {
        target = Find(p->clients[p->ping_cursor++ % p->clients.size()]);
      }
      if (target != nullptr && target->state == Session::State::kConnected) {
        SendPing(target, now_us);
        p->last_ping_us = now_us;
      }
    }
    next = std::min({next, std::max(p->last_rx_us, p->last_ping_us) + keepalive,
                     p->last_ping_us + failure_us / 2});
  }
  ArmPeerTimer(p, std::max(next, now_us + 1));
}

// ------------------------------------------------------------------------------------------
// Orphans
// ------------------------------------------------------------------------------------------
//
// A server session outlives its client's session when the client gives up on it without the
// server hearing: its three DISCONNECT tries were all lost, or it gave up on a connect the
// server had accepted (every answer lost). Its peer record stays alive on the client's other
// traffic, so "Peers" alone keeps it -- and its place toward sessions_max -- for as long as the
// client endpoint lives. It is found by a census, at O(1) cost per PING and per join/leave:
//
//  - Every PING a client sends carries, for the peer record it goes to, the number of its
//    connected client sessions there (message bytes) and the sum of their remote (= our server)
//    session numbers (request number, mod 2^64). Sessions leave the census when they start
//    disconnecting. A record with client sessions PINGs when quiet for a keepalive interval (as
//    before) and also, however busy, at least every half failure timeout.
//  - The server compares a census with its own server sessions of the record (their count and
//    the sum of their numbers, kept as they join and leave). Equal: done. One session more on
//    our side: the difference of the sums names it. Otherwise (or the named number is not one
//    of ours), every server session of the record is looked at, at most once per failure
//    timeout per record (once per 8 when we hold no more sessions than the census counts: then
//    the difference may be only the client's, sessions we dropped that it still holds). No
//    census for a failure timeout while we hold server sessions of the record (its client
//    sessions are all gone, or its PINGs were lost) counts as a disagreement.
//  - Only sessions quiet for a keepalive interval are suspects (a session accepted a moment ago
//    and not yet connected on the client differs for an RTT and is not one): the server PINGs
//    each suspect's client (PING and PONG run either way; sealed under the session's keys), once
//    per keepalive interval, and fails (kPeerFailed, kSilence) those that heard nothing in the
//    failure timeout since the audit began. A live client session answers PONG (refreshing it);
//    one the client no longer has is dropped there as unknown. So nothing is failed on the
//    census alone, and a reset needs no new packet or unauthenticated path.
//  - Bound: the orphan becomes a suspect at the first census after it has been quiet for a
//    keepalive interval (at most half a failure timeout apart), and goes one failure timeout
//    after that: within about two failure timeouts of the client giving up.

void Endpoint::Uncount(Session* s) {
  if (!s->in_census) return;
  s->in_census = false;
  --s->liveness->census_count;
  s->liveness->census_sum -= s->remote_number;
}

void Endpoint::OnCensus(Peer* p, const Header& ping, uint64_t now_us) {
  p->census_us = now_us;
  const uint64_t ours = p->servers.size();
  if (ping.message_bytes == ours && ping.request_number == p->server_sum) return;
  const Session* named = nullptr;
  if (ours == uint64_t{ping.message_bytes} + 1) {
    const uint64_t number = p->server_sum - ping.request_number;
    named = number <= UINT32_MAX ? Find(static_cast<uint32_t>(number)) : nullptr;
    if (named != nullptr && (named->is_client || named->liveness != p)) named = nullptr;
  }
  // More sessions on our side than in the census: one of ours surely is an orphan. Otherwise the
  // difference may be only the client's (sessions we dropped that it still holds idle), and a
  // look at every session, which PINGs every idle one, is done 8 times more rarely.
  const uint32_t walk_every = named != nullptr ? 0 : ours > ping.message_bytes ? 1 : 8;
  StartAudit(p, named, walk_every, now_us);
}

void Endpoint::StartAudit(Peer* p, const Session* named, uint32_t walk_every, uint64_t now_us) {
  if (p->audit_us != 0) return;  // one at a time; the next census looks again
  const uint64_t quiet_us = KeepaliveUs();
  p->suspects.clear();
  if (named != nullptr && now_us - named->last_rx_us >= quiet_us) {
    p->suspects.push_back(named->number);
  } else if (walk_every != 0 &&
             (p->walked_us == 0 ||
              now_us - p->walked_us >= walk_every * config_.peer_failure_timeout_us)) {
    p->walked_us = now_us;
    for (uint32_t number : p->servers) {
      if (now_us - Find(number)->last_rx_us >= quiet_us) p->suspects.push_back(number);
    }
  }
  if (p->suspects.empty()) return;
  ++stats_.orphan_audits;
  p->audit_us = now_us;
  ProbeSuspects(p, now_us);
  ArmPeerTimer(p, now_us + quiet_us);
}

void Endpoint::ProbeSuspects(Peer* p, uint64_t now_us) {
  p->probed_us = now_us;
  for (uint32_t number : p->suspects) {
    Session* s = Find(number);
    if (s == nullptr || s->liveness != p || s->last_rx_us >= p->audit_us) continue;  // answered
    SendPing(s, now_us);
    ++stats_.orphan_probes;
  }
}

void Endpoint::OnAudit(Peer* p, uint64_t now_us) {
  if (p->audit_us == 0) {
    // No census for a failure timeout while we hold server sessions of this incarnation.
    p->census_us = now_us;
    return StartAudit(p, nullptr, 1, now_us);
  }
  if (now_us - p->audit_us < config_.peer_failure_timeout_us) {
    if (now_us - p->probed_us >= KeepaliveUs()) ProbeSuspects(p, now_us);
    return;
  }
  // The audit is over: fail the suspects that stayed silent (in number order). The record may
  // go with its last session, so everything needed is copied out first.
  const uint64_t began = p->audit_us;
  std::vector<uint32_t> suspects;
  suspects.swap(p->suspects);
  p->audit_us = 0;
  std::sort(suspects.begin(), suspects.end());
  for (uint32_t number : suspects) {
    Session* s = Find(number);
    if (s == nullptr || s->is_client || s->liveness == nullptr || s->last_rx_us >= began) continue;
    ++stats_.orphans_reaped;
    FailServerSession(s, PeerFailure::kSilence, now_us);
  }
}

// ------------------------------------------------------------------------------------------
// Unreachable peers
// ------------------------------------------------------------------------------------------
//
// A process killed on a live host leaves its UDP port closed, and that host answers each
// datagram sent to the port with ICMP "port unreachable". The rule that turns these reports
// into a session failure, long before peer_failure_timeout_us:
//
//  1. Only a report that names one of our established sessions counts: the quoted datagram's
//     header carries the destination session number, which for a client session is the
//     server's number and for a server session the client's (both learnt in the handshake),
//     and the report's address must be the session's peer. Connect requests name no session
//     (kNoSession), so a session still connecting to a port nobody has bound yet -- founders
//     starting in any order -- is never failed by reports; it retries until connect_timeout_us
//     as before. A session to a process that restarted at the same address names the new
//     process's session number, so reports about datagrams of the earlier process's sessions
//     cannot touch it (incarnations draw session numbers afresh).
//  2. A session fails after unreachable_reports_to_fail (2) reports of its own datagrams with
//     nothing received from the peer in between (a received packet resets the count). The
//     first report makes a client session send a PING at once, so the confirming report comes
//     one round trip later instead of at the next retransmission or keepalive. Why two: one
//     stray or forged report (ICMP is not authenticated; an attacker must still know the
//     session numbers, and an on-path one could as well drop every packet) must not end a
//     session, and two bounced datagrams with silence between them leave nothing to wait for:
//     a socket that answered our handshake stays bound for the life of its endpoint, so its
//     port reported closed means that endpoint is gone. No minimum time between the reports
//     is asked for: a closed port is not a transient state a live peer passes through.
//  3. The failure is the same kPeerFailed as the timeout's, with reason kPortUnreachable.
//
// What it does not cover: a crashed or powered-off host, a cut cable or a partition send no
// ICMP (peer_failure_timeout_us remains the bound there); neither does a process that is
// stopped (SIGSTOP) or hung, whose port stays bound. Hosts rate-limit ICMP errors
// (net.ipv4.icmp_ratelimit per destination off loopback, icmp_msgs_per_sec globally), and a
// firewall may drop them: the reports are a fast path, never a requirement.
//
// Cost: a report looks its session numbers up in the (peer incarnation, remote number) index
// of each peer record at its address ("Peers"): nothing walks the sessions.
namespace {
// The destination session numbers named by a quoted datagram: a packet's (plain or sealed
// batch: its outer header names the session) or every packet's of a bundle, as far as the
// quote reaches. kNoSession (a connect request) is skipped. Returns how many were written.
size_t QuotedSessions(std::span<const uint8_t> quoted, uint32_t* out, size_t max) {
  auto header_ok = [](std::span<const uint8_t> p) {
    return p.size() >= 12 && p[0] == (kMagic & 0xff) && p[1] == (kMagic >> 8) &&
           p[2] == kWireVersion;
  };
  size_t count = 0;
  auto add = [&](std::span<const uint8_t> p) {
    uint32_t session;
    std::memcpy(&session, p.data() + 8, 4);  // dest session, little-endian (wire.h)
    if (session == kNoSession || count == max) return;
    if (std::find(out, out + count, session) == out + count) out[count++] = session;
  };
  if (!header_ok(quoted)) return 0;
  if (quoted[3] != kBundleType) {
    add(quoted);
    return count;
  }
  size_t offset = kHeaderBytes;
  while (offset + 2 <= quoted.size()) {
    uint16_t item;
    std::memcpy(&item, quoted.data() + offset, 2);
    const std::span<const uint8_t> packet =
        quoted.subspan(offset + 2, std::min<size_t>(item, quoted.size() - offset - 2));
    if (header_ok(packet)) add(packet);
    offset += 2 + size_t{item};
  }
  return count;
}
}  // namespace

void Endpoint::OnUnreachable(const PeerAddress& to, std::span<const uint8_t> quoted,
                             uint64_t now_us) {
  BatchScope scope(this);
  uint32_t named[8];
  const size_t count = QuotedSessions(quoted, named, std::size(named));
  std::vector<uint32_t> matched;
  if (count > 0) {
    // Established sessions are indexed by (peer incarnation, remote number): look the named
    // numbers up in each peer record at this address (a few), not in every session.
    peers_.ForEach([&](uint32_t id, const Peer& p) {
      if (!(p.address == to)) return;
      for (size_t i = 0; i < count; ++i) {
        auto it = by_remote_.find(RemoteKey(id, named[i]));
        if (it == by_remote_.end()) continue;
        const Session* s = Find(it->second);
        if (s != nullptr && s->state == Session::State::kConnected) matched.push_back(it->second);
      }
    });
  }
  if (matched.empty()) {
    ++stats_.unreachable_unmatched;
    return;
  }
  std::sort(matched.begin(), matched.end());  // deterministic order of any events
  for (uint32_t number : matched) {
    Session* s = Find(number);
    if (s != nullptr) OnSessionUnreachable(s, now_us);
  }
}

void Endpoint::OnSessionUnreachable(Session* s, uint64_t now_us) {
  ++stats_.unreachable_reports;
  ++s->unreachable_reports;
  const uint32_t needed = config_.unreachable_reports_to_fail;
  if (needed == 0) return;
  if (s->unreachable_reports >= needed) {
    ++stats_.peer_failures_unreachable;
    if (s->is_client) {
      FailSession(s, CallStatus::kPeerFailed, SessionEventKind::kPeerFailed, now_us,
                  PeerFailure::kPortUnreachable);
    } else {
      FailServerSession(s, PeerFailure::kPortUnreachable, now_us);
    }
    return;
  }
  if (s->is_client && s->unreachable_reports == 1) {
    // Ask for confirmation now: a live peer answers with a PONG (resetting the count), a closed
    // port with the next report.
    SendPing(s, now_us);
  }
}

void Endpoint::Shutdown(bool tell_peers, uint64_t now_us) {
  BatchScope scope(this);
  if (shut_down_) return;
  std::vector<uint32_t> numbers;
  numbers.reserve(sessions_.size());
  sessions_.ForEach([&](uint32_t number, const Session&) { numbers.push_back(number); });
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
  while (!rto_timers_.empty()) rto_timers_.pop();
}

}  // namespace squall::transport

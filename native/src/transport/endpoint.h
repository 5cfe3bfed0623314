#pragma once
// The eRPC-style protocol core: sessions, request slots, credits, multi-packet messages,
// Go-Back-N, at-most-once execution, failure detection and deadlines.
//
// It does no I/O and reads no clock. A driver feeds it received packets (OnPacket), the time
// (every call takes `now_us` on a monotonic clock) and timer expiries (OnTimers at
// NextTimerUs()); it sends through the PacketIo it was given and leaves what the application
// must see (incoming requests, completed calls, session events) in an outbox the driver takes
// with TakeEvents() -- etcd raft's Ready() in miniature. The same code therefore runs over real
// UDP (udp_io.h, the addon) and over the in-memory wire of the C++ tests.
//
// Flow of one request with N request packets and M response packets (eRPC's, digest §1.3):
// the client sends REQ 0..N-1; the server answers each non-last REQ with a credit return (CR)
// carrying the same packet number, and the last one with RESP N-1 (response packet 0) once the
// handler has responded; the client then pulls RESP N..N+M-2 with request-for-response packets
// (RFR) carrying those numbers. Every server packet answers one client packet, so only the
// client keeps timers. Each client packet consumes one of the session's credits until its
// answer arrives. On a retransmission timeout the client first resends only the first
// unanswered packet (a probe: the peer may merely have been descheduled, its socket buffer
// holding the window); if the next timeout finds the probed window still unanswered, it rolls
// back to the first unanswered packet (Go-Back-N). The server keeps the last response of each slot until the next request on
// that slot arrives and answers duplicates from it, so a handler never runs twice.
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <queue>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "address.h"
#include "bytes.h"
#include "endpoint_crypto.h"
#include "session_table.h"
#include "timer_queue.h"
#include "wire.h"

namespace squall::transport {

struct EndpointConfig {
  // Largest datagram this endpoint sends or accepts, header included. A session uses the
  // smaller of both ends' values, further capped by the path (1472 bytes off loopback).
  uint32_t packet_bytes_max = 65000;
  uint32_t message_bytes_max = 8u << 20;
  uint32_t slots_per_session = 8;       // concurrent requests per session (power of two)
  uint32_t credits_per_session = 32;    // unanswered client packets per session
  uint32_t sessions_max = 4096;         // client and server sessions together
  uint32_t queued_requests_per_session_max = 1u << 16;
  // Retransmission timeout: each client session keeps an adaptive RTO, srtt + 4 x rttvar of
  // its measured round trips (RFC 6298; every answered packet is timed, Karn's rule), at least
  // retransmit_timeout_min_us and at most peer_failure_timeout_us / 4, doubled on each expiry
  // (probe or rollback) until a fresh sample arrives. retransmit_timeout_us is the RTO before the first sample.
  // (Under an incast the queue at the receiver can hold tens of ms of packets: a fixed ceiling
  // near the idle RTT would roll back packets that are only queued, and the duplicates would
  // lengthen the queue further.)
  uint64_t retransmit_timeout_us = 10'000;
  // 5 ms: a 2 MB window of 64 KB packets queues ~1-2 ms behind itself, and a shared VM stalls
  // a thread for milliseconds; at 2 ms, lossless 8 MiB transfers rolled back ~60 times/s.
  uint64_t retransmit_timeout_min_us = 5'000;
  uint64_t peer_failure_timeout_us = 2'000'000;
  // ICMP "port unreachable" reports (OnUnreachable) that fail an established session before
  // the timeout: this many reports of datagrams the session sent, with nothing received from
  // the peer in between. 0: reports are counted and never acted on.
  uint32_t unreachable_reports_to_fail = 2;
  uint64_t connect_timeout_us = 2'000'000;
  uint64_t connect_retry_us = 50'000;
  uint64_t seed = 1;  // fault-injection PRNG
  // A value no earlier incarnation of this endpoint at this address used (the binding draws it
  // from the OS at creation). Handshake tokens and session numbers derive from it, so a process
  // restarted at the same address never presents the token or session number of a session the
  // peer still holds from before the restart (which would hand it that session's cached answers).
  uint64_t incarnation = 0;
  // Authenticated encryption of every packet (endpoint_crypto.h). Off unless enabled with keys;
  // the JS layer and the config (transport.encryption) turn it on by default.
  EncryptionConfig encryption;
};

// Checks limits; returns an empty string if the config is usable, else what is wrong.
std::string ValidateConfig(const EndpointConfig& config);

// How a call ended. The numeric values cross into JS and onto the wire (response status).
enum class CallStatus : uint8_t {
  kOk = 0,
  kNoHandler = 1,        // the server has no handler for the request type
  kHandlerError = 2,     // the handler failed; the response bytes carry its message
  kTimeout = 3,          // the call's deadline passed
  kPeerFailed = 4,       // the peer stopped answering
  kSessionClosed = 5,    // the session was closed locally or by the peer
  kTooLarge = 6,         // request or response above message_bytes_max
  kUnknownSession = 7,   // no such (connected) client session
  kBacklogFull = 8,      // queued_requests_per_session_max reached
};

enum class SessionEventKind : uint8_t {
  kConnected = 1,
  kConnectFailed = 2,
  kDisconnected = 3,
  kPeerFailed = 4,
  kAccepted = 5,  // server side: a peer opened a session to us (bytes = its address)
  // Server side: a peer's connect was refused (session 0, reason = ConnectError, bytes = why).
  kRefused = 6,
};

// Why a session was declared failed: the reason of a kPeerFailed event (Event::id), and the
// one byte of the kPeerFailed responses of its calls.
enum class PeerFailure : uint8_t {
  kSilence = 0,          // nothing heard for peer_failure_timeout_us
  kPortUnreachable = 1,  // the peer's host reported its port closed (OnUnreachable)
};

// Reasons carried with kConnectFailed (also the error codes of a connect response).
enum class ConnectError : uint32_t {
  kNone = 0,
  kTooManySessions = 1,   // the server reached sessions_max
  kTimedOut = 2,          // no answer within connect_timeout_us
  kRefused = 3,           // the server is closing
  kBadAddress = 4,        // the address cannot be reached from this socket's family
  kEncryptionMismatch = 5,  // one end encrypts and the other does not
  kAuthenticationFailed = 6,  // the handshake was refused; the event's bytes say why
};

enum class EventKind : uint8_t { kResponse = 1, kRequest = 2, kSession = 3 };

// One thing the application must see. `bytes` is owned by the event.
struct Event {
  EventKind kind = EventKind::kResponse;
  uint8_t code = 0;       // CallStatus, request type, or SessionEventKind
  uint32_t session = 0;   // client session (response, session event) or server session (request)
  uint32_t slot = 0;      // request: the server slot to respond on
  uint64_t id = 0;        // response: the call's tag; request: request number; event: reason
  Bytes bytes;  // not zero-filled on resize (bytes.h)
};

// Where a server-side request must be answered; stale handles are ignored by Respond().
struct ServerRequest {
  uint32_t session = 0;
  uint32_t slot = 0;
  uint64_t request_number = 0;
};

// Keeps the bytes a caller lends to CallLent alive: the endpoint holds a reference until the
// call ends (its kResponse event, whatever the status, or the endpoint's destruction) and then
// drops it; the caller frees or reuses the bytes once its last reference is gone (a shared_ptr
// whose deleter releases them, e.g. the addon's reference to a JS buffer).
// A lender whose bytes the endpoint sent pinned (PacketIo::SendPinned) must keep them until the
// I/O flushed them, even if the call ended meanwhile.
using Lender = std::shared_ptr<const void>;

// The packet sender. Implementations must finish with (or copy) both spans before returning.
class PacketIo {
 public:
  virtual ~PacketIo() = default;
  virtual void Send(const PeerAddress& to, std::span<const uint8_t> header,
                    std::span<const uint8_t> payload) = 0;
  // Zero-copy send (the sealing path, endpoint.cc "Encryption"): room for one whole datagram
  // of `bytes` to `to` in the I/O's own send batch, queued as if Send had been called with it;
  // the caller writes all of it before its next call on this PacketIo, or takes it back with
  // Unreserve (then nothing is sent). nullptr: this I/O has no such room; use Send.
  virtual uint8_t* Reserve(const PeerAddress& /*to*/, size_t /*bytes*/) { return nullptr; }
  // Takes back the latest Reserve (only right after it, before any other call).
  virtual void Unreserve() {}
  // Send without copying `payload` (the header is copied): the endpoint uses it for packets of
  // a lent request body (CallLent), and the lender guarantees those bytes stay valid and
  // unchanged until this I/O has flushed them -- the addon defers releasing a lent JS buffer
  // until after its next socket flush. The default copies, like Send.
  virtual void SendPinned(const PeerAddress& to, std::span<const uint8_t> header,
                          std::span<const uint8_t> payload) {
    Send(to, header, payload);
  }
};

// Receiving in place (UdpSocket::Receive): a guess of where one of the next datagrams belongs, so
// that the kernel writes its body there and no copy follows. `header` is the header the datagram
// is expected to have; a datagram of the same message (SameMessage) is handed to
// Endpoint::OnPlacedPacket with its body wherever it landed, any other is moved back into the
// socket's own receive buffer first. The endpoint plans only into the unreceived part of a
// request it is assembling (Endpoint::PlanReceive), so a wrong guess overwrites nothing anyone
// reads.
struct ReceivePlacement {
  uint8_t header[kHeaderBytes] = {};
  uint8_t* body = nullptr;  // where the body (the bytes after the header) is written
  size_t body_bytes = 0;    // the expected body's exact length
};
// True if a received datagram's header (its first kHeaderBytes) names the message `placement`
// expects: every byte equal but reserved (6-7), packet number (16-19) and aux (20-23).
inline bool SameMessage(const uint8_t* header, const ReceivePlacement& placement) {
  const uint8_t* want = placement.header;
  return std::memcmp(header, want, 6) == 0 && std::memcmp(header + 8, want + 8, 8) == 0 &&
         std::memcmp(header + 24, want + 24, 8) == 0;
}

// The hook through which a congestion controller paces client packets (congestion_gate.h runs
// Timely behind it). The core asks before sending each REQ/RFR; a refused session stops
// sending, and the core kicks it again once the gate lists it in TakeDue(). Without a gate
// everything is admitted.
class SendGate {
 public:
  virtual ~SendGate() = default;
  virtual bool MaySend(uint32_t session, size_t bytes, uint64_t now_us) = 0;
  // A client session connected; `rtt_us` is its handshake round trip (0 when unknown: the
  // connect request was retried, so the answer may belong to either); `window_bytes` is the
  // most it can have in flight (credits x packet size).
  virtual void OnConnected(uint32_t /*session*/, uint64_t /*rtt_us*/, size_t /*window_bytes*/,
                           uint64_t /*now_us*/) {}
  // A round trip of one client packet answered by the peer's transport itself (a credit
  // return, or a response packet pulled by an RFR): network delay only, no handler time.
  // `bytes`: the larger payload of the two packets (what the kernel had to carry).
  virtual void OnRttSample(uint32_t /*session*/, uint64_t /*rtt_us*/, size_t /*bytes*/,
                           uint64_t /*now_us*/) {}
  // The core detected a lost packet of this session from the packets after it (fast
  // retransmit; not called on a retransmission timeout).
  virtual void OnLoss(uint32_t /*session*/, uint64_t /*now_us*/) {}
  virtual void OnClosed(uint32_t /*session*/) {}
  // Appends the sessions whose wait ended by now_us; the core kicks each.
  virtual void TakeDue(uint64_t /*now_us*/, std::vector<uint32_t>* /*sessions*/) {}
  virtual uint64_t NextDueUs() const { return UINT64_MAX; }
  // Memory the gate keeps per session, for Stats.
  virtual size_t BytesPerSession() const { return 0; }
  // Cache hints (Endpoint::PrefetchSessions): start loading where the session's state is
  // looked up, then (once that has had time to arrive) the state itself. Nothing observable.
  virtual void PrefetchEntry(uint32_t /*session*/) const {}
  virtual void PrefetchState(uint32_t /*session*/) const {}
};

// Drop reasons, each with its own counter.
enum class DropReason : uint8_t {
  kTruncated, kBadMagic, kBadVersion, kBadType, kBadFlags, kUnknownSession, kWrongPeer,
  kTooLarge, kBadLength, kBadPacketNumber, kStale, kInjected, kFailedPeer, kDuplicate,
  kHandlerRunning, kBadState, kOutOfOrder,
  kUnsealed,  // plaintext where a sealed packet is required, or sealed without session keys
  kCrypto,    // failed to open: forged, tampered, truncated, replayed (CryptoCounters says which)
  kCount
};
const char* DropReasonName(DropReason reason);

struct Stats {
  uint64_t packets_sent = 0, bytes_sent = 0, packets_received = 0, bytes_received = 0;
  uint64_t packets_sent_by_type[kPacketTypeCount] = {};
  uint64_t packets_received_by_type[kPacketTypeCount] = {};
  uint64_t retransmissions = 0;     // resends of any kind: rto_probes + rollbacks
  uint64_t rto_probes = 0;          // RTO expiries that resent only the oldest unanswered packet
  uint64_t rollbacks = 0;           // Go-Back-N rollbacks (RTO after a fruitless probe, and fast)
  uint64_t fast_retransmits = 0;    // of the rollbacks, started by a NACK or by later answers
  uint64_t nacks_sent = 0;          // server: credit returns flagged as NACKs (aux 1)
  uint64_t duplicate_responses = 0; // responses re-sent from the kept copy
  uint64_t drops[static_cast<size_t>(DropReason::kCount)] = {};
  uint64_t requests_started = 0, requests_completed = 0, handlers_run = 0;
  uint64_t requests_lent = 0;  // of requests_started, calls whose body was lent (CallLent)
  uint64_t timeouts = 0, peer_failures = 0, stale_responds = 0;
  uint64_t sessions_client = 0, sessions_server = 0;  // currently open
  uint64_t sessions_opened = 0, sessions_closed = 0;
  uint64_t rtt_samples = 0;        // timed client packets answered (RTO and congestion input)
  uint64_t gate_deferrals = 0;     // client packets the SendGate held back
  uint64_t retransmit_timer_fires = 0;
  uint64_t sealed_batches = 0;     // sealed datagrams carrying several packets (kFlagBatch)
  uint64_t sealed_batch_packets = 0;  // the packets those carried
  // Encryption without an extra copy: sealed datagrams written straight into the PacketIo's
  // send batch (PacketIo::Reserve), and sealed packets decrypted straight into the request or
  // response being assembled (instead of in place, then copied).
  uint64_t sealed_into_send_batch = 0;
  uint64_t opened_into_message = 0;
  // Plaintext request packets accepted where the socket had received them, in the request's
  // own buffer (ReceivePlacement): no copy into the message.
  uint64_t received_into_message = 0;
  // Plaintext packets spanning a lent request's head and body sent with the head's bytes after
  // the wire header and the body's pinned (SendClientPacket), instead of joined in a copy.
  uint64_t spanning_packets_pinned = 0;
  // OnUnreachable: reports that named a datagram of an established session (each counts toward
  // failing it), reports that named none (a connect request to a port not bound yet, a session
  // already gone, a quote too short to read), and sessions failed by the reports.
  uint64_t unreachable_reports = 0;
  uint64_t unreachable_unmatched = 0;
  uint64_t peer_failures_unreachable = 0;
  // Liveness (endpoint.cc, "Peers"): live session timer entries that fired (handshake retry,
  // disconnect retry, rekey resend: never for an established session's liveness) and live peer
  // timer entries that fired (keepalive and failure, one entry per remote endpoint
  // incarnation). PINGs sent are packets_sent_by_type[kPing].
  uint64_t session_timer_fires = 0;
  uint64_t peer_timer_fires = 0;
  uint64_t peers = 0;  // remote endpoint incarnations with established sessions, now
  // Orphan reaping (endpoint.cc, "Orphans"): audits started because a client's census disagreed
  // with our server sessions of its incarnation (or never came), PINGs sent to the clients of
  // the suspected sessions, and server sessions failed because their client no longer had them.
  uint64_t orphan_audits = 0;
  uint64_t orphan_probes = 0;
  uint64_t orphans_reaped = 0;
  uint64_t DropsTotal() const;
};

// What an encrypting endpoint counts (all zero when encryption is off).
struct SecurityStats {
  bool enabled = false;
  crypto::CryptoCounters crypto;
  EncryptionStats endpoint;
};

class Endpoint {
 public:
  Endpoint(const EndpointConfig& config, PacketIo* io);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // --- client API ---
  // Starts a session to `peer`; its outcome arrives as a kConnected / kConnectFailed event.
  uint32_t Connect(const PeerAddress& peer, uint64_t now_us);
  // Enqueues a call. Returns kOk, or the reason it was refused at once (then no event follows).
  // `timeout_us` 0 means no deadline. `tag` identifies the call in its kResponse event and must
  // be unique on this endpoint among pending calls.
  CallStatus Call(uint32_t session, uint8_t request_type, uint64_t tag,
                  std::span<const uint8_t> request, uint64_t timeout_us, uint64_t now_us);
  // Call with request = head ++ body, where only `head` is copied: `body` is lent, read in place
  // (packets are sliced from it, or sealed straight from it) until the call ends, and must stay
  // unchanged until the endpoint drops its reference to `lender`. A refused call (any status but
  // kOk) keeps no reference.
  CallStatus CallLent(uint32_t session, uint8_t request_type, uint64_t tag,
                      std::span<const uint8_t> head, std::span<const uint8_t> body, Lender lender,
                      uint64_t timeout_us, uint64_t now_us);
  // Reports a call that Call() refused at once as an ordinary completion event (for drivers
  // that deliver every outcome the same way).
  void FailCall(uint32_t session, uint64_t tag, CallStatus status) {
    EmitResponse(session, tag, status);
  }
  // Fails the session's pending calls with kSessionClosed and tells the peer; a kDisconnected
  // event follows. Returns false (and does nothing) if there is no such client session.
  bool Disconnect(uint32_t session, uint64_t now_us);

  // --- server API ---
  void SetHandled(uint8_t request_type, bool handled);
  // Answers a request event; ignored (and counted) if the session or slot moved on.
  void Respond(const ServerRequest& request, CallStatus status,
               std::span<const uint8_t> response, uint64_t now_us);

  // --- driver API ---
  // Optional: packets sealed between BeginBatch and EndBatch (e.g. while the driver hands over
  // one receive batch and runs the timers) share AES-GCM invocations per session; EndBatch seals
  // and sends them through the PacketIo (flush the PacketIo after it). Without it each entry
  // point seals what it sent when it returns. Nests; no effect when encryption is off.
  void BeginBatch() { ++batch_depth_; }
  void EndBatch() {
    if (batch_depth_ > 0 && --batch_depth_ == 0) FlushSealed();
  }
  // `packet` must be writable memory the endpoint may change for the duration of the call: an
  // encrypting endpoint decrypts a sealed packet in place (the driver's receive buffer).
  void OnPacket(const PeerAddress& from, std::span<const uint8_t> packet, uint64_t now_us);
  // Receiving in place (ReceivePlacement, UdpSocket::Receive). PlanReceive fills up to
  // out.size() guesses, in order, for the next datagrams: the next packets of the plaintext
  // request this endpoint accepted a packet of last, if it is still being assembled; returns how
  // many (0: no guess; always 0 when encrypting, which opens packets into place instead).
  // OnPlacedPacket takes a datagram of the message a guess named, as OnPacket would, with its
  // header and body apart: the body lies in that request's buffer, where the socket put it. If
  // the request is no longer assembled in that buffer (the slot moved on meanwhile), the packet
  // is dropped as stale and its bytes are not read.
  size_t PlanReceive(std::span<ReceivePlacement> out) const;
  void OnPlacedPacket(const PeerAddress& from, std::span<const uint8_t> header,
                      std::span<const uint8_t> body, uint64_t now_us);
  // Cache hints, nothing observable: before handing a batch of received packets to OnPacket (or
  // a batch of calls to Call), a driver may name them here, and the lookup-table entries,
  // sessions and slots they will touch are loaded in a few passes over the batch, so that their
  // cache misses overlap instead of stalling one packet after another (with 20,000 sessions
  // each call's session is in no cache; README, "Session scale"). Any bytes are fine: a packet
  // too short or naming no session is skipped.
  void PrefetchPackets(std::span<const std::span<const uint8_t>> packets) const;
  void PrefetchSessions(std::span<const uint32_t> sessions) const;
  void OnTimers(uint64_t now_us);
  // The host at `to` answered a datagram of ours with ICMP "port unreachable" (UdpSocket's
  // error queue); `quoted` is the start of that datagram as the ICMP message quoted it (a
  // packet, a bundle or a sealed batch). The sessions it names -- by the destination session
  // numbers in the quoted headers, with `to` as their peer -- are judged by the rule in
  // endpoint.cc ("Unreachable peers"); a quote that names no established session is counted
  // and ignored (a session still connecting is never failed this way).
  void OnUnreachable(const PeerAddress& to, std::span<const uint8_t> quoted, uint64_t now_us);
  uint64_t NextTimerUs() const;  // UINT64_MAX when nothing is scheduled
  void TakeEvents(std::vector<Event>* out);
  bool HasEvents() const { return !events_.empty(); }
  // Fails every call and session (without telling peers when `tell_peers` is false).
  void Shutdown(bool tell_peers, uint64_t now_us);

  // --- fault injection (off by default) ---
  void SetDropProbability(double probability) { drop_probability_ = probability; }
  void DropNext(uint64_t count) { drop_next_count_ = count; }
  // Drops everything to and from `peer`, as if it had crashed; false undoes it.
  void SetPeerFailed(const PeerAddress& peer, bool failed);

  // --- encryption (no-ops returning false when it is off) ---
  bool encrypted() const { return security_ != nullptr; }
  SecurityStats security_stats() const;
  // Installs new_key as the primary group key; the others stay accepted for grace_us. Client
  // sessions rekey under it at once, server sessions ask their clients to (kFlagRekeyRequested);
  // sessions still on a superseded key when the grace ends are closed. False if the key id is
  // 0 or already installed, or encryption is off.
  bool RotateKey(const crypto::GroupKey& new_key, uint64_t grace_us, uint64_t now_us);
  // Client: starts a rekey handshake on a connected session now (tests; normally driven by the
  // key's packet limit, the server's request or a rotation). False if not possible now.
  bool Rekey(uint32_t session, uint64_t now_us);
  // The session's send epoch and group key id (-1 / 0 without keys), for tests and stats.
  int SessionSendEpoch(uint32_t session) const;
  uint32_t SessionKeyId(uint32_t session) const;

  void SetSendGate(SendGate* gate) { gate_ = gate; }
  // Large requests and responses (at least pool->min_bytes()) are assembled in buffers taken
  // from `pool`; the events carrying them hand those buffers over (the driver gives them back).
  void SetBufferPool(std::shared_ptr<BufferPool> pool) { pool_ = std::move(pool); }
  const Stats& stats() const { return stats_; }
  const EndpointConfig& config() const { return config_; }
  // Data bytes per packet of a session (0 if unknown), for tests and the JS wrapper.
  uint32_t SessionDataBytesPerPacket(uint32_t session) const;
  bool SessionIsConnected(uint32_t session) const;
  size_t timer_entries() const { return timers_.size() + rto_timers_.size(); }  // for tests
  // The incarnation tag this endpoint announces in its handshakes (endpoint.cc, "Peers").
  uint32_t incarnation_tag() const { return incarnation_tag_; }
  // A client session's smoothed RTT and current retransmission timeout (0 if unknown).
  uint64_t SessionSrttUs(uint32_t session) const;
  uint64_t SessionRtoUs(uint32_t session) const;
  // Memory held per open session: the session record, its slots, queued calls and kept
  // messages, the lookup tables' entries and the gate's state, averaged over open sessions
  // (walks every session: for stats, not for the data path). 0 with no sessions.
  size_t BytesPerSession() const;
  std::string SessionPeer(uint32_t session) const;

 private:
  struct ClientSlot;
  struct ServerSlot;
  struct Session;
  struct RequestBytes;
  struct QueuedCall;
  class CallQueue;
  struct Peer;
  enum class TimerKind : uint8_t { kSession, kDeadline, kRetransmit, kPeer };
  struct Timer {
    uint64_t when_us;
    TimerKind kind;
    uint32_t session;
    uint64_t key;  // session timer generation, or the call's tag
    bool operator>(const Timer& other) const { return when_us > other.when_us; }
  };

  static bool IsBusy(const Session& session, const ClientSlot& slot);
  // The session's peer address, from its peer record when identical (endpoint.cc, Session).
  static const PeerAddress& PeerOf(const Session& session);
  Session* Find(uint32_t session_number);
  const Session* Find(uint32_t session_number) const;
  uint32_t NewSessionNumber();
  uint64_t NewToken();
  void Bury(Session* session, uint64_t now_us);
  void Drop(DropReason reason) { ++stats_.drops[static_cast<size_t>(reason)]; }
  void Emit(Event event) { events_.push_back(std::move(event)); }
  void EmitSession(uint32_t session, SessionEventKind kind, uint64_t reason,
                   std::vector<uint8_t> bytes = {});
  void EmitResponse(uint32_t session, uint64_t tag, CallStatus status, Bytes bytes = {});
  // pinned: `payload` lies in a lent request body (PacketIo::SendPinned; plaintext only).
  void SendPacket(const Session& session, const Header& header,
                  std::span<const uint8_t> payload = {}, bool pinned = false);
  void SendRaw(const PeerAddress& to, const Header& header, std::span<const uint8_t> payload,
               bool pinned = false);
  // Counts a datagram about to leave and rolls injected loss: false if it is dropped.
  bool Admit(const PeerAddress& to, PacketType type, size_t bytes, uint32_t packets);
  void Transmit(const PeerAddress& to, PacketType type, std::span<const uint8_t> header,
                std::span<const uint8_t> payload, uint32_t packets = 1, bool pinned = false);
  // payload: the packet's bytes after its header (plaintext, wherever it was opened to).
  void Dispatch(const PeerAddress& from, const Header& header, std::span<const uint8_t> payload,
                uint64_t now_us);
  void DispatchBatch(const PeerAddress& from, const Header& outer, std::span<const uint8_t> body,
                     uint64_t now_us);
  // PrefetchPackets / PrefetchSessions after the table pass: sessions, then their slots (by
  // request number; UINT64_MAX: the slot a new call takes).
  void PrefetchFound(std::span<const uint32_t> numbers, const uint64_t* request_numbers) const;
  bool RollDrop();
  void CompactTimers();
  void ArmSessionTimer(Session* session, uint64_t when_us);
  uint32_t PacketsFor(const Session& session, uint32_t message_bytes) const;
  std::span<const uint8_t> Slice(const Session& session, const Bytes& message,
                                 uint32_t packet_index) const;
  // A request packet's bytes: a view of the copied head or of the lent body, or (for the one
  // packet that spans both) the two joined in slice_scratch_, valid until the next call.
  std::span<const uint8_t> RequestSlice(const Session& session, const RequestBytes& request,
                                        uint32_t packet_index, bool* lent = nullptr);

  // client side
  void StartQueued(Session* session, uint64_t now_us);
  void Kick(Session* session, uint64_t now_us);
  void KickSlot(Session* session, ClientSlot* slot, uint64_t now_us);
  void CompleteSlot(Session* session, ClientSlot* slot, CallStatus status, uint64_t now_us);
  void FailSession(Session* session, CallStatus status, SessionEventKind kind, uint64_t now_us,
                   PeerFailure why = PeerFailure::kSilence);
  void FailServerSession(Session* session, PeerFailure why, uint64_t now_us);
  void OnSessionUnreachable(Session* session, uint64_t now_us);
  void OnClientSessionTimer(Session* session, uint64_t now_us);
  // Peers (endpoint.cc, "Peers")
  void JoinPeer(Session* session, uint32_t remote_tag, uint64_t now_us);
  void LeavePeer(Session* session);
  void ArmPeerTimer(Peer* peer, uint64_t when_us);
  void OnPeerTimer(Peer* peer, uint64_t now_us);
  void SendPing(Session* session, uint64_t now_us);
  // Orphans (endpoint.cc, "Orphans")
  void Uncount(Session* session);
  void OnCensus(Peer* peer, const Header& ping, uint64_t now_us);
  void StartAudit(Peer* peer, const Session* named, uint32_t walk_every, uint64_t now_us);
  void ProbeSuspects(Peer* peer, uint64_t now_us);
  void OnAudit(Peer* peer, uint64_t now_us);
  void AcceptedReply(const Session& session, Header* reply) const;
  uint64_t KeepaliveUs() const { return config_.peer_failure_timeout_us / 4; }
  void MarkActive(Session* session, uint64_t now_us);
  void OnRetransmitTimer(Session* session, uint64_t now_us);
  void ArmRetransmitTimer(Session* session, uint64_t when_us);
  void OnAnswered(Session* session, ClientSlot& slot, const Header& header,
                  size_t bytes, uint64_t now_us);
  void KickDue(uint64_t now_us);
  void OnConnectedRtt(Session* session, uint64_t now_us);
  uint64_t RtoMaxUs() const { return config_.peer_failure_timeout_us / 4; }
  void OnDeadline(uint32_t session_number, uint64_t tag, uint64_t now_us);
  void HandleCreditReturn(Session* session, const Header& header,
                          std::span<const uint8_t> payload, uint64_t now_us);
  void HandleResponse(Session* session, const Header& header, std::span<const uint8_t> payload,
                      uint64_t now_us);
  ClientSlot* InOrderClientSlot(Session* session, const Header& header, uint64_t now_us);
  void HandleNack(Session* session, const Header& header, uint64_t now_us);
  void RollBack(Session* session, ClientSlot* slot, uint64_t now_us);
  void Probe(Session* session, ClientSlot* slot, uint64_t now_us);
  void SendClientPacket(Session* session, const ClientSlot& slot, uint32_t packet_number);
  void FastRetransmit(Session* session, ClientSlot* slot, uint64_t now_us);
  void HandleConnectResponse(Session* session, const Header& header,
                             std::span<const uint8_t> payload, uint64_t now_us);
  void HandleDisconnectResponse(Session* session, const Header& header, uint64_t now_us);

  // server side
  void HandleConnectRequest(const PeerAddress& from, const Header& header,
                            std::span<const uint8_t> payload, uint64_t now_us,
                            PendingAccept* confirmed = nullptr);
  void HandleRequest(Session* session, const Header& header, std::span<const uint8_t> payload,
                     uint64_t now_us);
  void HandleRequestForResponse(Session* session, const Header& header, uint64_t now_us);
  void SendResponsePacket(Session* session, ServerSlot* slot, uint32_t packet_number);
  void SendCreditReturn(Session* session, const Header& request_header);
  void NoteGap(Session* session, ServerSlot* slot, const Header& header, uint32_t expected);

  // encryption (endpoint.cc, section "Encryption")
  uint32_t TrailerReserveBytes() const { return security_ ? kSealTrailerBytes : kTagBytes; }
  void SendSealed(const Session& session, Header header, std::span<const uint8_t> payload);
  void SealAndTransmit(const Session& session, const uint8_t* header,
                       std::span<const uint8_t> body, uint32_t packets);
  // Where a sealed datagram of `bytes` is written: the PacketIo's send batch (Reserve) when it
  // is large and the I/O offers it, else seal_room_ (then sent with Send). Sets seal_room_in_io_.
  uint8_t* SealRoom(const PeerAddress& to, size_t bytes);
  void TransmitSealed(const Session& session, uint8_t* room, size_t bytes,
                      crypto::SealStatus status, uint32_t packets);
  void FlushSealed();
  void SealRun(const Session& session, size_t begin, size_t end);
  // Every public entry point holds one: packets sealed inside it are queued and leave, grouped
  // per session into sealed batches, when the outermost scope ends (or at EndBatch).
  struct BatchScope {
    explicit BatchScope(Endpoint* e) : endpoint(e) { ++e->batch_depth_; }
    ~BatchScope() {
      if (--endpoint->batch_depth_ == 0) endpoint->FlushSealed();
    }
    BatchScope(const BatchScope&) = delete;
    BatchScope& operator=(const BatchScope&) = delete;
    Endpoint* endpoint;
  };
  // Opens a sealed datagram (or lets a plaintext handshake packet through): true with *payload
  // set to the plaintext after the header, false if dropped (counted).
  bool OpenIncoming(Header* header, std::span<const uint8_t> packet,
                    std::span<const uint8_t>* payload, uint64_t now_us);
  crypto::MutableBytes OpenDestination(Session& session, const Header& header, size_t bytes);
  void SendConnectAttempt(Session* session, const Header& connect);
  void BeginAccept(const PeerAddress& from, const Header& header,
                   std::span<const uint8_t> payload, Header reply, const std::string& key,
                   uint64_t now_us);
  void RefuseConnect(const PeerAddress& from, Header reply, ConnectError error,
                     const std::string& why, std::span<const uint8_t> refuse_message);
  void HandleConnectConfirm(const PeerAddress& from, const Header& header,
                            std::span<const uint8_t> payload, uint64_t now_us);
  void HandleHandshakeReply(Session* session, const Header& header,
                            std::span<const uint8_t> payload, uint64_t now_us);
  void HandleRekey(Session* session, std::span<const uint8_t> payload, uint64_t now_us);
  void HandleClientRekey(Session* session, std::span<const uint8_t> payload, uint64_t now_us);
  void SendRekeyMessage(Session* session, std::span<const uint8_t> message);
  bool StartRekey(Session* session, uint64_t now_us);
  void ResendHandshake(Session* session);
  void MaintainCrypto(uint64_t now_us);

  EndpointConfig config_;
  PacketIo* io_;
  std::unique_ptr<EndpointSecurity> security_;  // null when encryption is off
  // The request PlanReceive guesses for: the last one a non-last packet was accepted for.
  bool receive_hint_ = false;
  uint32_t receive_hint_session_ = 0;
  uint64_t receive_hint_request_ = 0;
  bool placed_packet_ = false;  // OnPlacedPacket is dispatching (for received_into_message)
  // Server handshakes awaiting their Confirm, by (peer, token) like accepted_by_token_.
  std::unordered_map<std::string, PendingAccept> pending_accepts_;
  SendGate* gate_ = nullptr;
  std::shared_ptr<BufferPool> pool_;  // null: plain allocations
  // A buffer for an incoming message of `bytes`: from pool_ when large; `previous` (a slot's
  // unfinished message, or empty) goes back first.
  Bytes MessageBuffer(Bytes previous, size_t bytes);
  Stats stats_;
  SessionTable<Session> sessions_;
  // Remote endpoint incarnations by id (the peer timer's key), and by (address, tag).
  SessionTable<Peer> peers_;
  std::unordered_map<std::string, uint32_t> peer_ids_;
  // Established sessions by (peer id << 32 | remote session number), for OnUnreachable.
  std::unordered_map<uint64_t, uint32_t> by_remote_;
  static uint64_t RemoteKey(uint32_t peer_id, uint32_t remote_number) {
    return (uint64_t{peer_id} << 32) | remote_number;
  }
  uint32_t next_peer_id_ = 1;
  uint32_t incarnation_tag_ = 0;
  // Server sessions by (peer, token), so duplicate connect requests get the same answer.
  std::unordered_map<std::string, uint32_t> accepted_by_token_;
  using TimerHeap = std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>>;
  TimerHeap timers_;  // session timers (connect retry, keepalive, failure) and call deadlines
  // Retransmission timers apart: one entry per client session with packets in flight, so this
  // queue stays as small as the sessions in use (and hot in cache) however many sessions exist;
  // a TimerQueue, since its entries arrive nearly in time order (timer_queue.h).
  TimerQueue<Timer> rto_timers_;
  // Every client session's live retransmission entry time (kNever: none) and number, by
  // Session::rto_index (freed indices are reused): checked before the session is looked up.
  struct RtoDue {
    uint64_t when_us;
    uint32_t session;
  };
  std::vector<RtoDue> rto_due_;
  std::vector<uint32_t> rto_free_;
  std::vector<Event> events_;
  // Tags of pending calls that have a deadline entry in timers_. A completed call's entry stays
  // in the heap until it fires or CompactTimers() drops it; this set tells which are live.
  std::unordered_set<uint64_t> deadline_tags_;
  std::vector<bool> handled_types_;
  std::vector<uint32_t> due_sessions_;  // scratch for SendGate::TakeDue
  std::vector<PeerAddress> failed_peers_;
  // Sealed batches: packets queued while a BatchScope is open ([u32 session][u16 bytes][packet]
  // each), the (session, offset) order they are sealed in, and the batch body being built.
  int batch_depth_ = 0;
  std::vector<uint8_t> seal_queue_;
  size_t seal_queued_packets_ = 0;
  std::vector<std::pair<uint32_t, size_t>> seal_order_;
  std::vector<uint8_t> seal_room_;
  Bytes slice_scratch_;  // RequestSlice: a packet that spans a lent request's head and body
  // SendClientPacket: the wire header and head part of a plaintext packet spanning both.
  std::vector<uint8_t> spanning_header_;
  bool seal_room_in_io_ = false;
  uint32_t next_session_number_ = 1;
  uint64_t rng_state_;
  uint64_t token_state_;  // handshake tokens when config_.incarnation != 0
  double drop_probability_ = 0;
  uint64_t drop_next_count_ = 0;
  bool shut_down_ = false;
};

}  // namespace squall::transport

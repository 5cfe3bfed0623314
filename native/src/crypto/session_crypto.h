#pragma once
// Per-session packet protection: seal and open in place, AES-GCM under the session's
// per-direction keys, with replay filtering and rekeying by epoch.
//
// Sealed packet layout (all of it is one UDP datagram payload):
//
//   [ header: header_bytes, plaintext, associated data ]
//   [ body: body_bytes, encrypted in place            ]
//   [ sequence: 8 bytes little-endian, associated data ] = epoch (16 bits) << 48 | counter (48)
//   [ tag: 16 bytes                                   ]
//
// NONCE CONSTRUCTION. nonce (96 bits) = salt (4 bytes) || sequence (8 bytes, as on the wire).
//  * Every (session, epoch, direction) has its own AES key and its own salt, both derived by
//    HKDF from the handshake, which mixes fresh 32-byte random nonces from both endpoints. So a
//    key is never shared between sessions, directions, epochs, restarts or re-created sessions.
//  * Under one key the epoch bits are constant and counter is the sender's count of packets
//    sealed with that key: it starts at 0 and increases by one per Seal() call. It is per SEALED
//    packet, not per logical packet: a retransmission is sealed again and gets a new counter.
//  * The counter is refused (kKeyExhausted) before it reaches 2^48, so it never wraps and never
//    spills into the epoch bits; RekeyDue() asks for a new key far earlier (2^28 by default).
//  Hence no (key, nonce) pair is ever used twice. Seal() asserts the counter invariants.
#include <array>
#include <cstdint>
#include <memory>

#include "crypto/aead.h"
#include "crypto/crypto_common.h"
#include "crypto/replay_window.h"

namespace squall::crypto {

inline constexpr size_t kSequenceBytes = 8;
inline constexpr size_t kTrailerBytes = kSequenceBytes + kTagBytes;  // 24 bytes per packet
inline constexpr unsigned kCounterBits = 48;
inline constexpr uint64_t kCounterLimit = uint64_t{1} << kCounterBits;
inline constexpr size_t kSaltBytes = 4;
// Largest header this module authenticates (the transport's header is ~16-32 bytes).
inline constexpr size_t kHeaderBytesMax = 256;

inline constexpr size_t SealedBytes(size_t header_bytes, size_t body_bytes) {
  return header_bytes + body_bytes + kTrailerBytes;
}

enum class Role : uint8_t { kClient, kServer };

// Key and salt for one direction of one epoch.
struct DirectionKey {
  std::array<uint8_t, kKeyBytesMax> key{};  // first KeyBytes(algorithm) bytes used
  std::array<uint8_t, kSaltBytes> salt{};
};

// What a completed handshake yields. Move-only and wiped on destruction; SessionCrypto consumes
// it (moves from it, wiping the source) so one handshake's keys seal in exactly one place —
// two sealers sharing a key would restart the counter and reuse nonces.
struct SessionKeys {
  AeadAlgorithm algorithm = AeadAlgorithm::kAes128Gcm;
  uint32_t key_id = 0;           // group key the handshake was authenticated with
  uint16_t epoch = 0;            // epoch these keys are used at (in every packet's sequence)
  bool forward_secret = false;   // an ephemeral X25519 secret was mixed in
  DirectionKey client_to_server;
  DirectionKey server_to_client;
  std::array<uint8_t, 32> session_id{};  // SHA-256 of the handshake transcript; for logs
  // The session identity as both hellos stated it (authenticated by their MACs). The transport
  // should address the peer by these, or check its own session-management fields against them.
  uint32_t client_session = 0;
  uint32_t server_session = 0;
  std::array<uint8_t, 18> client_address{};  // EndpointAddress bytes (handshake.h)
  std::array<uint8_t, 18> server_address{};

  SessionKeys() = default;
  ~SessionKeys();
  SessionKeys(SessionKeys&& other) noexcept;
  SessionKeys& operator=(SessionKeys&& other) noexcept;
  SessionKeys(const SessionKeys&) = delete;
  SessionKeys& operator=(const SessionKeys&) = delete;
  void Wipe();
};

struct SessionLimits {
  // RekeyDue() turns true after this many packets under one send key. 2^28 packets of ≤ 8 KiB is
  // ≤ 2^37 AES blocks, inside the per-key data limits usually quoted for AES-GCM (cf. TLS 1.3's
  // 2^24.5 full records, RFC 8446 §5.5).
  uint64_t rekey_after_packets = uint64_t{1} << 28;
  // Seal() refuses at this count (hard stop if a rekey never happened). Must be ≤ 2^48.
  uint64_t seal_limit_packets = kCounterLimit;
};

enum class SealStatus : uint8_t {
  kOk,
  kKeyExhausted,   // the send key reached seal_limit_packets: rekey (or close) the session
  kBufferTooSmall, // packet span shorter than SealedBytes(header_bytes, body_bytes)
  kInternal,       // OpenSSL failed (out of memory); the packet was not sealed
};

enum class OpenStatus : uint8_t {
  kOk,
  kTruncated,     // shorter than header + trailer, or header larger than kHeaderBytesMax
  kUnknownEpoch,  // no receive key for the sequence's epoch (stale, early, or forged)
  kReplay,        // counter already accepted: a duplicate datagram
  kTooOld,        // counter below the replay window
  kBadTag,        // authentication failed: forged, tampered, or sealed under another key
};
const char* Describe(OpenStatus status);
const char* Describe(SealStatus status);

struct OpenResult {
  OpenStatus status = OpenStatus::kTruncated;
  size_t body_bytes = 0;  // valid when status == kOk
  // Where the plaintext body is when status == kOk: packet[header_bytes, +body_bytes) after an
  // in-place open, the caller's buffer after an out-of-place one.
  const uint8_t* body = nullptr;
};

// Protection state of one session on one endpoint. Owned by the transport's session object and
// used only from the endpoint's thread. Memory: three AES-GCM contexts plus two replay windows
// (3.0 KiB of heap, measured by crypto_bench; README "Costs").
class SessionCrypto {
 public:
  // Returns nullptr only if OpenSSL cannot set up a key (out of memory). counters must outlive
  // the session.
  static std::unique_ptr<SessionCrypto> Create(Role role, SessionKeys&& keys,
                                               CryptoCounters* counters,
                                               const SessionLimits& limits = SessionLimits{});

  // Seals packet[0, SealedBytes(header_bytes, body_bytes)) in place: the body at
  // packet[header_bytes, +body_bytes) is encrypted, the trailer written after it. The header is
  // authenticated, not encrypted; it must not change after sealing.
  SealStatus Seal(MutableBytes packet, size_t header_bytes, size_t body_bytes);
  // Seals out of place: writes header, then body encrypted, then the trailer to
  // out[0, SealedBytes(header.size(), body.size())), reading body once (encryption replaces the
  // copy that would have put it there: the transport seals a message's slice straight into the
  // socket's send batch). header and body may already lie at their places in out (that is the
  // in-place Seal above); otherwise neither may overlap out. Same nonce rules and statuses as
  // Seal: the ciphertext and tag are the ones the in-place Seal would produce at that counter.
  SealStatus SealInto(MutableBytes out, Bytes header, Bytes body);

  // Opens a received datagram in place. packet is exactly the datagram; header_bytes is the
  // transport's header length (read from the header's own fixed fields). Never throws or aborts
  // on any input; every non-ok status is counted in CryptoCounters and means "drop it".
  OpenResult Open(MutableBytes packet, size_t header_bytes);
  // As Open, but the plaintext body is written to body_out (which must not overlap packet)
  // instead of over the ciphertext, when it fits (body_bytes <= body_out.size(); else in place):
  // the receiver decrypts straight into the message being reassembled, and decryption replaces
  // that copy. On a tag failure the bytes decrypted into are zeroed (body_out[0, body_bytes),
  // or the packet's body if it opened in place): no unauthenticated plaintext is left; a packet
  // refused before decryption (truncated, unknown epoch, replay) writes nothing. A forged packet
  // still overwrites body_out with zeros, so pass only a region that holds nothing accepted yet.
  // result.body says where the plaintext went.
  OpenResult Open(MutableBytes packet, size_t header_bytes, MutableBytes body_out);

  // Switches to keys from a new handshake on this session (rekey or group-key rotation).
  // keys.epoch must be greater than every epoch in use (asserted; the handshake negotiates it
  // from NextEpoch() of both sides). Returns false only if OpenSSL fails (keys unchanged).
  //  * Receiving: the new epoch's key is installed at once; the previous epoch's key stays
  //    valid for packets already in flight until the next Adopt() or RetirePreviousReceiveKey().
  //  * Sending, server: moves to the new epoch at once (the server adopts on the Confirm, and
  //    the client installed its receive key before sending the Confirm).
  //  * Sending, client: stays on the old key until the server is known to have the new one:
  //    the first packet opened under the new epoch switches it (the server's responses carry
  //    the proof in-band), or ActivatePendingSend(), or the old key running out. So a rekey
  //    in a busy session drops nothing.
  bool Adopt(SessionKeys&& keys);
  // Client: start sending under the adopted keys now (e.g. one RTO after the Confirm went out
  // on a session with no server traffic). No-op if nothing is pending.
  void ActivatePendingSend();
  bool send_switch_pending() const { return pending_send_.in_use; }
  // Stops accepting packets under the previous epoch (call about one RTO after Adopt()).
  void RetirePreviousReceiveKey();

  // True when the send key is near its packet limit and no switch is pending: start a rekey.
  bool RekeyDue() const {
    return !pending_send_.in_use && send_counter_next_ >= limits_.rekey_after_packets;
  }
  // Smallest epoch a rekey handshake on this session may use. Above 0xFFFF the epochs are spent
  // (after 65535 rekeys): close the session and create a new one.
  uint32_t NextEpoch() const { return uint32_t{highest_epoch_} + 1; }
  uint32_t key_id() const { return key_id_; }
  uint16_t send_epoch() const { return send_epoch_; }
  uint64_t send_counter_next() const { return send_counter_next_; }
  bool forward_secret() const { return forward_secret_; }

 private:
  struct ReceiveKey {
    bool in_use = false;
    uint16_t epoch = 0;
    std::array<uint8_t, kSaltBytes> salt{};
    AeadContext context;
    ReplayWindow window;
  };

  struct SendKey {
    bool in_use = false;
    uint16_t epoch = 0;
    std::array<uint8_t, kSaltBytes> salt{};
    AeadContext context;
  };

  SessionCrypto(Role role, CryptoCounters* counters, const SessionLimits& limits);
  bool Install(SessionKeys& keys, bool defer_send);
  void UseSendKey(SendKey& key);
  ReceiveKey* FindReceiveKey(uint16_t epoch);

  Role role_;
  CryptoCounters* counters_;
  SessionLimits limits_;
  uint32_t key_id_ = 0;
  bool forward_secret_ = false;
  uint16_t send_epoch_ = 0;
  uint16_t highest_epoch_ = 0;
  uint64_t send_counter_next_ = 0;
  std::array<uint8_t, kSaltBytes> send_salt_{};
  AeadContext send_context_;
  SendKey pending_send_;  // client only: adopted but not yet used for sending
  // [current_receive_] is the newest epoch's key; the other slot holds the previous epoch.
  std::array<ReceiveKey, 2> receive_keys_;
  size_t current_receive_ = 0;
};

}  // namespace squall::crypto

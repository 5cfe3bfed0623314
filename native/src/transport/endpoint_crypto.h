#pragma once
// The endpoint's encryption state (the eeRPC issue): what an encrypting Endpoint owns besides
// its sessions -- the keyring, the crypto counters, the handshake limits -- and what each of
// its sessions owns -- the handshake in progress and the session's SessionCrypto.
//
// The protocol core stays as it was; encryption sits at its two edges (endpoint.cc, section
// "Encryption"):
//  * send: every packet of a session with keys is sealed just before it reaches the PacketIo
//    ([header as AAD][body encrypted][8-byte sequence][16-byte tag], session_crypto.h), so
//    Go-Back-N's retransmissions are sealed again under fresh nonces. Sealing is out of place:
//    the body is read from the message (or the batch queue) and written encrypted straight into
//    the socket's send batch (PacketIo::Reserve), so it replaces the plaintext path's copy;
//  * receive: every packet is opened right after the header is parsed and before any protocol
//    logic sees it; anything that fails is dropped and counted, never handled. The next packet
//    of a request being assembled is opened straight into the request's buffer (replacing the
//    copy), anything else in place in the datagram's buffer.
// Session management carries the handshake of crypto/handshake.h:
//   CONNECT (ClientHello) -> CONNECT_RESP (ServerHello, plaintext) -> CONNECT_CONFIRM (Confirm)
//   -> CONNECT_RESP sealed under the new session keys: only then is the client connected, and
//   the server's session exists only from the Confirm on (its kAccepted event comes then).
// A peer without the group secret is refused on both sides with a kRefused (server) and a
// kConnectFailed (client) event whose bytes say why.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "crypto/handshake.h"
#include "crypto/keyring.h"
#include "crypto/session_crypto.h"
#include "transport/address.h"
#include "transport/wire.h"

namespace squall::transport {

static_assert(kSealTrailerBytes == crypto::kTrailerBytes, "wire.h and session_crypto.h agree");

struct EncryptionConfig {
  // Off: packets travel in plaintext, and a peer that encrypts is refused (kEncryptionMismatch).
  bool enabled = false;
  // Every accepted group key; the highest key id is primary (crypto/keyring.h). At least one.
  std::vector<crypto::GroupKey> keys;
  // Ephemeral X25519 in every handshake (used when both ends enable it); about 0.1 ms of CPU
  // per handshake per side (crypto/README.md, "Costs").
  bool forward_secrecy = true;
  crypto::AeadAlgorithm algorithm = crypto::AeadAlgorithm::kAes128Gcm;
  // Per-key packet limits (tests lower rekey_after_packets to exercise rekeying).
  crypto::SessionLimits limits;
  // Server handshakes waiting for their Confirm; each cost an HMAC (and an X25519 exchange).
  uint32_t pending_handshakes_max = 1024;
};

// Empty if usable, else what is wrong and how to fix it.
std::string ValidateEncryption(const EncryptionConfig& config);

// Counters of the integration (the primitives count in crypto::CryptoCounters).
struct EncryptionStats {
  uint64_t handshakes_refused = 0;      // connects this endpoint refused (kRefused events)
  uint64_t connects_refused_by_peer = 0;  // our connects the peer or our check refused
  uint64_t rekeys_started = 0, rekeys_completed = 0, rekeys_failed = 0;
  uint64_t key_rotations = 0;
  uint64_t sessions_closed_key_retired = 0;  // still on a group key whose grace ended
  uint64_t pending_handshakes = 0;           // currently waiting for a Confirm
};

// Per-session state. Owned by the endpoint's Session; used on the endpoint's thread only.
struct SessionSecurity {
  std::unique_ptr<crypto::ClientHandshake> client_handshake;  // connect or rekey (client)
  std::unique_ptr<crypto::ServerHandshake> server_handshake;  // rekey (server)
  std::vector<uint8_t> server_hello_request;  // the ClientHello server_handshake answered
  std::unique_ptr<crypto::SessionCrypto> crypto;  // set once the session has keys
  std::vector<uint8_t> resend;  // client: the handshake message its timer resends
  bool rekeying = false;        // client: a rekey handshake is running or awaiting its switch
  bool rekey_adopted = false;   // client: new keys adopted, waiting for the server's proof
  uint64_t rekey_sent_us = 0;   // client: when the current rekey message last went out
  uint64_t retire_previous_at_us = 0;  // when to stop accepting the previous epoch (0: never)
  // Client: the server's rekey requests are honoured at most once per keepalive interval. The
  // server asks while the session's key is not its primary; if our primary is still the old
  // key (we have not rotated yet), the rekey cannot satisfy it and must not loop.
  uint64_t rekey_request_ignored_until_us = 0;
};

// A server handshake waiting for the client's Confirm. No Session exists yet.
struct PendingAccept {
  uint32_t number = 0;  // the server session number the ServerHello named
  Header connect;       // the CONNECT request, to create the session from on the Confirm
  uint64_t started_us = 0;
  std::unique_ptr<crypto::ServerHandshake> handshake;
  std::unique_ptr<crypto::SessionCrypto> crypto;  // set when the Confirm verified
};

class EndpointSecurity {
 public:
  // Throws std::invalid_argument (message from ValidateEncryption) on a bad config.
  explicit EndpointSecurity(const EncryptionConfig& config);

  crypto::Keyring& keyring() { return keyring_; }
  const crypto::Keyring& keyring() const { return keyring_; }
  crypto::CryptoCounters& counters() { return counters_; }
  const crypto::CryptoCounters& counters() const { return counters_; }
  EncryptionStats& stats() { return stats_; }
  const EncryptionStats& stats() const { return stats_; }
  const crypto::HandshakeConfig& handshake_config() const { return handshake_config_; }
  const crypto::SessionLimits& limits() const { return limits_; }
  uint32_t pending_handshakes_max() const { return pending_handshakes_max_; }

  // The session identity the handshake binds: the server's address as the client dialled it.
  static crypto::EndpointAddress Identity(const PeerAddress& address);
  // Keyring time (milliseconds) from the endpoint's clock (microseconds).
  static uint64_t KeyringMs(uint64_t now_us) { return now_us / 1000; }

  // Rotation grace: when to prune the superseded keys (0: no rotation pending).
  uint64_t grace_end_us = 0;

 private:
  crypto::Keyring keyring_;
  crypto::CryptoCounters counters_;
  EncryptionStats stats_;
  crypto::HandshakeConfig handshake_config_;
  crypto::SessionLimits limits_;
  uint32_t pending_handshakes_max_;
};

// The sentence for a refused connect, for the session event's bytes.
std::string RefusalText(const std::string& peer, crypto::HandshakeStatus status,
                        crypto::HandshakeStatus peer_reason);

}  // namespace squall::transport

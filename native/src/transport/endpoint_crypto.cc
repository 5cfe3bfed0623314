#include "transport/endpoint_crypto.h"

#include <arpa/inet.h>

#include <cstring>
#include <stdexcept>

namespace squall::transport {

std::string ValidateEncryption(const EncryptionConfig& config) {
  if (!config.enabled) return "";
  if (config.keys.empty()) {
    return "encryption is on but no group key was given. Fix: pass a key file (squall key file "
           "format, crypto/README.md) or turn encryption off for trusted networks";
  }
  if (config.keys.size() > crypto::Keyring::kKeysMax) {
    return "more than 16 group keys. Fix: remove keys whose rotation is over from the key file";
  }
  if (crypto::KeyBytes(config.algorithm) == 0) return "unknown AEAD algorithm";
  if (config.limits.seal_limit_packets > crypto::kCounterLimit ||
      config.limits.rekey_after_packets == 0 ||
      config.limits.rekey_after_packets >= config.limits.seal_limit_packets) {
    return "rekey_after_packets must be in [1, seal_limit_packets) and seal_limit_packets <= 2^48";
  }
  if (config.pending_handshakes_max == 0) return "pending_handshakes_max must be at least 1";
  return "";
}

EndpointSecurity::EndpointSecurity(const EncryptionConfig& config)
    : limits_(config.limits), pending_handshakes_max_(config.pending_handshakes_max) {
  const std::string problem = ValidateEncryption(config);
  if (!problem.empty()) throw std::invalid_argument("EncryptionConfig: " + problem);
  switch (keyring_.InstallAll(config.keys)) {
    case crypto::KeyringStatus::kOk: break;
    case crypto::KeyringStatus::kDuplicateKeyId:
      throw std::invalid_argument("EncryptionConfig: the same key id twice");
    case crypto::KeyringStatus::kZeroKeyId:
      throw std::invalid_argument("EncryptionConfig: key id 0 is reserved");
    case crypto::KeyringStatus::kFull:
      throw std::invalid_argument("EncryptionConfig: more than 16 group keys");
  }
  handshake_config_.algorithm = config.algorithm;
  handshake_config_.forward_secrecy = config.forward_secrecy;
}

crypto::EndpointAddress EndpointSecurity::Identity(const PeerAddress& address) {
  if (address.family() == AF_INET) {
    sockaddr_in v4;
    std::memcpy(&v4, &address.storage, sizeof(v4));
    return crypto::EndpointAddress::Ipv4(ntohl(v4.sin_addr.s_addr), address.port());
  }
  crypto::EndpointAddress out;
  if (address.family() == AF_INET6) {
    sockaddr_in6 v6;
    std::memcpy(&v6, &address.storage, sizeof(v6));
    std::memcpy(out.bytes.data(), &v6.sin6_addr, 16);
    out.bytes[16] = static_cast<uint8_t>(address.port() >> 8);
    out.bytes[17] = static_cast<uint8_t>(address.port());
  }
  return out;
}

std::string RefusalText(const std::string& peer, crypto::HandshakeStatus status,
                        crypto::HandshakeStatus peer_reason) {
  if (status == crypto::HandshakeStatus::kRefusedByPeer) {
    return "session with " + peer + " refused by the peer: " + crypto::Describe(peer_reason);
  }
  return "session with " + peer + " refused: " + crypto::Describe(status);
}

}  // namespace squall::transport

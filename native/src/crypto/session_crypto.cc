#include "crypto/session_crypto.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "crypto/kdf.h"

namespace squall::crypto {

SessionKeys::~SessionKeys() { Wipe(); }

SessionKeys::SessionKeys(SessionKeys&& other) noexcept { *this = std::move(other); }

SessionKeys& SessionKeys::operator=(SessionKeys&& other) noexcept {
  if (this != &other) {
    algorithm = other.algorithm;
    key_id = other.key_id;
    epoch = other.epoch;
    forward_secret = other.forward_secret;
    client_to_server = other.client_to_server;
    server_to_client = other.server_to_client;
    session_id = other.session_id;
    client_session = other.client_session;
    server_session = other.server_session;
    client_address = other.client_address;
    server_address = other.server_address;
    other.Wipe();
  }
  return *this;
}

void SessionKeys::Wipe() {
  Cleanse(client_to_server.key);
  Cleanse(client_to_server.salt);
  Cleanse(server_to_client.key);
  Cleanse(server_to_client.salt);
  key_id = 0;
}

const char* Describe(OpenStatus status) {
  switch (status) {
    case OpenStatus::kOk: return "ok";
    case OpenStatus::kTruncated: return "truncated: shorter than header and crypto trailer";
    case OpenStatus::kUnknownEpoch: return "no receive key for the packet's key epoch";
    case OpenStatus::kReplay: return "replayed: packet counter already accepted";
    case OpenStatus::kTooOld: return "too old: packet counter below the replay window";
    case OpenStatus::kBadTag: return "authentication failed: forged, tampered or wrong key";
  }
  return "unknown open status";
}

const char* Describe(SealStatus status) {
  switch (status) {
    case SealStatus::kOk: return "ok";
    case SealStatus::kKeyExhausted: return "send key reached its packet limit; rekey the session";
    case SealStatus::kBufferTooSmall: return "packet buffer has no room for the crypto trailer";
    case SealStatus::kInternal: return "OpenSSL failed while sealing";
  }
  return "unknown seal status";
}

SessionCrypto::SessionCrypto(Role role, CryptoCounters* counters, const SessionLimits& limits)
    : role_(role), counters_(counters), limits_(limits) {}

std::unique_ptr<SessionCrypto> SessionCrypto::Create(Role role, SessionKeys&& keys,
                                                     CryptoCounters* counters,
                                                     const SessionLimits& limits) {
  SQUALL_CRYPTO_ASSERT(counters != nullptr, "sessions count into the endpoint's counters");
  SQUALL_CRYPTO_ASSERT(limits.seal_limit_packets <= kCounterLimit,
                       "the counter must stay below 2^48 so it never touches the epoch bits");
  SQUALL_CRYPTO_ASSERT(limits.rekey_after_packets <= limits.seal_limit_packets,
                       "rekey is asked for before the hard limit");
  std::unique_ptr<SessionCrypto> session(new (std::nothrow) SessionCrypto(role, counters, limits));
  if (session == nullptr) return nullptr;
  session->highest_epoch_ = keys.epoch;
  const bool ok = session->Install(keys, /*defer_send=*/false);
  keys.Wipe();
  if (!ok) return nullptr;
  return session;
}

// Sets up the send key (now, or pending) and the current receive key from keys (which the
// caller wipes).
bool SessionCrypto::Install(SessionKeys& keys, bool defer_send) {
  const size_t key_bytes = KeyBytes(keys.algorithm);
  SQUALL_CRYPTO_ASSERT(key_bytes != 0, "session keys name a known algorithm");
  const DirectionKey& send = role_ == Role::kClient ? keys.client_to_server : keys.server_to_client;
  const DirectionKey& receive =
      role_ == Role::kClient ? keys.server_to_client : keys.client_to_server;
  SendKey send_key;
  AeadContext receive_context;
  if (!send_key.context.Init(keys.algorithm, Bytes(send.key.data(), key_bytes),
                             AeadContext::Direction::kSeal) ||
      !receive_context.Init(keys.algorithm, Bytes(receive.key.data(), key_bytes),
                            AeadContext::Direction::kOpen)) {
    return false;
  }
  send_key.in_use = true;
  send_key.epoch = keys.epoch;
  send_key.salt = send.salt;
  if (defer_send) {
    pending_send_ = std::move(send_key);
  } else {
    UseSendKey(send_key);
    pending_send_ = SendKey{};
  }
  // The new receive key replaces the older of the two slots; the other keeps the previous epoch.
  const size_t slot = receive_keys_[current_receive_].in_use ? 1 - current_receive_ : 0;
  ReceiveKey& target = receive_keys_[slot];
  target.in_use = true;
  target.epoch = keys.epoch;
  target.salt = receive.salt;
  target.context = std::move(receive_context);
  target.window = ReplayWindow{};
  current_receive_ = slot;
  key_id_ = keys.key_id;
  forward_secret_ = keys.forward_secret;
  return true;
}

void SessionCrypto::UseSendKey(SendKey& key) {
  SQUALL_CRYPTO_ASSERT(key.in_use && (!send_context_.ready() || key.epoch > send_epoch_),
                       "a send key is only replaced by one of a newer epoch");
  send_context_ = std::move(key.context);
  send_salt_ = key.salt;
  send_epoch_ = key.epoch;
  // A fresh key starts its counter at 0: the nonce space is per key, and this key is new.
  send_counter_next_ = 0;
  key.in_use = false;
}

bool SessionCrypto::Adopt(SessionKeys&& keys) {
  SQUALL_CRYPTO_ASSERT(keys.epoch > highest_epoch_,
                       "a new key's epoch is above every epoch in use (nonce uniqueness)");
  const bool ok = Install(keys, /*defer_send=*/role_ == Role::kClient);
  if (ok) highest_epoch_ = keys.epoch;
  keys.Wipe();
  return ok;
}

void SessionCrypto::ActivatePendingSend() {
  if (pending_send_.in_use) UseSendKey(pending_send_);
}

void SessionCrypto::RetirePreviousReceiveKey() {
  ReceiveKey& previous = receive_keys_[1 - current_receive_];
  previous.in_use = false;
  previous.context = AeadContext{};
}

SessionCrypto::ReceiveKey* SessionCrypto::FindReceiveKey(uint16_t epoch) {
  for (ReceiveKey& key : receive_keys_) {
    if (key.in_use && key.epoch == epoch) return &key;
  }
  return nullptr;
}

SealStatus SessionCrypto::Seal(MutableBytes packet, size_t header_bytes, size_t body_bytes) {
  SQUALL_CRYPTO_ASSERT(header_bytes <= kHeaderBytesMax, "header size limit");
  SQUALL_CRYPTO_ASSERT(body_bytes <= kAeadBodyBytesMax, "body size limit");
  if (packet.size() < SealedBytes(header_bytes, body_bytes)) return SealStatus::kBufferTooSmall;
  return SealInto(packet, Bytes(packet.data(), header_bytes),
                  Bytes(packet.data() + header_bytes, body_bytes));
}

SealStatus SessionCrypto::SealInto(MutableBytes out, Bytes header, Bytes body) {
  const size_t header_bytes = header.size();
  const size_t body_bytes = body.size();
  SQUALL_CRYPTO_ASSERT(header_bytes <= kHeaderBytesMax, "header size limit");
  SQUALL_CRYPTO_ASSERT(body_bytes <= kAeadBodyBytesMax, "body size limit");
  if (out.size() < SealedBytes(header_bytes, body_bytes)) return SealStatus::kBufferTooSmall;
  if (send_counter_next_ >= limits_.seal_limit_packets && pending_send_.in_use) {
    // The old key ran out before the server's traffic proved it has the new one: switch now
    // (at worst a few packets arrive before the server's Confirm and are retransmitted).
    ActivatePendingSend();
  }
  if (send_counter_next_ >= limits_.seal_limit_packets) {
    ++counters_->seal_refused_key_exhausted;
    return SealStatus::kKeyExhausted;
  }
  if (header_bytes != 0 && header.data() != out.data()) {
    std::memcpy(out.data(), header.data(), header_bytes);
  }
  const uint64_t counter = send_counter_next_;
  // Nonce uniqueness: counter < 2^48 keeps the epoch bits intact, and the strictly increasing
  // send_counter_next_ (never reset except with a new key) means this value was never used.
  // Sealing in place or out of place makes no difference here: one Seal call, one counter.
  SQUALL_CRYPTO_ASSERT(counter < kCounterLimit, "counter below 2^48");
  const uint64_t sequence = (uint64_t{send_epoch_} << kCounterBits) | counter;
  uint8_t* trailer = out.data() + header_bytes + body_bytes;
  StoreLe64(trailer, sequence);
  Nonce nonce;
  std::memcpy(nonce.data(), send_salt_.data(), kSaltBytes);
  std::memcpy(nonce.data() + kSaltBytes, trailer, kSequenceBytes);
  Tag tag;
  const bool ok = send_context_.Seal(nonce, Bytes(out.data(), header_bytes),
                                     Bytes(trailer, kSequenceBytes), body,
                                     out.data() + header_bytes, tag);
  // The counter is consumed even if OpenSSL failed: the nonce may have been used.
  send_counter_next_ = counter + 1;
  SQUALL_CRYPTO_ASSERT(send_counter_next_ > counter, "the send counter never wraps");
  if (!ok) return SealStatus::kInternal;
  std::memcpy(trailer + kSequenceBytes, tag.data(), kTagBytes);
  ++counters_->sealed_packets;
  if (send_context_.uses_vaes()) ++counters_->sealed_vaes;
  return SealStatus::kOk;
}

OpenResult SessionCrypto::Open(MutableBytes packet, size_t header_bytes) {
  return Open(packet, header_bytes, MutableBytes());
}

OpenResult SessionCrypto::Open(MutableBytes packet, size_t header_bytes, MutableBytes body_out) {
  OpenResult result;
  if (header_bytes > kHeaderBytesMax || packet.size() < header_bytes + kTrailerBytes) {
    ++counters_->drop_truncated;
    result.status = OpenStatus::kTruncated;
    return result;
  }
  const size_t body_bytes = packet.size() - header_bytes - kTrailerBytes;
  uint8_t* trailer = packet.data() + header_bytes + body_bytes;
  const uint64_t sequence = LoadLe64(trailer);
  const uint16_t epoch = static_cast<uint16_t>(sequence >> kCounterBits);
  const uint64_t counter = sequence & (kCounterLimit - 1);
  ReceiveKey* key = FindReceiveKey(epoch);
  if (key == nullptr) {
    ++counters_->drop_unknown_epoch;
    result.status = OpenStatus::kUnknownEpoch;
    return result;
  }
  const ReplayWindow::Verdict verdict = key->window.Check(counter);
  if (verdict != ReplayWindow::Verdict::kFresh) {
    const bool replay = verdict == ReplayWindow::Verdict::kReplay;
    ++(replay ? counters_->drop_replay : counters_->drop_too_old);
    result.status = replay ? OpenStatus::kReplay : OpenStatus::kTooOld;
    return result;
  }
  Nonce nonce;
  std::memcpy(nonce.data(), key->salt.data(), kSaltBytes);
  std::memcpy(nonce.data() + kSaltBytes, trailer, kSequenceBytes);
  Tag tag;
  std::memcpy(tag.data(), trailer + kSequenceBytes, kTagBytes);
  uint8_t* const body_in = packet.data() + header_bytes;
  uint8_t* const out = body_bytes <= body_out.size() && body_bytes != 0 ? body_out.data() : body_in;
  if (!key->context.Open(nonce, Bytes(packet.data(), header_bytes), Bytes(trailer, kSequenceBytes),
                         Bytes(body_in, body_bytes), out, tag)) {
    ++counters_->drop_bad_tag;
    result.status = OpenStatus::kBadTag;
    return result;
  }
  // Only an authenticated packet moves the window.
  key->window.Mark(counter);
  // The peer sealed under the pending epoch, so it holds the new keys: send under them too.
  if (pending_send_.in_use && epoch == pending_send_.epoch) ActivatePendingSend();
  ++counters_->opened_packets;
  result.status = OpenStatus::kOk;
  result.body_bytes = body_bytes;
  result.body = out;
  return result;
}

}  // namespace squall::crypto

#include "wire.h"

namespace squall::transport {
namespace {
void Put16(uint8_t* out, uint16_t v) {
  out[0] = static_cast<uint8_t>(v);
  out[1] = static_cast<uint8_t>(v >> 8);
}
void Put32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t Get16(const uint8_t* in) { return static_cast<uint16_t>(in[0] | (in[1] << 8)); }
uint32_t Get32(const uint8_t* in) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | in[i];
  return v;
}
uint64_t Get64(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | in[i];
  return v;
}
}  // namespace

const char* PacketTypeName(PacketType type) {
  switch (type) {
    case PacketType::kRequest: return "REQ";
    case PacketType::kRequestForResponse: return "RFR";
    case PacketType::kCreditReturn: return "CR";
    case PacketType::kResponse: return "RESP";
    case PacketType::kConnectRequest: return "CONNECT";
    case PacketType::kConnectResponse: return "CONNECT_RESP";
    case PacketType::kDisconnectRequest: return "DISCONNECT";
    case PacketType::kDisconnectResponse: return "DISCONNECT_RESP";
    case PacketType::kPing: return "PING";
    case PacketType::kPong: return "PONG";
    case PacketType::kConnectConfirm: return "CONNECT_CONFIRM";
    case PacketType::kRekey: return "REKEY";
  }
  return "?";
}

void Encode(const Header& h, uint8_t* out) {
  Put16(out + 0, h.magic);
  out[2] = h.version;
  out[3] = static_cast<uint8_t>(h.type);
  out[4] = h.flags;
  out[5] = h.request_type;
  Put16(out + 6, h.reserved);
  Put32(out + 8, h.dest_session);
  Put32(out + 12, h.message_bytes);
  Put32(out + 16, h.packet_number);
  Put32(out + 20, h.aux);
  Put64(out + 24, h.request_number);
}

DecodeError Decode(std::span<const uint8_t> packet, Header* h) {
  if (packet.size() < kHeaderBytes) return DecodeError::kTruncated;
  const uint8_t* in = packet.data();
  h->magic = Get16(in);
  if (h->magic != kMagic) return DecodeError::kBadMagic;
  h->version = in[2];
  if (h->version != kWireVersion) return DecodeError::kBadVersion;
  if (in[3] >= kPacketTypeCount) return DecodeError::kBadType;
  h->type = static_cast<PacketType>(in[3]);
  h->flags = in[4];
  // Whether a sealed packet is acceptable depends on the session: the endpoint decides.
  if ((h->flags & ~kFlagsKnown) != 0) return DecodeError::kBadFlags;
  h->request_type = in[5];
  h->reserved = Get16(in + 6);
  h->dest_session = Get32(in + 8);
  h->message_bytes = Get32(in + 12);
  h->packet_number = Get32(in + 16);
  h->aux = Get32(in + 20);
  h->request_number = Get64(in + 24);
  return DecodeError::kNone;
}

}  // namespace squall::transport

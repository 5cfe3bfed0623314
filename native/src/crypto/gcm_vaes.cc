#include "crypto/gcm_vaes.h"

#include <openssl/crypto.h>

#include <cstring>

namespace squall::crypto {

// Compiled without the AVX-512 target below: it must run on any x86-64.
bool VaesGcmSupported() {
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vaes") &&
      __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("aes") &&
      __builtin_cpu_supports("pclmul");
  return supported;
}

}  // namespace squall::crypto

#pragma GCC push_options
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized flags.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,pclmul,sse4.1")
#include <immintrin.h>

namespace squall::crypto {
namespace {

constexpr size_t kChunkBytes = 256;  // 16 blocks: one loop turn, one GHASH reduction

inline __m128i Load128(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline void Store128(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

inline __m128i ByteReverse128() { return _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
inline __m512i ByteReverse512() { return _mm512_broadcast_i32x4(ByteReverse128()); }

// x^128 = x^7 + x^2 + x + 1 in the bit-reversed order (see gcm_vaes.h): the high 64 bits are the
// fold multiplier, the low bit is R(x^-1)'s other term, used when shifting the hash key.
constexpr uint64_t kPolyHigh = 0xc200000000000000ULL;
inline __m512i Poly512() {
  return _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(kPolyHigh), 1));
}

inline __m512i Xor3(__m512i a, __m512i b, __m512i c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }

// Unreduced sums of carry-less products, per 128-bit lane: bits 0..127, 64..191, 128..255.
struct Product {
  __m512i lo, mi, hi;
};

inline Product Multiply(__m512i a, __m512i h) {
  return {_mm512_clmulepi64_epi128(a, h, 0x00),
          _mm512_xor_si512(_mm512_clmulepi64_epi128(a, h, 0x01), _mm512_clmulepi64_epi128(a, h, 0x10)),
          _mm512_clmulepi64_epi128(a, h, 0x11)};
}

inline void MultiplyAdd(Product& sum, __m512i a, __m512i h) {
  sum.lo = _mm512_xor_si512(sum.lo, _mm512_clmulepi64_epi128(a, h, 0x00));
  sum.mi = Xor3(sum.mi, _mm512_clmulepi64_epi128(a, h, 0x01), _mm512_clmulepi64_epi128(a, h, 0x10));
  sum.hi = _mm512_xor_si512(sum.hi, _mm512_clmulepi64_epi128(a, h, 0x11));
}

// Per lane: fold lo's low half (degrees 192..255) into mi, then mi's low half into hi.
inline __m512i Reduce(const Product& p) {
  const __m512i poly = Poly512();
  const __m512i mi = Xor3(p.mi, _mm512_clmulepi64_epi128(p.lo, poly, 0x10),
                          _mm512_shuffle_epi32(p.lo, _MM_PERM_BADC));
  return Xor3(p.hi, _mm512_clmulepi64_epi128(mi, poly, 0x10), _mm512_shuffle_epi32(mi, _MM_PERM_BADC));
}

inline __m128i XorLanes(__m512i v) {
  const __m256i x = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  return _mm_xor_si128(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
}

// R(a) * R(b x^-1) -> R(a b), one block.
inline __m128i Multiply128(__m128i a, __m128i h) {
  return _mm512_castsi512_si128(
      Reduce(Multiply(_mm512_zextsi128_si512(a), _mm512_zextsi128_si512(h))));
}

inline uint64_t BytesMask(size_t bytes) { return bytes >= 64 ? ~uint64_t{0} : (uint64_t{1} << bytes) - 1; }

// GHASH of data[0, bytes), 1 <= bytes <= 256, the last block zero-padded: returns
// (acc ^ X1) H^n ^ X2 H^(n-1) ^ ... ^ Xn H for its n blocks.
__m128i GhashUpTo16(const VaesGcmKey& key, __m128i acc, const uint8_t* data, size_t bytes) {
  const size_t blocks = (bytes + 15) / 16;
  const uint8_t* powers = key.hash_powers[16 - blocks];
  const __m512i reverse = ByteReverse512();
  Product sum{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (size_t offset = 0; offset < bytes; offset += 64) {
    const size_t rest = bytes - offset;
    __m512i x = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(BytesMask(rest), data + offset), reverse);
    if (offset == 0) x = _mm512_xor_si512(x, _mm512_zextsi128_si512(acc));
    const size_t lanes = rest >= 64 ? 4 : (rest + 15) / 16;
    const __m512i h = _mm512_maskz_loadu_epi8(BytesMask(lanes * 16), powers + offset);
    MultiplyAdd(sum, x, h);
  }
  return XorLanes(Reduce(sum));
}

// GHASH of 16 blocks held in four registers (not yet byte-reversed).
inline __m128i Ghash16(const __m512i powers[4], __m128i acc, __m512i c0, __m512i c1, __m512i c2,
                       __m512i c3) {
  const __m512i reverse = ByteReverse512();
  const __m512i x0 = _mm512_xor_si512(_mm512_shuffle_epi8(c0, reverse), _mm512_zextsi128_si512(acc));
  Product sum = Multiply(x0, powers[0]);
  MultiplyAdd(sum, _mm512_shuffle_epi8(c1, reverse), powers[1]);
  MultiplyAdd(sum, _mm512_shuffle_epi8(c2, reverse), powers[2]);
  MultiplyAdd(sum, _mm512_shuffle_epi8(c3, reverse), powers[3]);
  return XorLanes(Reduce(sum));
}

template <int kRounds>
inline __m512i Encrypt4(const __m512i* rk, __m512i b) {
  b = _mm512_xor_si512(b, rk[0]);
  for (int r = 1; r < kRounds; ++r) b = _mm512_aesenc_epi128(b, rk[r]);
  return _mm512_aesenclast_epi128(b, rk[kRounds]);
}

template <int kRounds>
__m128i Encrypt1(const VaesGcmKey& key, __m128i b) {
  b = _mm_xor_si128(b, Load128(key.round_keys[0]));
  for (int r = 1; r < kRounds; ++r) b = _mm_aesenc_si128(b, Load128(key.round_keys[r]));
  return _mm_aesenclast_si128(b, Load128(key.round_keys[kRounds]));
}

// Counter mode from counter block 2 (block 1 masks the tag) with GHASH over the ciphertext:
// the output when sealing, the input when opening (read before it is overwritten in place).
template <int kRounds, bool kSeal>
__m128i CounterAndHash(const VaesGcmKey& key, __m128i counter_block, const uint8_t* in, size_t bytes,
                       uint8_t* out, __m128i acc) {
  __m512i rk[kRounds + 1];
  for (int r = 0; r <= kRounds; ++r) rk[r] = _mm512_broadcast_i32x4(Load128(key.round_keys[r]));
  __m512i powers[4];
  for (int i = 0; i < 4; ++i) powers[i] = _mm512_load_si512(key.hash_powers[4 * i]);
  const __m512i reverse = ByteReverse512();
  // Counters kept byte-reversed, so the block's big-endian 32-bit counter is lane dword 0 and
  // a 32-bit add per lane is GCM's inc32 (wrapping within the 32 bits, as GCM specifies).
  __m512i counter = _mm512_add_epi32(
      _mm512_broadcast_i32x4(_mm_shuffle_epi8(counter_block, ByteReverse128())),
      _mm512_set_epi32(0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0));
  const __m512i four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
  auto next = [&]() {
    const __m512i block = _mm512_shuffle_epi8(counter, reverse);
    counter = _mm512_add_epi32(counter, four);
    return block;
  };
  // Sealing hashes each turn's ciphertext during the next turn's AES rounds (the two use
  // different execution ports); opening hashes the input it already has.
  bool pending = false;
  __m512i p0 = _mm512_setzero_si512(), p1 = p0, p2 = p0, p3 = p0;
  while (bytes >= kChunkBytes) {
    __m512i k0 = next(), k1 = next(), k2 = next(), k3 = next();
    const __m512i d0 = _mm512_loadu_si512(in), d1 = _mm512_loadu_si512(in + 64);
    const __m512i d2 = _mm512_loadu_si512(in + 128), d3 = _mm512_loadu_si512(in + 192);
    if constexpr (!kSeal) acc = Ghash16(powers, acc, d0, d1, d2, d3);
    if constexpr (kSeal) {
      if (pending) acc = Ghash16(powers, acc, p0, p1, p2, p3);
    }
    k0 = _mm512_xor_si512(rk[0], k0);
    k1 = _mm512_xor_si512(rk[0], k1);
    k2 = _mm512_xor_si512(rk[0], k2);
    k3 = _mm512_xor_si512(rk[0], k3);
    for (int r = 1; r < kRounds; ++r) {
      k0 = _mm512_aesenc_epi128(k0, rk[r]);
      k1 = _mm512_aesenc_epi128(k1, rk[r]);
      k2 = _mm512_aesenc_epi128(k2, rk[r]);
      k3 = _mm512_aesenc_epi128(k3, rk[r]);
    }
    const __m512i c0 = _mm512_xor_si512(_mm512_aesenclast_epi128(k0, rk[kRounds]), d0);
    const __m512i c1 = _mm512_xor_si512(_mm512_aesenclast_epi128(k1, rk[kRounds]), d1);
    const __m512i c2 = _mm512_xor_si512(_mm512_aesenclast_epi128(k2, rk[kRounds]), d2);
    const __m512i c3 = _mm512_xor_si512(_mm512_aesenclast_epi128(k3, rk[kRounds]), d3);
    _mm512_storeu_si512(out, c0);
    _mm512_storeu_si512(out + 64, c1);
    _mm512_storeu_si512(out + 128, c2);
    _mm512_storeu_si512(out + 192, c3);
    if constexpr (kSeal) p0 = c0, p1 = c1, p2 = c2, p3 = c3, pending = true;
    in += kChunkBytes;
    out += kChunkBytes;
    bytes -= kChunkBytes;
  }
  if constexpr (kSeal) {
    if (pending) acc = Ghash16(powers, acc, p0, p1, p2, p3);
  }
  if (bytes == 0) return acc;
  if constexpr (!kSeal) acc = GhashUpTo16(key, acc, in, bytes);
  for (size_t offset = 0; offset < bytes; offset += 64) {
    const uint64_t mask = BytesMask(bytes - offset);
    const __m512i stream = Encrypt4<kRounds>(rk, next());
    const __m512i data = _mm512_maskz_loadu_epi8(mask, in + offset);
    _mm512_mask_storeu_epi8(out + offset, mask, _mm512_xor_si512(stream, data));
  }
  if constexpr (kSeal) acc = GhashUpTo16(key, acc, out, bytes);
  return acc;
}

// GHASH of bytes[0, count) from acc, in loop turns of 16 blocks; the last block zero-padded.
__m128i GhashBytes(const VaesGcmKey& key, __m128i acc, const uint8_t* bytes, size_t count) {
  for (size_t offset = 0; offset < count; offset += kChunkBytes) {
    acc = GhashUpTo16(key, acc, bytes + offset, count - offset < kChunkBytes ? count - offset : kChunkBytes);
  }
  return acc;
}

// GHASH of the associated data first || second, read where it lies: whole blocks of the first
// piece, then the block that straddles the two (through a 16-byte buffer), then the rest of the
// second piece, zero-padded at the end.
__m128i HashAad(const VaesGcmKey& key, const uint8_t* first, size_t first_bytes, const uint8_t* second,
                size_t second_bytes) {
  const size_t first_whole = first_bytes & ~size_t{15};
  __m128i acc = GhashBytes(key, _mm_setzero_si128(), first, first_whole);
  const size_t rest = first_bytes - first_whole;
  size_t taken = 0;
  if (rest != 0) {
    uint8_t block[16] = {};
    std::memcpy(block, first + first_whole, rest);
    taken = second_bytes < 16 - rest ? second_bytes : 16 - rest;
    if (taken != 0) std::memcpy(block + rest, second, taken);
    acc = GhashUpTo16(key, acc, block, 16);
  }
  return GhashBytes(key, acc, second + taken, second_bytes - taken);
}

template <int kRounds, bool kSeal>
void Run(const VaesGcmKey& key, const uint8_t nonce[12], const uint8_t* aad_first, size_t aad_first_bytes,
         const uint8_t* aad_second, size_t aad_second_bytes, const uint8_t* in, size_t bytes,
         uint8_t* out, uint8_t tag[16]) {
  const size_t aad_bytes = aad_first_bytes + aad_second_bytes;
  const __m128i acc0 = HashAad(key, aad_first, aad_first_bytes, aad_second, aad_second_bytes);
  // J0 = nonce || 1 (96-bit nonce); the body is counter mode from J0 + 1.
  uint8_t block[16];
  std::memcpy(block, nonce, 12);
  block[12] = 0, block[13] = 0, block[14] = 0, block[15] = 1;
  const __m128i j0 = Load128(block);
  block[15] = 2;
  __m128i acc = CounterAndHash<kRounds, kSeal>(key, Load128(block), in, bytes, out, acc0);
  const __m128i lengths =
      _mm_set_epi64x(static_cast<long long>(aad_bytes * 8), static_cast<long long>(bytes * 8));
  acc = Multiply128(_mm_xor_si128(acc, lengths), Load128(key.hash_powers[15]));
  Store128(tag, _mm_xor_si128(_mm_shuffle_epi8(acc, ByteReverse128()), Encrypt1<kRounds>(key, j0)));
}

inline __m128i Expand128Step(__m128i key, __m128i assist) {
  assist = _mm_shuffle_epi32(assist, 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

// AES-256's odd round keys: SubWord of the previous word without rotation or round constant.
inline __m128i Expand256OddStep(__m128i key, __m128i previous) {
  const __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(previous, 0), 0xaa);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

void ExpandKey(VaesGcmKey& key, const uint8_t* bytes, size_t key_bytes) {
  __m128i rk[15];
  if (key_bytes == 16) {
    rk[0] = Load128(bytes);
#define SQUALL_AES128_ROUND(i, rcon) rk[i] = Expand128Step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rcon))
    SQUALL_AES128_ROUND(1, 0x01); SQUALL_AES128_ROUND(2, 0x02); SQUALL_AES128_ROUND(3, 0x04);
    SQUALL_AES128_ROUND(4, 0x08); SQUALL_AES128_ROUND(5, 0x10); SQUALL_AES128_ROUND(6, 0x20);
    SQUALL_AES128_ROUND(7, 0x40); SQUALL_AES128_ROUND(8, 0x80); SQUALL_AES128_ROUND(9, 0x1b);
    SQUALL_AES128_ROUND(10, 0x36);
#undef SQUALL_AES128_ROUND
    key.rounds = 10;
  } else {
    rk[0] = Load128(bytes);
    rk[1] = Load128(bytes + 16);
#define SQUALL_AES256_ROUND(i, rcon)                                                   \
  rk[i] = Expand128Step(rk[i - 2], _mm_aeskeygenassist_si128(rk[i - 1], rcon));        \
  if (i + 1 < 15) rk[i + 1] = Expand256OddStep(rk[i - 1], rk[i])
    SQUALL_AES256_ROUND(2, 0x01); SQUALL_AES256_ROUND(4, 0x02); SQUALL_AES256_ROUND(6, 0x04);
    SQUALL_AES256_ROUND(8, 0x08); SQUALL_AES256_ROUND(10, 0x10); SQUALL_AES256_ROUND(12, 0x20);
    SQUALL_AES256_ROUND(14, 0x40);
#undef SQUALL_AES256_ROUND
    key.rounds = 14;
  }
  for (int r = 0; r <= key.rounds; ++r) Store128(key.round_keys[r], rk[r]);
}

}  // namespace

void VaesGcmInit(VaesGcmKey& key, const uint8_t* key_bytes_ptr, size_t key_bytes) {
  ExpandKey(key, key_bytes_ptr, key_bytes);
  const __m128i zero = _mm_setzero_si128();
  const __m128i h = _mm_shuffle_epi8(
      key.rounds == 10 ? Encrypt1<10>(key, zero) : Encrypt1<14>(key, zero), ByteReverse128());
  // R(H x^-1): shift left one bit; the bit shifted out (H's x^0 term) becomes x^-1, reduced.
  const auto hi = static_cast<uint64_t>(_mm_extract_epi64(h, 1));
  const auto lo = static_cast<uint64_t>(_mm_extract_epi64(h, 0));
  const uint64_t carry = 0 - (hi >> 63);  // all ones or zero: no branch on key bits
  const uint64_t shifted_hi = ((hi << 1) | (lo >> 63)) ^ (carry & kPolyHigh);
  const uint64_t shifted_lo = (lo << 1) ^ (carry & 1);
  const __m128i h1 = _mm_set_epi64x(static_cast<long long>(shifted_hi), static_cast<long long>(shifted_lo));
  __m128i power = h1;
  Store128(key.hash_powers[15], power);
  for (int i = 14; i >= 0; --i) {
    power = Multiply128(power, h1);  // R(H^k x^-1) * R(H x^-1) = R(H^(k+1) x^-1)
    Store128(key.hash_powers[i], power);
  }
}

void VaesGcmSeal(const VaesGcmKey& key, const uint8_t nonce[12], const uint8_t* aad_first,
                 size_t aad_first_bytes, const uint8_t* aad_second, size_t aad_second_bytes,
                 const uint8_t* in, size_t bytes, uint8_t* out, uint8_t tag[16]) {
  if (key.rounds == 10) {
    Run<10, true>(key, nonce, aad_first, aad_first_bytes, aad_second, aad_second_bytes, in, bytes, out, tag);
  } else {
    Run<14, true>(key, nonce, aad_first, aad_first_bytes, aad_second, aad_second_bytes, in, bytes, out, tag);
  }
}

bool VaesGcmOpen(const VaesGcmKey& key, const uint8_t nonce[12], const uint8_t* aad_first,
                 size_t aad_first_bytes, const uint8_t* aad_second, size_t aad_second_bytes,
                 const uint8_t* in, size_t bytes, uint8_t* out, const uint8_t tag[16]) {
  uint8_t computed[16];
  if (key.rounds == 10) {
    Run<10, false>(key, nonce, aad_first, aad_first_bytes, aad_second, aad_second_bytes, in, bytes, out,
                   computed);
  } else {
    Run<14, false>(key, nonce, aad_first, aad_first_bytes, aad_second, aad_second_bytes, in, bytes, out,
                   computed);
  }
  if (CRYPTO_memcmp(computed, tag, 16) == 0) return true;
  if (bytes != 0) std::memset(out, 0, bytes);
  return false;
}

}  // namespace squall::crypto

#pragma GCC diagnostic pop
#pragma GCC pop_options

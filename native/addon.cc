// The only file that includes napi.h: it binds the plain C++ core to JavaScript.
//
// Driving model: the endpoint lives on the thread that created it and is driven by that thread's
// own libuv loop -- a uv_poll on the UDP socket and one uv_timer for the core's next deadline.
// No thread hop per batch and no CPU while idle (the loop sleeps in epoll). The alternative, a
// native I/O thread handing batches over a ThreadSafeFunction, costs a cross-thread wakeup per
// batch (~25-50 µs on these VMs, NOTES.md) and locking around the core; the uv_poll route needs
// Node's own uv.h (/usr/include/node), which is outside Node-API's ABI promise but stable in
// practice. Worker threads each have their own loop, so one endpoint per worker scales out.
//
// Crossings are batched both ways. Native -> JS: after each poll/timer wakeup, every event the
// core produced (responses, incoming requests, session events) goes to JS in one call as one
// ArrayBuffer of records; payloads of 64 KiB or more travel as separate external ArrayBuffers
// that own the core's memory (no copy). JS -> native: JS queues calls and responses into one
// slab during a tick and submits it with one call. Record layout (both ways, little-endian):
//   0 u8 kind | 1 u8 code | 2 u16 flags (bit 0: payload is extras[index]) | 4 u32 session
//   8 u32 slot or timeout ms | 12 u32 payload bytes | 16 f64 id (tag or request number)
//  24 payload, padded to 8 bytes (absent when in extras)
// A lent call (JS -> native, flag bit 1): the payload is [u32 extras index][u32 0][head]; the
// request is head ++ extras[index], and extras[index] is lent, not copied (Endpoint::CallLent):
// a reference to it is held until the call ends, and JS must not change it before its promise
// settles.
#include <napi.h>
#include <uv.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "transport/congestion_gate.h"
#include "crypto/keyring.h"
#include "transport/endpoint.h"
#include "transport/udp_socket.h"
#include "version.h"

namespace {
using namespace squall::transport;

constexpr size_t kRecordHeaderBytes = 24;
constexpr size_t kExternalPayloadBytesMin = 64 * 1024;
// Received messages handed to JS as external buffers go back to the endpoint's BufferPool when
// JS releases them (release()) or collects them (bytes.h); at most this much is kept for reuse.
constexpr size_t kReceivePoolBytesMax = 64u << 20;
constexpr size_t kReceivePacketsPerWakeup = 1024;
constexpr uint16_t kFlagPayloadInExtras = 1;
constexpr uint16_t kFlagLentBody = 2;
// UV_PRIORITIZED as well: a queued ICMP error polls as EPOLLERR | EPOLLPRI (SO_SELECT_ERR_QUEUE),
// and libuv stops a poll handle that reports EPOLLERR without EPOLLPRI (udp_socket.h).
constexpr int kPollEvents = UV_READABLE | UV_PRIORITIZED;
constexpr uint8_t kSubmitCall = 1;
constexpr uint8_t kSubmitRespond = 2;

size_t Pad8(size_t n) { return (n + 7) & ~size_t{7}; }

void Put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }  // x86-64/arm64: little-endian
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

class NativeEndpoint;

// References to lent JS buffers the core has dropped (JsLender), deleted only after the next
// socket flush: the core may have queued datagrams that point into a lent buffer
// (PacketIo::SendPinned) and dropped the call before they left. After environment teardown
// began, references are left to Node (which frees every reference of the environment).
// A lent buffer that is a view of a received message (a relay forwarding the block it got) pins
// that message's loan (BufferPool::Pin): released meanwhile, it returns to the pool only when
// the pin goes, here, after the flush.
struct LentReferences {
  napi_env env = nullptr;
  bool env_alive = true;
  std::shared_ptr<BufferPool> pool;
  std::vector<napi_ref> dropped;
  std::vector<BufferPool::Loan> unpins;
  void DeleteDropped() {
    if (env_alive) {
      for (napi_ref ref : dropped) napi_delete_reference(env, ref);
    }
    dropped.clear();
    for (const BufferPool::Loan& pin : unpins) pool->Unpin(pin);
    unpins.clear();
  }
};

// Keeps a lent JS buffer alive while the core reads it (Lender): a strong reference, handed to
// LentReferences when the core drops the call.
struct JsLender {
  std::shared_ptr<LentReferences> references;
  napi_ref ref;
  BufferPool::Loan pin;  // id 0: the buffer is not a received message's
  JsLender(std::shared_ptr<LentReferences> r, napi_ref reference, BufferPool::Loan pinned)
      : references(std::move(r)), ref(reference), pin(pinned) {}
  ~JsLender() {
    references->dropped.push_back(ref);
    if (pin.id != 0) references->unpins.push_back(pin);
  }
  JsLender(const JsLender&) = delete;
  JsLender& operator=(const JsLender&) = delete;
};

// Endpoint::BeginBatch/EndBatch for a scope with early returns; End() may come first.
class EndpointBatch {
 public:
  explicit EndpointBatch(Endpoint* endpoint) : endpoint_(endpoint) { endpoint_->BeginBatch(); }
  ~EndpointBatch() { End(); }
  EndpointBatch(const EndpointBatch&) = delete;
  EndpointBatch& operator=(const EndpointBatch&) = delete;
  void End() {
    if (endpoint_ != nullptr) endpoint_->EndBatch();
    endpoint_ = nullptr;
  }

 private:
  Endpoint* endpoint_;
};

// Owns the socket, the core and the libuv handles; freed when both handles have closed.
struct Driver {
  NativeEndpoint* owner = nullptr;
  std::unique_ptr<UdpSocket> socket;
  std::unique_ptr<CongestionGate> gate;  // outlives nothing it is handed to: freed with the core
  std::unique_ptr<Endpoint> endpoint;
  uv_poll_t poll{};
  uv_timer_t timer{};
  int open_handles = 0;
  // Registered while the handles are open. Node waits for it at environment teardown (a worker
  // ending, or the process exiting) until the handles have closed: their close callbacks live in
  // this addon, which is unloaded right after, so closing must finish first.
  napi_async_cleanup_hook_handle cleanup = nullptr;
  uint64_t timer_armed_us = UINT64_MAX;
  uint64_t poll_restarts = 0;  // see OnReadable
  std::vector<Event> events;
  std::vector<uint32_t> prefetch_sessions;  // Submit: the calls' sessions (PrefetchSubmitted)
  std::shared_ptr<LentReferences> lent = std::make_shared<LentReferences>();  // see JsLender
  std::shared_ptr<BufferPool> pool =
      std::make_shared<BufferPool>(kExternalPayloadBytesMin, kReceivePoolBytesMax);
};

// Sends the queued datagrams, then deletes the references to lent buffers the core dropped
// before (the datagrams may have pointed into them). Every socket flush of the addon is this.
void FlushSocket(Driver* d) {
  d->socket->Flush();
  d->lent->DeleteDropped();
}

// An external ArrayBuffer handed to JS is a loan of a message's buffer (BufferPool::Lend). It
// comes back to the pool when JS releases it (release(): detached first, so no handle reaches
// the memory after) or, failing that, when JS collects the ArrayBuffer (this finalizer). The
// pool outlives the endpoint as long as such buffers exist.
struct ExternalMessage {
  std::shared_ptr<BufferPool> pool;
  BufferPool::Loan loan;
  static void Finalize(napi_env /*env*/, void* /*data*/, void* hint) {
    auto* self = static_cast<ExternalMessage*>(hint);
    self->pool->Collected(self->loan.id, self->loan.data);
    delete self;
  }
};

class NativeEndpoint : public Napi::ObjectWrap<NativeEndpoint> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEndpoint",
                       {InstanceMethod("address", &NativeEndpoint::Address),
                        InstanceMethod("connect", &NativeEndpoint::Connect),
                        InstanceMethod("submit", &NativeEndpoint::Submit),
                        InstanceMethod("drain", &NativeEndpoint::Drain),
                        InstanceMethod("disconnect", &NativeEndpoint::Disconnect),
                        InstanceMethod("setHandled", &NativeEndpoint::SetHandled),
                        InstanceMethod("stats", &NativeEndpoint::Stats),
                        InstanceMethod("inject", &NativeEndpoint::Inject),
                        InstanceMethod("sessionInfo", &NativeEndpoint::SessionInfo),
                        InstanceMethod("rotateKey", &NativeEndpoint::RotateKey),
                        InstanceMethod("release", &NativeEndpoint::Release),
                        InstanceMethod("close", &NativeEndpoint::Close)});
  }

  // new NativeEndpoint(options, onEvents)
  explicit NativeEndpoint(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<NativeEndpoint>(info), async_context_(info.Env(), "squall.transport") {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "NativeEndpoint(options, onEvents)").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    auto number = [&](const char* key, double fallback) {
      Napi::Value v = o.Get(key);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
    };
    EndpointConfig c;
    c.packet_bytes_max = static_cast<uint32_t>(number("packetBytesMax", c.packet_bytes_max));
    c.message_bytes_max = static_cast<uint32_t>(number("messageBytesMax", c.message_bytes_max));
    c.slots_per_session = static_cast<uint32_t>(number("slotsPerSession", c.slots_per_session));
    c.credits_per_session =
        static_cast<uint32_t>(number("creditsPerSession", c.credits_per_session));
    c.sessions_max = static_cast<uint32_t>(number("sessionsMax", c.sessions_max));
    c.queued_requests_per_session_max = static_cast<uint32_t>(
        number("queuedRequestsPerSessionMax", c.queued_requests_per_session_max));
    auto ms = [&](const char* key, uint64_t fallback_us) {
      return static_cast<uint64_t>(number(key, static_cast<double>(fallback_us) / 1000) * 1000);
    };
    c.retransmit_timeout_us = ms("retransmitTimeoutMs", c.retransmit_timeout_us);
    // An initial RTO set below the default floor lowers the floor with it unless given.
    c.retransmit_timeout_min_us = ms("retransmitTimeoutMinMs",
                                     std::min(c.retransmit_timeout_min_us, c.retransmit_timeout_us));
    c.peer_failure_timeout_us = ms("peerFailureTimeoutMs", c.peer_failure_timeout_us);
    c.connect_timeout_us = ms("connectTimeoutMs", c.connect_timeout_us);
    c.connect_retry_us = ms("connectRetryMs", c.connect_retry_us);
    c.unreachable_reports_to_fail = static_cast<uint32_t>(
        number("portUnreachableReports", c.unreachable_reports_to_fail));
    c.seed = static_cast<uint64_t>(number("seed", 1));
    // A fresh incarnation per endpoint: a process restarted at the same address must not reuse
    // the handshake tokens and session numbers of its previous life (see EndpointConfig).
    std::random_device entropy;
    c.incarnation = (static_cast<uint64_t>(entropy()) << 32) ^ entropy();
    if (c.incarnation == 0) c.incarnation = 1;
    // Encryption: JS resolves the key (file, text or raw bytes) into key-file text and checks it
    // with checkKeyFile() first, so a parse error here is a bug in that layer.
    if (o.Get("encryption").ToBoolean().Value()) {
      Napi::Value text = o.Get("keyText");
      const squall::crypto::KeyFileResult keys = squall::crypto::ParseKeyFile(
          text.IsString() ? text.As<Napi::String>().Utf8Value() : std::string(), "key");
      if (keys.status != squall::crypto::KeyFileStatus::kOk) {
        Napi::Error::New(env, keys.error).ThrowAsJavaScriptException();
        return;
      }
      c.encryption.enabled = true;
      c.encryption.keys = keys.keys;
      Napi::Value forward_secrecy = o.Get("forwardSecrecy");
      c.encryption.forward_secrecy =
          forward_secrecy.IsBoolean() ? forward_secrecy.As<Napi::Boolean>().Value() : true;
      const double rekey_after = number("rekeyAfterPackets", 0);
      if (rekey_after >= 1) c.encryption.limits.rekey_after_packets = static_cast<uint64_t>(rekey_after);
    }
    const std::string problem = ValidateConfig(c);
    if (!problem.empty()) {
      Napi::RangeError::New(env, "invalid transport limits: " + problem)
          .ThrowAsJavaScriptException();
      return;
    }
    CongestionConfig cc;
    Napi::Value cc_enabled = o.Get("congestionControl");
    if (cc_enabled.IsBoolean()) cc.enabled = cc_enabled.As<Napi::Boolean>().Value();
    cc.rate_max_bytes_per_s = number("ccRateMaxBytesPerSecond", cc.rate_max_bytes_per_s);
    cc.rate_min_bytes_per_s = number("ccRateMinBytesPerSecond", cc.rate_min_bytes_per_s);
    cc.t_low_us = static_cast<uint64_t>(number("ccTLowUs", static_cast<double>(cc.t_low_us)));
    cc.t_high_us = static_cast<uint64_t>(number("ccTHighUs", static_cast<double>(cc.t_high_us)));
    const std::string cc_problem = ValidateCongestionConfig(cc);
    if (!cc_problem.empty()) {
      Napi::RangeError::New(env, "invalid congestion control settings: " + cc_problem)
          .ThrowAsJavaScriptException();
      return;
    }
    SocketBuffers buffers;
    buffers.receive_bytes =
        static_cast<int>(number("socketReceiveBufferBytes", buffers.receive_bytes));
    buffers.send_bytes = static_cast<int>(number("socketSendBufferBytes", buffers.send_bytes));
    Napi::Value host_value = o.Get("host");
    const std::string host = host_value.IsString() ? host_value.As<Napi::String>().Utf8Value()
                                                   : std::string("127.0.0.1");
    const double port = number("port", 0);
    if (port < 0 || port > 65535 || std::floor(port) != port) {
      Napi::RangeError::New(env, "port must be an integer in [0, 65535]")
          .ThrowAsJavaScriptException();
      return;
    }
    std::string error;
    auto socket =
        UdpSocket::Open(host, static_cast<uint16_t>(port), c.packet_bytes_max, &error, buffers);
    if (!socket) {
      Napi::Error::New(env, error).ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "no libuv loop on this thread").ThrowAsJavaScriptException();
      return;
    }
    driver_ = new Driver();
    driver_->owner = this;
    driver_->socket = std::move(socket);
    driver_->endpoint = std::make_unique<Endpoint>(c, driver_->socket.get());
    driver_->gate = std::make_unique<CongestionGate>(cc, c.sessions_max, MonotonicNowUs());
    driver_->endpoint->SetSendGate(driver_->gate.get());
    driver_->endpoint->SetBufferPool(driver_->pool);
    driver_->lent->pool = driver_->pool;
    pool_ = driver_->pool;
    Endpoint* endpoint = driver_->endpoint.get();
    driver_->socket->SetUnreachableHandler(
        [endpoint](const PeerAddress& to, std::span<const uint8_t> quoted) {
          endpoint->OnUnreachable(to, quoted, MonotonicNowUs());
        });
    driver_->socket->SetBatchHook([endpoint](std::span<const std::span<const uint8_t>> packets) {
      endpoint->PrefetchPackets(packets);
    });
    // Large plaintext requests are received straight into their buffer (udp_socket.h).
    driver_->socket->SetPlacement(
        [endpoint](std::span<ReceivePlacement> out) { return endpoint->PlanReceive(out); },
        [endpoint](const PeerAddress& from, std::span<const uint8_t> header,
                   std::span<const uint8_t> body) {
          endpoint->OnPlacedPacket(from, header, body, MonotonicNowUs());
        });
    uv_poll_init(loop, &driver_->poll, driver_->socket->fd());
    uv_timer_init(loop, &driver_->timer);
    driver_->poll.data = driver_;
    driver_->timer.data = driver_;
    driver_->open_handles = 2;
    uv_poll_start(&driver_->poll, kPollEvents, &NativeEndpoint::OnReadable);
    on_events_ = Napi::Persistent(info[1].As<Napi::Function>());
    env_ = env;
    // While open, the JS object must not be collected: libuv callbacks point at it.
    Ref();
    napi_add_async_cleanup_hook(env, &NativeEndpoint::OnEnvTeardown, driver_, &driver_->cleanup);
  }

  ~NativeEndpoint() override { Shutdown(false); }

 private:
  // Environment teardown with the endpoint still open: close it; the last handle's close
  // callback then tells Node that teardown may go on.
  static void OnEnvTeardown(napi_async_cleanup_hook_handle /*handle*/, void* arg) {
    Driver* d = static_cast<Driver*>(arg);
    if (d->owner != nullptr) d->owner->Shutdown(false);
    d->lent->env_alive = false;  // references still held are left to Node
  }

  // Stops the endpoint: fails pending work locally, optionally tells peers, closes handles.
  void Shutdown(bool tell_peers) {
    if (driver_ == nullptr) return;
    Driver* d = driver_;
    driver_ = nullptr;
    d->endpoint->Shutdown(tell_peers, MonotonicNowUs());
    FlushSocket(d);
    d->pool->Close();  // nothing takes from it any more: what comes back is freed
    d->owner = nullptr;
    uv_poll_stop(&d->poll);
    uv_timer_stop(&d->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&d->poll), &NativeEndpoint::OnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&d->timer), &NativeEndpoint::OnHandleClosed);
  }

  static void OnHandleClosed(uv_handle_t* handle) {
    Driver* d = static_cast<Driver*>(handle->data);
    if (--d->open_handles != 0) return;
    if (d->cleanup != nullptr) napi_remove_async_cleanup_hook(d->cleanup);
    d->endpoint.reset();       // drops whatever it still lent (nothing is queued any more)
    d->lent->DeleteDropped();
    delete d;
  }

  static void OnReadable(uv_poll_t* handle, int status, int events) {
    Driver* d = static_cast<Driver*>(handle->data);
    if (d->owner == nullptr) return;
    if (status < 0) {
      // libuv stopped the handle on a socket error it took for a dead descriptor (EPOLLERR
      // without EPOLLPRI; should not happen with SO_SELECT_ERR_QUEUE). The socket is ours and
      // open: read the errors and watch it again, or the endpoint would never receive again.
      ++d->poll_restarts;
      d->socket->DrainErrors();
      uv_poll_start(handle, kPollEvents, &NativeEndpoint::OnReadable);
      return;
    }
    Endpoint* endpoint = d->endpoint.get();
    // The clock is read per packet: a wakeup can last long enough (up to 1,024 packets, sends
    // flushed on the way) for an answer to a packet sent in it to arrive in it, and a stale time
    // would make that round trip 0 µs (RTT samples feed the RTO and congestion control).
    // One batch per wakeup: an encrypting endpoint seals what it sends to a session in it once.
    endpoint->BeginBatch();
    d->socket->Receive(
        [endpoint](const PeerAddress& from, std::span<const uint8_t> bytes) {
          endpoint->OnPacket(from, bytes, MonotonicNowUs());
        },
        kReceivePacketsPerWakeup);
    // ICMP reports after the datagrams: a packet that arrived before them (a peer's goodbye
    // before it closed its socket) is handled first. A confirming PING they trigger leaves
    // with this wakeup's flush.
    if ((events & UV_PRIORITIZED) != 0) d->socket->DrainErrors();
    endpoint->OnTimers(MonotonicNowUs());
    endpoint->EndBatch();
    FlushSocket(d);
    d->owner->DeliverFromLoop();
  }

  static void OnTimer(uv_timer_t* handle) {
    Driver* d = static_cast<Driver*>(handle->data);
    if (d->owner == nullptr) return;
    d->timer_armed_us = UINT64_MAX;
    // Read what is already queued first: after a stall of this thread (a busy VM, a long JS
    // task) the peer's answers may be waiting in the socket, and the timers must not declare
    // it failed or retransmit before they have been seen.
    Endpoint* endpoint = d->endpoint.get();
    endpoint->BeginBatch();
    d->socket->Receive(
        [endpoint](const PeerAddress& from, std::span<const uint8_t> bytes) {
          endpoint->OnPacket(from, bytes, MonotonicNowUs());
        },
        kReceivePacketsPerWakeup);
    d->endpoint->OnTimers(MonotonicNowUs());
    endpoint->EndBatch();
    FlushSocket(d);
    d->owner->DeliverFromLoop();
  }

  void ArmTimer() {
    if (driver_ == nullptr) return;
    const uint64_t next = driver_->endpoint->NextTimerUs();
    if (next == driver_->timer_armed_us) return;
    driver_->timer_armed_us = next;
    if (next == UINT64_MAX) {
      uv_timer_stop(&driver_->timer);
      return;
    }
    const uint64_t now = MonotonicNowUs();
    const uint64_t delay_ms = next <= now ? 0 : (next - now + 999) / 1000;
    uv_timer_start(&driver_->timer, &NativeEndpoint::OnTimer, delay_ms, 0);
  }

  // Called from a libuv callback: hand every pending event to JS in one call. Uses the C API
  // with explicit status checks: while a worker terminates, every call into JS fails, and the
  // events are then simply dropped (the endpoint is about to be torn down anyway).
  void DeliverFromLoop() {
    ArmTimer();
    if (driver_ == nullptr || !driver_->endpoint->HasEvents()) return;
    napi_env env = env_;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    napi_value batch = TakeBatchRaw(env);
    if (batch != nullptr) {
      ++batches_delivered_;
      napi_value argv[1] = {batch};
      napi_value result;
      const napi_status status = napi_make_callback(env, async_context_, Value(),
                                                    on_events_.Value(), 1, argv, &result);
      if (status == napi_pending_exception) {
        // A JS error escaped the event handler: report it like any uncaught exception.
        napi_value error;
        if (napi_get_and_clear_last_exception(env, &error) == napi_ok) {
          napi_valuetype type;
          if (napi_typeof(env, error, &type) == napi_ok && type != napi_undefined) {
            napi_fatal_exception(env, error);
          }
        }
      }
    }
    napi_close_handle_scope(env, scope);
    ArmTimer();  // JS may have submitted work that moved the next deadline
  }

  Napi::Value TakeBatch(Napi::Env env) {
    napi_value batch = TakeBatchRaw(env);
    return batch == nullptr ? env.Undefined() : Napi::Value(env, batch);
  }

  // Returns nullptr (nothing to deliver, or JS unavailable), or [records, extras].
  napi_value TakeBatchRaw(napi_env env) {
    if (driver_ == nullptr) return nullptr;
    std::vector<Event>& events = driver_->events;
    events.clear();
    driver_->endpoint->TakeEvents(&events);
    if (events.empty()) return nullptr;
    size_t bytes = 0;
    for (const Event& e : events) {
      bytes += kRecordHeaderBytes;
      if (e.bytes.size() < kExternalPayloadBytesMin) bytes += Pad8(e.bytes.size());
    }
    void* data = nullptr;
    napi_value records, extras, result;
    if (napi_create_arraybuffer(env, bytes, &data, &records) != napi_ok ||
        napi_create_array(env, &extras) != napi_ok ||
        napi_create_array_with_length(env, 2, &result) != napi_ok) {
      events.clear();
      return nullptr;
    }
    uint8_t* out = static_cast<uint8_t*>(data);
    uint32_t extra_count = 0;
    for (Event& e : events) {
      const bool external = e.bytes.size() >= kExternalPayloadBytesMin;
      out[0] = static_cast<uint8_t>(e.kind);
      out[1] = e.code;
      const uint16_t flags = external ? kFlagPayloadInExtras : 0;
      std::memcpy(out + 2, &flags, 2);
      Put32(out + 4, e.session);
      Put32(out + 8, e.slot);
      // An external payload's length is its ArrayBuffer's; the field holds its extras index.
      Put32(out + 12, external ? extra_count : static_cast<uint32_t>(e.bytes.size()));
      const double id = static_cast<double>(e.id);
      std::memcpy(out + 16, &id, 8);
      out += kRecordHeaderBytes;
      if (external) {
        // The core's buffer becomes the ArrayBuffer's memory, lent; back to the pool when JS
        // releases or collects it.
        auto* owned = new ExternalMessage{driver_->pool, driver_->pool->Lend(std::move(e.bytes))};
        napi_value buffer;
        if (napi_create_external_arraybuffer(env, owned->loan.data, owned->loan.size,
                                             &ExternalMessage::Finalize, owned,
                                             &buffer) != napi_ok) {
          owned->pool->Collected(owned->loan.id, owned->loan.data);
          delete owned;
          napi_get_undefined(env, &buffer);
        }
        napi_set_element(env, extras, extra_count++, buffer);
      } else {
        if (!e.bytes.empty()) std::memcpy(out, e.bytes.data(), e.bytes.size());
        out += Pad8(e.bytes.size());
      }
    }
    events.clear();
    napi_set_element(env, result, 0, records);
    napi_set_element(env, result, 1, extras);
    return result;
  }

  bool CheckOpen(Napi::Env env) {
    if (driver_ != nullptr) return true;
    Napi::Error::New(env, "the endpoint is closed").ThrowAsJavaScriptException();
    return false;
  }

  Napi::Value Address(const Napi::CallbackInfo& info) {
    if (!CheckOpen(info.Env())) return info.Env().Undefined();
    return Napi::String::New(info.Env(), driver_->socket->local().ToString());
  }

  // connect(address) -> session number, or -1 if the address is malformed or unreachable
  // from this socket's address family.
  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env)) return env.Undefined();
    PeerAddress peer, normalized;
    if (!info[0].IsString() ||
        !PeerAddress::Parse(info[0].As<Napi::String>().Utf8Value(), &peer) ||
        !driver_->socket->Normalize(peer, &normalized)) {
      return Napi::Number::New(env, -1);
    }
    const uint32_t session = driver_->endpoint->Connect(normalized, MonotonicNowUs());
    FlushSocket(driver_);
    ArmTimer();
    return Napi::Number::New(env, session);
  }

  // submit(slab: ArrayBuffer, byteLength, extras: Uint8Array[]) -> a batch, like drain().
  // The sessions of a submission's calls, to Endpoint::PrefetchSessions before the calls are
  // made (a cache hint: with thousands of sessions each call's session is in no cache). Reads
  // the record headers only; a malformed tail just ends the walk (Submit reports it).
  void PrefetchSubmitted(Endpoint* endpoint, const uint8_t* p, const uint8_t* end) {
    std::vector<uint32_t>& sessions = driver_->prefetch_sessions;
    sessions.clear();
    while (p + kRecordHeaderBytes <= end) {
      uint16_t flags;
      std::memcpy(&flags, p + 2, 2);
      if (p[0] == kSubmitCall) sessions.push_back(Get32(p + 4));
      const uint32_t bytes = Get32(p + 12);
      p += kRecordHeaderBytes;
      const bool lent = (flags & kFlagLentBody) != 0 && p[-kRecordHeaderBytes] == kSubmitCall;
      const bool inline_bytes = lent || (flags & kFlagPayloadInExtras) == 0;
      if (inline_bytes) p += Pad8(bytes);
    }
    if (sessions.size() > 1) endpoint->PrefetchSessions(sessions);
  }

  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env)) return env.Undefined();
    if (!info[0].IsArrayBuffer() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "submit(slab, byteLength, extras)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::ArrayBuffer slab = info[0].As<Napi::ArrayBuffer>();
    const size_t length = info[1].As<Napi::Number>().Uint32Value();
    Napi::Array extras = info[2].IsArray() ? info[2].As<Napi::Array>() : Napi::Array();
    if (length > slab.ByteLength()) {
      Napi::RangeError::New(env, "submit: byteLength beyond the slab").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const uint8_t* p = static_cast<const uint8_t*>(slab.Data());
    const uint8_t* end = p + length;
    const uint64_t now = MonotonicNowUs();
    Endpoint* endpoint = driver_->endpoint.get();
    PrefetchSubmitted(endpoint, p, end);
    // One batch for the whole submission (sealed per session together), ended on every return.
    EndpointBatch batch(endpoint);
    while (p + kRecordHeaderBytes <= end) {
      const uint8_t kind = p[0];
      const uint8_t code = p[1];
      uint16_t flags;
      std::memcpy(&flags, p + 2, 2);
      const uint32_t session = Get32(p + 4);
      const uint32_t slot_or_timeout = Get32(p + 8);
      const uint32_t bytes = Get32(p + 12);
      double id;
      std::memcpy(&id, p + 16, 8);
      p += kRecordHeaderBytes;
      std::span<const uint8_t> payload;
      if ((flags & kFlagLentBody) != 0 && kind == kSubmitCall) {
        if (bytes < 8 || p + bytes > end) break;  // malformed tail: ignore
        const uint32_t index = Get32(p);
        const std::span<const uint8_t> head(p + 8, bytes - 8);
        p += Pad8(bytes);
        Napi::Value v = extras.IsEmpty() ? env.Undefined() : extras.Get(index);
        if (!v.IsTypedArray()) {
          Napi::TypeError::New(env, "submit: missing lent payload").ThrowAsJavaScriptException();
          return env.Undefined();
        }
        Napi::Uint8Array array = v.As<Napi::Uint8Array>();
        const std::span<const uint8_t> body(array.Data(), array.ByteLength());
        napi_ref ref = nullptr;
        if (napi_create_reference(env, v, 1, &ref) != napi_ok) {
          Napi::Error::New(env, "submit: cannot reference a lent payload").ThrowAsJavaScriptException();
          return env.Undefined();
        }
        driver_->lent->env = env;
        BufferPool::Loan pin;
        driver_->pool->Pin(body.data(), body.size(), &pin);
        Lender lender = std::make_shared<JsLender>(driver_->lent, ref, pin);
        const uint64_t tag = static_cast<uint64_t>(id);
        const CallStatus status = endpoint->CallLent(session, code, tag, head, body,
                                                     std::move(lender),
                                                     uint64_t{slot_or_timeout} * 1000, now);
        if (status != CallStatus::kOk) endpoint->FailCall(session, tag, status);
        continue;
      }
      if ((flags & kFlagPayloadInExtras) != 0) {
        const uint32_t index = bytes;  // the record's length field holds the extras index
        Napi::Value v = extras.IsEmpty() ? env.Undefined() : extras.Get(index);
        if (!v.IsTypedArray()) {
          Napi::TypeError::New(env, "submit: missing extra payload").ThrowAsJavaScriptException();
          return env.Undefined();
        }
        Napi::Uint8Array array = v.As<Napi::Uint8Array>();
        payload = std::span<const uint8_t>(array.Data(), array.ByteLength());
      } else {
        if (p + bytes > end) break;  // malformed tail: ignore
        payload = std::span<const uint8_t>(p, bytes);
        p += Pad8(bytes);
      }
      const uint64_t id_u64 = static_cast<uint64_t>(id);
      if (kind == kSubmitCall) {
        const CallStatus status = endpoint->Call(session, code, id_u64, payload,
                                                 uint64_t{slot_or_timeout} * 1000, now);
        if (status != CallStatus::kOk) endpoint->FailCall(session, id_u64, status);
      } else if (kind == kSubmitRespond) {
        endpoint->Respond({session, slot_or_timeout, id_u64}, static_cast<CallStatus>(code),
                          payload, now);
      }
    }
    batch.End();  // sealed here, before the socket flushes
    ++submits_;
    FlushSocket(driver_);
    ArmTimer();
    return TakeBatch(env);  // events the submissions produced (e.g. refusals), saving a drain()
  }

  // release(buffer) -> true if `buffer` (an ArrayBuffer, or a view of one) was a received
  // message this endpoint lent to JS: it is detached (every view of it now has length 0, so the
  // memory is out of JS's reach) and its memory goes back to the pool at once, or when the last
  // lent call reading it ends. False for anything else, which is left untouched and counted
  // (receiveReleasesIgnored): a buffer released before (its handle is detached), a buffer of
  // another endpoint, a JS-allocated one. Works after close() too (the memory is then freed).
  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    napi_value value = info.Length() > 0 ? static_cast<napi_value>(info[0]) : nullptr;
    napi_value array_buffer = nullptr;
    if (info.Length() > 0 && info[0].IsArrayBuffer()) {
      array_buffer = value;
    } else if (info.Length() > 0 && info[0].IsTypedArray()) {
      napi_typedarray_type type;
      size_t length, offset;
      void* data;
      if (napi_get_typedarray_info(env, value, &type, &length, &data, &array_buffer, &offset) !=
          napi_ok) {
        array_buffer = nullptr;
      }
    }
    if (array_buffer == nullptr) {
      Napi::TypeError::New(env, "release(buffer): an ArrayBuffer or a typed array")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    void* data = nullptr;
    size_t length = 0;
    if (napi_get_arraybuffer_info(env, array_buffer, &data, &length) != napi_ok ||
        !pool_->IsLent(static_cast<const uint8_t*>(data), length)) {
      pool_->Release(nullptr, 0);  // counted, changes nothing
      return Napi::Boolean::New(env, false);
    }
    if (napi_detach_arraybuffer(env, array_buffer) != napi_ok) {
      Napi::Error::New(env, "release: cannot detach the received buffer")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    pool_->Release(static_cast<const uint8_t*>(data), length);
    return Napi::Boolean::New(env, true);
  }

  // drain() -> undefined or [records, extras]: events produced by the last synchronous calls.
  Napi::Value Drain(const Napi::CallbackInfo& info) { return TakeBatch(info.Env()); }

  Napi::Value Disconnect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env)) return env.Undefined();
    const bool started =
        driver_->endpoint->Disconnect(info[0].As<Napi::Number>().Uint32Value(), MonotonicNowUs());
    FlushSocket(driver_);
    ArmTimer();
    return Napi::Boolean::New(env, started);
  }

  Napi::Value SetHandled(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env)) return env.Undefined();
    driver_->endpoint->SetHandled(static_cast<uint8_t>(info[0].As<Napi::Number>().Uint32Value()),
                                  info[1].ToBoolean().Value());
    return env.Undefined();
  }

  Napi::Value SessionInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    if (driver_ == nullptr) return out;
    const uint32_t session = info[0].As<Napi::Number>().Uint32Value();
    out.Set("dataBytesPerPacket",
            Napi::Number::New(env, driver_->endpoint->SessionDataBytesPerPacket(session)));
    out.Set("connected", Napi::Boolean::New(env, driver_->endpoint->SessionIsConnected(session)));
    auto set = [&](const char* key, double v) { out.Set(key, Napi::Number::New(env, v)); };
    set("srttUs", static_cast<double>(driver_->endpoint->SessionSrttUs(session)));
    set("rtoUs", static_cast<double>(driver_->endpoint->SessionRtoUs(session)));
    SessionCongestion cc;
    if (driver_->gate->Session(session, &cc)) {
      set("rateBytesPerSecond", cc.rate_bytes_per_s);
      set("lastRttUs", static_cast<double>(cc.last_rtt_us));
      set("minRttUs", static_cast<double>(cc.min_rtt_us));
      set("tLowUs", static_cast<double>(cc.t_low_us));
      set("tHighUs", static_cast<double>(cc.t_high_us));
    }
    out.Set("sendEpoch", Napi::Number::New(env, driver_->endpoint->SessionSendEpoch(session)));
    out.Set("keyId", Napi::Number::New(env, driver_->endpoint->SessionKeyId(session)));
    return out;
  }

  // rotateKey(keyText, graceMs) -> false if the key is bad, already installed, or encryption is
  // off. The highest key id in keyText becomes primary.
  Napi::Value RotateKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env)) return env.Undefined();
    const squall::crypto::KeyFileResult keys =
        squall::crypto::ParseKeyFile(info[0].As<Napi::String>().Utf8Value(), "key");
    if (keys.status != squall::crypto::KeyFileStatus::kOk || keys.keys.empty()) {
      return Napi::Boolean::New(env, false);
    }
    const squall::crypto::GroupKey* newest = &keys.keys[0];
    for (const auto& key : keys.keys) {
      if (key.key_id > newest->key_id) newest = &key;
    }
    const double grace_ms = info[1].As<Napi::Number>().DoubleValue();
    const bool ok = driver_->endpoint->RotateKey(
        *newest, static_cast<uint64_t>(grace_ms < 0 ? 0 : grace_ms * 1000), MonotonicNowUs());
    FlushSocket(driver_);
    ArmTimer();
    return Napi::Boolean::New(env, ok);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    if (driver_ == nullptr) return out;
    const squall::transport::Stats& s = driver_->endpoint->stats();
    auto set = [&](const std::string& key, uint64_t v) {
      out.Set(key, Napi::Number::New(env, static_cast<double>(v)));
    };
    set("packetsSent", s.packets_sent);
    set("bytesSent", s.bytes_sent);
    set("packetsReceived", s.packets_received);
    set("bytesReceived", s.bytes_received);
    set("retransmissions", s.retransmissions);
    set("rtoProbes", s.rto_probes);
    set("rollbacks", s.rollbacks);
    set("fastRetransmits", s.fast_retransmits);
    set("nacksSent", s.nacks_sent);
    set("duplicateResponses", s.duplicate_responses);
    set("requestsStarted", s.requests_started);
    set("requestsLent", s.requests_lent);
    set("requestsCompleted", s.requests_completed);
    set("handlersRun", s.handlers_run);
    set("timeouts", s.timeouts);
    set("peerFailures", s.peer_failures);
    set("staleResponds", s.stale_responds);
    set("sessionsClient", s.sessions_client);
    set("sessionsServer", s.sessions_server);
    set("sessionsOpened", s.sessions_opened);
    set("sessionsClosed", s.sessions_closed);
    set("dropsTotal", s.DropsTotal());
    for (size_t r = 0; r < static_cast<size_t>(DropReason::kCount); ++r) {
      set(std::string("drops.") + DropReasonName(static_cast<DropReason>(r)), s.drops[r]);
    }
    for (uint8_t t = 0; t < kPacketTypeCount; ++t) {
      const std::string name = PacketTypeName(static_cast<PacketType>(t));
      set("sent." + name, s.packets_sent_by_type[t]);
      set("received." + name, s.packets_received_by_type[t]);
    }
    const UdpStats& u = driver_->socket->stats();
    set("jsBatchesDelivered", batches_delivered_);
    set("jsSubmits", submits_);
    // Large received messages assembled in a reused buffer vs a fresh one (BufferPool).
    set("receiveBuffersReused", driver_->pool->reused());
    set("receiveBuffersFresh", driver_->pool->fresh());
    // Their loans to JS: ended by release(), by collection, and release() calls that changed
    // nothing (a double release, a foreign buffer); loans still out.
    set("receiveBuffersReleased", driver_->pool->released());
    set("receiveBuffersCollected", driver_->pool->collected());
    set("receiveReleasesIgnored", driver_->pool->releases_ignored());
    set("receiveBuffersOnLoan", driver_->pool->loans());
    set("udpSendErrors", u.send_errors);
    set("udpTruncated", u.truncated_rx);
    set("udpSendCalls", u.send_calls);
    set("udpDatagramsPinned", u.datagrams_pinned);
    set("udpDatagramsSent", u.datagrams_sent);
    set("udpBundledPackets", u.bundled_packets);
    set("udpBadBundles", u.bad_bundles);
    set("udpReceiveCalls", u.receive_calls);
    set("udpDatagramsPlaced", u.datagrams_placed);
    set("udpPlacementProbes", u.placement_probes);
    set("udpPlacementMisses", u.placement_misses);
    set("udpPlacementBackoffs", u.placement_backoffs);
    set("udpKernelDrops", u.kernel_drops);
    set("udpReceiveBufferBytes", u.receive_buffer_bytes);
    set("udpSendBufferBytes", u.send_buffer_bytes);
    set("udpPortUnreachable", u.port_unreachable);
    set("udpErrorQueueOther", u.error_queue_other);
    set("udpReceiveErrors", u.receive_errors);
    set("udpPollRestarts", driver_->poll_restarts);
    set("unreachableReports", s.unreachable_reports);
    set("unreachableUnmatched", s.unreachable_unmatched);
    set("peerFailuresUnreachable", s.peer_failures_unreachable);
    set("rttSamples", s.rtt_samples);
    set("retransmitTimerFires", s.retransmit_timer_fires);
    set("sessionTimerFires", s.session_timer_fires);
    set("peerTimerFires", s.peer_timer_fires);
    set("peers", s.peers);
    set("orphanAudits", s.orphan_audits);
    set("orphanProbes", s.orphan_probes);
    set("orphansReaped", s.orphans_reaped);
    set("sealedBatches", s.sealed_batches);
    set("sealedBatchPackets", s.sealed_batch_packets);
    set("sealedIntoSendBatch", s.sealed_into_send_batch);
    set("openedIntoMessage", s.opened_into_message);
    set("receivedIntoMessage", s.received_into_message);
    set("spanningPacketsPinned", s.spanning_packets_pinned);
    set("bytesPerSession", driver_->endpoint->BytesPerSession());
    const CongestionStats& cc = driver_->gate->stats();
    set("cc.bypassedSends", cc.bypassed_sends);
    set("cc.pacedSends", cc.paced_sends);
    set("cc.deferrals", cc.deferrals);
    set("cc.wheelInserts", cc.wheel_inserts);
    set("cc.wheelFull", cc.wheel_full);
    set("cc.rateUpdates", cc.rate_updates);
    set("cc.bypassedSamples", cc.bypassed_samples);
    set("cc.rebases", cc.rebases);
    set("cc.losses", cc.losses);
    set("cc.lossDecreases", cc.loss_decreases);
    set("cc.congestedSessions", cc.congested_sessions);
    set("cc.waitingSessions", driver_->gate->waiting());
    const SecurityStats sec = driver_->endpoint->security_stats();
    set("encrypted", sec.enabled ? 1 : 0);
    const squall::crypto::CryptoCounters& k = sec.crypto;
    set("crypto.sealed", k.sealed_packets);
    set("crypto.opened", k.opened_packets);
    set("crypto.sealedVaes", k.sealed_vaes);
    set("crypto.dropTruncated", k.drop_truncated);
    set("crypto.dropUnknownEpoch", k.drop_unknown_epoch);
    set("crypto.dropReplay", k.drop_replay);
    set("crypto.dropTooOld", k.drop_too_old);
    set("crypto.dropBadTag", k.drop_bad_tag);
    set("crypto.sealRefusedKeyExhausted", k.seal_refused_key_exhausted);
    set("crypto.handshakeOk", k.handshake_ok);
    set("crypto.handshakeMalformed", k.handshake_malformed);
    set("crypto.handshakeUnknownKeyId", k.handshake_unknown_key_id);
    set("crypto.handshakeBadMac", k.handshake_bad_mac);
    set("crypto.handshakeCipherMismatch", k.handshake_cipher_mismatch);
    set("crypto.handshakeBadPeerKey", k.handshake_bad_peer_key);
    set("crypto.handshakeRefusedByPeer", k.handshake_refused_by_peer);
    const EncryptionStats& e = sec.endpoint;
    set("crypto.handshakesRefused", e.handshakes_refused);
    set("crypto.connectsRefusedByPeer", e.connects_refused_by_peer);
    set("crypto.rekeysStarted", e.rekeys_started);
    set("crypto.rekeysCompleted", e.rekeys_completed);
    set("crypto.rekeysFailed", e.rekeys_failed);
    set("crypto.keyRotations", e.key_rotations);
    set("crypto.sessionsClosedKeyRetired", e.sessions_closed_key_retired);
    set("crypto.pendingHandshakes", e.pending_handshakes);
    return out;
  }

  // inject({ dropProbability?, dropNext?, failPeer?, restorePeer? })
  Napi::Value Inject(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env) || !info[0].IsObject()) return env.Undefined();
    Napi::Object o = info[0].As<Napi::Object>();
    if (o.Get("dropProbability").IsNumber()) {
      driver_->endpoint->SetDropProbability(
          o.Get("dropProbability").As<Napi::Number>().DoubleValue());
    }
    if (o.Get("dropNext").IsNumber()) {
      driver_->endpoint->DropNext(o.Get("dropNext").As<Napi::Number>().Uint32Value());
    }
    for (const char* key : {"failPeer", "restorePeer"}) {
      Napi::Value v = o.Get(key);
      PeerAddress peer, normalized;
      if (v.IsString() && PeerAddress::Parse(v.As<Napi::String>().Utf8Value(), &peer) &&
          driver_->socket->Normalize(peer, &normalized)) {
        driver_->endpoint->SetPeerFailed(normalized, std::strcmp(key, "failPeer") == 0);
      }
    }
    return env.Undefined();
  }

  // close(tellPeers) -> the final batch of events (failed calls, session ends) or undefined.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (driver_ == nullptr) return env.Undefined();
    const bool tell_peers = info.Length() == 0 || info[0].ToBoolean().Value();
    driver_->endpoint->Shutdown(tell_peers, MonotonicNowUs());
    Napi::Value batch = TakeBatch(env);
    Shutdown(tell_peers);
    Unref();
    return batch;
  }

  Driver* driver_ = nullptr;
  std::shared_ptr<BufferPool> pool_;  // the driver's; kept past close() for release()
  uint64_t batches_delivered_ = 0;  // native -> JS crossings from the loop
  uint64_t submits_ = 0;            // JS -> native submissions
  Napi::Env env_ = Napi::Env(nullptr);
  Napi::FunctionReference on_events_;
  Napi::AsyncContext async_context_;
};

// checkKeyFile(text, source) -> "" if the text is a valid key file, else what is wrong (names
// the source and line, ends with the fix).
Napi::Value CheckKeyFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "checkKeyFile(text, source)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const squall::crypto::KeyFileResult result = squall::crypto::ParseKeyFile(
      info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value());
  return Napi::String::New(env, result.error);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("checkKeyFile", Napi::Function::New(env, CheckKeyFile));
  exports.Set("wireVersion", Napi::Number::New(env, squall::kWireVersion));
  exports.Set("build", Napi::String::New(env, squall::BuildDescription()));
  exports.Set("NativeEndpoint", NativeEndpoint::Define(env));
  return exports;
}
}  // namespace

NODE_API_MODULE(squall_native, Init)

/**
 * The `[transport]` section of the node configuration (src/config) as native endpoint options.
 * Structural, so this layer does not import the config classes.
 */
import type { EndpointOptions } from './native-transport.js';

export interface TransportConfigSection {
  max_message_size: number;
  peer_failure_timeout_ms: number;
  port_unreachable_reports: number;
  retransmit_timeout_ms: number;
  retransmit_timeout_min_ms: number;
  congestion_control: boolean;
  cc_rate_max_bytes_per_s: number;
  cc_t_low_us: number;
  cc_t_high_us: number;
  socket_receive_buffer_bytes: number;
  socket_send_buffer_bytes: number;
  sessions_max: number;
}

export function endpointOptionsFromConfig(
  t: TransportConfigSection,
  bind: { host: string; port: number },
): EndpointOptions {
  return {
    host: bind.host,
    port: bind.port,
    messageBytesMax: t.max_message_size,
    peerFailureTimeoutMs: t.peer_failure_timeout_ms,
    portUnreachableReports: t.port_unreachable_reports,
    retransmitTimeoutMs: t.retransmit_timeout_ms,
    retransmitTimeoutMinMs: t.retransmit_timeout_min_ms,
    congestionControl: t.congestion_control,
    ccRateMaxBytesPerSecond: t.cc_rate_max_bytes_per_s,
    ccTLowUs: t.cc_t_low_us,
    ccTHighUs: t.cc_t_high_us,
    socketReceiveBufferBytes: t.socket_receive_buffer_bytes,
    socketSendBufferBytes: t.socket_send_buffer_bytes,
    sessionsMax: t.sessions_max,
  };
}

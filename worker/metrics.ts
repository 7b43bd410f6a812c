// Prometheus metrics of one worker process (served on METRICS_PORT by worker/front.ts).
// With WORKER_PROCESSES > 1 the front merges the registries of all processes
// (prom-client's AggregatorRegistry): counters and histograms add up, and each gauge
// says how it merges (`aggregator`): sessions open add up, the configuration version
// and CRL sizes take the lowest (the process furthest behind), the configuration age
// the highest.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { ocspMetrics } from '../shared/status/ocsp-metrics.ts';
import type { RelayResult } from './relay/next-hop.ts';

export class WorkerMetrics {
  readonly registry = new Registry();
  /** Read when metrics are collected: set them to what they measure. */
  readonly sources = { configAgeSeconds: (): number => -1, eventsPending: (): number => 0 };
  readonly sessions = new Counter({ name: 'certgate_smtp_sessions_total', help: 'SMTP sessions accepted', labelNames: ['listener'], registers: [this.registry] });
  readonly activeSessions = new Gauge({ name: 'certgate_smtp_sessions_active', help: 'SMTP sessions open now', registers: [this.registry] });
  readonly proxyRejected = new Counter({
    name: 'certgate_proxy_protocol_rejected_total',
    help: 'Connections to listeners with proxyProtocol closed without a greeting: untrusted peer, or no valid PROXY header in time',
    labelNames: ['listener', 'reason'],
    registers: [this.registry],
  });
  readonly auth = new Counter({ name: 'certgate_auth_total', help: 'Authentication decisions', labelNames: ['method', 'outcome', 'reason'], registers: [this.registry] });
  /** §2.4 authFailureThrottle: AUTH commands refused with 454 before the directory was asked, by the count that refused them. */
  readonly authThrottled = new Counter({
    name: 'certgate_auth_throttled_total', help: 'AUTH commands refused by authFailureThrottle', labelNames: ['scope'], registers: [this.registry],
  });
  /** §2.4/§2.5 limits that refused a connection or ended a session. */
  readonly limits = new Counter({
    name: 'certgate_smtp_limit_total', help: 'Connections refused or sessions ended by a limit', labelNames: ['limit'], registers: [this.registry],
  });
  readonly relay = new Counter({ name: 'certgate_relay_total', help: 'Messages by relay outcome', labelNames: ['outcome'], registers: [this.registry] });
  /** From the start of DATA (the message streams through) to the next hop's verdict. */
  readonly relayDuration = new Histogram({
    name: 'certgate_relay_duration_seconds', help: 'Time for the next hop to take or refuse a message, from the start of DATA', labelNames: ['outcome'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers: [this.registry],
  });
  /** Messages the next hop did not take, by the stage it failed at (connect, tls, ehlo, mail, rcpt, data, message) and reply class. */
  readonly nextHopFailures = new Counter({
    name: 'certgate_next_hop_failures_total', help: 'Messages the next hop did not accept, by stage and reply class', labelNames: ['stage', 'class'], registers: [this.registry],
  });
  readonly nextHopConnections = new Counter({
    name: 'certgate_next_hop_connections_total',
    help: 'Relayed messages by next-hop connection: a kept one reused, or none kept (a new one opened)',
    labelNames: ['connection'],
    registers: [this.registry],
  });
  readonly ldap = new Histogram({
    name: 'certgate_ldap_duration_seconds', help: 'LDAP operation latency', labelNames: ['kind', 'ok'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [this.registry],
  });
  readonly configVersion = new Gauge({ name: 'certgate_config_version', help: 'Configuration version applied', registers: [this.registry], aggregator: 'min' });
  /** §2.6b: OCSP requests, cache hits and results by outcome. */
  readonly ocsp = ocspMetrics(this.registry);
  readonly crlEntries = new Gauge({
    name: 'certgate_crl_revoked_entries', help: 'Revoked serials held, by CRL source', labelNames: ['source'], registers: [this.registry], aggregator: 'min',
  });
  readonly eventsDropped = new Counter({
    name: 'certgate_events_dropped_total', help: 'Session events lost because 10,000 were already waiting for Redis', registers: [this.registry],
  });
  readonly eventsPending = this.measured('certgate_events_pending', 'Session events waiting to be written to Redis', 'sum', () => this.sources.eventsPending());
  readonly configAge = this.measured(
    'certgate_config_age_seconds', 'Seconds since Redis last confirmed the configuration in force (-1: never)', 'max', () => this.sources.configAgeSeconds(),
  );

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  observeRelay(result: RelayResult, seconds: number): void {
    const cls = `${String(result.reply.code)[0]}xx`;
    this.relayDuration.observe({ outcome: result.accepted ? 'accepted' : `refused-${cls}` }, seconds);
    if (!result.accepted) this.nextHopFailures.inc({ stage: result.stage, class: cls });
  }

  private measured(name: string, help: string, aggregator: 'sum' | 'max', read: () => number): Gauge {
    return new Gauge({ name, help, registers: [this.registry], aggregator, collect() { this.set(read()); } });
  }
}

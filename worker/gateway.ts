// The worker: follows the configuration in Redis and keeps one SMTP server per enabled
// listener in step with it, without a restart and without cutting sessions in flight.
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { loadConfig } from '../shared/config/store.ts';
import { recordEvent } from '../shared/status/events.ts';
import { keys } from '../shared/redis/keys.ts';
import type { Listener, VersionedConfig, WorkerStatus } from '../shared/config/schemas.ts';
import { publishHeartbeat } from '../shared/status/workers.ts';
import { DirectoryRegistry } from './directories.ts';
import { sessionLogLine } from './session-log.ts';
import { buildRuntime } from './smtp/runtime.ts';
import { createListenerServer, tlsOptions } from './smtp/server.ts';
import { WorkerMetrics } from './metrics.ts';
import { AuthThrottle } from './auth-throttle.ts';
import { ClientConnections } from './smtp/client-connections.ts';
import { NextHopPool } from './relay/pool.ts';
import type { CrlStore } from '../shared/pki/crl/store.ts';
import { OcspChecker } from '../shared/pki/ocsp/checker.ts';
import { checkRevocation, type RevocationDecision, type RevocationSettings } from '../shared/pki/revocation.ts';
import type { SessionDeps } from './smtp/session.ts';
import type { ListenerRuntime } from './smtp/runtime.ts';
import type { GatewayServer } from './smtp/adapter.ts';
import type { X509Certificate } from 'node:crypto';

const HEARTBEAT_MS = 5_000;
/** Safety net behind the change channel (a message lost while Redis reconnected). */
const POLL_MS = 5_000;
/** SPEC §1: sessions in flight get up to 30 s when a listener goes away or the worker stops. */
const DRAIN_MS = 30_000;

export interface GatewayOptions {
  redisUrl: string;
  workerId: string;
  portOffset: number;
  logger: Logger;
  metrics: WorkerMetrics;
  /** The CRLs in force (shared/crl-store.ts); absent: nothing is revocation-checked. */
  crls?: Pick<CrlStore, 'check' | 'status'>;
}

interface RunningListener {
  server: GatewayServer;
  /** The runtime new sessions take; replaced on every configuration version. */
  runtime: { current: ListenerRuntime };
  /** address, port and implicitTls: a change needs a new socket. */
  bindKey: string;
  tlsKey: string;
  port: number;
}

export class Gateway {
  private readonly redis: Redis;
  private readonly sub: Redis;
  private readonly throttleRedis: Redis;
  private readonly throttle: AuthThrottle;
  private readonly running = new Map<string, RunningListener>();
  private readonly directories: DirectoryRegistry;
  /** Next-hop connections kept between messages (worker/relay/pool.ts). */
  private readonly pool: NextHopPool;
  private readonly deps: SessionDeps;
  private version = -1;
  /** The CRL and OCSP settings of the configuration applied; null before the first. */
  private revocationSettings: RevocationSettings | null = null;
  /** §2.6b: OCSP answers shared with every worker through Redis. */
  private readonly ocsp: OcspChecker;
  private sessions = 0;
  private applying: Promise<void> = Promise.resolve();
  private reloadQueued = false;
  private timers: NodeJS.Timeout[] = [];
  private stopping = false;
  /** Listeners closed but still finishing their sessions. */
  private readonly draining = new Set<Promise<void>>();

  constructor(private readonly o: GatewayOptions) {
    // Auto-pipelining batches the event XADDs of concurrent sessions into fewer round trips.
    this.redis = new Redis(o.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2, enableAutoPipelining: true });
    this.sub = new Redis(o.redisUrl, { lazyConnect: true });
    this.redis.on('error', (err) => o.logger.warn({ err: err.message }, 'redis error'));
    this.sub.on('error', (err) => o.logger.warn({ err: err.message }, 'redis subscriber error'));
    // The throttle's own connection: no offline queue and a short command timeout, so that an
    // AUTH falls back to per-process counts at once while Redis is away (worker/auth-throttle.ts).
    this.throttleRedis = new Redis(o.redisUrl, { lazyConnect: true, enableOfflineQueue: false, commandTimeout: 500, maxRetriesPerRequest: 0, enableAutoPipelining: true });
    this.throttleRedis.on('error', (err) => o.logger.debug({ err: err.message }, 'redis (auth throttle) error'));
    this.throttle = new AuthThrottle(this.throttleRedis);
    this.ocsp = new OcspChecker({ redis: this.redis, logger: o.logger, observer: o.metrics.ocsp });
    this.pool = new NextHopPool({}, (reused) => o.metrics.nextHopConnections.inc({ connection: reused ? 'reused' : 'new' }));
    this.directories = new DirectoryRegistry(
      (q) => o.metrics.ldap.observe({ kind: q.kind, ok: String(q.ok) }, q.durationMs / 1000),
      (profile, f) => o.logger.warn({ ldapProfile: profile, operation: f.operation, detail: f.detail }, 'directory unavailable'),
    );
    this.deps = {
      workerId: o.workerId,
      now: () => new Date(),
      record: (e) => {
        o.logger.debug({ event: e }, 'session event');
        const line = sessionLogLine(e);
        if (line) o.logger.info(line.fields, line.msg);
        recordEvent(this.redis, e).catch((err: Error) => o.logger.warn({ err: err.message }, 'cannot record event'));
      },
      directory: (name) => this.directories.get(name),
      revocation: (chain) => this.revocation(chain, 'inboundSmtpTls'),
      checkNextHop: async (chain) => {
        const decision = await this.revocation(chain, 'outboundSmtpTls');
        if (decision.refuse) o.logger.warn({ detail: decision.detail, reason: decision.refuse }, 'next hop certificate refused');
        else if (decision.unverified) o.logger.warn({ detail: decision.detail }, 'next hop certificate accepted without a revocation status');
        return decision.refuse;
      },
      relay: async (...args: Parameters<NextHopPool['relay']>) => {
        const started = performance.now();
        const result = await this.pool.relay(...args);
        o.metrics.observeRelay(result, (performance.now() - started) / 1000);
        return result;
      },
      observe: {
        sessionOpened: (listener) => {
          this.sessions++;
          o.metrics.sessions.inc({ listener });
          o.metrics.activeSessions.set(this.sessions);
        },
        sessionClosed: () => {
          this.sessions--;
          o.metrics.activeSessions.set(this.sessions);
        },
        auth: (method, outcome, reason) => o.metrics.auth.inc({ method, outcome, reason }),
        relay: (outcome) => o.metrics.relay.inc({ outcome }),
        throttled: (scope) => o.metrics.authThrottled.inc({ scope }),
        limit: (limit) => o.metrics.limits.inc({ limit }),
      },
      throttle: this.throttle,
      clients: new ClientConnections(),
    };
  }

  async start(): Promise<void> {
    await this.redis.connect();
    await this.sub.connect();
    await this.throttleRedis.connect();
    this.sub.on('message', () => this.reload());
    // Re-read after a reconnect: changes published while disconnected were missed.
    this.sub.on('ready', () => this.reload());
    await this.sub.subscribe(keys.configChannel);
    this.reload();
    await this.applying;
    this.timers.push(setInterval(() => this.reload(), POLL_MS), setInterval(() => void this.heartbeat(), HEARTBEAT_MS));
    await this.heartbeat();
  }

  /** Coalesces change notifications: at most one apply runs, at most one more is queued. */
  reload(): void {
    if (this.stopping || this.reloadQueued) return;
    this.reloadQueued = true;
    this.applying = this.applying.then(async () => {
      this.reloadQueued = false;
      try {
        const config = await loadConfig(this.redis);
        if (config.version !== this.version) await this.apply(config);
      } catch (err) {
        this.o.logger.error({ err: (err as Error).message }, 'cannot apply configuration; keeping the previous one');
      }
    });
  }

  private async apply(config: VersionedConfig): Promise<void> {
    this.directories.apply(config.ldapProfiles);
    this.revocationSettings = { crlSettings: config.crlSettings, ocspSettings: config.ocspSettings };
    const wanted = new Map(config.listeners.filter((l) => l.enabled).map((l) => [l.name, l]));
    for (const [name, r] of this.running) {
      const l = wanted.get(name);
      if (!l || bindKey(l, this.o.portOffset) !== r.bindKey) await this.stopListener(name);
    }
    for (const [name, listener] of wanted) {
      const runtime = buildRuntime(listener, config);
      const current = this.running.get(name);
      if (!current) {
        await this.startListener(listener, runtime);
        continue;
      }
      current.runtime.current = runtime;
      const options = current.server.options as { name?: string };
      options.name = listener.hostname;
      const tlsKey = JSON.stringify(tlsOptions(listener));
      if (tlsKey !== current.tlsKey) {
        current.server.updateSecureContext(tlsOptions(listener));
        current.tlsKey = tlsKey;
      }
    }
    this.version = config.version;
    this.o.metrics.configVersion.set(config.version);
    this.o.logger.info({ version: config.version, listeners: [...this.running.keys()] }, 'configuration applied');
    void this.heartbeat();
  }

  private async startListener(listener: Listener, runtime: ListenerRuntime): Promise<void> {
    const ref = { current: runtime };
    const server = createListenerServer(listener, {
      runtime: () => ref.current,
      deps: this.deps,
      onError: (err) => this.o.logger.debug({ err: err.message, listener: listener.name }, 'smtp error'),
      onRefused: (name, refused) => {
        this.o.metrics.proxyRejected.inc({ listener: name, reason: refused.reason });
        const silent = refused.reason === 'closed' && refused.bytesReceived === 0;
        this.o.logger[silent ? 'debug' : 'info']({ listener: name, peer: refused.peerAddress, reason: refused.reason, detail: refused.detail }, 'connection closed before its session (PROXY protocol)');
      },
    });
    const entry: RunningListener = {
      server,
      runtime: ref,
      bindKey: bindKey(listener, this.o.portOffset),
      tlsKey: JSON.stringify(tlsOptions(listener)),
      port: listener.port + this.o.portOffset,
    };
    try {
      await new Promise<void>((resolve, reject) => {
        entry.server.server.once('error', reject);
        entry.server.listen({ host: listener.address, port: entry.port }, () => {
          entry.server.server.removeListener('error', reject);
          resolve();
        });
      });
      this.running.set(listener.name, entry);
      this.o.logger.info({ listener: listener.name, address: listener.address, port: entry.port }, 'listener started');
    } catch (err) {
      this.o.logger.error({ listener: listener.name, port: entry.port, err: (err as Error).message }, 'cannot start listener');
    }
  }

  /**
   * Stops accepting; sessions in flight get up to 30 s to finish. smtp-server's own close()
   * answers 421 to the next command of every open session, so the listening socket is
   * closed first and close() only ends what is still open when the grace period is over.
   */
  private async stopListener(name: string): Promise<void> {
    const r = this.running.get(name);
    if (!r) return;
    this.running.delete(name);
    this.o.logger.info({ listener: name, sessions: r.server.connections.size }, 'listener stopping');
    const drained = new Promise<void>((resolve) => r.server.server.close(() => resolve()));
    const grace = new Promise<void>((resolve) => setTimeout(resolve, DRAIN_MS).unref());
    const closed = Promise.race([drained, grace]).then(() => new Promise<void>((resolve) => r.server.close(() => resolve())));
    this.draining.add(closed);
    void closed.then(() => this.draining.delete(closed));
  }

  /** §2.6 and §2.6b: inboundSmtpTls checks client certificates, outboundSmtpTls the next hop's. */
  private async revocation(chain: X509Certificate[], which: 'inboundSmtpTls' | 'outboundSmtpTls'): Promise<RevocationDecision> {
    const settings = this.revocationSettings;
    // No listener runs before the first configuration; should anything ask, it fails closed.
    if (!settings) return { refuse: 'revocation-unavailable', detail: 'no configuration applied yet', unverified: false };
    return checkRevocation({ crls: this.o.crls ?? null, ocsp: this.ocsp }, chain, which, settings);
  }

  status(): WorkerStatus {
    return {
      id: this.o.workerId,
      listeners: [...this.running.entries()].map(([name, r]) => ({ name, address: r.runtime.current.listener.address, port: r.port })),
      configVersion: Math.max(this.version, 0),
      crls: this.o.crls?.status() ?? [],
      sessions: this.sessions,
      lastSeen: new Date().toISOString(),
    };
  }

  private async heartbeat(): Promise<void> {
    if (this.stopping) return;
    const status = this.status();
    this.o.metrics.crlEntries.reset();
    for (const c of status.crls) this.o.metrics.crlEntries.set({ source: c.source }, c.revokedCount);
    await publishHeartbeat(this.redis, status).catch((err: Error) => this.o.logger.warn({ err: err.message }, 'heartbeat failed'));
  }

  /** SIGTERM: no new sessions, in-flight ones get up to 30 s, then everything closes. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    await this.applying;
    for (const name of [...this.running.keys()]) await this.stopListener(name);
    await Promise.all(this.draining);
    this.pool.close();
    await this.redis.hdel(keys.workers, this.o.workerId).catch(() => undefined);
    await this.directories.close();
    this.sub.disconnect();
    this.throttleRedis.disconnect();
    this.redis.disconnect();
  }
}

function bindKey(l: Listener, offset: number): string {
  return `${l.address}|${l.port + offset}|${l.implicitTls}`;
}

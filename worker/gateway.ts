// The SMTP side of a worker process: keeps one SMTP server per enabled listener in step
// with the configuration its follower applies, without a restart and without cutting
// sessions in flight. A listener that cannot be bound (address in use, permission) is an
// error it reports (`listenerErrors`) and tries again every few seconds.
import type { Redis } from 'ioredis';
import type { Reply } from '../shared/policy/rules.ts';
import type { Logger } from 'pino';
import type { ConfigFollower } from '../shared/config/follower.ts';
import type { EventRecorder } from '../shared/status/events.ts';
import type { Listener, VersionedConfig, WorkerStatus } from '../shared/config/schemas.ts';
import { DirectoryRegistry } from './directories.ts';
import { sessionLogLine } from './session-log.ts';
import { buildRuntime } from './smtp/runtime.ts';
import { createListenerServer, tlsOptions } from './smtp/server.ts';
import { WorkerMetrics } from './metrics.ts';
import type { AuthThrottle } from './auth-throttle.ts';
import { ClientConnections } from './smtp/client-connections.ts';
import { NextHopPool } from './relay/pool.ts';
import type { CrlStore } from '../shared/pki/crl/store.ts';
import { OcspChecker } from '../shared/pki/ocsp/checker.ts';
import { checkRevocation, type RevocationDecision, type RevocationSettings } from '../shared/pki/revocation.ts';
import type { SessionDeps } from './smtp/session.ts';
import type { ListenerRuntime } from './smtp/runtime.ts';
import type { GatewayServer } from './smtp/adapter.ts';
import type { X509Certificate } from 'node:crypto';

/** A listener that could not be bound is tried again this often. */
const BIND_RETRY_MS = 5_000;
/** SPEC §1: sessions in flight get up to 30 s when a listener goes away or the worker stops. */
const DRAIN_MS = 30_000;

export type ListenerError = WorkerStatus['listenerErrors'][number];

export interface GatewayOptions {
  /** The process's configuration follower, started. */
  follower: ConfigFollower;
  /** A `commands` connection of the process (the shared OCSP answers). */
  redis: Redis;
  /** SPEC §2.4 authFailureThrottle, on a connection of its own (worker/engine.ts). */
  throttle: AuthThrottle;
  events: EventRecorder;
  workerId: string;
  portOffset: number;
  logger: Logger;
  metrics: WorkerMetrics;
  /** The CRLs in force (shared/pki/crl/store.ts); absent: nothing is revocation-checked. */
  crls?: Pick<CrlStore, 'check' | 'status'>;
  /** After each configuration version is applied (the heartbeat then says so at once). */
  onApplied?: () => void;
  /** Whether new connections are admitted at all (SessionDeps.admission); absent: always. */
  admission?: () => Reply | null;
}

export type GatewayStatus = Pick<WorkerStatus, 'listeners' | 'listenerErrors' | 'configVersion' | 'sessions'>;

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
  /** The configuration applied last (listeners not bound yet are bound from it on retry). */
  private config: VersionedConfig | null = null;
  private readonly listenerErrors = new Map<string, ListenerError>();
  private sessions = 0;
  private applying: Promise<void> = Promise.resolve();
  private retryTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  /** Listeners closed but still finishing their sessions. */
  private readonly draining = new Set<Promise<void>>();

  constructor(private readonly o: GatewayOptions) {
    this.ocsp = new OcspChecker({ redis: o.redis, logger: o.logger, observer: o.metrics.ocsp });
    this.pool = new NextHopPool({}, (reused) => o.metrics.nextHopConnections.inc({ connection: reused ? 'reused' : 'new' }));
    this.directories = new DirectoryRegistry(
      (q) => o.metrics.ldap.observe({ kind: q.kind, ok: String(q.ok) }, q.durationMs / 1000),
      (profile, f) => o.logger.warn({ ldapProfile: profile, operation: f.operation, detail: f.detail }, 'directory unavailable'),
    );
    this.deps = {
      workerId: o.workerId,
      now: () => new Date(),
      admission: o.admission ?? (() => null),
      record: (e) => {
        o.logger.debug({ event: e }, 'session event');
        const line = sessionLogLine(e);
        if (line) o.logger.info(line.fields, line.msg);
        o.events.record(e);
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
      throttle: o.throttle,
      clients: new ClientConnections(),
    };
  }

  /** Applies the configuration in force and every later one; resolves once the first is applied. */
  async start(): Promise<void> {
    const config = this.o.follower.follow((c) => this.enqueue(() => this.apply(c)));
    if (config) await this.enqueue(() => this.apply(config));
    this.retryTimer = setInterval(() => {
      if (this.listenerErrors.size > 0) void this.enqueue(() => this.bindMissing());
    }, BIND_RETRY_MS);
  }

  /** Configuration work runs one step at a time (the follower also waits for each). */
  private enqueue(step: () => Promise<void>): Promise<void> {
    this.applying = this.applying.then(async () => {
      if (this.stopping) return;
      try {
        await step();
      } catch (err) {
        this.o.logger.error({ err: (err as Error).message }, 'cannot apply configuration; keeping the previous one');
      }
    });
    return this.applying;
  }

  private async apply(config: VersionedConfig): Promise<void> {
    if (config === this.config) return;
    this.config = config;
    this.directories.apply(config.ldapProfiles);
    this.revocationSettings = { crlSettings: config.crlSettings, ocspSettings: config.ocspSettings };
    const wanted = new Map(config.listeners.filter((l) => l.enabled).map((l) => [l.name, l]));
    for (const [name, r] of this.running) {
      const l = wanted.get(name);
      if (!l || bindKey(l, this.o.portOffset) !== r.bindKey) await this.stopListener(name);
    }
    for (const name of this.listenerErrors.keys()) if (!wanted.has(name)) this.listenerErrors.delete(name);
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
    this.o.logger.info({ version: config.version, listeners: [...this.running.keys()], listenerErrors: this.listenerErrors.size }, 'configuration applied');
    this.o.onApplied?.();
  }

  /** Tries again the enabled listeners that could not be bound. */
  private async bindMissing(): Promise<void> {
    const config = this.config;
    if (!config) return;
    for (const listener of config.listeners) {
      if (listener.enabled && !this.running.has(listener.name)) await this.startListener(listener, buildRuntime(listener, config));
    }
    this.o.onApplied?.();
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
      this.listenerErrors.delete(listener.name);
      this.o.logger.info({ listener: listener.name, address: listener.address, port: entry.port }, 'listener started');
    } catch (err) {
      const error = (err as Error).message;
      // Logged when it starts or changes, not on every retry.
      if (this.listenerErrors.get(listener.name)?.error !== error) {
        this.o.logger.error({ listener: listener.name, address: listener.address, port: entry.port, err: error }, 'cannot bind listener; retrying every 5 s');
      }
      this.listenerErrors.set(listener.name, { name: listener.name, address: listener.address, port: entry.port, error });
      server.close(() => undefined);
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

  /** What this process serves now, for the heartbeat (worker/front.ts merges the processes'). */
  status(): GatewayStatus {
    return {
      listeners: [...this.running.entries()].map(([name, r]) => ({ name, address: r.runtime.current.listener.address, port: r.port })),
      listenerErrors: [...this.listenerErrors.values()],
      configVersion: Math.max(this.version, 0),
      sessions: this.sessions,
    };
  }

  /** SIGTERM: no new sessions, in-flight ones get up to 30 s, then everything closes. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.retryTimer) clearInterval(this.retryTimer);
    await this.applying;
    for (const name of [...this.running.keys()]) await this.stopListener(name);
    await Promise.all(this.draining);
    this.pool.close();
    await this.directories.close();
  }
}

function bindKey(l: Listener, offset: number): string {
  return `${l.address}|${l.port + offset}|${l.implicitTls}`;
}

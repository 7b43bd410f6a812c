// The configuration as one process follows it (SPEC §1: every write reaches every running
// worker in under one second; workers follow changes without a restart). ONE follower per
// process serves everything in it that needs the configuration: in a worker the gateway
// and the CRL store, in the API its configuration cache, the CRL scheduler and the CRL
// store of mutual-TLS mode.
//
// - It subscribes to `keys.configChannel` (through the process's one subscriber
//   connection), loads again after the subscription came back from a reconnect (pub/sub
//   loses what was published meanwhile), and polls every `pollMs` as a safety net (null:
//   no polling, for a test that proves the channel alone is fast enough).
// - Loads are coalesced: at most one runs and at most one more is queued, however many
//   notices arrive; `refresh()` resolves after a load that started after the call.
// - A poll reads only the document's first bytes (store id and version, see
//   shared/config/store.ts); the whole document is fetched and parsed once per version,
//   and that one parsed object is what every user gets. Users must not mutate it.
// - `mode: 'runner'` (workers) applies what `succession` allows: never a lower version of
//   the store it runs from, never an empty store (version 0) over a configuration it runs;
//   a refused or unreadable document keeps the running one and is reported as `error`
//   (`configError` of GET /v1/workers). `mode: 'mirror'` (the API) shows what is stored,
//   whatever it is.
// - `confirmedAt` is when Redis last confirmed the configuration in force: a read of the
//   store that found it, a newer one (applied), or one this process refuses (reported as
//   `error`). All of them say that nothing newer is waiting to be applied, so
//   `certgate_config_age_seconds` and WORKER_MAX_STALE_SECONDS measure whether Redis can
//   be read at all: an empty or older store is `configError`, not a reason to stop serving.
import type { Redis } from 'ioredis';
import { keys } from '../redis/keys.ts';
import type { Subscriptions } from '../redis/subscriptions.ts';
import { Coalescer } from '../util/coalescer.ts';
import type { MinimalLogger } from '../util/logger.ts';
import type { VersionedConfig } from './schemas.ts';
import { StoredConfigInvalidError, loadStoredConfig, readHeader, type StoredConfig, type StoredHeader } from './store.ts';

export type FollowMode = 'runner' | 'mirror';

export type Succession = { verdict: 'apply' } | { verdict: 'same' } | { verdict: 'refuse'; reason: string };

/** Whether a process running `running` (null: nothing yet) takes `stored`. Pure. */
export function succession(running: StoredHeader | null, stored: StoredHeader, mode: FollowMode): Succession {
  if (running === null) return { verdict: 'apply' };
  if (running.store === stored.store && running.version === stored.version) return { verdict: 'same' };
  if (mode === 'mirror') return { verdict: 'apply' };
  if (stored.version === 0 && running.version > 0) {
    return {
      verdict: 'refuse',
      reason: `the configuration store is empty (version 0, as after Redis lost its data); keeping version ${running.version} until the API writes a configuration again`,
    };
  }
  if (running.store === stored.store && stored.version < running.version) {
    return {
      verdict: 'refuse',
      reason: `the store holds version ${stored.version}, older than the running version ${running.version} (writes lost in a Redis failover?); keeping version ${running.version} until a newer one is written`,
    };
  }
  return { verdict: 'apply' };
}

export type ConfigListener = (config: VersionedConfig) => void | Promise<void>;

export interface FollowerOptions {
  /** A `commands` connection (shared with the rest of the process). */
  redis: Redis;
  subscriptions: Subscriptions;
  mode: FollowMode;
  /** Safety-net poll interval; null: none. */
  pollMs: number | null;
  logger: MinimalLogger;
  now?: () => number;
}

export const DEFAULT_POLL_MS = 5_000;

export class ConfigFollower {
  private running: StoredConfig | null = null;
  private readonly listeners: ConfigListener[] = [];
  private readonly runs = new Coalescer();
  private timer: NodeJS.Timeout | null = null;
  private started: Promise<void> | null = null;
  private stopped = false;
  /** Bumped by every install: a load that began before one must not install its older answer. */
  private installs = 0;
  /** Subscription generation the last successful load started in (see `live`). */
  private syncedIn = -1;
  private lastProblem: string | null = null;
  /** Change notices received, and how many of them the last successful load began after. */
  private notices = 0;
  private noticesLoaded = 0;
  /** When Redis last confirmed the configuration in force (ms since the epoch); null: never. */
  confirmedAt: number | null = null;
  /** Why the stored configuration is not the one in force (refused or unreadable); null: it is. */
  error: string | null = null;

  constructor(private readonly o: FollowerOptions) {}

  /** The configuration in force; null until one was loaded. Do not mutate. */
  current(): VersionedConfig | null {
    return this.running?.config ?? null;
  }

  /**
   * True while what this process holds is current as far as the channel says: the
   * subscription is up, a load completed since it (re)started, and no notice of a newer
   * version is waiting for its load.
   */
  get live(): boolean {
    return this.o.subscriptions.live && this.syncedIn === this.o.subscriptions.generation && this.noticesLoaded === this.notices;
  }

  /** `listener` gets every configuration installed from now on (awaited, one at a time); answers the one in force now. */
  follow(listener: ConfigListener): VersionedConfig | null {
    this.listeners.push(listener);
    return this.current();
  }

  /** Subscribes, loads once, then follows. Failures of the first load are recorded (`error`, logs), not thrown. Idempotent. */
  start(): Promise<void> {
    this.started ??= (async () => {
      await this.o.subscriptions.on(keys.configChannel, (message) => {
        // A notice of a version this process holds already (its own write) changes nothing.
        const running = this.running?.config.version;
        if (running !== undefined && Number(message) <= running) return;
        this.notices++;
        this.inBackground('change notice');
      });
      this.o.subscriptions.onResync(() => this.inBackground('resubscribed after a reconnect'));
      if (this.o.pollMs !== null) this.timer = setInterval(() => this.inBackground('poll'), this.o.pollMs);
      await this.o.subscriptions.start();
      await this.refresh().catch((err: Error) => this.problem(err.message));
    })();
    return this.started;
  }

  /** Loads now (coalesced with loads in flight); resolves with the configuration in force after a load that began after the call. */
  async refresh(): Promise<VersionedConfig | null> {
    await this.runs.run('load', () => this.load());
    return this.current();
  }

  /** A configuration this process just wrote: installed at once, without waiting for its notice. */
  offer(stored: StoredConfig): void {
    const s = succession(this.header(), { store: stored.store, version: stored.config.version }, this.o.mode);
    if (s.verdict === 'apply' && (this.running === null || stored.store !== this.running.store || stored.config.version > this.running.config.version)) {
      void this.install(stored).catch((err: Error) => this.problem(err.message));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.runs.idle();
  }

  private header(): StoredHeader | null {
    return this.running && { store: this.running.store, version: this.running.config.version };
  }

  private inBackground(why: string): void {
    if (this.stopped) return;
    this.refresh().catch((err: Error) => this.problem(`cannot read the configuration (${why}): ${err.message}`));
  }

  private async load(): Promise<void> {
    if (this.stopped) return;
    const generation = this.o.subscriptions.live ? this.o.subscriptions.generation : -1;
    const notices = this.notices;
    const installs = this.installs;
    // The first bytes usually say that nothing changed: no transfer, no parse.
    const header = this.running ? await readHeader(this.o.redis) : null;
    if (header && this.decide(succession(this.header(), header, this.o.mode)) !== 'apply') {
      this.synced(generation, notices);
      return;
    }
    let stored: StoredConfig;
    try {
      stored = await loadStoredConfig(this.o.redis);
    } catch (err) {
      if (!(err instanceof StoredConfigInvalidError)) throw err;
      this.refused(`${(err as Error).message}; keeping ${this.running ? `version ${this.running.config.version}` : 'no configuration'}`);
      return;
    }
    this.synced(generation, notices);
    // An offer installed one meanwhile: this load may have read before that write, or after it.
    const current = this.running;
    if (installs !== this.installs && current && !(stored.store === current.store && stored.config.version > current.config.version)) return;
    if (this.decide(succession(this.header(), { store: stored.store, version: stored.config.version }, this.o.mode)) === 'apply') await this.install(stored);
  }

  private synced(generation: number, notices: number): void {
    this.syncedIn = generation;
    this.noticesLoaded = Math.max(this.noticesLoaded, notices);
  }

  /** Records what a verdict means for `error` and `confirmedAt`; answers the verdict. */
  private decide(s: Succession): Succession['verdict'] {
    if (s.verdict === 'refuse') this.refused(s.reason);
    else if (s.verdict === 'same') this.confirmed();
    return s.verdict;
  }

  private async install(stored: StoredConfig): Promise<void> {
    this.installs++;
    this.running = stored;
    this.confirmed();
    for (const listener of this.listeners) {
      try {
        await listener(stored.config);
      } catch (err) {
        this.o.logger.error({ err: (err as Error).message, version: stored.config.version }, 'applying the configuration failed');
      }
    }
  }

  private confirmed(): void {
    if (this.error !== null || this.lastProblem !== null) this.o.logger.info({ version: this.running?.config.version ?? 0 }, 'configuration confirmed by Redis again');
    this.error = null;
    this.reachable();
  }

  private refused(reason: string): void {
    if (reason !== this.error) this.o.logger.error({ reason }, 'stored configuration not applied');
    this.error = reason;
    this.reachable();
  }

  private reachable(): void {
    this.confirmedAt = (this.o.now ?? Date.now)();
    this.lastProblem = null;
  }

  /** Logs a read failure once per distinct message, not on every poll. */
  private problem(message: string): void {
    if (message !== this.lastProblem) this.o.logger.warn({ err: message }, 'configuration not confirmed');
    this.lastProblem = message;
  }
}

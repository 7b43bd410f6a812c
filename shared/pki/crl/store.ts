/**
 * The in-memory revocation index of a process (SMTP worker, or the API in
 * mutual-TLS mode): the CRLs in force of every enabled CRL source, loaded
 * from Redis and kept current.
 *
 * - `start()` loads every enabled source's CRL (parsed in a worker thread,
 *   never on the event loop), then follows `keys.crlChannel` (a source's CRL
 *   changed: reload it) on the process's subscriber connection, and the
 *   process's configuration follower (sources added, removed, enabled or
 *   disabled). A subscriber reconnect re-syncs every source, since pub/sub
 *   drops messages while disconnected.
 * - Redis losing its data does not lift revocations: a loaded CRL of a source
 *   that is still enabled stays in force when its data is gone from Redis,
 *   unless its writer announced the removal on `keys.crlChannel`.
 * - Only the index is kept (issuer, dates, the revoked-serial hash table);
 *   the DER goes away after parsing.
 * - `check()` is synchronous and O(chain length): one hash lookup per
 *   certificate and CRL.
 *
 * The CRLs in Redis were verified by the refresher before being stored
 * (refresh.ts); Redis is trusted, so they are not verified again here.
 * A disabled source's CRL is not enforced (it would go stale unattended).
 */
import type { X509Certificate } from 'node:crypto';
import type { Redis } from 'ioredis';
import { parseCrlOffThread, type RevokedSerials } from './parse.ts';
import type { ConfigFollower } from '../../config/follower.ts';
import type { Subscriptions } from '../../redis/subscriptions.ts';
import { readCrlStatus, readStoredCrl } from './stored.ts';
import { Coalescer } from '../../util/coalescer.ts';
import type { MinimalLogger } from '../../util/logger.ts';
import { keys } from '../../redis/keys.ts';
import type { CrlSettings, VersionedConfig } from '../../config/schemas.ts';
import { canonicalName, nameTlv } from '../names.ts';
import { certInfo } from '../certificate.ts';
import { serialHexFromDer } from '../der.ts';

/** What revocation data says of a validated chain (leaf first). */
export type RevocationVerdict =
  | { status: 'good' | 'unchecked' }
  | { status: 'revoked' | 'crl-expired'; detail: string }
  | { status: 'crl-expired-accepted'; detail: string };

export interface CrlStoreEntry {
  source: string;
  issuer: string;
  crlNumber: string | null;
  revokedCount: number;
}

interface IndexedCrl {
  source: string;
  issuerDn: string;
  /** canonicalName() of the issuer, the index key. */
  issuerCanon: string;
  authorityKeyId: string | null;
  /** ms since the epoch; null: the CRL gives no nextUpdate. */
  nextUpdate: number | null;
  crlNumber: string | null;
  revokedCount: number;
  revoked: RevokedSerials;
  /** `status.sha256` when loaded: identifies the version, so unchanged CRLs are not parsed again. */
  sha256: string | null;
}

/** Parsing threads at once during a full load (each holds a copy of its CRL). */
const LOAD_CONCURRENCY = 2;
/** Delay before a failed reload is tried again. */
const RETRY_MS = 5000;

export interface CrlStoreOptions {
  /** A `commands` connection of the process. */
  redis: Redis;
  subscriptions: Subscriptions;
  /** The process's configuration follower, started. */
  follower: ConfigFollower;
  logger: MinimalLogger;
  /** A CRL was loaded or dropped (the worker's heartbeat then says so at once). */
  onChange?: () => void;
}

export class CrlStore {
  private readonly redis: Redis;
  private readonly logger: MinimalLogger;
  private readonly bySource = new Map<string, IndexedCrl>();
  private readonly byIssuer = new Map<string, IndexedCrl[]>();
  private enabled = new Set<string>();
  /** The configuration the next sync follows (syncs coalesce: a queued one takes the newest). */
  private latest: VersionedConfig | null = null;
  private readonly runs = new Coalescer();
  private readonly retries = new Set<NodeJS.Timeout>();
  /** Sources announced on the CRL channel since their last load: a missing CRL then means it was removed. */
  private readonly announced = new Set<string>();
  private stopped = false;

  constructor(private readonly o: CrlStoreOptions) {
    this.redis = o.redis;
    this.logger = o.logger;
  }

  /** Loads every enabled source's CRL, then follows changes. Resolves once the initial load is done. */
  async start(): Promise<void> {
    // Subscribe before loading, so a change made during the load is not missed.
    await this.o.subscriptions.on(keys.crlChannel, (name) => {
      if (this.stopped) return;
      this.announced.add(name);
      this.background(`reload of CRL source "${name}"`, () => this.reload(name));
    });
    this.o.subscriptions.onResync(() => {
      if (!this.stopped) this.background('resync after reconnect', () => this.sync());
    });
    const config = this.o.follower.follow((c) => {
      if (!this.stopped) this.background('configuration change', () => this.sync(c));
    });
    await this.sync(config ?? undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.retries) clearTimeout(t);
    await this.runs.idle();
  }

  /** The CRLs in force, for the worker heartbeat (`crls` of GET /v1/workers). */
  status(): CrlStoreEntry[] {
    return [...this.bySource.values()].map((c) => ({ source: c.source, issuer: c.issuerDn, crlNumber: c.crlNumber, revokedCount: c.revokedCount }));
  }

  /**
   * The revocation verdict of a validated chain, leaf first, its last
   * certificate the trust anchor (not checked). Each other certificate is
   * looked up in the CRLs of its issuer — the next certificate — matched by
   * name and, when both carry one, authority key id = subject key id. A
   * revoked serial anywhere wins; then an issuer whose every CRL is past its
   * nextUpdate gives `crl-expired` (`onExpiredCrl: reject`) or
   * `crl-expired-accepted`; certificates whose issuer has no CRL are not
   * checked, and a chain with none checked is `unchecked`. Never throws: what
   * cannot be read is treated as revoked.
   */
  check(chain: X509Certificate[], now: Date, settings: Pick<CrlSettings, 'onExpiredCrl'>): RevocationVerdict {
    let checked = false;
    let expired: string | null = null;
    for (let i = 0; i < chain.length - 1; i++) {
      let cert, issuer;
      try {
        cert = certInfo(chain[i]);
        issuer = certInfo(chain[i + 1]);
      } catch (e) {
        return { status: 'revoked', detail: `certificate cannot be read for the revocation check: ${(e as Error).message}` };
      }
      const crls = this.crlsFor(cert.issuerCanon, issuer.subjectKeyId);
      if (crls.length === 0) continue;
      checked = true;
      let fresh = false;
      for (const crl of crls) {
        const verdict = serialVerdict(crl, cert.parsed.serialBytes);
        if (verdict) return verdict;
        if (crl.nextUpdate === null || now.getTime() <= crl.nextUpdate) fresh = true;
      }
      if (!fresh) expired ??= `the CRL of "${crls[0].issuerDn}" (source "${crls[0].source}") expired ${new Date(crls[0].nextUpdate ?? 0).toISOString()}`;
    }
    if (expired !== null) return { status: settings.onExpiredCrl === 'reject' ? 'crl-expired' : 'crl-expired-accepted', detail: expired };
    return { status: checked ? 'good' : 'unchecked' };
  }

  private crlsFor(issuerCanon: string, issuerKeyId: string | null): IndexedCrl[] {
    const crls = this.byIssuer.get(issuerCanon);
    if (!crls) return [];
    // A CA re-keyed under the same name has CRLs per key: use only those of the issuer's key.
    return crls.filter((c) => c.authorityKeyId === null || issuerKeyId === null || c.authorityKeyId === issuerKeyId);
  }

  // -------------------------------------------------------------------------
  // Following Redis
  // -------------------------------------------------------------------------

  /**
   * Runs a follow-up task; if it fails (Redis unreachable), retries it until it
   * succeeds, since the message that asked for it will not come again.
   */
  private background(what: string, task: () => Promise<void>): void {
    task().catch((err: Error) => {
      if (this.stopped) return;
      this.logger.error({ err: err.message }, `CRL store: ${what} failed; retrying in ${RETRY_MS / 1000} s`);
      const timer = setTimeout(() => {
        this.retries.delete(timer);
        if (!this.stopped) this.background(what, task);
      }, RETRY_MS);
      this.retries.add(timer);
    });
  }

  /** Follows the configuration's list of enabled sources (`config`, or the last one) and (re)loads each one whose CRL changed. */
  private sync(config?: VersionedConfig): Promise<void> {
    if (config) this.latest = config;
    return this.runs.run('config', async () => {
      if (!this.latest) return;
      this.enabled = new Set(this.latest.crlSources.filter((s) => s.enabled).map((s) => s.name));
      for (const name of [...this.bySource.keys()]) if (!this.enabled.has(name)) this.drop(name, 'source deleted or disabled');
      await forEachLimited([...this.enabled], LOAD_CONCURRENCY, (name) => this.reload(name));
    });
  }

  /** Brings one source up to date; concurrent calls for a source coalesce into one more run. */
  private reload(name: string): Promise<void> {
    return this.runs.run(`source:${name}`, () => this.loadSource(name));
  }

  private async loadSource(name: string): Promise<void> {
    if (this.stopped) return;
    if (!this.enabled.has(name)) return this.drop(name, 'source deleted or disabled');
    const loaded = this.bySource.get(name);
    const announced = this.announced.delete(name);
    let stored;
    try {
      if (loaded && loaded.sha256 !== null && (await readCrlStatus(this.redis, name)).sha256 === loaded.sha256) return;
      stored = await readStoredCrl(this.redis, name);
    } catch (err) {
      if (announced) this.announced.add(name); // the retry must still know
      throw err;
    }
    const { der, status } = stored;
    if (der === null) {
      if (announced) return this.drop(name, 'CRL removed');
      // Gone without a word although the source is enabled: Redis lost its data. Keep what is in force.
      if (loaded) this.logger.warn({ source: name }, 'CRL store: the CRL in force is gone from Redis; keeping the one loaded');
      return;
    }
    let crl;
    try {
      // The DER is not needed after the parse: its memory moves to the parser thread, no copy.
      crl = await parseCrlOffThread(der, 'asn1', { handOver: true });
    } catch (e) {
      // The previous CRL (if any) stays: an unreadable newer one must not lift revocations.
      this.logger.error({ source: name, err: (e as Error).message }, 'CRL store: the stored CRL cannot be parsed; keeping the previous one');
      return;
    }
    if (this.stopped || !this.enabled.has(name)) return;
    this.install({
      source: name,
      issuerDn: crl.issuerDn,
      issuerCanon: canonicalName(crl.issuerNameDer, nameTlv(crl.issuerNameDer)),
      authorityKeyId: crl.authorityKeyId,
      nextUpdate: crl.nextUpdate ? crl.nextUpdate.getTime() : null,
      crlNumber: crl.crlNumber === null ? null : crl.crlNumber.toString(),
      revokedCount: crl.revokedCount,
      revoked: crl.revoked,
      sha256: status.sha256,
    });
  }

  private install(entry: IndexedCrl): void {
    this.unindex(entry.source);
    this.bySource.set(entry.source, entry);
    const list = this.byIssuer.get(entry.issuerCanon) ?? [];
    this.byIssuer.set(entry.issuerCanon, [...list, entry]);
    this.logger.info({ source: entry.source, issuer: entry.issuerDn, crlNumber: entry.crlNumber, revokedCount: entry.revokedCount }, 'CRL loaded');
    this.o.onChange?.();
  }

  private drop(name: string, why: string): void {
    if (!this.unindex(name)) return;
    this.logger.info({ source: name, why }, 'CRL unloaded');
    this.o.onChange?.();
  }

  private unindex(name: string): boolean {
    const old = this.bySource.get(name);
    if (!old) return false;
    this.bySource.delete(name);
    const rest = (this.byIssuer.get(old.issuerCanon) ?? []).filter((c) => c !== old);
    if (rest.length) this.byIssuer.set(old.issuerCanon, rest);
    else this.byIssuer.delete(old.issuerCanon);
    return true;
  }
}

/** A revoked (or unreadable) serial's verdict; null when this CRL does not list it. */
function serialVerdict(crl: IndexedCrl, serial: Buffer): RevocationVerdict | null {
  let revoked: boolean;
  try {
    revoked = crl.revoked.hasBytes(serial);
  } catch (e) {
    return { status: 'revoked', detail: `serial cannot be checked against the CRL of "${crl.issuerDn}": ${(e as Error).message}` };
  }
  if (!revoked) return null;
  return { status: 'revoked', detail: `serial ${serialHexFromDer(serial)} is revoked by "${crl.issuerDn}" (CRL source "${crl.source}")` };
}

async function forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  const errors: Error[] = [];
  const lanes = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) {
      await fn(item).catch((e: Error) => errors.push(e));
    }
  });
  await Promise.all(lanes);
  if (errors.length) throw errors[0];
}

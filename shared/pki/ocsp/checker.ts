/**
 * The OCSP check of one certificate (SPEC §2.6b), for every process that
 * checks certificates (SMTP workers, the API in mutual-TLS mode): cached,
 * shared and bounded.
 *
 * - One responder request per certificate per validity window for all
 *   processes together: a verified answer goes to Redis
 *   (`keys.ocspAnswer`, expiring with it, see `cacheUntil`) and to a small
 *   in-process cache; a process about to ask the responder takes
 *   `keys.ocspLock` first, and the others wait for the answer it stores
 *   instead of asking too. Concurrent checks of one certificate in a process
 *   share one lookup (SingleFlight).
 * - Bounded: a check ends within `timeoutMs` (cache, lock wait and responder
 *   together), whatever Redis or the responder do. Redis gets a small share
 *   of it and is skipped while disconnected: a Redis outage costs the cache,
 *   never the check.
 * - Fail closed: anything but a verified answer (no URL, a timeout, an HTTP
 *   error, a response that does not pass `judgeOcspResponse`) is
 *   `unavailable` with its reason, which `onUnavailable` then decides.
 *   Failures are not cached: the next check asks again.
 * - Redis is trusted as for CRLs: a cached answer was verified by the
 *   process that stored it and is not verified again. It serves while the
 *   current `maxCacheSeconds` allows it too (a lower setting applies at once).
 */
import type { X509Certificate } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { OcspSettings } from '../../config/schemas.ts';
import { keys } from '../../redis/keys.ts';
import { SingleFlight } from '../../util/coalescer.ts';
import type { MinimalLogger } from '../../util/logger.ts';
import { certInfo } from '../certificate.ts';
import { parsePemCertificates } from '../pem.ts';
import { OcspFetchError, postOcspRequest } from './fetch.ts';
import { buildOcspRequest, keyHash, ocspUrlOf } from './request.ts';
import { cacheUntil, judgeOcspResponse, type OcspAnswer, type OcspCertStatus } from './verdict.ts';

export type OcspCheckSettings = Pick<OcspSettings, 'responderUrl' | 'responderCaPem' | 'timeoutMs' | 'maxCacheSeconds' | 'sendNonce'>;

/** A verified answer as cached (Redis and memory): JSON-safe, with where it came from and until when it serves. */
export interface CachedOcspAnswer {
  status: OcspCertStatus;
  thisUpdate: string;
  nextUpdate: string | null;
  revokedAt: string | null;
  reason: string | null;
  signer: string;
  /** The responder that answered. */
  url: string;
  /** ms since the epoch. */
  until: number;
}

export type OcspResult =
  | { outcome: OcspCertStatus; answer: CachedOcspAnswer; from: 'memory' | 'redis' | 'responder' }
  | { outcome: 'unavailable'; problem: string };

export type OcspOutcome = OcspResult['outcome'];
/** How a responder request ended: `answered` (a response that passed verification), `invalid`, or how the exchange failed. */
export type OcspRequestResult = 'answered' | 'invalid' | OcspFetchError['kind'];

export interface OcspObserver {
  request(result: OcspRequestResult): void;
  cacheHit(cache: 'memory' | 'redis'): void;
  outcome(outcome: OcspOutcome): void;
}

export interface OcspCheckerOptions {
  /** The shared cache; null: in-process caching only (tests, a process without Redis). */
  redis: Redis | null;
  logger: MinimalLogger;
  observer?: OcspObserver;
}

/** Answers kept in memory per process; beyond it the oldest go (Redis still has them). */
const MEMORY_ENTRIES = 10_000;
/** Longest a Redis operation may take of a check's budget. */
const REDIS_BUDGET_MS = 250;
/** How often a process waiting for another's answer looks for it. */
const WAIT_POLL_MS = 20;
/** The lock outlives the holder's deadline by this much (a holder that died frees it soon after). */
const LOCK_MARGIN_MS = 1000;

/** The certificate's name in the caches: its issuer's key hash and its serial. */
interface CertRef {
  issuerKeyHash: string;
  serial: string;
  key: string;
}

const TIMEOUT = Symbol('timeout');
/** ioredis states in which a command would only wait (a connection being set up is worth its budget). */
const DISCONNECTED = new Set(['reconnecting', 'close', 'end']);

/** `promise`, or TIMEOUT once `deadline` (ms since the epoch) has passed. */
async function byDeadline<T>(promise: Promise<T>, deadline: number): Promise<T | typeof TIMEOUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMEOUT>((resolve) => (timer = setTimeout(() => resolve(TIMEOUT), Math.max(0, deadline - Date.now()))));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function unavailable(problem: string): OcspResult {
  return { outcome: 'unavailable', problem };
}

function timedOut(settings: Pick<OcspCheckSettings, 'timeoutMs'>): OcspResult {
  return unavailable(`no OCSP answer within ${settings.timeoutMs} ms`);
}

export class OcspChecker {
  private readonly memory = new Map<string, CachedOcspAnswer>();
  private readonly flights = new SingleFlight<OcspResult>();
  private trusted: { pem: string | null; certs: X509Certificate[] } = { pem: null, certs: [] };

  constructor(private readonly o: OcspCheckerOptions) {}

  /** The OCSP status of `leaf`, issued by `issuer` (the next certificate of its validated chain). Never throws. */
  async check(leaf: X509Certificate, issuer: X509Certificate, settings: OcspCheckSettings): Promise<OcspResult> {
    const result = await this.lookup(leaf, issuer, settings);
    this.o.observer?.outcome(result.outcome);
    return result;
  }

  private async lookup(leaf: X509Certificate, issuer: X509Certificate, settings: OcspCheckSettings): Promise<OcspResult> {
    const deadline = Date.now() + settings.timeoutMs;
    let ref: CertRef;
    try {
      ref = certRef(leaf, issuer);
    } catch (e) {
      return unavailable(`certificate cannot be read for OCSP: ${(e as Error).message}`);
    }
    const remembered = this.remembered(ref.key, settings.maxCacheSeconds);
    if (remembered) {
      this.o.observer?.cacheHit('memory');
      return { outcome: remembered.status, answer: remembered, from: 'memory' };
    }
    let url: string | null;
    try {
      url = settings.responderUrl ?? ocspUrlOf(leaf);
    } catch (e) {
      return unavailable(`the certificate's Authority Information Access cannot be read: ${(e as Error).message}`);
    }
    if (url === null) return unavailable('no OCSP responder: responderUrl is null and the certificate names no http: OCSP URL');
    const responder = url;
    const shared = this.flights.run(`${ref.key} ${responder}`, () => this.ask(leaf, issuer, ref, responder, settings, deadline));
    const result = await byDeadline(shared, deadline);
    return result === TIMEOUT ? timedOut(settings) : result;
  }

  /** Redis, another process's request, or the responder; by `deadline`. */
  private async ask(leaf: X509Certificate, issuer: X509Certificate, ref: CertRef, url: string, settings: OcspCheckSettings, deadline: number): Promise<OcspResult> {
    const stored = await this.fromRedis(ref, settings.maxCacheSeconds, deadline);
    if (stored) {
      this.o.observer?.cacheHit('redis');
      return { outcome: stored.status, answer: stored, from: 'redis' };
    }
    let lock = await this.takeLock(ref, settings.timeoutMs, deadline);
    if (lock === 'held') {
      const other = await this.waitForOther(ref, settings.maxCacheSeconds, deadline);
      if (other) {
        this.o.observer?.cacheHit('redis');
        return { outcome: other.status, answer: other, from: 'redis' };
      }
      // The other process gave up without an answer: ask ourselves if time is left.
      lock = await this.takeLock(ref, settings.timeoutMs, deadline);
      if (lock === 'held') return unavailable(`another process is asking ${url}; no answer within ${settings.timeoutMs} ms`);
    }
    try {
      return await this.askResponder(leaf, issuer, ref, url, settings, deadline);
    } finally {
      if (lock === 'taken') void this.redisCall(deadline + LOCK_MARGIN_MS, (r) => r.del(keys.ocspLock(ref.issuerKeyHash, ref.serial)));
    }
  }

  private async askResponder(leaf: X509Certificate, issuer: X509Certificate, ref: CertRef, url: string, settings: OcspCheckSettings, deadline: number): Promise<OcspResult> {
    const request = buildOcspRequest(leaf, issuer, settings.sendNonce);
    let der: Buffer;
    try {
      der = await postOcspRequest(url, request.der, deadline);
    } catch (e) {
      const kind = e instanceof OcspFetchError ? e.kind : 'network';
      this.o.observer?.request(kind);
      // The fetch's timer and lookup's deadline end together; either way the event says the same.
      return kind === 'timeout' ? timedOut(settings) : unavailable((e as Error).message);
    }
    let responderCas: X509Certificate[];
    try {
      responderCas = this.responderCas(settings.responderCaPem);
    } catch (e) {
      return unavailable(`responderCaPem cannot be read: ${(e as Error).message}`);
    }
    const now = new Date();
    const judged = judgeOcspResponse(der, { leaf, issuer, responderCas, nonce: request.nonce, now });
    this.o.observer?.request(judged.ok ? 'answered' : 'invalid');
    if (!judged.ok) return unavailable(`invalid answer from ${url}: ${judged.problem}`);
    const expiry = cacheUntil(judged.answer, settings.maxCacheSeconds, now);
    const answer = cachedForm(judged.answer, url, expiry ?? now.getTime());
    if (expiry !== null) {
      this.remember(ref.key, answer);
      // Stored before the lock goes, so that a process waiting for it finds it.
      await this.redisCall(deadline, (r) => r.set(ref.key, JSON.stringify(answer), 'PX', Math.max(1, expiry - Date.now())));
    }
    return { outcome: answer.status, answer, from: 'responder' };
  }

  // -------------------------------------------------------------- caches
  private remembered(key: string, maxCacheSeconds: number): CachedOcspAnswer | null {
    const entry = this.memory.get(key);
    if (!entry) return null;
    if (servable(entry, maxCacheSeconds)) return entry;
    this.memory.delete(key);
    return null;
  }

  private remember(key: string, answer: CachedOcspAnswer): void {
    this.memory.delete(key);
    if (this.memory.size >= MEMORY_ENTRIES) this.memory.delete(this.memory.keys().next().value as string);
    this.memory.set(key, answer);
  }

  private async fromRedis(ref: CertRef, maxCacheSeconds: number, deadline: number): Promise<CachedOcspAnswer | null> {
    const raw = await this.redisCall(deadline, (r) => r.get(ref.key));
    if (typeof raw !== 'string') return null;
    let answer: CachedOcspAnswer;
    try {
      answer = JSON.parse(raw) as CachedOcspAnswer;
    } catch {
      return null;
    }
    if (!servable(answer, maxCacheSeconds)) return null;
    this.remember(ref.key, answer);
    return answer;
  }

  /** `taken`: ours to ask; `held`: another process asks; `none`: no Redis to coordinate with (ask). */
  private async takeLock(ref: CertRef, timeoutMs: number, deadline: number): Promise<'taken' | 'held' | 'none'> {
    const set = await this.redisCall(deadline, (r) => r.set(keys.ocspLock(ref.issuerKeyHash, ref.serial), '1', 'PX', timeoutMs + LOCK_MARGIN_MS, 'NX'));
    if (set === undefined) return 'none';
    return set === 'OK' ? 'taken' : 'held';
  }

  /** The answer another process stores while it holds the lock; null once it let go without one, or at the deadline. */
  private async waitForOther(ref: CertRef, maxCacheSeconds: number, deadline: number): Promise<CachedOcspAnswer | null> {
    const lockKey = keys.ocspLock(ref.issuerKeyHash, ref.serial);
    while (Date.now() + WAIT_POLL_MS < deadline) {
      await new Promise((r) => setTimeout(r, WAIT_POLL_MS));
      const got = await this.redisCall(deadline, (r) => r.multi().get(ref.key).exists(lockKey).exec());
      if (!got) return null;
      const [[, raw], [, held]] = got as [[unknown, string | null], [unknown, number]];
      if (typeof raw === 'string') return this.fromRedis(ref, maxCacheSeconds, deadline);
      if (held === 0) return null;
    }
    return null;
  }

  /** A Redis command within its budget; undefined while disconnected, on error or when too slow. */
  private async redisCall<T>(deadline: number, command: (r: Redis) => Promise<T>): Promise<T | undefined> {
    const redis = this.o.redis;
    if (!redis || DISCONNECTED.has(redis.status)) return undefined;
    try {
      const result = await byDeadline(command(redis), Math.min(deadline, Date.now() + REDIS_BUDGET_MS));
      return result === TIMEOUT ? undefined : result;
    } catch (e) {
      this.o.logger.warn({ err: (e as Error).message }, 'OCSP cache: Redis command failed');
      return undefined;
    }
  }

  private responderCas(pem: string | null): X509Certificate[] {
    if (this.trusted.pem !== pem) this.trusted = { pem, certs: pem === null ? [] : parsePemCertificates(pem) };
    return this.trusted.certs;
  }
}

/**
 * Whether a cached answer may still serve: before the expiry it was stored with, and within
 * what the current `maxCacheSeconds` allows (lowering it applies at once to what is cached).
 */
function servable(a: CachedOcspAnswer, maxCacheSeconds: number): boolean {
  const now = Date.now();
  if (!(a.until > now)) return false;
  const facts = { status: a.status, thisUpdate: new Date(a.thisUpdate), nextUpdate: a.nextUpdate === null ? null : new Date(a.nextUpdate), reason: a.reason };
  return cacheUntil(facts, maxCacheSeconds, new Date(now)) !== null;
}

function certRef(leaf: X509Certificate, issuer: X509Certificate): CertRef {
  const issuerKeyHash = keyHash(issuer).toString('hex').toUpperCase();
  const serial = certInfo(leaf).parsed.serialBytes.toString('hex').toUpperCase();
  return { issuerKeyHash, serial, key: keys.ocspAnswer(issuerKeyHash, serial) };
}

function cachedForm(a: OcspAnswer, url: string, until: number): CachedOcspAnswer {
  return {
    status: a.status,
    thisUpdate: a.thisUpdate.toISOString(),
    nextUpdate: a.nextUpdate?.toISOString() ?? null,
    revokedAt: a.revokedAt?.toISOString() ?? null,
    reason: a.reason,
    signer: a.signer,
    url,
    until,
  };
}

/** The words of an OCSP result for events and logs ("OCSP: revoked at ... (keyCompromise), signed by the issuer"). */
export function describeOcsp(result: OcspResult): string {
  if (result.outcome === 'unavailable') return `OCSP unavailable: ${result.problem}`;
  const a = result.answer;
  const by = `${a.signer} via ${a.url}${result.from === 'responder' ? '' : `, cached (${result.from})`}`;
  if (a.status === 'revoked') return `OCSP: revoked at ${a.revokedAt}${a.reason ? ` (${a.reason})` : ''}, answered by ${by}`;
  if (a.status === 'unknown') return `OCSP: the responder does not know the certificate, answered by ${by}`;
  return `OCSP: good, answered by ${by}`;
}

/**
 * One refresh of a CRL source (SPEC §2.6), used by the scheduler's jobs and by
 * `POST /v1/crl-sources/{name}/refresh`:
 *
 *   for the primary URL, then the secondary after a failure of any kind:
 *     download → parse and signature by a trusted CA (the parser thread),
 *       meanwhile a new DER file is staged in Redis
 *     → not older than the CRL in force → MULTI { SET DER, SET status, PUBLISH }
 *
 * A CRL that fails any step is never stored: the previous one stays in force
 * and only `lastAttemptAt`/`lastError` change. Workers learn of a new CRL from
 * the PUBLISH (the message is the source name) and load the DER from Redis.
 *
 * Concurrency: a per-source Redis lock (`SET NX PX`, renewed while the refresh
 * runs, released by compare-and-delete) means two API/scheduler processes
 * never download the same source at once. A caller that finds the lock taken
 * joins the refresh in progress: it waits (up to `lockWaitMs`) for the lock
 * to go and answers the status the other process wrote; if the lock outlives
 * the wait, it answers the current status unchanged. It never writes a status
 * of its own, so the holder's result is what everyone sees.
 */
import { X509Certificate, randomUUID, webcrypto } from 'node:crypto';
import type { Redis } from 'ioredis';
import { crlSummary, isNewerOrSame, parseAndVerifyCrlOffThread, type ParsedCrl } from './parse.ts';
import { CrlDownloadError, downloadCrl } from './download.ts';
import { joinChunks } from '../../util/buffers.ts';
import type { MinimalLogger } from '../../util/logger.ts';
import { REDIS_SLICE, readCrlStatus } from './stored.ts';
import { keys } from '../../redis/keys.ts';
import type { Config, CrlSource, CrlStatus } from '../../config/schemas.ts';
import { canonicalName, nameTlv } from '../names.ts';
import { certInfo } from '../certificate.ts';
import { parsePemCertificates } from '../pem.ts';
import { readTlv } from '../der.ts';

export interface RefreshContext {
  /** CA certificates a CRL may be signed by (see `trustedCrlSigners`). */
  trustedCas: X509Certificate[];
  /** CRL_FILE_ROOT; null refuses `file:` URLs. */
  fileRoot: string | null;
  /** The time recorded as lastAttemptAt/lastSuccessAt. */
  now: Date;
  logger?: MinimalLogger;
  /** Per download; default 30 s. */
  timeoutMs?: number;
  /** Per download; default 64 MiB. */
  maxBytes?: number;
  /** How long to wait for a refresh already running elsewhere; default 90 s (0: answer at once). */
  lockWaitMs?: number;
}

const LOCK_TTL_MS = 30_000;
const LOCK_RENEW_MS = 10_000;
const LOCK_POLL_MS = 100;
const DEFAULT_LOCK_WAIT_MS = 90_000;
/** Clock skew tolerated on a CRL's thisUpdate. */
const MAX_FUTURE_SKEW_MS = 5 * 60_000;
const STAGING_TTL_MS = 10 * 60_000;
/** PEM is decoded in slices of this many characters, yielding in between (a 1M-entry CRL is 37 MB of base64). */
const PEM_SLICE = 1024 * 1024;

/** Removes a deleted source's CRL and status, and tells the workers to drop it. */
export async function deleteCrlData(redis: Redis, name: string): Promise<void> {
  await redis.multi().del(keys.crlData(name), keys.crlStatus(name)).publish(keys.crlChannel, name).exec();
}

// ---------------------------------------------------------------------------
// Trusted signers
// ---------------------------------------------------------------------------

/**
 * CA certificates trusted to sign CRLs (SPEC §2.6): every listener's
 * `tls.clientCaPem` and `crlSettings.trustedCaPem`, without duplicates. The
 * configuration was validated when saved; a PEM that still does not parse
 * contributes nothing (fewer trusted signers, never a wrong one).
 */
export function trustedCrlSigners(config: Pick<Config, 'listeners' | 'crlSettings'>): X509Certificate[] {
  const pems = [...config.listeners.map((l) => l.tls?.clientCaPem), config.crlSettings.trustedCaPem];
  const byFingerprint = new Map<string, X509Certificate>();
  for (const pem of pems) {
    if (!pem) continue;
    let certs: X509Certificate[];
    try {
      certs = parsePemCertificates(pem);
    } catch {
      continue;
    }
    for (const c of certs) byFingerprint.set(c.fingerprint256, c);
  }
  return [...byFingerprint.values()];
}

// ---------------------------------------------------------------------------
// The lock
// ---------------------------------------------------------------------------

const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;

/**
 * Runs `fn` holding the source's lock, or returns `{ ran: false }` at once if
 * another process holds it. The lock has a short TTL renewed while `fn` runs,
 * so a process that dies mid-download blocks the source for 30 s at most.
 */
async function withSourceLock<T>(redis: Redis, name: string, logger: MinimalLogger | undefined, fn: () => Promise<T>): Promise<{ ran: true; value: T } | { ran: false }> {
  const key = keys.crlLock(name);
  const token = randomUUID();
  if ((await redis.set(key, token, 'PX', LOCK_TTL_MS, 'NX')) !== 'OK') return { ran: false };
  const renew = setInterval(() => {
    redis.eval(RENEW, 1, key, token, String(LOCK_TTL_MS)).then(
      (kept) => {
        if (kept !== 1) logger?.warn({ source: name }, 'CRL refresh lock was lost (expired); another process may refresh this source too');
      },
      (err: Error) => logger?.warn({ source: name, err: err.message }, 'cannot renew the CRL refresh lock'),
    );
  }, LOCK_RENEW_MS);
  try {
    return { ran: true, value: await fn() };
  } finally {
    clearInterval(renew);
    await redis.eval(RELEASE, 1, key, token).catch(() => undefined); // it expires anyway
  }
}

async function waitForUnlock(redis: Redis, name: string, waitMs: number): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline && (await redis.exists(keys.crlLock(name))) === 1) {
    await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
  }
}

// ---------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------

/** Why one URL's CRL was not taken (the message goes into lastError). */
class Refused extends Error {}

interface Accepted {
  url: string;
  crl: ParsedCrl;
  /** The CRL as DER (what is stored, whatever the file type). */
  der: Buffer;
  /** The staging key already holding `der` (staged while it was parsed), or null. */
  staged: string | null;
}

/**
 * Refreshes one source and answers its status afterwards (see the top of this
 * file). Never throws for a bad download or CRL — that is `lastError` — only
 * when Redis fails.
 */
export async function refreshSource(redis: Redis, source: CrlSource, ctx: RefreshContext): Promise<CrlStatus> {
  const result = await withSourceLock(redis, source.name, ctx.logger, () => refreshLocked(redis, source, ctx));
  if (result.ran) return result.value;
  ctx.logger?.debug({ source: source.name }, 'CRL refresh already in progress elsewhere; waiting for its result');
  await waitForUnlock(redis, source.name, ctx.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS);
  return readCrlStatus(redis, source.name);
}

async function refreshLocked(redis: Redis, source: CrlSource, ctx: RefreshContext): Promise<CrlStatus> {
  const current = await readCrlStatus(redis, source.name);
  const urls = [
    { which: 'primary', url: source.primaryUrl },
    ...(source.secondaryUrl ? [{ which: 'secondary', url: source.secondaryUrl }] : []),
  ];
  const errors: string[] = [];
  for (const { which, url } of urls) {
    try {
      const accepted = await tryUrl(redis, url, source, current, ctx);
      return await store(redis, source.name, accepted, current, ctx);
    } catch (e) {
      if (!(e instanceof Refused || e instanceof CrlDownloadError)) throw e;
      const reason = e instanceof CrlDownloadError ? e.reason : e.message;
      errors.push(`${which} URL ${url}: ${reason}`);
      ctx.logger?.warn({ source: source.name, url, reason }, 'CRL not taken');
    }
  }
  const status: CrlStatus = { ...current, lastAttemptAt: ctx.now.toISOString(), lastError: errors.join('; ') };
  await redis.set(keys.crlStatus(source.name), JSON.stringify(status));
  return status;
}

/** Download, parse and check one URL's CRL; throws Refused/CrlDownloadError with the reason. */
async function tryUrl(redis: Redis, url: string, source: CrlSource, current: CrlStatus, ctx: RefreshContext): Promise<Accepted> {
  const data = await downloadCrl(url, { fileRoot: ctx.fileRoot, timeoutMs: ctx.timeoutMs, maxBytes: ctx.maxBytes });
  // A new DER file goes to the staging key while the parser thread checks it (issue 12: the
  // ~1 s of APPENDs of a 27 MB CRL no longer follow the parse); it is renamed into force only
  // once it passed every check, and deleted when it did not.
  const staging = source.fileType === 'asn1' ? stageIfNew(redis, source.name, data, current.sha256) : Promise.resolve(null);
  staging.catch(() => undefined); // awaited below; a rejection meanwhile is not unhandled
  try {
    const checked = await checkCrl(data, source, current, ctx);
    return { url, ...checked, staged: await staging };
  } catch (e) {
    // Awaited before the next URL stages under the same key.
    const key = await staging.catch(() => null);
    if (key) await redis.del(key).catch(() => undefined);
    throw e;
  }
}

async function checkCrl(data: Buffer, source: CrlSource, current: CrlStatus, ctx: RefreshContext): Promise<{ crl: ParsedCrl; der: Buffer }> {
  let checked: { crl: ParsedCrl; signer: X509Certificate | null };
  try {
    // Parse and signature check both in the parser thread: nothing of either on this event loop.
    checked = await parseAndVerifyCrlOffThread(data, source.fileType, ctx.trustedCas);
  } catch (e) {
    throw new Refused((e as Error).message);
  }
  const { crl } = checked;
  if (!checked.signer) throw new Refused(signatureProblem(crl, ctx.trustedCas));
  if (crl.thisUpdate.getTime() > ctx.now.getTime() + MAX_FUTURE_SKEW_MS) {
    // Taken, it would make every later CRL without a CRL number look older.
    throw new Refused(`thisUpdate ${crl.thisUpdate.toISOString()} is in the future (check the clocks)`);
  }
  checkAgainstCurrent(crl, current, source);
  const der = source.fileType === 'pem' ? await pemCrlToDer(data, crl) : data;
  return { crl, der };
}

/** Tells "no such trusted CA" from "a trusted CA of that name did not sign it". */
function signatureProblem(crl: ParsedCrl, trusted: X509Certificate[]): string {
  const canon = canonicalName(crl.issuerNameDer, nameTlv(crl.issuerNameDer));
  const named = trusted.filter((ca) => {
    try {
      return certInfo(ca).subjectCanon === canon;
    } catch {
      return false;
    }
  });
  const keyId = crl.authorityKeyId;
  const withKey = named.filter((ca) => keyId === null || certInfo(ca).subjectKeyId === null || certInfo(ca).subjectKeyId === keyId);
  if (named.length === 0) return `unknown issuer: no trusted CA certificate is named "${crl.issuerDn}"`;
  if (withKey.length === 0) return `unknown issuer: no trusted CA certificate named "${crl.issuerDn}" has key id ${keyId}`;
  return `bad signature: the CRL does not verify with the trusted CA certificate "${crl.issuerDn}" (or that certificate may not sign CRLs)`;
}

/**
 * SPEC §2.6 "not older than the one in use". Comparing CRL numbers of two
 * different CAs means nothing, and taking another trusted CA's CRL would
 * silently stop the checks of this one's certificates: so while the CRL in
 * force came from a URL the source still names, a CRL of another issuer is
 * refused. Re-pointing the source to new URLs lets its issuer change.
 */
function checkAgainstCurrent(crl: ParsedCrl, current: CrlStatus, source: CrlSource): void {
  if (current.lastSuccessAt === null || current.thisUpdate === null) return;
  if (current.issuer !== crl.issuerDn) {
    const stillConfigured = current.url === source.primaryUrl || current.url === source.secondaryUrl;
    if (stillConfigured) throw new Refused(`issued by "${crl.issuerDn}", but the CRL in force is issued by "${current.issuer}" (change the source's URLs to switch CAs)`);
    return;
  }
  const inForce = { crlNumber: current.crlNumber === null ? null : BigInt(current.crlNumber), thisUpdate: new Date(current.thisUpdate) };
  if (!isNewerOrSame(crl, inForce)) {
    const what = crl.crlNumber !== null && inForce.crlNumber !== null ? `CRL number ${crl.crlNumber} < ${inForce.crlNumber}` : `thisUpdate ${crl.thisUpdate.toISOString()} < ${current.thisUpdate}`;
    throw new Refused(`older than the CRL in force (${what})`);
  }
}

/** Writes the new CRL and its status atomically and tells the workers; an unchanged file only updates the status. */
async function store(redis: Redis, name: string, a: Accepted, current: CrlStatus, ctx: RefreshContext): Promise<CrlStatus> {
  const now = ctx.now.toISOString();
  const status: CrlStatus = { lastAttemptAt: now, lastError: null, lastSuccessAt: now, url: a.url, ...crlSummary(a.crl) };
  const unchanged = current.sha256 === a.crl.sha256 && (await redis.exists(keys.crlData(name))) === 1;
  if (unchanged) {
    // Same bytes as the CRL in force: no reason to make every worker re-parse it.
    await redis.set(keys.crlStatus(name), JSON.stringify(status));
    if (a.staged) await redis.del(a.staged);
  } else {
    const staging = a.staged ?? (await stage(redis, name, a.der));
    const results = await redis
      .multi()
      .rename(staging, keys.crlData(name))
      .persist(keys.crlData(name)) // RENAME carries the staging key's TTL over
      .set(keys.crlStatus(name), JSON.stringify(status))
      .publish(keys.crlChannel, name)
      .exec();
    const failed = results?.find(([err]) => err);
    if (!results || failed) throw failed?.[0] ?? new Error('CRL store transaction aborted');
  }
  ctx.logger?.info({ source: name, url: a.url, crlNumber: status.crlNumber, revokedCount: status.revokedCount, unchanged }, 'CRL in force');
  return status;
}

/**
 * Uploads the DER to a staging key in slices and answers that key; the MULTI
 * of `store` then renames it into place. One SET of a 27 MB value measured
 * 20-80 ms of event-loop blocking (ioredis builds the whole command), 1 MiB
 * APPENDs a few ms each; the RENAME keeps the switch atomic for readers. The
 * staging key expires on its own if this process dies midway.
 */
/**
 * Stages `der` unless its SHA-256 is `inForce`'s (the same file again, as most scheduled
 * refreshes find: nothing to write). The digest runs on libuv's thread pool (WebCrypto).
 */
async function stageIfNew(redis: Redis, name: string, der: Buffer, inForce: string | null): Promise<string | null> {
  const digest = Buffer.from(await webcrypto.subtle.digest('SHA-256', der)).toString('hex');
  return digest === inForce ? null : stage(redis, name, der);
}

async function stage(redis: Redis, name: string, der: Buffer): Promise<string> {
  const staging = `${keys.crlData(name)}:incoming`;
  // One pipeline: the slices go out back to back instead of one round trip each.
  const pipeline = redis.pipeline().del(staging);
  for (let o = 0; o < der.length; o += REDIS_SLICE) pipeline.append(staging, der.subarray(o, o + REDIS_SLICE));
  pipeline.pexpire(staging, STAGING_TTL_MS);
  for (const [err] of (await pipeline.exec()) ?? []) if (err) throw err;
  return staging;
}

/**
 * The DER inside a PEM CRL that `parseCrl` already accepted (so it holds
 * exactly one clean X509 CRL block), decoded slice by slice with a yield in
 * between so a large CRL does not hold the event loop. The result must frame
 * the very TBSCertList that was verified, or it is not used.
 */
async function pemCrlToDer(pem: Buffer, crl: ParsedCrl): Promise<Buffer> {
  const begin = '-----BEGIN X509 CRL-----';
  const start = pem.indexOf(begin, 0, 'latin1') + begin.length;
  const end = pem.indexOf('-----END X509 CRL-----', start, 'latin1');
  const parts: Buffer[] = [];
  let carry = '';
  for (let o = start; o < end; o += PEM_SLICE) {
    if (o > start) await new Promise<void>((r) => setImmediate(r));
    const text = carry + pem.toString('latin1', o, Math.min(o + PEM_SLICE, end)).replace(/\s+/g, '');
    const whole = text.length - (text.length % 4);
    parts.push(Buffer.from(text.slice(0, whole), 'base64'));
    carry = text.slice(whole);
  }
  if (carry) parts.push(Buffer.from(carry, 'base64'));
  const der = await joinChunks(parts, parts.reduce((n, p) => n + p.length, 0));
  let framesTbs = false;
  try {
    const outer = readTlv(der, 0, der.length);
    framesTbs = outer.end === der.length && der.subarray(outer.contentStart, outer.contentStart + crl.tbs.length).equals(crl.tbs);
  } catch {
    // not DER at all: refused below
  }
  if (!framesTbs) throw new Refused('not a CRL: the PEM body does not decode to the CRL that was verified');
  return der;
}

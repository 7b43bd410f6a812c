// SPEC §2.4 `authFailureThrottle` as pure functions: which failures count, under which keys
// (client address, user name), and whether a count over the sliding window is over its limit.
// The counting itself lives in Redis (worker/auth-throttle.ts); nothing here does I/O.
//
// The window. Failures are counted in buckets one window long, aligned on multiples of
// `windowSeconds` since the epoch (so every worker agrees which bucket is current). The count
// over the last `windowSeconds` is estimated as the sliding-window counter does it: all of the
// current bucket plus the previous bucket weighted by the share of it still inside the window.
// That costs two counters per key whatever `maxFailures` is (a log of every failure would cost
// one entry per failure). Failures spread over time are counted exactly; an attacker who
// bunches them at the very end of a bucket can get up to 2 × maxFailures checked over one
// window span, no more than a fixed window allows, and never more than that per two windows.
//
// What is promised:
// - an AUTH is throttled once the estimate reaches `maxFailures` (with 3, the 4th attempt in
//   the window is refused), whatever its credentials: the directory is not asked;
// - a throttled AUTH is not itself counted (it checked nothing), so the count drains and
//   guessing gets at most about `maxFailures` directory checks per window and key;
// - IPv4-mapped IPv6 addresses count as their IPv4 address; other IPv6 addresses count by
//   their /64 (one host holds a whole /64 and rotates privacy addresses inside it);
// - every spelling of one account name counts under one key (`canonicalUser`), see below.
//
// The per-user key. The check runs before any directory request (a throttled AUTH must cost
// the directory nothing), so it cannot key on the user the directory would find: it keys on
// the name as typed, normalised so that the spellings a directory resolves to one account
// fall on one key. Otherwise `ASMITH`, `asmith@corp.example` and `CORP\asmith` would each get
// the full per-user limit, and a guesser could multiply it by the number of spellings. The
// name is NFKC-normalised first (so full-width `＼` and `＠` become `\` and `@` before they
// are looked for), trimmed, lower-cased; then a down-level `DOMAIN\` prefix (everything up to
// the last backslash) and an `@domain` suffix (everything from the first `@`) are dropped.
// A name that would be left empty keeps its whole normalised form instead. The cost is on
// the safe side: `asmith@corp.example` and `asmith@other.example` share one count, so in a
// forest where two domains both hold an `asmith`, failures for one also throttle the other;
// never does a spelling give a guesser more than the limit.
import type { AuthFailureThrottle, ThrottleLimit } from '../config/schemas.ts';
import type { Reply } from './rules.ts';
import { clientKey } from './sender-groups.ts';

export const THROTTLED: Reply = { code: 454, text: '4.7.0 Too many authentication failures, try again later' };

/** The two kinds of key the throttle counts under. */
export type ThrottleScope = 'client' | 'user';

/** One counter to read or bump: scope, the window it counts over, the key and its bucket. */
export interface ThrottleKey {
  scope: ThrottleScope;
  limit: ThrottleLimit;
  id: string;
}

/** The keys an AUTH from `clientAddress` for `username` is counted under with this policy. */
export function throttleKeys(throttle: AuthFailureThrottle, clientAddress: string, username: string): ThrottleKey[] {
  const out: ThrottleKey[] = [];
  if (throttle.perClient) out.push({ scope: 'client', limit: throttle.perClient, id: clientKey(clientAddress) });
  const user = canonicalUser(username);
  // An empty name matches no directory entry: nothing to protect under it.
  if (throttle.perUser && user !== '') out.push({ scope: 'user', limit: throttle.perUser, id: user });
  return out;
}

/** The user name as the per-user limit counts it: one key for `ASMITH`, `asmith@corp.example`, `CORP\asmith`. */
export function canonicalUser(username: string): string {
  const name = username.normalize('NFKC').trim().toLowerCase();
  const account = name.slice(name.lastIndexOf('\\') + 1).split('@')[0]!.trim();
  return account === '' ? name : account;
}

/** The bucket (window-long, epoch-aligned) that `nowMs` falls in, and how far into it. */
export function bucketAt(limit: ThrottleLimit, nowMs: number): { bucket: number; elapsed: number } {
  const windowMs = limit.windowSeconds * 1000;
  const bucket = Math.floor(nowMs / windowMs);
  return { bucket, elapsed: (nowMs - bucket * windowMs) / windowMs };
}

/** The failures counted over the window ending now, from the current and the previous bucket. */
export function slidingCount(limit: ThrottleLimit, nowMs: number, counts: { current: number; previous: number }): number {
  const { elapsed } = bucketAt(limit, nowMs);
  return counts.current + counts.previous * (1 - elapsed);
}

/** Whether a key with these counts refuses the next AUTH. */
export function isThrottled(limit: ThrottleLimit, nowMs: number, counts: { current: number; previous: number }): boolean {
  return slidingCount(limit, nowMs, counts) >= limit.maxFailures;
}

/**
 * Which AUTH results count as failures: wrong or unknown credentials, an empty password,
 * an ambiguous name, a user the allowance query refuses. Not a directory that cannot
 * answer (not the client's doing) and not a throttled AUTH (it checked nothing).
 */
export function countsAsFailure(reason: string): boolean {
  return FAILURE_REASONS.has(reason);
}

const FAILURE_REASONS = new Set(['invalid-credentials', 'unknown-user', 'empty-password', 'ambiguous', 'not-allowed-by-allow-query']);

// The counters of SPEC §2.4 `authFailureThrottle`, kept in Redis so that every worker (and
// every process of one) sees the same counts; the decisions are shared/policy/auth-throttle.ts.
//
// rate-limiter-flexible does the counting: its Redis limiter increments a key and sets its
// expiry in one Lua call, and its insurance limiter (in memory) takes over every call that
// Redis cannot answer, which is SPEC's "with Redis unreachable the counts are kept per
// process". The connection given here should not queue commands while Redis is away
// (`enableOfflineQueue: false`) and should time out (`commandTimeout`): an AUTH then falls
// back to the per-process counts at once instead of waiting for a reconnect.
//
// One counter per key and window bucket (shared/policy/auth-throttle.ts says which); a
// bucket's counter lives two windows, long enough to be the previous bucket of the next.
// Keys carry a hash of the user name, never the name itself.
//
// Every AUTH reads its counters, only a failure writes: the read is one MGET of the limiter's
// own keys (`getKey`), not a get() per counter (a MULTI of GET and PTTL each: 16 commands per
// AUTH with both limits on, which bench/smtp measured at a fifth of the session's CPU). When
// Redis cannot answer the read, the insurance limiter's counts answer it, as for writes.
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { AuthFailureThrottle } from '../shared/config/schemas.ts';
import { bucketAt, isThrottled, throttleKeys, type ThrottleKey, type ThrottleScope } from '../shared/policy/auth-throttle.ts';
import { keys } from '../shared/redis/keys.ts';

/** The limiter's own ceiling is never used: certgate decides (penalty() and get() never reject on points). */
const UNUSED_POINTS = 1_000_000_000;

export class AuthThrottle {
  private readonly limiter: RateLimiterRedis;
  private readonly insurance: RateLimiterAbstract;

  constructor(private readonly redis: Redis) {
    const options = { keyPrefix: keys.authFailures, points: UNUSED_POINTS, duration: 1 };
    this.insurance = new RateLimiterMemory(options);
    this.limiter = new RateLimiterRedis({ ...options, storeClient: redis, rejectIfRedisNotReady: true, insuranceLimiter: this.insurance });
  }

  /** The scope (client or user) whose count refuses this AUTH now, or null. */
  async check(throttle: AuthFailureThrottle, clientAddress: string, username: string, nowMs: number): Promise<ThrottleScope | null> {
    const scoped = throttleKeys(throttle, clientAddress, username);
    if (scoped.length === 0) return null;
    const counters = scoped.flatMap((key) => {
      const { bucket } = bucketAt(key.limit, nowMs);
      return [counterKey(key, bucket), counterKey(key, bucket - 1)];
    });
    const counts = await this.counts(counters);
    const over = scoped.find((key, i) => isThrottled(key.limit, nowMs, { current: counts[2 * i] ?? 0, previous: counts[2 * i + 1] ?? 0 }));
    return over?.scope ?? null;
  }

  /** Counts one failed AUTH under every key of the policy. */
  async recordFailure(throttle: AuthFailureThrottle, clientAddress: string, username: string, nowMs: number): Promise<void> {
    await Promise.all(
      throttleKeys(throttle, clientAddress, username).map((key) =>
        this.limiter.penalty(counterKey(key, bucketAt(key.limit, nowMs).bucket), 1, { customDuration: 2 * key.limit.windowSeconds }),
      ),
    );
  }

  /** The counters' values from Redis in one MGET, or from the per-process counts when Redis cannot answer. */
  private async counts(counters: string[]): Promise<number[]> {
    if (this.redis.status === 'ready') {
      try {
        const values = await this.redis.mget(counters.map((c) => this.limiter.getKey(c)));
        return values.map((v) => Number(v ?? 0));
      } catch {
        // fall through to the insurance counts
      }
    }
    return Promise.all(counters.map(async (c) => (await this.insurance.get(c))?.consumedPoints ?? 0));
  }
}

/** `client:600:192.0.2.7:2900000` / `user:900:<sha256 of the name>:1933333`: the window is part of the key, so a changed window starts afresh. */
function counterKey(key: ThrottleKey, bucket: number): string {
  const id = key.scope === 'user' ? createHash('sha256').update(key.id).digest('base64url').slice(0, 22) : key.id;
  return `${key.scope}:${key.limit.windowSeconds}:${id}:${bucket}`;
}

// Whether a worker admits a new connection at all, before any listener or policy rule
// (SPEC §1 "Redis unreachable"): with WORKER_MAX_STALE_SECONDS=s, a worker that has not
// confirmed its configuration with Redis for more than s seconds answers new connections
// `421 4.3.0 Service temporarily unavailable` (and closes them) until it can again, so that
// a client goes to another worker or retries rather than being served by rules that may
// have changed. Sessions already open are not touched. Pure: the worker measures the age.
import type { Reply } from './rules.ts';

export const UNAVAILABLE: Reply = { code: 421, text: '4.3.0 Service temporarily unavailable' };

/**
 * `configAgeSeconds`: since the configuration in force was last confirmed (null: never);
 * `maxStaleSeconds`: WORKER_MAX_STALE_SECONDS, null when unset (then never refused).
 */
export function configurationAdmission(configAgeSeconds: number | null, maxStaleSeconds: number | null): Reply | null {
  if (maxStaleSeconds === null) return null;
  return configAgeSeconds === null || configAgeSeconds > maxStaleSeconds ? UNAVAILABLE : null;
}

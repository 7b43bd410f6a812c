// Which SMTP workers are running (SPEC §2.7): each worker writes its status to one hash
// field every few seconds; a worker whose heartbeat is older than 15 s is not running.
import type { Redis } from 'ioredis';
import { keys } from '../redis/keys.ts';
import type { WorkerStatus } from '../config/schemas.ts';

export const WORKER_ALIVE_MS = 15_000;
/** Entries of workers gone this long are deleted, so the hash does not grow with every restart. */
const WORKER_FORGET_MS = 60 * 60_000;

export async function publishHeartbeat(redis: Redis, s: WorkerStatus): Promise<void> {
  await redis.hset(keys.workers, s.id, JSON.stringify(s));
}

/** Workers seen within 15 s of `now`, by id; prunes entries older than an hour. */
export async function listWorkers(redis: Redis, now: Date = new Date()): Promise<WorkerStatus[]> {
  const all = await redis.hgetall(keys.workers);
  const alive: WorkerStatus[] = [];
  const forgotten: string[] = [];
  for (const [id, json] of Object.entries(all)) {
    const status = JSON.parse(json) as WorkerStatus;
    const age = now.getTime() - Date.parse(status.lastSeen);
    if (age <= WORKER_ALIVE_MS) alive.push(status);
    else if (!(age < WORKER_FORGET_MS)) forgotten.push(id); // also drops unparsable times (NaN)
  }
  if (forgotten.length > 0) await redis.hdel(keys.workers, ...forgotten);
  return alive.sort((a, b) => a.id.localeCompare(b.id));
}

// A process's Redis for in-process tests: the shared connections and a started configuration
// follower on a test Redis, as shared/process/kit.ts makes them for the real processes.
import { DEFAULT_POLL_MS, type FollowMode } from '../../shared/config/follower.ts';
import { CrlStore } from '../../shared/pki/crl/store.ts';
import { redisConnector } from '../../shared/redis/connection.ts';
import { openProcessRedis, type ProcessRedis } from '../../shared/process/kit.ts';
import type { MinimalLogger } from '../../shared/util/logger.ts';

const quiet: MinimalLogger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

export async function processRedis(
  url: string,
  o: { mode?: FollowMode; pollMs?: number | null; logger?: MinimalLogger; name?: string } = {},
): Promise<ProcessRedis> {
  const logger = o.logger ?? quiet;
  return openProcessRedis(redisConnector(url, logger), { name: o.name ?? 'test', mode: o.mode ?? 'mirror', pollMs: o.pollMs === undefined ? DEFAULT_POLL_MS : o.pollMs, logger });
}

/** A started CRL store on its own process Redis (mode `runner`, as in a worker); stop() closes both. */
export async function startCrlStore(url: string, logger: MinimalLogger = quiet): Promise<CrlStore> {
  const shared = await processRedis(url, { mode: 'runner', logger, name: 'test-crl-store' });
  const store = new (class extends CrlStore {
    override async stop(): Promise<void> {
      await super.stop();
      await shared.close();
    }
  })({ ...shared, logger });
  await store.start();
  return store;
}

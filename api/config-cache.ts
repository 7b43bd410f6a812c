// The parsed configuration, kept in the API process between changes so that reads cost
// neither a Redis round trip nor a parse of the whole document. Every write publishes
// its version on keys.configChannel; a newer version announced there drops the cache.
// While the subscription is down (reconnecting) messages could be missed, so the cache
// is bypassed until it is back.
import type { Redis } from 'ioredis';
import { keys } from '../shared/redis-keys.ts';
import { loadConfig } from '../shared/config-store.ts';
import type { VersionedConfig } from '../shared/schemas.ts';

export class ConfigCache {
  private current: VersionedConfig | null = null;
  private loading: Promise<VersionedConfig> | null = null;
  /** Bumped on every invalidation: a load that started before it must not be cached. */
  private generation = 0;
  private subscribed = false;

  private constructor(
    private readonly redis: Redis,
    private readonly subscriber: Redis,
  ) {}

  static async start(redis: Redis): Promise<ConfigCache> {
    const cache = new ConfigCache(redis, redis.duplicate());
    await cache.listen();
    return cache;
  }

  private async listen(): Promise<void> {
    const drop = () => {
      this.subscribed = false;
      this.invalidate();
    };
    this.subscriber.on('message', (_channel: string, message: string) => {
      if (!this.current || Number(message) > this.current.version) this.invalidate();
    });
    this.subscriber.on('close', drop);
    // ioredis subscribes again after a reconnect; what was published meanwhile is unknown.
    this.subscriber.on('ready', () => {
      drop();
      this.subscribed = true;
    });
    await this.subscriber.subscribe(keys.configChannel);
    this.subscribed = true;
  }

  private invalidate(): void {
    this.current = null;
    this.loading = null;
    this.generation++;
  }

  /** The configuration as stored now (as far as this process has been told). Do not mutate. */
  async get(): Promise<VersionedConfig> {
    if (!this.subscribed) return loadConfig(this.redis);
    if (this.current) return this.current;
    if (!this.loading) {
      const generation = this.generation;
      const loading = loadConfig(this.redis);
      this.loading = loading;
      loading.then(
        (config) => {
          if (generation === this.generation) this.current = config;
          if (this.loading === loading) this.loading = null;
        },
        () => {
          if (this.loading === loading) this.loading = null;
        },
      );
    }
    return this.loading;
  }

  /** A version this process just wrote: readers see it at once, without waiting for the message. */
  offer(written: VersionedConfig): void {
    if (this.subscribed && (!this.current || written.version > this.current.version)) {
      this.invalidate();
      this.current = written;
    }
  }

  async close(): Promise<void> {
    this.subscriber.disconnect();
  }
}

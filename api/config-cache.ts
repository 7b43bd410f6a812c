// The parsed configuration, kept in the API process between changes so that reads cost
// neither a Redis round trip nor a parse of the whole document. Every write publishes
// its version on keys.configChannel; a newer version announced there drops the cache.
// Until the subscription is up, and while it is down (reconnecting: messages could be
// missed), reads bypass the cache.
//
// The subscription starts with the first read, so an app that serves no request (the
// OpenAPI generator) never touches Redis.
import type { Redis } from 'ioredis';
import { keys } from '../shared/redis/keys.ts';
import { loadConfig } from '../shared/config/store.ts';
import type { VersionedConfig } from '../shared/config/schemas.ts';

export class ConfigCache {
  private current: VersionedConfig | null = null;
  private loading: Promise<VersionedConfig> | null = null;
  /** Bumped on every invalidation: a load that started before it must not be cached. */
  private generation = 0;
  private subscriber: Redis | null = null;
  private subscribed = false;

  constructor(private readonly redis: Redis) {}

  private listen(): void {
    const subscriber = this.redis.duplicate();
    this.subscriber = subscriber;
    const subscribe = () =>
      subscriber.subscribe(keys.configChannel).then(
        () => {
          if (subscriber.status !== 'ready') return;
          this.invalidate();
          this.subscribed = true;
        },
        () => undefined, // the next 'ready' subscribes again
      );
    const drop = () => {
      this.subscribed = false;
      this.invalidate();
    };
    subscriber.on('message', (_channel: string, message: string) => {
      if (!this.current || Number(message) > this.current.version) this.invalidate();
    });
    subscriber.on('close', drop);
    // After a reconnect, whatever was published meanwhile is unknown, and ioredis reports
    // ready before its own resubscription is confirmed: trust the cache again only once
    // our SUBSCRIBE has been answered.
    subscriber.on('ready', () => {
      drop();
      void subscribe();
    });
    subscriber.on('error', () => undefined); // ioredis reconnects by itself; reads bypass the cache meanwhile
    void subscribe();
  }

  private invalidate(): void {
    this.current = null;
    this.loading = null;
    this.generation++;
  }

  /** The configuration as stored now (as far as this process has been told). Do not mutate. */
  async get(): Promise<VersionedConfig> {
    if (!this.subscriber) this.listen();
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

  close(): void {
    this.subscriber?.disconnect();
    this.subscriber = null;
    this.subscribed = false;
  }
}

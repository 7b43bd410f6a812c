// The configuration as the API's routes read it, through the process's configuration
// follower (shared/config/follower.ts, mode `mirror`). Each read asks Redis only for the
// document's first bytes (store id and version: one small round trip) and gets the parsed
// document the follower holds when nothing changed; the document is fetched and parsed
// once per version. So a read sees every write that completed before it, in this process
// or another (scripts writing through one API instance and reading through another behind
// a balancer), which the change channel alone cannot promise; and a read fails like any
// store access when Redis is down. Concurrent reads share one header read.
import type { ConfigFollower } from '../shared/config/follower.ts';
import type { StoredConfig } from '../shared/config/store.ts';
import type { VersionedConfig } from '../shared/config/schemas.ts';

export class ConfigCache {
  constructor(private readonly follower: ConfigFollower) {}

  /** The configuration as stored now. Do not mutate. */
  async get(): Promise<VersionedConfig> {
    // Lazily, so that an app that serves no request (the OpenAPI generator) never touches Redis.
    void this.follower.start();
    const current = await this.follower.refresh();
    // An unreadable stored document fails every read, as the store itself would.
    if (this.follower.error !== null || current === null) throw new Error(this.follower.error ?? 'no configuration loaded');
    return current;
  }

  /** A version this process just wrote: readers see it at once, without waiting for the notice. */
  offer(written: StoredConfig): void {
    this.follower.offer(written);
  }
}

// The pub/sub side of a process: ONE subscriber connection carries every channel the
// process follows (the configuration's and the CRLs'), so that followers do not each
// open their own.
//
// Pub/sub drops what is published while a connection is down. So a follower needs to
// know when it may have missed something: `onResync` handlers run each time the
// subscription is established again after a reconnect (not at the first start), once
// Redis has confirmed the SUBSCRIBE — ioredis reports `ready` before its own
// resubscription is answered, and a read made in between could miss a change published
// right then. `live` is true only while the subscription is confirmed and up.
import type { Redis } from 'ioredis';

export type MessageHandler = (message: string) => void;

export class Subscriptions {
  private readonly handlers = new Map<string, MessageHandler[]>();
  private readonly resyncs: Array<() => void> = [];
  private started = false;
  private closed = false;
  private confirmed = false;
  /** `ready` events seen: the first is the initial connection, which start() subscribes itself. */
  private readies = 0;
  /** Bumped each time the subscription is confirmed: a follower knows whether it loaded since. */
  generation = 0;

  /** `conn`: a connection of role `subscriber`, used for nothing else. It is closed by close(). */
  constructor(private readonly conn: Redis) {
    conn.on('message', (channel: string, message: string) => {
      for (const h of this.handlers.get(channel) ?? []) h(message);
    });
    conn.on('close', () => (this.confirmed = false));
    conn.on('ready', () => {
      if (++this.readies === 1 || !this.started || this.closed) return;
      this.confirmed = false;
      void this.subscribeAll().then((ok) => {
        if (ok) for (const r of this.resyncs) r();
      });
    });
  }

  /** True while the subscription is confirmed and its connection up. */
  get live(): boolean {
    return this.confirmed && this.conn.status === 'ready';
  }

  /** Adds a handler for a channel; subscribes to it at once if already started. */
  async on(channel: string, handler: MessageHandler): Promise<void> {
    const list = this.handlers.get(channel);
    if (list) list.push(handler);
    else this.handlers.set(channel, [handler]);
    if (this.started && !list) await this.conn.subscribe(channel);
  }

  /** Runs `fn` whenever the subscription came back after a reconnect (messages may have been lost). */
  onResync(fn: () => void): void {
    this.resyncs.push(fn);
  }

  /**
   * Subscribes every channel added so far; resolves once Redis confirmed it (a subscriber
   * connection waits for Redis to be reachable). If the SUBSCRIBE fails, the next reconnect
   * subscribes again.
   */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    if (this.conn.status === 'wait') await this.conn.connect().catch(() => undefined);
    await this.subscribeAll();
  }

  private async subscribeAll(): Promise<boolean> {
    const channels = [...this.handlers.keys()];
    try {
      if (channels.length) await this.conn.subscribe(...channels);
    } catch {
      return false; // the next `ready` tries again
    }
    this.confirmed = this.conn.status === 'ready';
    if (this.confirmed) this.generation++;
    return this.confirmed;
  }

  close(): void {
    this.closed = true;
    this.confirmed = false;
    this.conn.disconnect();
  }
}

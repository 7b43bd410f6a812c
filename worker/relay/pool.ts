/**
 * Idle next-hop connections kept between messages, so that a busy gateway does not pay a TCP
 * connection, greeting, EHLO, TLS handshake and QUIT for every message (issue 12; Postfix's
 * smtp connection cache and reuse limits do the same). The protocol side (RSET, the one retry on
 * a fresh connection, the certificate check at reuse) is relayMessage's, in next-hop.ts.
 *
 * Promises:
 * - at most `maxIdlePerHop` idle connections per next hop (host, port, TLS mode, CA, HELO name);
 *   connections in use are not counted: certgate is queueless, each relaying session holds one;
 * - an idle connection is closed with QUIT after `idleMs` (a next hop's server process is not
 *   held for long: Postfix keeps its own for 2 s);
 * - a connection carries at most `maxTransactions` messages and is not reused after `maxAgeMs`;
 * - take() never hands out a connection that failed or has unread input (e.g. the 421 a next hop
 *   sends before closing an idle connection); the most recently used one comes first;
 * - after close() nothing is kept: idle connections get QUIT, later returns are closed.
 */
import { relayMessage, type Link, type LinkCache, type NextHopTarget, type RelayEnvelope, type RelayResult } from './next-hop.ts';

export interface PoolLimits {
  maxIdlePerHop: number;
  idleMs: number;
  maxTransactions: number;
  maxAgeMs: number;
}

export const DEFAULT_POOL_LIMITS: PoolLimits = { maxIdlePerHop: 16, idleMs: 5_000, maxTransactions: 100, maxAgeMs: 300_000 };

interface Idle {
  link: Link;
  timer: NodeJS.Timeout;
}

export class NextHopPool implements LinkCache {
  private readonly limits: PoolLimits;
  private readonly idle = new Map<string, Idle[]>();
  private closed = false;

  constructor(
    limits: Partial<PoolLimits> = {},
    /** Told at every take whether a kept connection was handed out. */
    private readonly observe: (reused: boolean) => void = () => undefined,
  ) {
    this.limits = { ...DEFAULT_POOL_LIMITS, ...limits };
  }

  /** relayMessage through this pool. */
  readonly relay = (target: NextHopTarget, envelope: RelayEnvelope, prefix: Buffer, message: NodeJS.ReadableStream): Promise<RelayResult> =>
    relayMessage(target, envelope, prefix, message, this);

  take(key: string): Link | null {
    const list = this.idle.get(key);
    let found: Link | null = null;
    while (list?.length && !found) {
      const entry = list.pop()!;
      clearTimeout(entry.timer);
      if (entry.link.reusable && !this.expired(entry.link)) found = entry.link;
      else entry.link.quit();
    }
    if (list && !list.length) this.idle.delete(key);
    this.observe(found !== null);
    return found;
  }

  give(key: string, link: Link): void {
    const list = this.idle.get(key) ?? [];
    if (this.closed || !link.reusable || this.expired(link) || list.length >= this.limits.maxIdlePerHop) {
      link.quit();
      return;
    }
    const entry: Idle = { link, timer: setTimeout(() => this.evict(key, entry), this.limits.idleMs) };
    entry.timer.unref();
    list.push(entry);
    this.idle.set(key, list);
  }

  /** Idle connections kept now (all next hops). */
  get idleCount(): number {
    let n = 0;
    for (const list of this.idle.values()) n += list.length;
    return n;
  }

  /** QUIT every idle connection; connections given back later are closed. */
  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) {
      for (const entry of list) {
        clearTimeout(entry.timer);
        entry.link.quit();
      }
    }
    this.idle.clear();
  }

  private expired(link: Link): boolean {
    return link.transactions >= this.limits.maxTransactions || Date.now() - link.openedAt >= this.limits.maxAgeMs;
  }

  private evict(key: string, entry: Idle): void {
    const list = this.idle.get(key);
    const i = list?.indexOf(entry) ?? -1;
    if (list && i !== -1) list.splice(i, 1);
    if (list && !list.length) this.idle.delete(key);
    entry.link.quit();
  }
}

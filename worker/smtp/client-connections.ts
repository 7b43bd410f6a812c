// Open connections per client in this worker process, over all its listeners: the count
// SPEC §2.4 maxConnectionsPerClient limits ("to one worker process"). Keyed by the client as
// shared/policy/sender-groups.ts clientKey counts it (IPv6 by /64).
import { clientKey } from '../../shared/policy/sender-groups.ts';

export class ClientConnections {
  private readonly open = new Map<string, number>();

  /** Connections open now from the client at `address`. */
  count(address: string): number {
    return this.open.get(clientKey(address)) ?? 0;
  }

  /** Counts one more connection from `address`; the function returned releases it (once). */
  hold(address: string): () => void {
    const key = clientKey(address);
    this.open.set(key, (this.open.get(key) ?? 0) + 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const n = (this.open.get(key) ?? 1) - 1;
      if (n > 0) this.open.set(key, n);
      else this.open.delete(key);
    };
  }

  /** Distinct clients with an open connection (bounded by the connections themselves). */
  get clients(): number {
    return this.open.size;
  }
}

// Runs async work per key without overlap, merging the calls that arrive meanwhile into one more run.
// Used wherever a burst of notifications must become one reload (CRL store, CRL scheduler).
/**
 * Runs one task per key at a time; a call while the key's task runs asks for
 * one more run after it (however many calls came), and resolves after that.
 */
export class Coalescer {
  private readonly running = new Map<string, { done: Promise<void>; again: boolean }>();

  run(key: string, task: () => Promise<void>): Promise<void> {
    const current = this.running.get(key);
    if (current) {
      current.again = true;
      return current.done;
    }
    const state = { done: Promise.resolve(), again: false };
    state.done = (async () => {
      try {
        do {
          state.again = false;
          await task();
        } while (state.again);
      } finally {
        this.running.delete(key);
      }
    })();
    this.running.set(key, state);
    return state.done;
  }

  async idle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running.values()].map((s) => s.done));
  }
}

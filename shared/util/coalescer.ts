// Runs async work per key without overlap, merging the calls that arrive meanwhile.
// - Coalescer: the calls become one more run (a burst of notifications becomes one reload: CRL
//   store, CRL scheduler), since what they ask for may have changed during the run.
// - SingleFlight: the calls share the run in progress and its result (concurrent OCSP checks of
//   one certificate make one responder request), since they ask the same question.
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

/** One run per key at a time; calls while it runs get the same promise (result or error). */
export class SingleFlight<T> {
  private readonly running = new Map<string, Promise<T>>();

  run(key: string, task: () => Promise<T>): Promise<T> {
    const current = this.running.get(key);
    if (current) return current;
    const done = (async () => task())().finally(() => this.running.delete(key));
    this.running.set(key, done);
    return done;
  }
}

// Waiting for a condition in tests: poll with a generous deadline, never sleep and hope (the
// machine may be busy; see ARCHITECTURE.md "Tests").

type Truthy<T> = Exclude<T, null | undefined | false | 0 | ''>;

/** Polls `probe` until it returns a truthy value (which it answers) or `timeoutMs` passes (then throws with `what`). */
export async function eventually<T>(probe: () => Promise<T> | T, timeoutMs: number, what: string): Promise<Truthy<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value as Truthy<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

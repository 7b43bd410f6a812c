// How a benchmark script stops what it started, whether it ends by success, error or a signal.
// Everything started is registered with `own` and stopped in reverse order when main ends. A
// signal (SIGINT, SIGTERM) only sets `interrupted` and runs the interrupt hook (the script
// cuts its current load short there); main notices at its next `checkpoint()`, so nothing is
// stopped while a step is still using it. A Ctrl-C reaches the bench twice (from the terminal,
// and relayed by the tsx CLI): only a second signal a while after the first means "exit now,
// without stopping". One bench runs per process, so this state is the module's own.

/** How long after the first signal a second one is taken for the relayed copy of it. */
const RELAYED_SIGNAL_MS = 2000;

let interrupted = false;
let signalledAt = 0;
let interruptHook: (() => void) | null = null;
const stoppers: Array<() => Promise<void>> = [];

/** Whether a signal asked the bench to stop. */
export function isInterrupted(): boolean {
  return interrupted;
}

/** Throws once a signal asked the bench to stop: called between steps. */
export function checkpoint(): void {
  if (interrupted) throw new Error('interrupted');
}

/** Registers `value` to be stopped by `stop` when main ends (the last registered first); returns it. */
export function own<T>(value: T, stop: (v: T) => Promise<void>): T {
  stoppers.unshift(() => stop(value));
  return value;
}

/** What a signal does besides setting `interrupted` (e.g. abort the current load); null: nothing. */
export function onInterrupt(hook: (() => void) | null): void {
  interruptHook = hook;
}

function onSignal(): void {
  if (interrupted) {
    if (Date.now() - signalledAt < RELAYED_SIGNAL_MS) return;
    console.log('\nsecond signal: exiting without stopping');
    process.exit(130);
  }
  interrupted = true;
  signalledAt = Date.now();
  console.log('\ninterrupted: stopping everything after the current step');
  interruptHook?.();
}

/**
 * Runs the bench's main with the signal handlers on, then stops everything it owns and says how
 * long it all took. A failure caused by an interruption is moot (everything has been stopped):
 * the process exits with 130.
 */
export async function runBench(main: () => Promise<void>): Promise<void> {
  const startedAt = Date.now();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await main();
  } catch (err) {
    if (!interrupted) throw err;
  } finally {
    interruptHook = null;
    for (const stop of stoppers.splice(0)) await stop().catch((e: Error) => console.log(`while stopping: ${e.message}`));
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
  if (interrupted) process.exit(130);
  console.log(`\ndone in ${((Date.now() - startedAt) / 1000).toFixed(0)} s`);
}

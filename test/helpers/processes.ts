/**
 * Children that test helpers start and stop by pid: their pids are recorded for
 * scripts/test.sh (which stops whatever a crashed test left behind), and they
 * are ended with SIGTERM, then SIGKILL after a grace period.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Writes the pid into CERTGATE_TEST_PIDS_DIR (set by scripts/test.sh), for daemons that drop the run's environment marker. */
export function recordPid(name: string, pid: number | undefined): void {
  const dir = process.env.CERTGATE_TEST_PIDS_DIR;
  if (!dir || pid === undefined) return;
  writeFile(path.join(dir, `${name}-${pid}`), String(pid)).catch(() => undefined);
}

/** SIGTERM to the child's pid, SIGKILL after `graceMs`; resolves once it has exited. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** A stop function that runs once, however often it is called. */
export function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | null = null;
  return () => (p ??= fn());
}

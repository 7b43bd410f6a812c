/**
 * Children that test helpers start and stop by pid: their pids are recorded for
 * scripts/test.sh (which stops whatever a crashed test left behind), and they
 * are ended with SIGTERM, then SIGKILL after a grace period. What every daemon
 * helper (slapd, 389-ds, Samba AD, HAProxy) does alike lives here: checking the
 * programs are installed, starting the daemon in the foreground with its pid
 * recorded and the tail of its output kept, noticing that it died during start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, writeFile } from 'node:fs/promises';
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

/** The first of these programs that is not an executable file, or null when all are. */
export async function missingProgram(paths: readonly string[]): Promise<string | null> {
  for (const p of paths) {
    try {
      await access(p, fsConstants.X_OK);
    } catch {
      return p;
    }
  }
  return null;
}

export interface Daemon {
  child: ChildProcess;
  /** The tail of what it wrote on stdout and stderr, for failure messages. */
  output(): string;
  /** How it ended (`exited (1)`, `could not be started: ENOENT ...`), or null while it runs. */
  ended(): string | null;
  /** Rejects with `<name> <how it ended>` once it ends: race it with the readiness check. */
  failed: Promise<never>;
}

/**
 * Spawns a daemon that stays in the foreground, records its pid under `name`, keeps the last
 * `keep` characters of its output. Its end after the start is stop()'s doing, so `failed`
 * never goes unhandled.
 */
export function startDaemon(name: string, command: string, args: readonly string[], o: { stdin?: 'ignore' | 'pipe'; keep?: number } = {}): Daemon {
  const child = spawn(command, args, { stdio: [o.stdin ?? 'ignore', 'pipe', 'pipe'] });
  recordPid(name, child.pid);
  const keep = o.keep ?? 20_000;
  let out = '';
  const append = (b: Buffer): void => {
    out = (out + b.toString()).slice(-keep);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  let how: string | null = null;
  const failed = new Promise<never>((_resolve, reject) => {
    const end = (words: string): void => {
      how ??= words;
      reject(new Error(`${name} ${how}`));
    };
    child.once('exit', (code, signal) => end(`exited (${signal ?? code})`));
    child.once('error', (e) => end(`could not be started: ${e.message}`));
  });
  failed.catch(() => undefined);
  return { child, output: () => out, ended: () => how, failed };
}

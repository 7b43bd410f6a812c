/**
 * Runs a command line tool for a test helper (openssl, samba-tool, dscreate, ldapmodify, ...).
 *
 * Asynchronous on purpose: tests host servers in their own process, and a
 * synchronous child process would block their event loop. A failure throws
 * with the tool's own words (stderr, else stdout), which is what a test
 * report needs to explain why a component could not be set up.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';

export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Standard input for the tool. */
  input?: string;
  timeoutMs?: number;
}

export function run(bin: string, args: string[], opts: RunOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      bin,
      args,
      { env: { ...process.env, ...opts.env }, cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const words = stderr.trim() || stdout.trim() || err.message;
        reject(new Error(`${path.basename(bin)} ${args.slice(0, 3).join(' ')} failed: ${words.slice(-3000)}`, { cause: err }));
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

// The load generator (bench/lib/load-generator.ts) as a child process the benchmarks drive over
// IPC, and the two things every bench child needs: a fork that a dead child cannot crash, and
// "the next message, or an error naming what did not answer". A child of its own because the
// load must not share an event loop (or a CPU account) with the servers it measures.
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildMessage, LoadResult, LoadSpec, ParentMessage } from './load-generator.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Forks a bench module (a path from the repository root) under tsx, with these NODE_OPTIONS. */
export function forkChild(module: string, nodeOptions = ''): ChildProcess {
  const child = fork(join(ROOT, module), [], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, NODE_OPTIONS: nodeOptions },
  });
  // A send on a closed channel (the child died, e.g. of Ctrl-C) must not crash the bench.
  child.on('error', () => undefined);
  return child;
}

/** The child's next message; rejects after timeoutMs or when it exits first, naming `what`. */
export function nextMessage<T>(child: ChildProcess, timeoutMs: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const onMessage = (m: T) => finish(null, m);
    const onExit = (code: number | null) => finish(new Error(`${what}: child exited (${code})`));
    function finish(err: Error | null, m?: T) {
      clearTimeout(timer);
      child.removeListener('message', onMessage);
      child.removeListener('exit', onExit);
      if (err) reject(err);
      else resolve(m as T);
    }
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

/** Asks the child to exit (`exitMessage` over IPC, else SIGTERM), SIGKILL after 3 s; resolves once it has. */
export async function stopChild(child: ChildProcess | null, exitMessage: unknown): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  if (child.connected) child.send(exitMessage as never);
  else child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
  await exited;
  clearTimeout(timer);
}

export class LoadChild {
  private constructor(readonly child: ChildProcess) {}

  static async start(): Promise<LoadChild> {
    const child = forkChild('bench/lib/load-generator.ts');
    const m = await nextMessage<ChildMessage>(child, 30_000, 'load generator start');
    if (m.type !== 'ready') throw new Error(`load generator: unexpected ${m.type}`);
    return new LoadChild(child);
  }

  /** Runs one load; `onWindow` is called when the measured window starts and ends. */
  run(spec: LoadSpec, onWindow: (edge: 'start' | 'end') => void): Promise<LoadResult> {
    const limit = spec.warmupMs + spec.measureMs + spec.drainMs + 30_000;
    return new Promise<LoadResult>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error('load generator: no result in time')), limit);
      const onMessage = (m: ChildMessage) => {
        if (m.type === 'window-start') onWindow('start');
        else if (m.type === 'window-end') onWindow('end');
        else if (m.type === 'result') finish(null, m.result);
        else if (m.type === 'error') finish(new Error(`load generator: ${m.message}`));
      };
      const onExit = (code: number | null) => finish(new Error(`load generator exited (${code})`));
      const finish = (err: Error | null, r?: LoadResult) => {
        clearTimeout(timer);
        this.child.removeListener('message', onMessage);
        this.child.removeListener('exit', onExit);
        if (err) reject(err);
        else resolve(r!);
      };
      this.child.on('message', onMessage);
      this.child.once('exit', onExit);
      if (!this.child.connected) return finish(new Error('load generator is gone'));
      this.child.send({ type: 'run', spec } satisfies ParentMessage);
    });
  }

  /** Ends the current load early (no new sessions; in-flight ones finish). */
  abort(): void {
    if (this.child.connected) this.child.send({ type: 'abort' } satisfies ParentMessage);
  }

  stop(): Promise<void> {
    return stopChild(this.child, { type: 'exit' } satisfies ParentMessage);
  }
}

// The client side of bench/smtp.ts, run as a child process (fork, IPC) so that its CPU is
// its own and measurable: `runLoad` keeps `clients` sessions in flight for a warm-up and a
// measured window, and reports what completed inside the window, its latencies, its
// errors and the CPU the generator itself used meanwhile.
import { performance } from 'node:perf_hooks';
import { smtpSession, tlsHandshakeSession } from './smtp-client.ts';

export interface LoadSpec {
  kind: 'smtp' | 'tls';
  host: string;
  port: number;
  clients: number;
  warmupMs: number;
  measureMs: number;
  /** Hard bound on sessions started (all phases). */
  maxSessions: number;
  /** After the window, in-flight sessions get this long before they are abandoned. */
  drainMs: number;
  sessionTimeoutMs: number;
  /** Client certificates, used round-robin (none: no certificate). */
  certs: Array<{ cert: string; key: string }>;
  /** SMTP AUTH PLAIN identities, round-robin (none: no AUTH). */
  users: Array<{ user: string; pass: string }>;
  from: string;
  to: string;
  message: string;
  /** Each SMTP session begins with a PROXY protocol v2 header (a listener behind a balancer). */
  proxyHeader?: boolean;
}

export interface LoadResult {
  /** Sessions that completed successfully inside the measured window. */
  completed: number;
  /** Failed sessions inside the window. */
  errors: number;
  /** All sessions that succeeded, any phase (for the sink cross-check). */
  succeededTotal: number;
  failedTotal: number;
  errorSamples: string[];
  windowMs: number;
  latenciesMs: number[];
  /** Client process CPU inside the window, ms. */
  cpuUserMs: number;
  cpuSystemMs: number;
  /** Event-loop utilisation of the generator inside the window (1 = saturated). */
  elu: number;
  abandoned: number;
}

export type ParentMessage = { type: 'run'; spec: LoadSpec } | { type: 'abort' } | { type: 'exit' };
export type ChildMessage =
  | { type: 'ready' }
  | { type: 'window-start' }
  | { type: 'window-end' }
  | { type: 'result'; result: LoadResult }
  | { type: 'error'; message: string };

function send(m: ChildMessage): void {
  process.send?.(m);
}

let abortCurrent: () => void = () => undefined;

export async function runLoad(spec: LoadSpec, notify: (m: ChildMessage) => void = () => undefined): Promise<LoadResult> {
  let aborted = false;
  let wakeOnAbort: () => void = () => undefined;
  const abortWait = new Promise<void>((r) => (wakeOnAbort = r));
  abortCurrent = () => {
    aborted = true;
    wakeOnAbort();
  };
  const message = Buffer.from(spec.message);
  const t0 = performance.now();
  const windowStart = t0 + spec.warmupMs;
  const windowEnd = windowStart + spec.measureMs;
  let started = 0;
  let succeededTotal = 0;
  let failedTotal = 0;
  let completed = 0;
  let errors = 0;
  const latencies: number[] = [];
  const errorCounts = new Map<string, number>();
  let cpuAtStart: NodeJS.CpuUsage | null = null;
  let cpuInWindow: NodeJS.CpuUsage | null = null;
  let eluAtStart: ReturnType<typeof performance.eventLoopUtilization> | null = null;
  let elu = 0;

  const startTimer = setTimeout(() => {
    cpuAtStart = process.cpuUsage();
    eluAtStart = performance.eventLoopUtilization();
    notify({ type: 'window-start' });
  }, spec.warmupMs);
  const endTimer = setTimeout(() => {
    cpuInWindow = process.cpuUsage(cpuAtStart ?? undefined);
    elu = performance.eventLoopUtilization(eluAtStart ?? undefined).utilization;
    notify({ type: 'window-end' });
  }, spec.warmupMs + spec.measureMs);

  const one = (i: number): Promise<void> => {
    const cert = spec.certs.length ? spec.certs[i % spec.certs.length] : undefined;
    const user = spec.users.length ? spec.users[i % spec.users.length] : undefined;
    if (spec.kind === 'tls') {
      return tlsHandshakeSession({ host: spec.host, port: spec.port, cert: cert?.cert, key: cert?.key, timeoutMs: spec.sessionTimeoutMs });
    }
    return smtpSession({
      host: spec.host, port: spec.port, cert: cert?.cert, key: cert?.key, auth: user,
      from: spec.from, to: spec.to, message, timeoutMs: spec.sessionTimeoutMs, proxyHeader: spec.proxyHeader,
    });
  };

  const loop = async (): Promise<void> => {
    // Bounded by time (the window's end) and by count (maxSessions).
    while (performance.now() < windowEnd && started < spec.maxSessions && !aborted) {
      const i = started++;
      const begin = performance.now();
      let failure: string | null = null;
      try {
        await one(i);
      } catch (err) {
        failure = (err as Error).message;
      }
      const end = performance.now();
      // Throughput and latency: every session that completed inside the window.
      const inWindow = end > windowStart && end <= windowEnd;
      if (failure === null) {
        succeededTotal++;
        if (inWindow) {
          completed++;
          latencies.push(end - begin);
        }
      } else {
        failedTotal++;
        if (inWindow) errors++;
        errorCounts.set(failure, (errorCounts.get(failure) ?? 0) + 1);
      }
    }
  };

  const loops = Array.from({ length: spec.clients }, () => loop());
  const all = Promise.all(loops);
  // Wait for the window, then give in-flight sessions drainMs to finish.
  let windowTimer: NodeJS.Timeout | undefined;
  await Promise.race([new Promise((r) => (windowTimer = setTimeout(r, Math.max(0, windowEnd - performance.now())))), abortWait]);
  clearTimeout(windowTimer);
  let abandoned = 0;
  let drainTimer: NodeJS.Timeout | undefined;
  const drained = await Promise.race([
    all.then(() => true),
    new Promise<boolean>((r) => (drainTimer = setTimeout(() => r(false), spec.drainMs))),
  ]);
  clearTimeout(drainTimer);
  if (!drained) abandoned = -1; // unknown count: some sessions still running (each bounded by sessionTimeoutMs)
  clearTimeout(startTimer);
  clearTimeout(endTimer);
  const cpu = cpuInWindow ?? process.cpuUsage(cpuAtStart ?? undefined);
  return {
    completed, errors, succeededTotal, failedTotal,
    errorSamples: [...errorCounts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([m, n]) => `${n}× ${m}`),
    windowMs: spec.measureMs,
    latenciesMs: latencies,
    cpuUserMs: cpu.user / 1000,
    cpuSystemMs: cpu.system / 1000,
    elu,
    abandoned,
  };
}

// As a forked child: run what the parent asks, one run at a time.
if (process.send) {
  process.on('message', (m: ParentMessage) => {
    if (m.type === 'exit') process.exit(0);
    if (m.type === 'abort') abortCurrent();
    if (m.type === 'run') {
      runLoad(m.spec, send).then(
        (result) => send({ type: 'result', result }),
        (err: Error) => send({ type: 'error', message: err.message }),
      );
    }
  });
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready' });
}

// WORKER_PROCESSES=n (SPEC §1 "One worker, all cores") with node:cluster: the primary
// forks n serving processes (worker/engine.ts each) that share every listener port, and
// itself only supervises and shows the worker outside (worker/front.ts: metrics port,
// health, one heartbeat).
//
// - Ports are shared the cluster's way: the primary binds each listener once and hands
//   the socket to every process; with SCHED_NONE each process accepts from it itself, so
//   the kernel spreads connections, as SPEC §1 says (no round-robin hop through the
//   primary). A bind error reaches the process that asked, which reports it.
// - Each process follows the configuration and the CRLs itself and reports to the primary
//   (`REPORT` message) every second and after each configuration it applied.
// - A process that dies is started again (after 1 s, doubling up to 30 s while it keeps
//   dying young); meanwhile /health says it is not running.
// - SIGTERM to the primary: /health turns 503, every process gets SIGTERM and drains (up to
//   30 s for sessions in flight), then the heartbeat entry goes and the primary exits.
//   A process whose primary went away (its IPC channel closed) drains and exits too.
import cluster, { type Worker as ClusterWorker } from 'node:cluster';
import type { MinimalLogger } from '../shared/util/logger.ts';
import type { Engine, ProcessReport } from './engine.ts';

export const REPORT = 'certgate:report';
const REPORT_MS = 1_000;
/** A report older than this means the process is stuck. */
const REPORT_STALE_MS = 5_000;
const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;
/** A process that ran this long before dying restarts after the shortest delay again. */
const HEALTHY_RUN_MS = 60_000;

interface ReportMessage {
  type: typeof REPORT;
  report: ProcessReport;
}

/** In a serving process: reports to the primary every second and when `now()` is called. */
export function reportToPrimary(engine: () => Engine | null): { now(): void; stop(): void } {
  const send = (): void => {
    const e = engine();
    if (e && process.connected) process.send?.({ type: REPORT, report: e.report() } satisfies ReportMessage);
  };
  const timer = setInterval(send, REPORT_MS);
  return { now: send, stop: () => clearInterval(timer) };
}

interface Slot {
  worker: ClusterWorker | null;
  report: ProcessReport | null;
  reportedAt: number;
  startedAt: number;
  delay: number;
  restart: NodeJS.Timeout | null;
}

export interface SupervisorOptions {
  processes: number;
  /** Environment added for every process. */
  env: Record<string, string>;
  logger: MinimalLogger;
  /** A process reported a change the heartbeat shows (version, listener errors, CRLs, configuration error). */
  onChange(): void;
}

export class Supervisor {
  private readonly slots: Slot[];
  private stopping = false;

  constructor(private readonly o: SupervisorOptions) {
    this.slots = Array.from({ length: o.processes }, () => ({ worker: null, report: null, reportedAt: 0, startedAt: 0, delay: RESTART_MIN_MS / 2, restart: null }));
  }

  start(): void {
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    this.slots.forEach((_, i) => this.fork(i));
  }

  /** The latest report of each process; null for one not running, or silent for 5 s. */
  reports(): Array<ProcessReport | null> {
    const now = Date.now();
    return this.slots.map((s) => (s.worker && s.report && now - s.reportedAt <= REPORT_STALE_MS ? s.report : null));
  }

  /** SIGTERM to every process; resolves once all exited (true when all exited 0), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs: number): Promise<boolean> {
    this.stopping = true;
    const exits = this.slots.map(async (s) => {
      if (s.restart) clearTimeout(s.restart);
      const w = s.worker;
      if (!w || w.isDead()) return true;
      const exited = new Promise<boolean>((resolve) => w.once('exit', (code) => resolve(code === 0)));
      w.process.kill('SIGTERM');
      const timer = setTimeout(() => w.process.kill('SIGKILL'), timeoutMs);
      const ok = await exited;
      clearTimeout(timer);
      return ok;
    });
    return (await Promise.all(exits)).every(Boolean);
  }

  private fork(i: number): void {
    const slot = this.slots[i];
    slot.restart = null;
    const w = cluster.fork({ ...this.o.env, CERTGATE_PROCESS_SLOT: String(i + 1) });
    slot.worker = w;
    slot.report = null;
    slot.startedAt = Date.now();
    w.on('message', (m: Partial<ReportMessage>) => {
      if (m?.type !== REPORT || !m.report) return;
      const changed = signature(slot.report) !== signature(m.report);
      slot.report = m.report;
      slot.reportedAt = Date.now();
      if (changed) this.o.onChange();
    });
    w.on('exit', (code, signal) => {
      slot.worker = null;
      slot.report = null;
      if (this.stopping) return;
      slot.delay = Date.now() - slot.startedAt > HEALTHY_RUN_MS ? RESTART_MIN_MS : Math.min(slot.delay * 2, RESTART_MAX_MS);
      this.o.logger.error({ process: i + 1, code, signal, restartInMs: slot.delay }, 'worker process exited; starting another');
      slot.restart = setTimeout(() => this.fork(i), slot.delay);
    });
  }
}

function signature(r: ProcessReport | null): string {
  return r === null ? '' : JSON.stringify([r.configVersion, r.listenerErrors, r.crls, r.configError]);
}

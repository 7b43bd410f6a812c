// What a worker says about itself, from the reports of its processes (SPEC §1 "One
// worker, all cores", "Worker health", §2.7): the one entry of GET /v1/workers, and the
// answer of GET /health on the metrics port. Pure functions: worker/front.ts serves them.
import type { WorkerStatus } from '../shared/config/schemas.ts';
import type { ProcessReport } from './engine.ts';

export type Readiness = { ready: true } | { ready: false; reasons: string[] };

/**
 * `reports` by process slot, null for a process that is not running or has not reported.
 * Ready when every process runs, has applied a configuration (version ≥ 1), binds every
 * enabled listener, and is not past WORKER_MAX_STALE_SECONDS; and the worker is not draining.
 */
export function readiness(reports: ReadonlyArray<ProcessReport | null>, draining: boolean): Readiness {
  const reasons = new Set<string>();
  if (draining) reasons.add('draining: the worker is stopping');
  reports.forEach((r, slot) => {
    if (r === null) {
      reasons.add(reports.length === 1 ? 'the worker process is not running' : `process ${slot + 1} of ${reports.length} is not running`);
      return;
    }
    if (!r.applied) reasons.add('no configuration applied yet');
    for (const e of r.listenerErrors) reasons.add(`listener "${e.name}" (${e.address}:${e.port}) is not bound: ${e.error}`);
    if (r.stale) reasons.add(`configuration not confirmed by Redis for ${Math.round(r.configAgeSeconds ?? 0)} s (WORKER_MAX_STALE_SECONDS): new connections get 421`);
  });
  return reasons.size === 0 ? { ready: true } : { ready: false, reasons: [...reasons] };
}

/**
 * The worker's heartbeat from the reports of its running processes (at least one):
 * listeners and errors of any process (they share their ports), the lowest configuration
 * version (the process furthest behind), the CRLs every process holds, sessions added up,
 * the first configuration error.
 */
export function combineStatus(id: string, reports: readonly ProcessReport[], now: Date): WorkerStatus {
  const byName = <T extends { name: string }>(lists: T[][]): T[] => [...new Map(lists.flat().map((x) => [x.name, x])).values()];
  const crls = reports[0].crls.filter((c) => reports.every((r) => r.crls.some((o) => o.source === c.source && o.crlNumber === c.crlNumber)));
  return {
    id,
    listeners: byName(reports.map((r) => r.listeners)),
    configVersion: Math.min(...reports.map((r) => r.configVersion)),
    crls,
    sessions: reports.reduce((n, r) => n + r.sessions, 0),
    lastSeen: now.toISOString(),
    processes: reports.length,
    listenerErrors: byName(reports.map((r) => r.listenerErrors)),
    configError: reports.find((r) => r.configError !== null)?.configError ?? null,
  };
}

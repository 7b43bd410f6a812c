// What `WORKER_PROCESSES=auto` means (SPEC §1: one process per CPU core), decided where
// containers make the question hard: a container limited by a CPU quota (docker
// --cpus, Kubernetes limits.cpu) still sees every core of its host in
// os.availableParallelism(), which counts the CPUs it may be scheduled on, not the share
// it may use. So auto = the CPUs available, capped by the cgroup quota rounded down
// (at least 1): with --cpus=1.5 on a 16-core host, 1 process. Rounding down, as Go's
// automaxprocs does: a process more than the quota allows gets throttled in bursts, which
// hurts every session's latency, while half a core left idle costs only throughput.
import { readFileSync } from 'node:fs';
import os from 'node:os';

/** Processes for `auto`: `parallelism` capped by the quota (`"<quota> <period>"` as in cgroup v2 cpu.max; null or "max ...": none). */
export function autoProcesses(parallelism: number, cpuMax: string | null): number {
  const cpus = Math.max(1, Math.floor(parallelism));
  const m = cpuMax === null ? null : /^\s*([0-9]+)\s+([0-9]+)\s*$/.exec(cpuMax);
  if (!m || Number(m[2]) === 0) return cpus;
  return Math.max(1, Math.min(cpus, Math.floor(Number(m[1]) / Number(m[2]))));
}

/** This process's cgroup CPU quota as `"<quota> <period>"`, or null when there is none (or it cannot be read). */
export function cgroupCpuMax(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): string | null {
  try {
    return read('/sys/fs/cgroup/cpu.max').trim(); // cgroup v2
  } catch {
    try {
      const quota = read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us').trim(); // cgroup v1; -1: no quota
      return quota.startsWith('-') ? null : `${quota} ${read('/sys/fs/cgroup/cpu/cpu.cfs_period_us').trim()}`;
    } catch {
      return null;
    }
  }
}

/** WORKER_PROCESSES: unset → 1, `auto` → autoProcesses, else an integer 1–256; null: not one of these. */
export function parseProcesses(raw: string | undefined): number | null {
  if (raw === undefined || raw === '') return 1;
  if (raw === 'auto') return autoProcesses(os.availableParallelism(), cgroupCpuMax());
  if (!/^[0-9]{1,3}$/.test(raw) || Number(raw) < 1 || Number(raw) > 256) return null;
  return Number(raw);
}

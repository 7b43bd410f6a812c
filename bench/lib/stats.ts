// Small measuring helpers for the benchmarks: percentiles, medians, the CPU time of other
// processes (from /proc; Redis's pid from INFO) and the worker's Prometheus histograms.
import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';

const execFileAsync = promisify(execFile);

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function median(values: number[]): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

let ticksPerSecond: number | null = null;

/** CLK_TCK, the unit of utime/stime in /proc/<pid>/stat (100 on Linux unless told otherwise). */
export async function clockTicks(): Promise<number> {
  if (ticksPerSecond !== null) return ticksPerSecond;
  try {
    const { stdout } = await execFileAsync('getconf', ['CLK_TCK']);
    const n = Number(stdout.trim());
    ticksPerSecond = Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    ticksPerSecond = 100;
  }
  return ticksPerSecond;
}

/** CPU time (user + system, ms) a process used so far, or null when it cannot be read. */
export async function processCpuMs(pid: number | undefined): Promise<number | null> {
  if (!pid) return null;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces; fields after it are fixed.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return ((utime + stime) * 1000) / (await clockTicks());
  } catch {
    return null;
  }
}

interface ProcStat {
  ppid: number;
  /** utime + stime, clock ticks. */
  own: number;
  /** cutime + cstime: the reaped children's, clock ticks. */
  children: number;
}

/** A process and its live descendants, root first, with their /proc stat figures; empty when the root is gone. */
async function processTree(rootPid: number): Promise<Array<[number, ProcStat]>> {
  const stats = new Map<number, ProcStat>();
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  await Promise.all(
    entries.filter((e) => /^\d+$/.test(e)).map(async (e) => {
      try {
        const stat = await readFile(`/proc/${e}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        stats.set(Number(e), { ppid: Number(f[1]), own: Number(f[11]) + Number(f[12]), children: Number(f[13]) + Number(f[14]) });
      } catch {
        // gone meanwhile: its time is in its parent's cutime now
      }
    }),
  );
  const root = stats.get(rootPid);
  if (!root) return [];
  const kids = new Map<number, number[]>();
  for (const [pid, st] of stats) kids.set(st.ppid, [...(kids.get(st.ppid) ?? []), pid]);
  const tree: Array<[number, ProcStat]> = [[rootPid, root]];
  const todo = [...(kids.get(rootPid) ?? [])];
  for (let pid = todo.pop(); pid !== undefined; pid = todo.pop()) {
    tree.push([pid, stats.get(pid)!]);
    todo.push(...(kids.get(pid) ?? []));
  }
  return tree;
}

/** The pids of a process and its live descendants (empty when it is gone). */
export async function processTreePids(rootPid: number): Promise<number[]> {
  return (await processTree(rootPid)).map(([pid]) => pid);
}

/**
 * CPU time (ms) of a process tree so far: the root's own and its reaped children's
 * (cutime/cstime) plus every live descendant's, the same way. A child that exits between two readings moves
 * from the second sum into the first, so a difference of two readings counts it once (Postfix's
 * smtpd, cleanup and smtp processes come and go under its master).
 */
export async function processTreeCpuMs(rootPid: number | undefined): Promise<number | null> {
  if (!rootPid) return null;
  const tree = await processTree(rootPid);
  if (tree.length === 0) return null;
  const ticks = tree.reduce((a, [, st]) => a + st.own + st.children, 0);
  return (ticks * 1000) / (await clockTicks());
}

/** CPU time (ms) all processors spent busy and in total so far, from /proc/stat (null if unreadable). */
export async function machineCpuMs(): Promise<{ busy: number; total: number } | null> {
  try {
    const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const tick = await clockTicks();
    return { busy: ((total - idle) * 1000) / tick, total: (total * 1000) / tick };
  } catch {
    return null;
  }
}

/** Sum and count of one Prometheus histogram series per label set, e.g. `kind="bind",ok="true"`. */
export function histogramTotals(metricsText: string, name: string): Map<string, { sum: number; count: number }> {
  const out = new Map<string, { sum: number; count: number }>();
  const re = new RegExp(`^${name}_(sum|count)\\{([^}]*)\\} (\\S+)$`, 'gm');
  for (const m of metricsText.matchAll(re)) {
    const labels = m[2]!;
    const entry = out.get(labels) ?? { sum: 0, count: 0 };
    if (m[1] === 'sum') entry.sum = Number(m[3]);
    else entry.count = Number(m[3]);
    out.set(labels, entry);
  }
  return out;
}

export async function fetchText(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return res.text();
}

export const fmt = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');
/** A change, with its sign: `+3.2`, `-1.0`. */
export const signed = (n: number, digits = 1): string => `${n >= 0 ? '+' : ''}${fmt(n, digits)}`;

/** The pid of the Redis server at `url` (from INFO), for its CPU account; undefined when it does not answer. */
export async function redisPid(url: string): Promise<number | undefined> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await r.connect();
    const m = /process_id:(\d+)/.exec(await r.info('server'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  } finally {
    r.disconnect();
  }
}

// The measurement setup issue 12 names: the load generator on one core, each server with its
// helpers (slapd, Redis, the API, the sink in the bench process) on the other. Unpinned, the
// kernel lets a server borrow the load generator's core and the load generator the server's,
// so a rate mixes both sides' costs; pinned, a server's rate is what its own core gives, and the
// load generator's core is its own. Linux only: `taskset` (util-linux), per thread (`-a`);
// processes forked later (Postfix's smtpd, cleanup, smtp) inherit their parent's CPUs.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { processTreePids } from './stats.ts';

const run = promisify(execFile);

export interface CpuSplit {
  /** taskset CPU list of the load generator: the first CPU this process may use. */
  client: string;
  /** taskset CPU list of the servers and their helpers: the others. */
  servers: string;
}

/** `0-2,5` → [0, 1, 2, 5]. */
export function parseCpuList(list: string): number[] {
  const cpus: number[] = [];
  for (const part of list.trim().split(',').filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new Error(`not a CPU list: ${list}`);
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    for (let c = from; c <= to; c++) cpus.push(c);
  }
  return cpus;
}

/** The CPUs a process may run on (its affinity, from /proc). */
export async function allowedCpus(pid: number | 'self' = 'self'): Promise<number[]> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return parseCpuList(/^Cpus_allowed_list:\s*(.+)$/m.exec(status)?.[1] ?? '');
}

/** The split of the CPUs this process may run on, or why there is none (fewer than 2 CPUs, no taskset). */
export async function cpuSplit(): Promise<CpuSplit | string> {
  let allowed: number[];
  try {
    allowed = await allowedCpus();
  } catch (e) {
    return `CPU affinity unreadable (${(e as Error).message})`;
  }
  if (allowed.length < 2) return `only ${allowed.length} CPU available`;
  try {
    await run('taskset', ['--version']);
  } catch {
    return 'taskset (util-linux) not found';
  }
  return { client: String(allowed[0]), servers: allowed.slice(1).join(',') };
}

/** Pins every thread of each process tree (a root and its live descendants) to `cpus`; resolves how many processes were pinned. */
export async function pinTrees(rootPids: Array<number | undefined>, cpus: string): Promise<number> {
  let pinned = 0;
  for (const root of rootPids) {
    if (!root) continue;
    for (const pid of await processTreePids(root)) {
      // A process that exits meanwhile (a Postfix child) is no error.
      await run('taskset', ['-a', '-p', '-c', cpus, String(pid)]).then(() => pinned++, () => undefined);
    }
  }
  return pinned;
}

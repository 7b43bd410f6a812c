// Reads a V8 .cpuprofile (node --cpu-prof) and says where the CPU went: self time by
// package/file, the top functions by self time, and the inclusive (synchronous) time of
// chosen certgate functions, and who called the heaviest native functions (a socket write
// costs what the TLS layer does inside it; the caller says whose write it was).
import { readFile } from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  busyMs: number;
  byArea: Array<[string, number]>;
  topSelf: Array<[string, number]>;
  inclusive: Array<[string, number]>;
  /** The heaviest native functions and the code that called them (the two nearest frames outside Node's internals). */
  nativeCallers: Array<[string, Array<[string, number]>]>;
}

/** Where a frame's code lives: a package, a certgate file, Node internals or a V8 pseudo-frame. */
function area(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg) return pkg[1]!;
  const own = /\/((?:worker|shared|api)\/[^/?]+)/.exec(url);
  if (own) return own[1]!;
  const internal = /^node:(?:internal\/)?([^/]+(?:\/[^/]+)?)/.exec(url);
  if (internal) return `node:${internal[1]}`;
  return url.replace(/^file:\/\/.*\//, '');
}

function label(n: ProfileNode): string {
  const f = n.callFrame;
  const where = f.url ? `${area(f.url, f.functionName)}:${f.lineNumber + 1}` : '';
  return `${f.functionName || '(anonymous)'} ${where}`.trim();
}

/**
 * `inclusiveOf`: function names whose inclusive time is wanted (a sample counts once per
 * name however deep the recursion). Async continuations are separate stacks, so this is the
 * synchronous part only.
 */
export async function summarizeProfile(path: string, inclusiveOf: string[], top = 25): Promise<ProfileSummary> {
  const p = JSON.parse(await readFile(path, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfByNode = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    const dt = (p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0) / 1000; // the delta after a sample is its duration
    selfByNode.set(id, (selfByNode.get(id) ?? 0) + dt);
  }
  const areas = new Map<string, number>();
  const fns = new Map<string, number>();
  const incl = new Map<string, number>(inclusiveOf.map((n) => [n, 0]));
  let total = 0;
  let idle = 0;
  for (const [id, ms] of selfByNode) {
    const n = byId.get(id)!;
    total += ms;
    if (n.callFrame.functionName === '(idle)') {
      idle += ms;
      continue;
    }
    const a = area(n.callFrame.url, n.callFrame.functionName);
    areas.set(a, (areas.get(a) ?? 0) + ms);
    const l = label(n);
    fns.set(l, (fns.get(l) ?? 0) + ms);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const name = byId.get(cur)!.callFrame.functionName;
      if (incl.has(name) && !seen.has(name)) {
        seen.add(name);
        incl.set(name, incl.get(name)! + ms);
      }
    }
  }
  const sorted = (m: Map<string, number>) => [...m.entries()].sort((a, b) => b[1] - a[1]);
  const natives = sorted(fns).filter(([l]) => !l.includes(' ') && !l.startsWith('(')).slice(0, 4).map(([l]) => l);
  const callers = new Map<string, Map<string, number>>(natives.map((n) => [n, new Map()]));
  for (const [id, ms] of selfByNode) {
    const n = byId.get(id)!;
    const mine = callers.get(label(n));
    if (!mine || n.callFrame.url) continue;
    const chain: string[] = [];
    for (let cur = parent.get(id); cur !== undefined && chain.length < 2; cur = parent.get(cur)) {
      const c = byId.get(cur)!;
      // Node's own stream plumbing says nothing about whose write it was: skip it.
      if (c.callFrame.url && !c.callFrame.url.startsWith('node:')) chain.push(label(c));
    }
    const key = chain.join(' < ') || '(no JS caller)';
    mine.set(key, (mine.get(key) ?? 0) + ms);
  }
  return {
    nativeCallers: natives.map((n) => [n, sorted(callers.get(n)!).slice(0, 5)]),
    totalMs: total,
    idleMs: idle,
    busyMs: total - idle,
    byArea: sorted(areas).slice(0, top),
    topSelf: sorted(fns).slice(0, top),
    inclusive: sorted(incl),
  };
}

/**
 * SMTP throughput benchmark: certgate's worker against bare references, on 127.0.0.1.
 *
 *   npx tsx bench/smtp.ts [--seconds 8] [--clients 32] [--scenario auth|cert|proxy|all]
 *                         [--rounds 3] [--warmup 6] [--first-warmup 20] [--client-key rsa|ec] [--users 64]
 *                         [--greeting-delay off|sink-off|on] [--postfix on|off] [--ocsp off|on]
 *                         [--ocsp-clients 2] [--processes n] [--directory-cache 0] [--pin auto|on|off]
 *                         [--profile] [--profile-dir dir] [--help]
 *
 * Scenarios (SPEC §3, §4):
 * - auth: each session = new TCP connection + EHLO + STARTTLS + EHLO + AUTH PLAIN (an LDAP
 *   user: bind method, deployment B's allow query) + one small message relayed to a sink +
 *   QUIT. certgate = the real worker process configured through the API like deployment B;
 *   reference = a bare smtp-server (own child process) accepting any AUTH PLAIN and relaying
 *   with worker/relay/next-hop.ts through a NextHopPool (kept next-hop connections). certgate runs twice:
 *   with SPEC §2.4's authFailureThrottle per client and per user (two Redis reads per key before
 *   each AUTH) and without it; their ratio is the throttle's cost (target ≥ 0.95).
 * - cert: each session = new connection + STARTTLS with a smart-card-shaped client
 *   certificate listed in the directory + EHLO + one message (no AUTH); certgate configured
 *   like deployment A. References: a bare Node TLS server with requestCert (implicit TLS,
 *   ends the socket after the handshake; issue 4's reference), a bare smtp-server with
 *   requestCert + STARTTLS + relay, and Postfix 3.7 in certificate-only mode (test/helpers/postfix.ts:
 *   a private instance relaying to the same sink; it queues before its 250, so each Postfix run
 *   ends by draining its queue, outside the measured window). --postfix off leaves it out.
 *
 * Both scenarios also run a bare smtp-server doing that deployment's directory work with ldapts
 * directly (cert: the certificate query; auth: the user search, a bind as the user and the
 * allowance query; bench/lib/reference-servers.ts): no target, the ratio says what certgate adds
 * besides the directory.
 *
 * - proxy: the auth session against two listeners of the same worker, one with proxyProtocol
 *   (the load generator begins each connection with a PROXY v2 header naming its own endpoints,
 *   as HAProxy send-proxy-v2 does), one without; their ratio is the cost of the header path
 *   (trust check, header read with its deadline, the rest handed back to TLS/SMTP; target ≥ 0.97).
 *
 * Targets (issue 12), printed with their verdicts: cert: certgate >= 1.0 x the bare smtp-server
 * relay and >= 1.2 x Postfix, server-side CPU per session (the server's processes with slapd,
 * Redis and the API) at or below the bare relay's; auth: certgate >= 0.9 x the bare relay like for
 * like (no greeting wait anywhere, the default).
 *
 * Each scenario runs reference(s) and certgate alternately in several rounds (the order
 * rotates), reports every round, the medians and the ratio. The client load generator runs
 * in its own child process; its CPU (and that of the worker, the references, slapd, Redis
 * and this process, which hosts the sink) is reported per session, with the share of the
 * machine other processes took, so that a reader can tell what limited the rate; the closing
 * notes say which figures the measured noise makes unreliable. Prints
 * numbers; asserts nothing. Everything it starts (Redis, slapd, API, worker, children) is
 * stopped at the end, also on Ctrl-C (a second Ctrl-C exits at once).
 *
 * --ocsp on (with the cert scenario): SPEC §2.6b, against a local `openssl ocsp` responder (its own
 * network namespace, test/helpers/ocsp-responder.ts) answering for the cards' CA. Two measurements
 * after the cert scenario: (1) certgate with OCSP off against OCSP on with a warm cache (the cards'
 * answers cached by the first run's warm-up), alternating in rounds like the other targets, at
 * --clients (target: ratio >= 0.95); (2) the latency a cold cache adds per session: OCSP on with
 * maxCacheSeconds 0 (every session asks the responder: one HTTP POST, a response signature check)
 * against OCSP off, at --ocsp-clients concurrent sessions (openssl's responder answers one request
 * at a time, so more clients would measure its queue), p50 and p99 differences.
 *
 * --greeting-delay: smtp-server waits 100 ms before each greeting; certgate's listeners greet at
 * once. `off` (the default, like for like) removes that wait from the sink (the next hop),
 * certgate's worker and the bare smtp-server references, `sink-off` from the sink only, `on`
 * keeps it everywhere (patched in at load time, no code changed).
 * --processes n (n >= 2): a second certgate worker runs with WORKER_PROCESSES=n, and every
 * scenario gains it as a target beside the one-process worker (same configuration, its own
 * port offset); the summary gives the ratio of the two and the machine's core count. Its CPU
 * is that of its whole process tree (the cluster primary and its n serving processes). With
 * the load generator on one of the cores, a 2-core machine cannot show what n processes give
 * on a larger one: the ratio then says whether the second process helps at all.
 * --pin (default auto: on, unless --processes or the machine cannot): issue 12's setup, the load
 * generator on the first CPU and everything serving (the servers, slapd, Redis, the API, the sink in
 * this process, Postfix's processes) on the others (bench/lib/pinning.ts), so that a server and its
 * helpers get one core and never borrow the load generator's. --pin off lets the kernel place them:
 * a single-threaded server then also gets the other core's spare time for its helpers (certgate's
 * slapd and Redis), which the bare references do not need. A ratio whose two sides both had the load
 * generator's core >= 90 % busy is printed as not judged (the load generator's limit, not the
 * servers'). The WORKER_PROCESSES target is measured unpinned, so --processes runs without pinning.
 * --first-warmup (default 20 s): the warm-up of each target's first round, so that every server is
 * measured warm (V8 compiles certgate's worker for its first ~15 s under load; a gateway in service
 * runs warm). --warmup is that of the later rounds.
 * --profile runs the worker and the reference process under V8's sampling profiler (the
 * inspector, started by a preload module) and prints where their CPU went, per session (the
 * rates of that run are perturbed by the profiler). --profile-dir dir (implies --profile) writes
 * the .cpuprofile files there and keeps them (for Chrome DevTools, or a closer look by area).
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startSystem, type System } from '../test/helpers/system.ts';
import { peopleLdif, type PersonSpec } from '../test/helpers/people.ts';
import { freePort } from '../test/helpers/ports.ts';
import type { Issued } from '../test/helpers/pki.ts';
import { cacAuthProfile, cardHolder, ldapAuthProfile, ldapProfile, listener } from '../test/fixtures/deployments.ts';
import type { LoadSpec } from './lib/load-generator.ts';
import { LoadChild, forkChild, nextMessage, stopChild } from './lib/load-child.ts';
import { checkpoint, onInterrupt, own, runBench } from './lib/lifecycle.ts';
import type { ReferenceChildMessage, ReferenceConfig, ReferencePorts } from './lib/reference-servers.ts';
import { fetchText, fmt, histogramTotals, machineCpuMs, median, percentile, processCpuMs, processTreeCpuMs, redisPid } from './lib/stats.ts';
import { summarizeProfile } from './lib/cpuprofile.ts';
import { exitWithUsageIfAsked } from './lib/usage.ts';
import { cpuSplit, pinTrees } from './lib/pinning.ts';
import { greetingDelayPreload, removeGreetingDelay } from './lib/greeting-delay.ts';
import { startOcspResponder } from '../test/helpers/ocsp-responder.ts';
import { postfixUnavailable, startPostfix, type Postfix } from '../test/helpers/postfix.ts';
import { DEFAULT_OCSP_SETTINGS } from '../shared/config/schemas.ts';

const cores = availableParallelism();
const HOST = '127.0.0.1';

// ------------------------------------------------------------------------------- options

exitWithUsageIfAsked(import.meta.url);
const { values: argv } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    clients: { type: 'string', default: '32' },
    scenario: { type: 'string', default: 'all' },
    rounds: { type: 'string', default: '3' },
    // 6 s: with 1.5 s part of the worker still ran in V8's baseline tier in the first rounds
    // (cert: 147-172 sessions/s by round, against 184-194 after 6 s; a worker runs for days).
    warmup: { type: 'string', default: '6' },
    'first-warmup': { type: 'string', default: '20' },
    'client-key': { type: 'string', default: 'rsa' },
    users: { type: 'string', default: '64' },
    profile: { type: 'boolean', default: false },
    'profile-dir': { type: 'string' },
    'greeting-delay': { type: 'string', default: 'off' },
    postfix: { type: 'string', default: 'on' },
    ocsp: { type: 'string', default: 'off' },
    'ocsp-clients': { type: 'string', default: '2' },
    processes: { type: 'string', default: '0' },
    'directory-cache': { type: 'string', default: '0' },
    pin: { type: 'string', default: 'auto' },
  },
});
const seconds = Number(argv.seconds);
const clients = Number(argv.clients);
const rounds = Number(argv.rounds);
const warmup = Number(argv.warmup);
/** The warm-up of each target's first run in a scenario (see runScenario). */
const firstWarmup = Math.max(warmup, Number(argv['first-warmup']));
const userCount = Number(argv.users);
const clientKey = argv['client-key'];
const scenarioArg = argv.scenario;
const processes = Number(argv.processes);
// cacheTtlSeconds of both LDAP profiles: 0 (SPEC's default, the targets' setting) asks the
// directory on every session; more shows what certgate costs with the directory's share gone.
const directoryCache = Number(argv['directory-cache']);
if (!(Number.isInteger(directoryCache) && directoryCache >= 0 && directoryCache <= 3600)) throw new Error('--directory-cache: 0..3600 s');
if (!(Number.isInteger(processes) && (processes === 0 || (processes >= 2 && processes <= 64)))) throw new Error('--processes: 2..64 (0: off)');
if (argv.pin !== 'auto' && argv.pin !== 'on' && argv.pin !== 'off') throw new Error('--pin: auto, on or off');
if (argv.pin === 'on' && processes) throw new Error('--pin on with --processes: the WORKER_PROCESSES target is measured unpinned (--pin off)');
/** Whether this run pinned the load generator and the servers to CPUs of their own (--pin). */
let pinned = false;
const greetingDelay = argv['greeting-delay'];
if (greetingDelay !== 'on' && greetingDelay !== 'sink-off' && greetingDelay !== 'off') throw new Error('--greeting-delay: on, sink-off or off');
if (argv.postfix !== 'on' && argv.postfix !== 'off') throw new Error('--postfix: on or off');
if (argv.ocsp !== 'on' && argv.ocsp !== 'off') throw new Error('--ocsp: on or off');
const ocspClients = Number(argv['ocsp-clients']);
if (!(Number.isInteger(ocspClients) && ocspClients >= 1 && ocspClients <= 64)) throw new Error('--ocsp-clients: 1..64');
if (!(seconds > 0 && seconds <= 120)) throw new Error('--seconds: 0 < s <= 120');
if (!(Number.isInteger(clients) && clients >= 1 && clients <= 512)) throw new Error('--clients: 1..512');
if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 9)) throw new Error('--rounds: 1..9');
if (!(warmup >= 0 && warmup <= 30)) throw new Error('--warmup: 0..30 s');
if (!(Number(argv['first-warmup']) >= 0 && Number(argv['first-warmup']) <= 60)) throw new Error('--first-warmup: 0..60 s');
if (!(Number.isInteger(userCount) && userCount >= 1 && userCount <= 10_000)) throw new Error('--users: 1..10000');
if (clientKey !== 'rsa' && clientKey !== 'ec') throw new Error('--client-key: rsa or ec');
if (scenarioArg !== 'auth' && scenarioArg !== 'cert' && scenarioArg !== 'proxy' && scenarioArg !== 'all') throw new Error('--scenario: auth, cert, proxy or all');
const scenarios: Array<'auth' | 'cert' | 'proxy'> = scenarioArg === 'all' ? ['auth', 'cert', 'proxy'] : [scenarioArg];
const keyType: 'rsa' | 'ec' = clientKey === 'ec' ? 'ec' : 'rsa';

const CARD_COUNT = 8;
const SESSION_TIMEOUT_MS = 30_000;
const DRAIN_MS = 20_000;
/** Count bound of one run: far above anything this machine reaches. */
const MAX_SESSIONS_PER_RUN = Math.ceil((firstWarmup + seconds) * 5_000);

const MESSAGE = [
  'From: <sender@example.com>',
  'To: <rcpt@example.com>',
  'Subject: certgate bench',
  'Message-ID: <bench@client.bench.example>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
  '',
  'A small message, relayed once per session.',
  '',
].join('\r\n');

// ------------------------------------------------------------------------------- children

async function startReferences(config: ReferenceConfig, nodeOptions: string): Promise<{ child: ChildProcess; ports: ReferencePorts }> {
  const child = forkChild('bench/lib/reference-servers.ts', nodeOptions);
  child.send({ type: 'start', config });
  const m = await nextMessage<ReferenceChildMessage>(child, 30_000, 'reference servers start');
  if (m.type !== 'ready') {
    await stopChild(child, { type: 'exit' });
    throw new Error(`reference servers: ${m.message}`);
  }
  return { child, ports: m.ports };
}

// ------------------------------------------------------------------------------- measuring

interface Target {
  key: string;
  label: string;
  kind: 'smtp' | 'tls';
  port: number;
  /** CPU ms so far of the serving process(es): one process, or Postfix's whole tree. */
  serverCpu: () => Promise<number | null>;
  certgate: boolean;
  /** Runs before the load (certgate with OCSP on or off: the settings for this run). */
  before?: () => Promise<void>;
  /** Runs after the measured window, before the next run (Postfix: drain its queue). */
  after?: () => Promise<void>;
  /** Sessions begin with a PROXY protocol v2 header. */
  proxyHeader?: boolean;
}

interface CpuSnapshot {
  server: number | null;
  client: number | null;
  slapd: number | null;
  redis: number | null;
  api: number | null;
  bench: number;
  /** Whole machine, all cores: busy CPU ms so far. */
  machine: number | null;
}

interface RunResult {
  target: Target;
  rate: number;
  p50: number;
  p90: number;
  p99: number;
  completed: number;
  errors: number;
  errorSamples: string[];
  /** CPU ms per completed session, by process (null: unknown). */
  cpuPerSession: Record<keyof CpuSnapshot, number | null>;
  /** Share of one core, by process. */
  cpuShare: Record<keyof CpuSnapshot, number | null>;
  clientElu: number;
  sinkDelta: number;
  succeededTotal: number;
  /** certgate only: LDAP operations per session and their mean latency. */
  ldap: Array<{ kind: string; perSession: number; meanMs: number }>;
  /** Share of one core used by processes outside the benchmark during the window. */
  othersShare: number | null;
  /** The header lines the next hop saw first in the last relayed message (sanity check). */
  lastMessageHead: string | null;
}

interface Context {
  sys: System;
  load: LoadChild;
  pids: { client: number | undefined; slapd: number | undefined; redis: number | undefined; api: number | undefined };
  metricsUrl: string;
}

async function snapshot(ctx: Context, target: Target): Promise<CpuSnapshot> {
  const [server, client, slapd, redis, api, machine] = await Promise.all([
    target.serverCpu(), processCpuMs(ctx.pids.client), processCpuMs(ctx.pids.slapd), processCpuMs(ctx.pids.redis), processCpuMs(ctx.pids.api), machineCpuMs(),
  ]);
  const own = process.cpuUsage();
  return { server, client, slapd, redis, api, bench: (own.user + own.system) / 1000, machine: machine?.busy ?? null };
}

async function ldapTotals(ctx: Context): Promise<Map<string, { sum: number; count: number }>> {
  try {
    return histogramTotals(await fetchText(ctx.metricsUrl), 'certgate_ldap_duration_seconds');
  } catch {
    return new Map();
  }
}

async function measure(ctx: Context, target: Target, base: Omit<LoadSpec, 'kind' | 'port'>): Promise<RunResult> {
  const ldapBefore = target.certgate ? await ldapTotals(ctx) : new Map<string, { sum: number; count: number }>();
  await target.before?.();
  const sinkBefore = ctx.sys.sink.messages.length;
  let start: Promise<CpuSnapshot> | null = null;
  let end: Promise<CpuSnapshot> | null = null;
  const res = await ctx.load.run({ ...base, kind: target.kind, port: target.port, proxyHeader: target.proxyHeader }, (edge) => {
    if (edge === 'start') start = snapshot(ctx, target);
    else end = snapshot(ctx, target);
  });
  await target.after?.();
  const s0 = start ? await start : null;
  const s1 = end ? await end : null;
  const windowS = res.windowMs / 1000;
  const perSession = {} as RunResult['cpuPerSession'];
  const share = {} as RunResult['cpuShare'];
  for (const k of ['server', 'client', 'slapd', 'redis', 'api', 'bench', 'machine'] as const) {
    const a = s0?.[k];
    const b = s1?.[k];
    const used = a === null || a === undefined || b === null || b === undefined ? null : b - a;
    perSession[k] = used === null || res.completed === 0 ? null : used / res.completed;
    share[k] = used === null ? null : used / (windowS * 1000);
  }
  // The generator's own account is more precise than /proc ticks.
  const clientUsed = res.cpuUserMs + res.cpuSystemMs;
  perSession.client = res.completed ? clientUsed / res.completed : null;
  share.client = clientUsed / (windowS * 1000);

  const ldap: RunResult['ldap'] = [];
  if (target.certgate) {
    const after = await ldapTotals(ctx);
    const byKind = new Map<string, { sum: number; count: number }>();
    for (const [labels, v] of after) {
      const before = ldapBefore.get(labels) ?? { sum: 0, count: 0 };
      const kind = /kind="([^"]+)"/.exec(labels)?.[1] ?? labels;
      const e = byKind.get(kind) ?? { sum: 0, count: 0 };
      e.sum += v.sum - before.sum;
      e.count += v.count - before.count;
      byKind.set(kind, e);
    }
    const all = res.succeededTotal + res.failedTotal;
    for (const [kind, v] of byKind) {
      if (v.count > 0) ldap.push({ kind, perSession: all ? v.count / all : 0, meanMs: (v.sum / v.count) * 1000 });
    }
  }
  const sorted = [...res.latenciesMs].sort((a, b) => a - b);
  return {
    target,
    rate: res.completed / windowS,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    completed: res.completed,
    errors: res.errors,
    errorSamples: res.errorSamples,
    cpuPerSession: perSession,
    cpuShare: share,
    clientElu: res.elu,
    sinkDelta: ctx.sys.sink.messages.length - sinkBefore,
    succeededTotal: res.succeededTotal,
    ldap,
    othersShare: share.machine === null ? null : Math.max(0, share.machine - (['server', 'client', 'bench', 'slapd', 'redis', 'api'] as const).reduce((a, k) => a + (share[k] ?? 0), 0)),
    lastMessageHead: ctx.sys.sink.messages.at(-1)?.raw.toString('latin1').split('\r\n\r\n')[0]?.split('\r\n').slice(0, 4).join(' ') ?? null,
  };
}

const pct = (x: number | null): string => (x === null ? 'n/a' : `${Math.round(x * 100)}%`);
const ms = (x: number | null): string => (x === null ? 'n/a' : fmt(x, 2));

function printRun(round: number, r: RunResult): void {
  const c = r.cpuPerSession;
  const s = r.cpuShare;
  console.log(
    `  round ${round}  ${r.target.label.padEnd(34)} ${fmt(r.rate).padStart(6)} sessions/s  p50 ${fmt(r.p50, 0).padStart(4)} ms  p90 ${fmt(r.p90, 0).padStart(4)} ms  p99 ${fmt(r.p99, 0).padStart(4)} ms  ` +
      `(${r.completed} ok, ${r.errors} errors)`,
  );
  console.log(
    `           CPU ms/session: server ${ms(c.server)}, client ${ms(c.client)}, bench+sink ${ms(c.bench)}, slapd ${ms(c.slapd)}, redis ${ms(c.redis)}, api ${ms(c.api)}` +
      ` | share of one core: server ${pct(s.server)}, client ${pct(s.client)} (event loop ${pct(r.clientElu)} busy), bench+sink ${pct(s.bench)}, slapd ${pct(s.slapd)}, redis ${pct(s.redis)}`,
  );
  if (r.ldap.length) {
    console.log(`           LDAP per session: ${r.ldap.map((l) => `${l.kind} ${fmt(l.perSession, 2)}× mean ${fmt(l.meanMs, 2)} ms`).join(', ')}`);
  }
  if (s.machine !== null) {
    console.log(`           machine (${cores} cores): ${pct(s.machine)} of one core busy, of which processes outside this benchmark ${pct(r.othersShare)}`);
  }
  if (r.target.kind === 'smtp' && r.sinkDelta !== r.succeededTotal) {
    console.log(`           note: the sink got ${r.sinkDelta} messages for ${r.succeededTotal} successful sessions`);
  }
  for (const e of r.errorSamples) console.log(`           error: ${e}`);
}

interface Summary {
  target: Target;
  rate: number;
  p50: number;
  p99: number;
  clientShare: number;
  rates: number[];
  /** Median CPU ms per session of the serving side: the server's processes, slapd, Redis and the API. */
  serverCpu: number;
  /** Median share of the machine's CPU that processes outside the benchmark took meanwhile. */
  othersShare: number;
  /**
   * Median of serverCpu over the load generator's CPU per session, run by run: the client does
   * the same work per session against every server, so this cancels how slow a busy machine
   * made everything (the steadiest figure here).
   */
  serverPerClient: number;
}

/** CPU ms per session of the serving side: the server's processes, slapd, Redis and the API. */
function serverSide(r: RunResult): number {
  const c = r.cpuPerSession;
  return (c.server ?? NaN) + (c.slapd ?? 0) + (c.redis ?? 0) + (c.api ?? 0);
}

function summarize(results: RunResult[], target: Target): Summary {
  const mine = results.filter((r) => r.target.key === target.key);
  return {
    target,
    rate: median(mine.map((r) => r.rate)),
    p50: median(mine.map((r) => r.p50)),
    p99: median(mine.map((r) => r.p99)),
    clientShare: median(mine.map((r) => r.cpuShare.client ?? NaN)),
    rates: mine.map((r) => r.rate),
    serverCpu: median(mine.map(serverSide)),
    othersShare: median(mine.map((r) => r.othersShare ?? NaN)),
    serverPerClient: median(mine.map((r) => serverSide(r) / (r.cpuPerSession.client ?? NaN))),
  };
}

/** One line on CPU: a rate-independent view of the cost per session, and how noisy the machine was. */
function cpuLine(list: Summary[]): string {
  return `server-side CPU per session (server processes + slapd + Redis + API, medians): ${list.map((x) => `${x.target.label} ${fmt(x.serverCpu, 2)} ms`).join(', ')}; ` +
    `other processes on the machine took ${list.map((x) => pct(x.othersShare)).join('/')} of a core meanwhile; ` +
    `relative to the load generator's CPU per session (cancels the machine's speed): ${list.map((x) => `${x.target.label} ${fmt(x.serverPerClient, 2)}`).join(', ')}`;
}

async function runScenario(ctx: Context, name: string, targets: Target[], base: Omit<LoadSpec, 'kind' | 'port'>): Promise<RunResult[]> {
  const results: RunResult[] = [];
  for (let round = 1; round <= rounds; round++) {
    // Rotate the order so that no target always runs first (JIT warm-up, drift).
    const shift = (round - 1) % targets.length;
    const order = [...targets.slice(shift), ...targets.slice(0, shift)];
    for (const t of order) {
      checkpoint();
      // A target's first run warms longer: V8 still compiles the worker's code for its first
      // ~15 s under load (perf: 12 % of the worker's CPU 7 s in, 2 % after 20 s; the bare
      // references, less code, warm sooner), and a gateway in service runs warm.
      const r = await measure(ctx, t, round === 1 ? { ...base, warmupMs: firstWarmup * 1000 } : base);
      checkpoint(); // an interrupted run's numbers are not worth printing
      results.push(r);
      printRun(round, r);
      // The sink keeps every message in memory; a long benchmark must not grow it without bound.
      ctx.sys.sink.messages.splice(0);
    }
  }
  console.log(`  ${name}: per-round rates (sessions/s):`);
  for (const t of targets) {
    console.log(`    ${t.label.padEnd(34)} ${results.filter((r) => r.target.key === t.key).map((r) => fmt(r.rate)).join('  ')}`);
  }
  return results;
}

// ------------------------------------------------------------------------------- setup

function benchUsers(n: number): PersonSpec[] {
  return Array.from({ length: n }, (_, i) => ({ uid: `bench${String(i).padStart(4, '0')}`, password: `pw-${i}-bench`, mail: `bench${i}@example.com` }));
}

async function main(): Promise<void> {
  const perScenarioRuns = { auth: 3 + (processes ? 1 : 0), cert: (argv.postfix === 'on' ? 4 : 3) + (argv.ocsp === 'on' ? 4 : 0) + (processes ? 1 : 0), proxy: 2 };
  const plannedS = scenarios.reduce((a, s) => a + perScenarioRuns[s] * (rounds * (warmup + seconds + 0.5) + firstWarmup - warmup), 0);
  console.log(`certgate SMTP bench: scenarios ${scenarios.join(', ')}, ${clients} clients, ${rounds} rounds × ${seconds} s (+${warmup} s warm-up, ${firstWarmup} s in a target's first round), ` +
    `client keys ${keyType.toUpperCase()}, smtp-server greeting delay ${greetingDelay}` +
    `${directoryCache ? `, LDAP cacheTtlSeconds ${directoryCache} (not the targets' setting: SPEC's default is 0)` : ''}; about ${Math.round(plannedS + 15)} s in all${argv.profile || argv['profile-dir'] ? '; worker and references profiled' : ''}`);

  const workDir = await mkdtemp(join(tmpdir(), 'certgate-bench-'));
  const profileDir = argv['profile-dir'] ? resolve(argv['profile-dir']) : argv.profile ? join(workDir, 'profiles') : null;
  /**
   * NODE_OPTIONS for certgate's worker and the reference process: the caller's own (such as
   * --perf-basic-prof, for `perf record` on the serving CPU) and the preloads below.
   */
  const inherited = process.env.NODE_OPTIONS ? [process.env.NODE_OPTIONS] : [];
  const preloads = { worker: [...inherited], reference: [...inherited] };
  if (greetingDelay !== 'on') removeGreetingDelay(); // the sink lives in this process
  if (greetingDelay === 'off') {
    const file = join(workDir, 'no-greeting-delay.mjs');
    await writeFile(file, greetingDelayPreload());
    preloads.worker.push(`--import ${file}`);
    preloads.reference.push(`--import ${file}`);
  }
  if (profileDir) {
    // `--cpu-prof` is not allowed in NODE_OPTIONS (Node 20): a preload module starts the
    // inspector's profiler instead and writes the profile when the process exits.
    for (const sub of ['worker', 'reference'] as const) {
      await mkdir(join(profileDir, sub), { recursive: true });
      const file = join(profileDir, `${sub}-profiler.mjs`);
      await writeFile(file, profilerPreload(join(profileDir, sub)));
      preloads[sub].push(`--import ${file}`);
    }
  }
  /** Sessions each profiled process served, for per-session figures. */
  const served = { worker: 0, reference: 0 };
  // Owned first, so stopped last: the profiles exist once the processes have exited.
  own(workDir, async (dir) => {
    if (profileDir) {
      await printProfiles(join(profileDir, 'worker'), 'certgate worker', served.worker).catch((e: Error) => console.log(`profile: ${e.message}`));
      await printProfiles(join(profileDir, 'reference'), 'reference servers', served.reference).catch((e: Error) => console.log(`profile: ${e.message}`));
    }
    await rm(dir, { recursive: true, force: true });
  });
  const sys = own(
    await startSystem({ workers: 1, workerEnv: preloads.worker.length ? { NODE_OPTIONS: preloads.worker.join(' ') } : {} }),
    (v) => v.stop(),
  );
  checkpoint();
  const pki = sys.pki;
  const server = await pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: [HOST] });
  // Smart-card shaped: CN LAST.FIRST.EDIPI, UPN and e-mail in subjectAltName, digitalSignature,
  // clientAuth; issued by an intermediate as CAC/PIV certificates are, sent with it.
  const cards: Issued[] = await Promise.all(
    Array.from({ length: CARD_COUNT }, (_, i) => pki.client({
      cn: `BENCH.CARD${i}.${1_000_000_000 + i}`, upn: `${1_000_000_000 + i}@mil`, email: `card${i}@example.mil`, issuer: 'intermediate', keyType,
    })),
  );
  const users = benchUsers(userCount);
  await sys.slapd.add(peopleLdif([...users, ...cards.map((c, i) => cardHolder(`card${i}`, c))]));
  checkpoint();

  // Deployment B (SMTP AUTH only) and deployment A (certificate only), each on its own listener.
  const portB = await freePort();
  const portA = await freePort();
  const portBOpen = await freePort();
  const portBProxy = await freePort();
  const serverTls = { certificatePem: server.certPem, privateKeyPem: server.keyPem };
  await sys.api.ok('POST', '/v1/ldap-profiles', { ...ldapProfile(sys, { certificate: false, smtpAuth: true }), name: 'corp-b', cacheTtlSeconds: directoryCache });
  await sys.api.ok('POST', '/v1/ldap-profiles', { ...ldapProfile(sys, { certificate: true, smtpAuth: false }), name: 'corp-a', cacheTtlSeconds: directoryCache });
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', ldapAuthProfile({ ldapProfile: 'corp-b' }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', cacAuthProfile({ ldapProfile: 'corp-a', fallback: false }));
  const policy = { action: 'relay', tls: 'required', smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10, requireSmtpAuth: true };
  // The load comes from one address: per-client connection limits stay out of its way. RELAYED-B counts
  // failed AUTH per client and per user (the throttle's most expensive form), RELAYED-B-OPEN not at all.
  const throttleOn = { perClient: { maxFailures: 100, windowSeconds: 600 }, perUser: { maxFailures: 10, windowSeconds: 900 } };
  await sys.api.ok('POST', '/v1/mail-flow-policies', { ...policy, name: 'RELAYED-B', verifyClientCertificate: false, maxConnectionsPerClient: null, authFailureThrottle: throttleOn });
  await sys.api.ok('POST', '/v1/mail-flow-policies', {
    ...policy, name: 'RELAYED-B-OPEN', verifyClientCertificate: false, maxConnectionsPerClient: null, authFailureThrottle: { perClient: null, perUser: null },
  });
  await sys.api.ok('POST', '/v1/mail-flow-policies', { ...policy, name: 'RELAYED-A', verifyClientCertificate: true, maxConnectionsPerClient: null });
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'submission-b', port: portB, authProfile: 'ldap-auth', policy: 'RELAYED-B', tls: { ...serverTls, clientCaPem: null } }));
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'submission-b-open', port: portBOpen, authProfile: 'ldap-auth', policy: 'RELAYED-B-OPEN', tls: { ...serverTls, clientCaPem: null } }));
  // The same listener behind a balancer: every connection from 127.0.0.1 begins with a PROXY v2 header.
  await sys.api.ok('POST', '/v1/listeners', {
    ...listener(sys, { name: 'submission-b-proxy', port: portBProxy, authProfile: 'ldap-auth', policy: 'RELAYED-B-OPEN', tls: { ...serverTls, clientCaPem: null } }),
    proxyProtocol: { trustedProxies: [`${HOST}/32`] },
  });
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'submission-a', port: portA, authProfile: 'cac-auth', policy: 'RELAYED-A', tls: { ...serverTls, clientCaPem: pki.root.certPem } }));
  await sys.settled(10_000);

  checkpoint();
  const ref = own(
    await startReferences({
      certPem: server.certPem, keyPem: server.keyPem, clientCaPem: pki.root.certPem, sinkPort: sys.sink.port, hostname: 'gateway.example.com',
      directory: {
        url: sys.slapd.url, bindDn: sys.slapd.rootDn, bindPassword: sys.slapd.rootPassword, baseDn: sys.slapd.baseDn,
        certificateQuery: ldapProfile(sys, { certificate: true, smtpAuth: false }).certificateQuery!.query,
        userQuery: ldapProfile(sys, { certificate: false, smtpAuth: true }).smtpAuthQuery!.query,
        allowQuery: ldapProfile(sys, { certificate: false, smtpAuth: true }).smtpAuthQuery!.allowQuery!,
      },
    }, preloads.reference.join(' ')),
    (v) => stopChild(v.child, { type: 'exit' }),
  );
  const refs = ref.child;
  const load = own(await LoadChild.start(), (v) => v.stop());
  onInterrupt(() => load.abort());
  checkpoint();
  const worker = sys.workers[0]!;
  const ctx: Context = {
    sys,
    load,
    pids: { client: load.child.pid, slapd: Number((await readFile(join(sys.slapd.dir, 'slapd.pid'), 'utf8').catch(() => '')).trim()) || undefined, redis: await redisPid(sys.redis.url), api: sys.apiProc.child.pid },
    metricsUrl: `http://${HOST}:${worker.metricsPort}/metrics`,
  };
  const base = {
    host: HOST, clients, warmupMs: warmup * 1000, measureMs: seconds * 1000, maxSessions: MAX_SESSIONS_PER_RUN, drainMs: DRAIN_MS,
    sessionTimeoutMs: SESSION_TIMEOUT_MS, from: 'sender@example.com', to: 'rcpt@example.com', message: MESSAGE,
  };
  const summaries: string[] = [];
  const noise: Summary[] = [];
  const workerCpu = (): Promise<number | null> => processCpuMs(worker.child.pid);
  // --processes: the same worker with WORKER_PROCESSES=n beside it, measured as a tree.
  const multi = processes ? own(await sys.startWorker({ WORKER_PROCESSES: String(processes) }), (w) => w.stop()) : null;
  const multiCpu = (): Promise<number | null> => processTreeCpuMs(multi?.child.pid);
  if (multi) await sys.settled(20_000);
  const refCpu = (): Promise<number | null> => processCpuMs(refs.pid);
  const postfixMissing = argv.postfix === 'off' ? 'left out: --postfix off' : scenarios.includes('cert') ? await postfixUnavailable() : null;
  let postfix: Postfix | null = null;
  if (scenarios.includes('cert') && postfixMissing === null) {
    postfix = own(await startPostfix({
      relayhost: { host: HOST, port: sys.sink.port },
      mode: 'cert',
      serverTls: { certPem: server.certPem, keyPem: server.keyPem, caPem: pki.root.certPem },
    }), (v) => v.stop());
  }
  // Last, once every process is up: the serving side first (this process's whole tree), then
  // the load generator moved to its own CPU.
  const split = argv.pin === 'off' || processes ? null : await cpuSplit();
  if (typeof split === 'string' && argv.pin === 'on') throw new Error(`--pin on: ${split}`);
  if (split && typeof split !== 'string') {
    const servers = await pinTrees([process.pid, postfix?.masterPid], split.servers);
    await pinTrees([load.child.pid], split.client);
    pinned = true;
    console.log(`CPUs: load generator on CPU ${split.client}; servers, slapd, Redis, the API and the sink on CPU ${split.servers} (${servers} processes; --pin off lets the kernel place them)`);
  } else {
    console.log(`CPUs: not pinned (${typeof split === 'string' ? split : processes ? 'the WORKER_PROCESSES target is measured unpinned' : '--pin off'})`);
  }
  if (profileDir) {
    // Profile from here on (see profilerPreload).
    for (const pid of [worker.child.pid, refs.pid]) if (pid) process.kill(pid, 'SIGUSR2');
  }

  if (scenarios.includes('auth')) {
    console.log(`\nauth: STARTTLS + AUTH PLAIN (LDAP bind + allow query, ${userCount} users) + one message relayed + QUIT`);
    const targets: Target[] = [
      { key: 'ref', label: 'bare smtp-server (AUTH unchecked)', kind: 'smtp', port: ref.ports.smtpAuth, serverCpu: refCpu, certgate: false },
      { key: 'cg', label: 'certgate (deployment B)', kind: 'smtp', port: portB + worker.offset, serverCpu: workerCpu, certgate: true },
      { key: 'cg-open', label: 'certgate (B, no AUTH throttle)', kind: 'smtp', port: portBOpen + worker.offset, serverCpu: workerCpu, certgate: true },
    ];
    if (multi) targets.push({ key: 'cg-n', label: `certgate (B), ${processes} processes`, kind: 'smtp', port: portB + multi.offset, serverCpu: multiCpu, certgate: true });
    targets.push({ key: 'ref-ldap', label: 'bare smtp-server + ldapts (B\'s LDAP)', kind: 'smtp', port: ref.ports.smtpAuthLdap, serverCpu: refCpu, certgate: false });
    const spec = { ...base, certs: [], users: users.map((u) => ({ user: u.uid, pass: u.password! })) };
    const results = await runScenario(ctx, 'auth', targets, spec);
    count(served, results);
    const [r, c] = targets.map((t) => summarize(results, t)) as [Summary, Summary];
    const line = `auth: certgate ${fmt(c.rate)} sessions/s (p50 ${fmt(c.p50, 0)} ms, p99 ${fmt(c.p99, 0)} ms) vs bare ${fmt(r.rate)} sessions/s ` +
      `(p50 ${fmt(r.p50, 0)} ms, p99 ${fmt(r.p99, 0)} ms) → ${ratioText(results, 'cg', 'ref', c, r, greetingDelay === 'off' ? 0.9 : null)}` +
      `${greetingDelay === 'off' ? '' : ' (the 0.9 target is like for like: --greeting-delay off)'}; ` +
      `client CPU ${pct(c.clientShare)} of a core with certgate, ${pct(r.clientShare)} with bare`;
    const open = summarize(results, targets[2]!);
    const throttle = `auth: AUTH throttle per client and per user on vs off: ${fmt(c.rate)} vs ${fmt(open.rate)} sessions/s → ${ratioText(results, 'cg', 'cg-open', c, open, 0.95)}`;
    const rl = summarize(results, targets.find((x) => x.key === 'ref-ldap')!);
    const sameWork = `auth: certgate vs a bare smtp-server doing the same LDAP work with ldapts (user search, bind, allowance search) ${fmt(rl.rate)} sessions/s ` +
      `(p50 ${fmt(rl.p50, 0)} ms, p99 ${fmt(rl.p99, 0)} ms) → ${ratioText(results, 'cg', 'ref-ldap', c, rl, null)} (no target: what certgate adds besides the directory)`;
    for (const l of [line, throttle, sameWork, `  ${cpuLine([c, open, r, rl])}`]) {
      console.log('  ' + l.trim());
      summaries.push(l);
    }
    noise.push(c, open, r, rl);
    if (multi) summaries.push(processesLine('auth', results, summarize(results, targets[3]!), c));
    printHead(results);
  }

  if (scenarios.includes('cert')) {
    console.log(`\ncert: STARTTLS with a client certificate (${CARD_COUNT} listed cards, ${keyType.toUpperCase()}) + one message relayed, no AUTH`);
    const targets: Target[] = [
      { key: 'tls', label: 'bare TLS handshake (requestCert)', kind: 'tls', port: ref.ports.tlsBare, serverCpu: refCpu, certgate: false },
      { key: 'ref', label: 'bare smtp-server (requestCert)', kind: 'smtp', port: ref.ports.smtpCert, serverCpu: refCpu, certgate: false },
      { key: 'cg', label: 'certgate (deployment A)', kind: 'smtp', port: portA + worker.offset, serverCpu: workerCpu, certgate: true },
    ];
    if (multi) targets.push({ key: 'cg-n', label: `certgate (A), ${processes} processes`, kind: 'smtp', port: portA + multi.offset, serverCpu: multiCpu, certgate: true });
    targets.push({ key: 'ref-ldap', label: 'bare smtp-server + ldapts (A\'s LDAP)', kind: 'smtp', port: ref.ports.smtpCertLdap, serverCpu: refCpu, certgate: false });
    if (postfix) {
      targets.push({
        key: 'pf', label: 'Postfix (certificate-only, queues)', kind: 'smtp', port: postfix.port, serverCpu: () => processTreeCpuMs(postfix.masterPid), certgate: false,
        after: async () => {
          await postfix.waitForQueue(DRAIN_MS).catch(() => console.log('           note: the Postfix queue did not drain in time'));
        },
      });
    }
    const spec = { ...base, certs: cards.map((c) => ({ cert: c.chainPem, key: c.keyPem })), users: [] };
    const results = await runScenario(ctx, 'cert', targets, spec);
    count(served, results);
    const [t, r, c] = targets.map((x) => summarize(results, x)) as [Summary, Summary, Summary];
    const line = `cert: certgate ${fmt(c.rate)} sessions/s (p50 ${fmt(c.p50, 0)} ms, p99 ${fmt(c.p99, 0)} ms) vs bare TLS handshake ${fmt(t.rate)}/s ` +
      `→ ${ratioText(results, 'cg', 'tls', c, t, 0.5)}; vs bare smtp-server ${fmt(r.rate)} sessions/s (p50 ${fmt(r.p50, 0)} ms, p99 ${fmt(r.p99, 0)} ms) ` +
      `→ ${ratioText(results, 'cg', 'ref', c, r, 1.0)}; client CPU ${pct(c.clientShare)} of a core with certgate, ` +
      `${pct(t.clientShare)} with bare TLS, ${pct(r.clientShare)} with bare smtp-server`;
    console.log('  ' + line);
    const rl = summarize(results, targets.find((x) => x.key === 'ref-ldap')!);
    const lines = [line, `cert: certgate vs a bare smtp-server doing the same LDAP search with ldapts ${fmt(rl.rate)} sessions/s ` +
      `(p50 ${fmt(rl.p50, 0)} ms, p99 ${fmt(rl.p99, 0)} ms) → ${ratioText(results, 'cg', 'ref-ldap', c, rl, null)} (no target: what certgate adds besides the directory)`];
    const all = [c, r, t, rl];
    if (multi) lines.push(processesLine('cert', results, summarize(results, targets.find((x) => x.key === 'cg-n')!), c));
    if (postfix) {
      const p = summarize(results, targets.find((x) => x.key === 'pf')!);
      all.push(p);
      lines.push(`cert: certgate vs Postfix (certificate-only) ${fmt(p.rate)} sessions/s (p50 ${fmt(p.p50, 0)} ms, p99 ${fmt(p.p99, 0)} ms) → ${ratioText(results, 'cg', 'pf', c, p, 1.2)}`);
      if (multi) {
        const n = summarize(results, targets.find((x) => x.key === 'cg-n')!);
        all.push(n);
        lines.push(`cert: certgate with WORKER_PROCESSES=${processes} (p50 ${fmt(n.p50, 0)} ms, p99 ${fmt(n.p99, 0)} ms) vs Postfix, neither pinned → ${ratioText(results, 'cg-n', 'pf', n, p, 1.2)}`);
      }
    } else {
      lines.push(`cert: no Postfix reference (${postfixMissing})`);
    }
    lines.push(`  ${cpuLine(all)}`);
    lines.push(`  cert: certgate's server-side CPU per session ${fmt(c.serverCpu, 2)} ms vs the bare relay's ${fmt(r.serverCpu, 2)} ms ` +
      `(relative to the client's ${fmt(c.serverPerClient, 2)} vs ${fmt(r.serverPerClient, 2)}; target: at or below it): ${c.serverPerClient <= r.serverPerClient ? 'met' : 'MISSED'}`);
    for (const l of lines.slice(1)) console.log('  ' + l.trim());
    summaries.push(...lines);
    noise.push(...all);
    printHead(results);
    if (argv.ocsp === 'on') {
      const ocsp = await benchOcsp(ctx, cards, { port: portA + worker.offset, workerCpu, base: spec });
      summaries.push(...ocsp.lines);
      noise.push(...ocsp.noise);
    }
  }

  if (scenarios.includes('proxy')) {
    console.log('\nproxy: the auth session (no AUTH throttle) on one listener without and one with proxyProtocol (each session begins with a PROXY v2 header)');
    const targets: Target[] = [
      { key: 'cg-open', label: 'certgate (B, no PROXY header)', kind: 'smtp', port: portBOpen + worker.offset, serverCpu: workerCpu, certgate: true },
      { key: 'cg-proxy', label: 'certgate (B, PROXY v2 header)', kind: 'smtp', port: portBProxy + worker.offset, serverCpu: workerCpu, certgate: true, proxyHeader: true },
    ];
    const spec = { ...base, certs: [], users: users.map((u) => ({ user: u.uid, pass: u.password! })) };
    const results = await runScenario(ctx, 'proxy', targets, spec);
    count(served, results);
    const [plain, proxied] = targets.map((t) => summarize(results, t)) as [Summary, Summary];
    const line = `proxy: with vs without the PROXY header path ${fmt(proxied.rate)} vs ${fmt(plain.rate)} sessions/s ` +
      `(p50 ${fmt(proxied.p50, 0)} vs ${fmt(plain.p50, 0)} ms) → ${ratioText(results, 'cg-proxy', 'cg-open', proxied, plain, 0.97)}`;
    console.log('  ' + line);
    console.log(`  ${cpuLine([proxied, plain])}`);
    summaries.push(line, `  ${cpuLine([proxied, plain])}`);
    noise.push(proxied, plain);
    printHead(results);
  }

  console.log('\nsummary');
  for (const s of summaries) console.log(s);
  console.log(noiseNote(noise));
}

/**
 * --ocsp on: certgate with OCSP off / on (warm cache) alternating, then off / on with no cache
 * (every session asks the responder) at --ocsp-clients; OCSP is left off afterwards.
 */
async function benchOcsp(
  ctx: Context,
  cards: Issued[],
  o: { port: number; workerCpu: () => Promise<number | null>; base: Omit<LoadSpec, 'kind' | 'port'> },
): Promise<{ lines: string[]; noise: Summary[] }> {
  const { sys } = ctx;
  const responder = own(await startOcspResponder({ ca: sys.pki.intermediate, entries: cards.map((c) => ({ serial: c.serial })) }), (r) => r.stop());
  const ocspOn = (maxCacheSeconds: number) => async () => {
    await sys.api.ok('PUT', '/v1/ocsp-settings', { ...DEFAULT_OCSP_SETTINGS, inboundSmtpTls: true, responderUrl: responder.url, maxCacheSeconds });
    await sys.settled(10_000);
  };
  const ocspOff = async () => {
    await sys.api.ok('PUT', '/v1/ocsp-settings', DEFAULT_OCSP_SETTINGS);
    await sys.settled(10_000);
  };
  /** The worker's OCSP counters (cache hits by cache, responder requests), to say where warm answers came from. */
  const counters = async (): Promise<Record<string, number>> => {
    const text = await fetchText(ctx.metricsUrl).catch(() => '');
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^certgate_ocsp_(cache_hits|requests)_total\{(?:cache|result)="([^"]+)"\} (\S+)$/gm)) out[`${m[1]}:${m[2]}`] = Number(m[3]);
    return out;
  };
  const delta = (a: Record<string, number>, b: Record<string, number>): string =>
    Object.keys(b).map((k) => `${k} ${b[k]! - (a[k] ?? 0)}`).join(', ') || 'none';
  const target = (key: string, label: string, before: () => Promise<void>): Target => ({ key, label, kind: 'smtp', port: o.port, serverCpu: o.workerCpu, certgate: true, before });
  const lines: string[] = [];

  console.log(`
cert + OCSP: certgate with OCSP off against OCSP on, warm cache (${CARD_COUNT} cards, ${clients} clients; openssl ocsp responder on 127.0.0.1)`);
  const warm = [target('off', 'certgate, OCSP off', ocspOff), target('warm', 'certgate, OCSP on (warm cache)', ocspOn(3600))];
  const countersBefore = await counters();
  const warmResults = await runScenario(ctx, 'cert + OCSP warm', warm, o.base);
  const countersWarm = await counters();
  const [off, on] = warm.map((t) => summarize(warmResults, t)) as [Summary, Summary];
  const requestsWarm = responder.requests();
  lines.push(`cert + OCSP: warm cache ${fmt(on.rate)} sessions/s (p50 ${fmt(on.p50, 0)} ms, p99 ${fmt(on.p99, 0)} ms) vs OCSP off ${fmt(off.rate)}/s ` +
    `(p50 ${fmt(off.p50, 0)} ms, p99 ${fmt(off.p99, 0)} ms) → ${ratioText(warmResults, 'warm', 'off', on, off, 0.95)}; ` +
    `responder requests ${requestsWarm} for ${CARD_COUNT} cards over ${rounds} warm runs (worker counters: ${delta(countersBefore, countersWarm)})`);
  lines.push(`  ${cpuLine([on, off])}`);

  console.log(`
cert + OCSP: the latency a cold cache adds (maxCacheSeconds 0: every session asks the responder), ${ocspClients} clients`);
  const cold = [target('off', 'certgate, OCSP off', ocspOff), target('cold', 'certgate, OCSP on (no cache)', ocspOn(0))];
  const coldBase = { ...o.base, clients: ocspClients };
  const coldResults = await runScenario(ctx, 'cert + OCSP cold', cold, coldBase);
  await ocspOff();
  const [off1, on1] = cold.map((t) => summarize(coldResults, t)) as [Summary, Summary];
  const coldSessions = coldResults.filter((r) => r.target.key === 'cold').reduce((a, r) => a + r.succeededTotal, 0);
  const requestsCold = responder.requests() - requestsWarm;
  lines.push(`cert + OCSP: cold cache adds p50 ${fmt(on1.p50 - off1.p50, 1)} ms, p99 ${fmt(on1.p99 - off1.p99, 1)} ms per session ` +
    `(p50 ${fmt(on1.p50, 1)} vs ${fmt(off1.p50, 1)} ms, p99 ${fmt(on1.p99, 1)} vs ${fmt(off1.p99, 1)} ms at ${ocspClients} clients; ` +
    `${requestsCold} responder requests for ${coldSessions} sessions; worker counters: ${delta(countersWarm, await counters())}); ` +
    `server-side CPU per session ${fmt(on1.serverCpu, 2)} vs ${fmt(off1.serverCpu, 2)} ms`);
  for (const l of lines) console.log('  ' + l.trim());
  return { lines, noise: [on, off, on1, off1] };
}

/**
 * Which figures the measured noise makes unreliable. Rates, ratios and latencies depend on how
 * much of the two cores other processes took; CPU ms per session depends much less on it (but
 * still grows under contention: caches, frequency, scheduler).
 */
function noiseNote(list: Summary[]): string {
  const worst = Math.max(0, ...list.map((x) => (Number.isFinite(x.othersShare) ? x.othersShare : 0)));
  const spread = Math.max(0, ...list.map((x) => (x.rates.length > 1 ? (Math.max(...x.rates) - Math.min(...x.rates)) / x.rate : 0)));
  const noisy = worst > 0.1 || spread > 0.15;
  return `\nnoise: processes outside the benchmark took up to ${pct(worst)} of a core during a run; the widest spread of one target's rounds was ${pct(spread)} of its median.\n` +
    (noisy
      ? '  NOISY machine: sessions/s, the ratios and p50/p99 above are unreliable (they compare runs that met different loads); CPU ms per session is the steadier figure, and the verdicts hold only on a quiet machine.'
      : '  quiet enough: rates and ratios are comparable; p99 still moves with a single stall, CPU ms per session is the steadiest figure.');
}

/** --processes: the n-process worker against the one-process one, with the core count. */
function processesLine(scenario: string, results: RunResult[], n: Summary, one: Summary): string {
  return `${scenario}: WORKER_PROCESSES=${processes} ${fmt(n.rate)} sessions/s vs 1 process ${fmt(one.rate)} sessions/s → ${ratioText(results, 'cg-n', 'cg', n, one, null)} ` +
    `on ${cores} cores (the load generator takes one); server-side CPU per session ${fmt(n.serverCpu, 2)} vs ${fmt(one.serverCpu, 2)} ms`;
}

/** Pinned, a load generator this busy on its own core is what limits a rate. */
const CLIENT_BOUND_SHARE = 0.9;

/**
 * The ratio as the median of the per-round ratios (a round's runs share the machine's
 * weather, so they compare best), with the rounds and the ratio of the median rates.
 */
function ratioText(results: RunResult[], num: string, den: string, a: Summary, b: Summary, target: number | null): string {
  const rounds = perRoundRatios(results, num, den);
  const ratio = median(rounds);
  // Pinned, a load generator whose one core is full sets both rates: the ratio is its, not the servers'.
  const clientBound = pinned && Math.min(a.clientShare, b.clientShare) >= CLIENT_BOUND_SHARE;
  const verdict = target === null ? ''
    : clientBound ? `, target ≥ ${target}: not judged, pinned and the load generator's core ≥ ${pct(CLIENT_BOUND_SHARE)} busy with both`
    : `, target ≥ ${target}: ${ratio >= target ? 'met' : 'MISSED'}`;
  return `ratio ${fmt(ratio, 2)} (median of per-round ${rounds.map((x) => fmt(x, 2)).join('/')}; ratio of median rates ${fmt(a.rate / b.rate, 2)}${verdict})`;
}

function count(served: { worker: number; reference: number }, results: RunResult[]): void {
  for (const r of results) {
    if (r.target.certgate) served.worker += r.succeededTotal;
    else served.reference += r.succeededTotal;
  }
}

/** certgate's rate over the reference's, round by round (same round = same machine weather). */
function perRoundRatios(results: RunResult[], num: string, den: string): number[] {
  const a = results.filter((r) => r.target.key === num);
  const b = results.filter((r) => r.target.key === den);
  return a.map((x, i) => x.rate / (b[i]?.rate ?? NaN));
}

/** What the next hop saw at the top of a message certgate relayed: its Received header. */
function printHead(results: RunResult[]): void {
  const head = results.find((r) => r.target.certgate && r.lastMessageHead)?.lastMessageHead;
  if (head) console.log(`  the sink's view of a message certgate relayed: ${head}`);
}

/** A preload module (plain JS: it runs before tsx is registered) profiling the whole process. */
function profilerPreload(dir: string): string {
  return [
    "import { Session } from 'node:inspector';",
    "import { writeFileSync } from 'node:fs';",
    'const session = new Session();',
    'session.connect();',
    "session.post('Profiler.enable');",
    "session.post('Profiler.setSamplingInterval', { interval: 1000 });",
    'let running = false;',
    '// Started by SIGUSR2 from the benchmark once start-up is over, so module loading stays out.',
    "process.on('SIGUSR2', () => {",
    '  if (running) return;',
    '  running = true;',
    "  session.post('Profiler.start');",
    '});',
    "process.on('exit', () => {",
    '  if (!running) return;',
    '  // A same-thread inspector session answers synchronously, so this runs before the exit.',
    "  session.post('Profiler.stop', (err, r) => {",
    `    if (!err) writeFileSync(${JSON.stringify(dir)} + '/' + process.pid + '.cpuprofile', JSON.stringify(r.profile));`,
    '  });',
    '});',
    '',
  ].join('\n');
}

const INCLUSIVE = [
  'secured', 'checkCertificate', 'certificateFacts', 'validateClientCertificate', 'presentedChain', 'getPeerCertificate', 'lookupCertificate',
  'authenticate', 'checkAllowed', 'userBind', 'searchOnPool', 'toLdapFilter', 'parseFilter', 'renderFilter',
  'event', 'record', 'recordEvent', 'xadd', 'data', 'relayMessage', 'receivedHeader', 'beforeCommand', 'ehloFeatures', 'onReply',
  'LOG', 'asJson', 'write', 'stringify',
];

async function printProfiles(dir: string, what: string, sessions: number): Promise<void> {
  const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) {
    console.log(`\nprofile: the ${what} wrote no .cpuprofile`);
    return;
  }
  const row = (t: number, busy: number, name: string) =>
    `    ${fmt((100 * t) / busy).padStart(5)}%  ${fmt(t, 0).padStart(7)} ms  ${sessions ? fmt(t / sessions, 3).padStart(6) : '   n/a'} ms/session  ${name}`;
  for (const f of files) {
    const s = await summarizeProfile(join(dir, f), INCLUSIVE, 30);
    console.log(`\n${what} CPU profile ${f}: ${fmt(s.totalMs / 1000)} s sampled, ${fmt(s.busyMs / 1000)} s busy, ${sessions} sessions ` +
      `(${sessions ? fmt(s.busyMs / sessions, 2) : 'n/a'} ms busy per session)`);
    console.log('  self time by area:');
    for (const [a, t] of s.byArea) console.log(row(t, s.busyMs, a));
    console.log('  top functions (self):');
    for (const [a, t] of s.topSelf) console.log(row(t, s.busyMs, a));
    console.log('  inclusive (synchronous) time of chosen functions:');
    for (const [a, t] of s.inclusive) if (t > 0) console.log(row(t, s.busyMs, a));
    console.log('  callers of the heaviest native functions:');
    for (const [fn, list] of s.nativeCallers) {
      console.log(`    ${fn}:`);
      for (const [caller, t] of list) console.log(`  ${row(t, s.busyMs, caller)}`);
    }
  }
}

await runBench(main);

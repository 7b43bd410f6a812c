/**
 * CRL benchmark, end to end (SPEC §2.6): a large DER CRL signed by the root CA, served
 * through a `file:` URL under CRL_FILE_ROOT, refreshed by the real API process and enforced
 * by one real worker process configured like deployment A (certificate profile,
 * verifyClientCertificate, tls: required). Loopback only; prints numbers, asserts nothing.
 *
 *   npx tsx bench/crl.ts [--entries 1000000] [--seconds 8] [--rounds 3] [--clients 32]
 *                        [--warmup 6] [--greeting-delay off|on] [--worker-env NAME=VALUE ...] [--help]
 *
 * 1. time to enforcement, 3 times: from the start of `POST /v1/crl-sources/{name}/refresh`
 *    with the big CRL in place to the first refused session of a client certificate it lists
 *    (4 staggered probers, a probe every ~25 ms: EHLO, STARTTLS with that certificate, EHLO), with the refresh call
 *    (download + parse + verify + store), the PUBLISH and the worker's load (PUBLISH → its
 *    "CRL loaded" log line) apart. Between runs an empty CRL goes back in force; all carry
 *    CRL number 1000 (bigCrl's), so each is "not older" and, being a new file, is loaded.
 *    The steps of the refresh and of the load are then timed one by one in this process.
 * 2. worker memory (its Prometheus metrics and /proc VmHWM): 2 s before the first refresh,
 *    3 s after its load, and after all of them.
 * 3. lookups in this process: `RevokedSerials.has` / `hasBytes` over ≥ 1M random hits and
 *    misses, and `CrlStore.check` on real chains (a CrlStore loaded from the system's Redis).
 * 4. mutual-TLS session rate: bench/smtp's cert-scenario load (bench/lib/load-generator.ts in
 *    a child process: STARTTLS with a client certificate + EHLO + one message + QUIT) with
 *    the CRL loaded vs with no CRL source (deleted; the heartbeat shows no CRLs), sandwiched
 *    (none, CRL, none, ..., none): each CRL run over the mean of its neighbours, the median
 *    of those; with the CPU every process spent per session, which does not depend on rate.
 *
 * --greeting-delay: smtp-server waits 100 ms before each greeting, in the worker and in the
 * sink (the next hop). By default that wait is patched away (bench/lib/greeting-delay.ts, as
 * bench/smtp --greeting-delay off): with it, 32 clients are bound by the two waits, not by
 * CPU, and a CRL's cost could not show in the rate. --worker-env adds to the worker's
 * environment (e.g. MALLOC_MMAP_THRESHOLD_=1048576). Everything started is stopped at the
 * end, also on Ctrl-C.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { X509Certificate } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { parseAndVerifyCrlOffThread, parseCrl, parseCrlOffThread } from '../shared/pki/crl/parse.ts';
import { CrlStore } from '../shared/pki/crl/store.ts';
import { downloadCrl } from '../shared/pki/crl/download.ts';
import { joinChunks } from '../shared/util/buffers.ts';
import type { MinimalLogger } from '../shared/util/logger.ts';
import { deleteCrlData, refreshSource } from '../shared/pki/crl/refresh.ts';
import { REDIS_SLICE } from '../shared/pki/crl/stored.ts';
import type { CrlSource } from '../shared/config/schemas.ts';
import { keys } from '../shared/redis/keys.ts';
import { startSystem, type System } from '../test/helpers/system.ts';
import { peopleLdif } from '../test/helpers/people.ts';
import { freePort } from '../test/helpers/ports.ts';
import { processRedis } from '../test/helpers/follow.ts';
import type { Issued } from '../test/helpers/pki.ts';
import { cacAuthProfile, cardHolder, ldapProfile, listener } from '../test/fixtures/deployments.ts';
import type { LoadSpec } from './lib/load-generator.ts';
import { LoadChild } from './lib/load-child.ts';
import { checkpoint, isInterrupted, onInterrupt, own, runBench } from './lib/lifecycle.ts';
import { fetchText, fmt, machineCpuMs, signed, median, percentile, processCpuMs, redisPid } from './lib/stats.ts';
import { greetingDelayPreload, removeGreetingDelay } from './lib/greeting-delay.ts';
import { exitWithUsageIfAsked } from './lib/usage.ts';

const HOST = '127.0.0.1';
const MB = 1024 * 1024;
const SOURCE = 'root-crl';

// ------------------------------------------------------------------------------- options

exitWithUsageIfAsked(import.meta.url);
const { values: argv } = parseArgs({
  options: {
    entries: { type: 'string', default: '1000000' },
    seconds: { type: 'string', default: '8' },
    rounds: { type: 'string', default: '3' },
    clients: { type: 'string', default: '32' },
    // 6 s, as bench/smtp: with 1.5 s the first runs met a worker still partly in V8's baseline tier.
    warmup: { type: 'string', default: '6' },
    'greeting-delay': { type: 'string', default: 'off' },
    'worker-env': { type: 'string', multiple: true, default: [] },
  },
});
const entries = Number(argv.entries);
const seconds = Number(argv.seconds);
const rounds = Number(argv.rounds);
const clients = Number(argv.clients);
const warmup = Number(argv.warmup);
const greetingDelay = argv['greeting-delay'];
if (!(Number.isInteger(entries) && entries >= 1000 && entries <= 5_000_000)) throw new Error('--entries: 1000..5000000');
if (!(seconds > 0 && seconds <= 60)) throw new Error('--seconds: 0 < s <= 60');
if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 5)) throw new Error('--rounds: 1..5');
if (!(Number.isInteger(clients) && clients >= 1 && clients <= 256)) throw new Error('--clients: 1..256');
if (!(warmup >= 0 && warmup <= 10)) throw new Error('--warmup: 0..10 s');
if (greetingDelay !== 'on' && greetingDelay !== 'off') throw new Error('--greeting-delay: on or off');

const CARD_COUNT = 8;
/** Lookups per kind (hits, misses): at least 1M. */
const LOOKUPS = Math.max(1_000_000, entries);
const POLLERS = 4;
/** Each poller starts a probe at most this often: one probe every 25 ms in all, light enough not to slow what it measures. */
const POLL_EVERY_MS = 100;
const ENFORCE_RUNS = 3;
const ENFORCE_DEADLINE_MS = 30_000;
const SESSION_TIMEOUT_MS = 30_000;
const MESSAGE = [
  'From: <sender@example.com>',
  'To: <rcpt@example.com>',
  'Subject: certgate CRL bench',
  'Message-ID: <crl-bench@client.bench.example>',
  '',
  'A small message, relayed once per session.',
  '',
].join('\r\n');

const TARGETS = { enforcementMs: 3000, rssMb: 150, lookupUs: 2, ratio: 0.95 };
const verdict = (ok: boolean): string => (ok ? 'met' : 'MISSED');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const silent: MinimalLogger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

// ------------------------------------------------------------------------------- helpers

/** One sample of a Prometheus gauge without labels. */
function gauge(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

interface WorkerMemory { rss: number; heap: number; external: number; peak: number }

/** The worker's own metrics, and its peak RSS so far (VmHWM, from /proc). */
async function workerMemory(metricsUrl: string, pid: number | undefined): Promise<WorkerMemory> {
  const text = await fetchText(metricsUrl);
  const status = pid ? await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '') : '';
  const hwm = /^VmHWM:\s+(\d+) kB$/m.exec(status);
  return {
    rss: gauge(text, 'process_resident_memory_bytes'),
    heap: gauge(text, 'nodejs_heap_size_used_bytes'),
    external: gauge(text, 'nodejs_external_memory_bytes'),
    peak: hwm ? Number(hwm[1]) * 1024 : NaN,
  };
}

type Outcome = 'accepted' | 'revoked' | string;

/**
 * A light probe: EHLO, STARTTLS with `cert`, EHLO, QUIT. `accepted` when the worker
 * answers the EHLO after TLS with 250, `revoked` when it refuses the certificate as
 * revoked (554 right after the handshake); anything else is returned as text.
 */
function probe(port: number, cert: Issued): Promise<Outcome> {
  return new Promise<Outcome>((resolve) => {
    const plain = net.connect({ host: HOST, port });
    let secure: tls.TLSSocket | null = null;
    let stage: 'greeting' | 'ehlo' | 'starttls' | 'secured' = 'greeting';
    let buffer = '';
    let settled = false;
    const finish = (o: Outcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      secure?.destroy();
      plain.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish(`probe timed out in stage ${stage}`), 10_000);
    const write = (line: string): void => void (secure ?? plain).write(line + '\r\n');
    const onReply = (code: number, text: string): void => {
      if (stage === 'greeting' && code === 220) {
        stage = 'ehlo';
        write('EHLO probe.bench.example');
      } else if (stage === 'ehlo' && code === 250) {
        stage = 'starttls';
        write('STARTTLS');
      } else if (stage === 'starttls' && code === 220) {
        plain.removeListener('data', onData);
        stage = 'secured';
        secure = tls.connect({ socket: plain, cert: cert.chainPem, key: cert.keyPem, rejectUnauthorized: false, minVersion: 'TLSv1.2' });
        secure.on('data', onData);
        secure.on('error', (e) => finish(`TLS: ${e.message}`));
        secure.once('close', () => finish('closed after STARTTLS without a reply'));
        secure.once('secureConnect', () => write('EHLO probe.bench.example'));
      } else if (stage === 'secured' && code === 250) {
        write('QUIT');
        finish('accepted');
      } else if (stage === 'secured' && code === 554 && /revoked/i.test(text)) {
        finish('revoked');
      } else {
        finish(`${stage}: ${code} ${text}`);
      }
    };
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString('latin1');
      for (let nl = buffer.indexOf('\n'); nl !== -1; nl = buffer.indexOf('\n')) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        if (line[3] !== '-') onReply(Number(line.slice(0, 3)), line.slice(4));
      }
    };
    plain.on('data', onData);
    plain.on('error', (e) => finish(`connection: ${e.message}`));
    plain.once('close', () => {
      if (stage !== 'secured') finish(`closed in stage ${stage}`);
    });
  });
}

/** Probes until `want` comes, for at most `withinMs`; throws otherwise. */
async function waitForOutcome(port: number, cert: Issued, want: 'accepted' | 'revoked', withinMs: number): Promise<void> {
  const deadline = Date.now() + withinMs;
  let last = '';
  while (Date.now() < deadline) {
    checkpoint();
    last = await probe(port, cert);
    if (last === want) return;
    await sleep(50);
  }
  throw new Error(`expected ${want} within ${withinMs} ms, last: ${last}`);
}

interface Poll { start: number; end: number; outcome: Outcome }

/**
 * `POLLERS` sequential probers, staggered so that a probe begins about every
 * POLL_EVERY_MS / POLLERS ms, until one is refused as revoked or the deadline passes.
 */
async function pollUntilRevoked(port: number, cert: Issued, deadline: number): Promise<Poll[]> {
  const polls: Poll[] = [];
  let done = false;
  const one = async (delay: number): Promise<void> => {
    await sleep(delay);
    while (!done && Date.now() < deadline && !isInterrupted()) {
      const start = Date.now();
      const outcome = await probe(port, cert);
      polls.push({ start, end: Date.now(), outcome });
      if (outcome === 'revoked') done = true;
      else await sleep(Math.max(5, POLL_EVERY_MS - (Date.now() - start)));
    }
  };
  await Promise.all(Array.from({ length: POLLERS }, (_, i) => one((i * POLL_EVERY_MS) / POLLERS)));
  return polls.sort((a, b) => a.start - b.start);
}

interface WorkerView { id: string; crls: Array<{ source: string; revokedCount: number }> }

async function heartbeatCrls(sys: System, workerId: string): Promise<WorkerView['crls'] | null> {
  const { items } = await sys.api.ok<{ items: WorkerView[] }>('GET', '/v1/workers');
  return items.find((w) => w.id === workerId)?.crls ?? null;
}

/** Waits (≤ withinMs) until the worker's heartbeat lists `count` revoked entries of the source, or no CRL at all (count null). */
async function waitForHeartbeat(sys: System, workerId: string, count: number | null, withinMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    checkpoint();
    const crls = await heartbeatCrls(sys, workerId);
    const ok = count === null ? crls !== null && crls.length === 0 : crls?.some((c) => c.source === SOURCE && c.revokedCount === count);
    if (ok) return Date.now() - t0;
    if (Date.now() - t0 > withinMs) throw new Error(`heartbeat of ${workerId} did not show ${count === null ? 'no CRLs' : `${count} entries`} within ${withinMs} ms: ${JSON.stringify(crls)}`);
    await sleep(100);
  }
}

interface SourceStatus { lastSuccessAt: string | null; lastError: string | null; revokedCount: number | null; bytes: number | null; crlNumber: string | null }

async function waitForStatus(sys: System, revokedCount: number, withinMs: number): Promise<SourceStatus> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    checkpoint();
    const r = await sys.api.call<{ status: SourceStatus }>('GET', `/v1/crl-sources/${SOURCE}`);
    if (r.status === 200 && r.body.status.lastSuccessAt && r.body.status.revokedCount === revokedCount) return r.body.status;
    if (Date.now() > deadline) throw new Error(`source status not reached within ${withinMs} ms: ${JSON.stringify(r.body)}`);
    await sleep(50);
  }
}

/** The time (ms since the epoch) of the worker's first "CRL loaded" log line for `count` entries after `since`. */
function loadedAt(output: string, count: number, since: number): number | null {
  for (const line of output.split('\n')) {
    if (!line.includes('"CRL loaded"')) continue;
    try {
      const j = JSON.parse(line) as { time?: number; revokedCount?: number; source?: string };
      if (j.source === SOURCE && j.revokedCount === count && typeof j.time === 'number' && j.time >= since) return j.time;
    } catch {
      /* not a JSON line */
    }
  }
  return null;
}

// ------------------------------------------------------------------------------- load runs

/** Processes whose CPU is accounted per run (pids; the bench process itself hosts the sink). */
interface Pids { worker?: number; load?: number; api?: number; redis?: number; slapd?: number }
const PROCS = ['worker', 'load', 'api', 'redis', 'slapd', 'bench'] as const;
type Proc = (typeof PROCS)[number];

interface Run {
  rate: number;
  completed: number;
  errors: number;
  p50: number;
  p99: number;
  /** CPU ms per completed session, by process (NaN: unknown). */
  cpu: Record<Proc, number>;
  /** Share of one core, by process. */
  share: Record<Proc, number>;
  /** Busy share of the whole machine (in cores) and the part of it no process above took. */
  machineShare: number;
  othersShare: number;
  errorSamples: string[];
}

async function cpuSnapshot(pids: Pids): Promise<Record<Proc | 'machine', number>> {
  const [worker, load, api, redis, slapd, machine] = await Promise.all([
    processCpuMs(pids.worker), processCpuMs(pids.load), processCpuMs(pids.api), processCpuMs(pids.redis), processCpuMs(pids.slapd), machineCpuMs(),
  ]);
  const own = process.cpuUsage();
  const n = (x: number | null | undefined): number => x ?? NaN;
  return { worker: n(worker), load: n(load), api: n(api), redis: n(redis), slapd: n(slapd), bench: (own.user + own.system) / 1000, machine: n(machine?.busy) };
}

async function runLoad(load: LoadChild, spec: LoadSpec, pids: Pids): Promise<Run> {
  type Snapshot = Record<Proc | 'machine', number>;
  const snaps: { start: Promise<Snapshot> | null; end: Promise<Snapshot> | null } = { start: null, end: null };
  const res = await load.run(spec, (edge) => {
    snaps[edge] = cpuSnapshot(pids);
  });
  const a = snaps.start ? await snaps.start : null;
  const b = snaps.end ? await snaps.end : null;
  const cpu = {} as Record<Proc, number>;
  const share = {} as Record<Proc, number>;
  for (const k of PROCS) {
    const used = a && b ? b[k] - a[k] : NaN;
    cpu[k] = res.completed ? used / res.completed : NaN;
    share[k] = used / res.windowMs;
  }
  // The generator's own account is more precise than /proc ticks.
  cpu.load = res.completed ? (res.cpuUserMs + res.cpuSystemMs) / res.completed : NaN;
  share.load = (res.cpuUserMs + res.cpuSystemMs) / res.windowMs;
  const machineShare = a && b ? (b.machine - a.machine) / res.windowMs : NaN;
  const sorted = [...res.latenciesMs].sort((x, y) => x - y);
  return {
    rate: res.completed / (res.windowMs / 1000),
    completed: res.completed,
    errors: res.errors,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    cpu,
    share,
    machineShare,
    othersShare: Math.max(0, machineShare - PROCS.reduce((sum, k) => sum + (Number.isFinite(share[k]) ? share[k] : 0), 0)),
    errorSamples: res.errorSamples,
  };
}

/** CPU ms per session of the serving side and the client together (every process of the benchmark). */
const totalCpu = (r: Run): number => PROCS.reduce((sum, k) => sum + (Number.isFinite(r.cpu[k]) ? r.cpu[k] : 0), 0);

// ------------------------------------------------------------------------------- main

async function main(): Promise<void> {
  console.log(`certgate CRL bench: ${entries} entries, 1 worker, ${clients} clients, ${2 * rounds + 2} load runs (1 warm-up) × ${seconds} s (+${warmup} s warm-up), ` +
    `smtp-server greeting delay ${greetingDelay}${argv['worker-env'].length ? `, worker env ${argv['worker-env'].join(' ')}` : ''}, ${availableParallelism()} cores`);
  const summary: string[] = [];
  const crlDir = own(await mkdtemp(join(tmpdir(), 'certgate-crl-bench-')), (d) => rm(d, { recursive: true, force: true }));
  const workerEnv: Record<string, string> = {};
  for (const kv of argv['worker-env']) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(kv);
    if (!m) throw new Error(`--worker-env: NAME=VALUE, not "${kv}"`);
    workerEnv[m[1]] = m[2];
  }
  if (greetingDelay === 'off') {
    removeGreetingDelay(); // the sink lives in this process
    const file = join(crlDir, 'no-greeting-delay.mjs');
    await writeFile(file, greetingDelayPreload());
    workerEnv.NODE_OPTIONS = `${workerEnv.NODE_OPTIONS ?? ''} --import ${file}`.trim();
  }
  const sys = own(await startSystem({ workers: 1, apiEnv: { SCHEDULER: 'on', CRL_FILE_ROOT: crlDir }, workerEnv }), (s) => s.stop());
  const worker = sys.workers[0];
  const workerId = `test-worker-${worker.offset}`;
  const metricsUrl = `http://${HOST}:${worker.metricsPort}/metrics`;
  checkpoint();

  // The CRL and the certificates: card holders issued by the root (so their own serials are
  // looked up in the root's CRL), and one whose serial is listed in the big CRL.
  const t0 = performance.now();
  const pki = sys.pki;
  const [big, cards, server] = await Promise.all([
    pki.bigCrl(entries, 'root'),
    Promise.all(Array.from({ length: CARD_COUNT }, (_, i) => pki.client({ cn: `CRLBENCH.CARD${i}.${2_000_000_000 + i}`, upn: `${2_000_000_000 + i}@mil`, email: `card${i}@example.mil` }))),
    pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: [HOST] }),
  ]);
  const revokedIndex = Math.floor(entries / 2);
  const revoked = await pki.client({ cn: 'CRLBENCH.REVOKED.3000000000', serial: big.serialAt(revokedIndex) });
  console.log(`CRL: ${entries} entries, ${fmt(big.der.length / MB)} MB DER, signed by the root (openssl ${fmt(big.opensslSeconds)} s); ` +
    `certificates made; ${fmt((performance.now() - t0) / 1000)} s in all`);
  await sys.slapd.add(peopleLdif([...cards.map((c, i) => cardHolder(`card${i}`, c)), cardHolder('revoked', revoked)]));
  checkpoint();

  // Deployment A.
  const port = await freePort();
  const workerPort = port + worker.offset;
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: false }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', cacAuthProfile({ fallback: false }));
  await sys.api.ok('POST', '/v1/mail-flow-policies', {
    name: 'RELAYED', action: 'relay', tls: 'required', verifyClientCertificate: true, requireSmtpAuth: true, smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10,
  });
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { port, authProfile: 'cac-auth', tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: pki.root.certPem } }));
  await sys.settled(10_000);

  // The source starts with an empty CRL. The big one and the empty one alternate, all with
  // CRL number 1000 (bigCrl's): "not older" holds, and every switch is a new file (sha256),
  // so each refresh is stored, published and loaded.
  const crlPath = join(crlDir, 'root.crl');
  const emptyDer = await pki.crl('root', [], { crlNumber: 1000, format: 'der' });
  await writeFile(crlPath, emptyDer);
  const sourceBody = { name: SOURCE, fileType: 'asn1', primaryUrl: `file://${crlPath}`, secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true };
  await sys.api.ok('POST', '/v1/crl-sources', sourceBody);
  await waitForStatus(sys, 0, 15_000);
  await waitForHeartbeat(sys, workerId, 0, 15_000);
  await waitForOutcome(workerPort, revoked, 'accepted', 10_000);
  checkpoint();

  const sub = own(new Redis(sys.redis.url), async (r) => void r.disconnect());
  sub.on('error', () => undefined);
  let publishedAt: number | null = null;
  sub.on('message', (_ch: string, name: string) => {
    if (name === SOURCE && publishedAt === null) publishedAt = Date.now();
  });
  await sub.subscribe(keys.crlChannel);

  console.log(`\n1. time to enforcement: refresh with the big CRL in place, ${ENFORCE_RUNS} times (the empty CRL back in force before each)`);
  interface Enforcement { total: number; loaded: number | null; refresh: number; publish: number | null; load: number | null; refusedStart: number | null; refusedEnd: number | null; probes: number; apiLagMs: number | null }
  /** The API's longest event-loop delay since the last scrape (prom-client resets it at each). */
  const apiLagMs = async (): Promise<number | null> => {
    const { body } = await sys.api.call<string>('GET', '/metrics');
    const m = /^nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(typeof body === 'string' ? body : '');
    return m ? Number(m[1]) * 1000 : null;
  };
  const enforcement: Enforcement[] = [];
  let memBefore: WorkerMemory | null = null;
  let memAfter: WorkerMemory | null = null;
  for (let run = 1; run <= ENFORCE_RUNS; run++) {
    if (run > 1) {
      await writeFile(crlPath, emptyDer);
      const back = await sys.api.ok<SourceStatus>('POST', `/v1/crl-sources/${SOURCE}/refresh`);
      if (back.lastError !== null || back.revokedCount !== 0) throw new Error(`refresh to the empty CRL failed: ${JSON.stringify(back)}`);
      await waitForOutcome(workerPort, revoked, 'accepted', 15_000);
    }
    await sleep(2000);
    if (run === 1) memBefore = await workerMemory(metricsUrl, worker.child.pid);
    await writeFile(crlPath, big.der);
    publishedAt = null;
    await apiLagMs(); // resets the API's maximum
    const T0 = Date.now();
    const refreshing = sys.api.ok<SourceStatus>('POST', `/v1/crl-sources/${SOURCE}/refresh`).then((st) => ({ status: st, at: Date.now() }));
    refreshing.catch(() => undefined); // awaited below; a failure meanwhile (Ctrl-C) must not be an unhandled rejection
    const polls = await pollUntilRevoked(workerPort, revoked, T0 + ENFORCE_DEADLINE_MS);
    const refreshed = await refreshing;
    const lag = await apiLagMs();
    checkpoint();
    if (refreshed.status.lastError !== null || refreshed.status.revokedCount !== entries) throw new Error(`refresh failed: ${JSON.stringify(refreshed.status)}`);
    const firstRefused = polls.find((p) => p.outcome === 'revoked');
    const loaded = loadedAt(worker.output(), entries, T0);
    const published: number | null = publishedAt;
    const e: Enforcement = {
      total: firstRefused ? firstRefused.end - T0 : NaN,
      loaded: loaded === null ? null : loaded - T0,
      refresh: refreshed.at - T0,
      publish: published === null ? null : published - T0,
      load: published !== null && loaded !== null ? loaded - published : null,
      refusedStart: firstRefused ? firstRefused.start - T0 : null,
      refusedEnd: firstRefused ? firstRefused.end - T0 : null,
      probes: polls.length,
      apiLagMs: lag,
    };
    enforcement.push(e);
    const ms = (x: number | null): string => (x === null ? 'n/a' : `${fmt(x, 0)} ms`);
    console.log(`   run ${run}: first refused probe answered at ${ms(e.total)} (started ${ms(e.refusedStart)}; ${e.probes} probes) — refresh call (download + parse + verify + store) ${ms(e.refresh)}, ` +
      `PUBLISH at ${ms(e.publish)}, worker "CRL loaded" at ${ms(e.loaded)}: worker load (PUBLISH → loaded) ${ms(e.load)}; ` +
      `the API's longest event-loop delay meanwhile ${ms(e.apiLagMs)} (includes waits for a CPU on a busy machine)`);
    for (const o of polls.filter((p) => p.outcome !== 'accepted' && p.outcome !== 'revoked').slice(0, 3)) console.log(`     note: a probe ended otherwise: ${o.outcome}`);
    if (run === 1) {
      await waitForHeartbeat(sys, workerId, entries, 10_000);
      await sleep(3000);
      memAfter = await workerMemory(metricsUrl, worker.child.pid);
    }
  }
  const memLast = await workerMemory(metricsUrl, worker.child.pid);
  const med = (f: (e: Enforcement) => number | null): number => median(enforcement.map((e) => f(e) ?? NaN));
  const enforcementMs = med((e) => e.total);
  const allRefused = enforcement.every((e) => Number.isFinite(e.total));
  summary.push(`time to enforcement: median ${fmt(enforcementMs, 0)} ms (runs ${enforcement.map((e) => fmt(e.total, 0)).join('/')}) from the start of the refresh call to a refused session; ` +
    `refresh call (download + verify + store) ${fmt(med((e) => e.refresh), 0)} ms (the API's event loop at most ${fmt(med((e) => e.apiLagMs ?? NaN), 0)} ms late), worker load (PUBLISH → "CRL loaded") ${fmt(med((e) => e.load), 0)} ms, CRL in force in the worker at ${fmt(med((e) => e.loaded), 0)} ms ` +
    `— target < ${TARGETS.enforcementMs} ms: ${verdict(enforcementMs < TARGETS.enforcementMs && allRefused)}`);

  // ------------------------------------------------------------------ 2
  if (!memBefore || !memAfter) throw new Error('no memory readings');
  const m0 = memBefore;
  const d = (m1: WorkerMemory, k: keyof WorkerMemory): string => `${fmt(m0[k] / MB)} → ${fmt(m1[k] / MB)} MB (${signed((m1[k] - m0[k]) / MB)})`;
  const rssIncrease = (memAfter.rss - m0.rss) / MB;
  const rssIncreaseLast = (memLast.rss - m0.rss) / MB;
  console.log('\n2. worker memory: 2 s before the first refresh → 3 s after its load');
  console.log(`   RSS ${d(memAfter, 'rss')}; V8 heap used ${d(memAfter, 'heap')}; external (ArrayBuffers) ${d(memAfter, 'external')}; peak RSS (VmHWM) ${d(memAfter, 'peak')}`);
  console.log(`   after all ${ENFORCE_RUNS} big loads (and the empty CRL between them): RSS ${d(memLast, 'rss')}; V8 heap used ${d(memLast, 'heap')}; ` +
    `external ${d(memLast, 'external')}; peak RSS ${d(memLast, 'peak')}`);
  summary.push(`worker RSS increase: ${signed(rssIncrease)} MB after the load (external ${signed((memAfter.external - m0.external) / MB)} MB, peak RSS ${signed((memAfter.peak - m0.peak) / MB)} MB; ` +
    `${signed(rssIncreaseLast)} MB after ${ENFORCE_RUNS} loads) — target < ${TARGETS.rssMb} MB after each: ${verdict(Math.max(rssIncrease, rssIncreaseLast) < TARGETS.rssMb)}`);
  checkpoint();
  const lastRun = enforcement[enforcement.length - 1];

  // ------------------------------------------------------------------ where the time goes
  // The steps of the refresh (API) and of the load (worker), timed one by one in this
  // process against the same Redis (nothing else running meanwhile).
  console.log('\n   where the time goes: the same steps, one by one, in this process (idle machine):');
  const redis = own(new Redis(sys.redis.url), async (r) => void r.disconnect());
  redis.on('error', () => undefined);
  const step = async <T,>(fn: () => Promise<T> | T): Promise<[T, number]> => {
    const t = performance.now();
    const v = await fn();
    return [v, performance.now() - t];
  };
  const trusted = [new X509Certificate(pki.root.certPem)];
  const [downloaded, tDownload] = await step(() => downloadCrl(sourceBody.primaryUrl, { fileRoot: crlDir }));
  const [checked, tParseVerify] = await step(() => parseAndVerifyCrlOffThread(downloaded, 'asn1', trusted));
  if (!checked.signer) throw new Error('the CRL does not verify here');
  const scratchKey = `${keys.crlData('bench-scratch')}:incoming`;
  const [, tStage] = await step(async () => {
    await redis.del(scratchKey);
    for (let o = 0; o < downloaded.length; o += REDIS_SLICE) await redis.append(scratchKey, downloaded.subarray(o, o + REDIS_SLICE));
  });
  await redis.del(scratchKey);
  const scratchSource = { ...sourceBody, name: 'bench-scratch' } as CrlSource;
  // What the API's event loop suffers during a refresh: the longest gap this process's loop saw.
  const loopDelay = monitorEventLoopDelay({ resolution: 5 });
  loopDelay.enable();
  const [scratchStatus, tRefreshHere] = await step(() => refreshSource(redis, scratchSource, { trustedCas: trusted, fileRoot: crlDir, now: new Date(), logger: silent }));
  loopDelay.disable();
  await deleteCrlData(redis, 'bench-scratch');
  if (scratchStatus.lastError !== null) throw new Error(`refreshSource here: ${scratchStatus.lastError}`);
  console.log(`   API refresh: download (file:) ${fmt(tDownload, 0)} ms, parse + signature in the parser thread ${fmt(tParseVerify, 0)} ms, ` +
    `staging ${Math.ceil(downloaded.length / REDIS_SLICE)} APPENDs ${fmt(tStage, 0)} ms; refreshSource() in all ${fmt(tRefreshHere, 0)} ms (the HTTP call took ${fmt(lastRun.refresh, 0)} ms in the last run); ` +
    `longest event-loop block during refreshSource() ${fmt(loopDelay.max / 1e6, 0)} ms (p99 ${fmt(loopDelay.percentile(99) / 1e6, 0)} ms; noisy on a busy machine)`);

  const [der, tRead] = await step(async () => {
    const size = await redis.strlen(keys.crlData(SOURCE));
    const tx = redis.multi().get(keys.crlStatus(SOURCE)).strlen(keys.crlData(SOURCE));
    for (let o = 0; o < size; o += REDIS_SLICE) tx.getrangeBuffer(keys.crlData(SOURCE), o, Math.min(o + REDIS_SLICE, size) - 1);
    const results = (await tx.exec()) ?? [];
    return joinChunks(results.slice(2).map(([, v]) => v as Buffer), size);
  });
  const tinyDer = await pki.crl('root', [], { crlNumber: 2, format: 'der' });
  const [, tThreadTiny] = await step(() => parseCrlOffThread(tinyDer, 'asn1'));
  const [, tParseOff] = await step(() => parseCrlOffThread(der, 'asn1'));
  const [, tInlineCold] = await step(() => parseCrl(der, 'asn1'));
  for (let i = 0; i < 2; i++) parseCrl(der, 'asn1');
  const [, tInlineWarm] = await step(() => parseCrl(der, 'asn1'));
  const shared = own(await processRedis(sys.redis.url, { mode: 'runner', logger: silent }), (p) => p.close());
  const store = own(new CrlStore({ ...shared, logger: silent }), (s) => s.stop());
  const [, tStoreStart] = await step(() => store.start());
  console.log(`   worker load: Redis read (STRLEN + MULTI of ${Math.ceil(der.length / REDIS_SLICE)} GETRANGE slices + join) ${fmt(tRead, 0)} ms, ` +
    `parseCrlOffThread ${fmt(tParseOff, 0)} ms; CrlStore.start() in all ${fmt(tStoreStart, 0)} ms (the worker took ${lastRun.load === null ? 'n/a' : fmt(lastRun.load, 0)} ms in the last run)`);
  console.log(`   in parseCrlOffThread: a round trip to the parser thread, kept since its first use (a 1-entry CRL) ${fmt(tThreadTiny, 0)} ms; ` +
    `parseCrl on this thread ${fmt(tInlineCold, 0)} ms on its first call here, ${fmt(tInlineWarm, 0)} ms once the JIT is warm (the kept parser thread warms up the same way)`);
  checkpoint();

  // ------------------------------------------------------------------ 3
  console.log(`\n3. lookups (${LOOKUPS} hits and ${LOOKUPS} misses each, random order, this process)`);
  const crl = parseCrl(big.der, 'asn1');
  const hitHex: string[] = new Array<string>(LOOKUPS);
  const missHex: string[] = new Array<string>(LOOKUPS);
  for (let i = 0; i < LOOKUPS; i++) {
    hitHex[i] = big.serialAt(Math.floor(Math.random() * entries));
    missHex[i] = big.serialAt(entries + i);
  }
  const timeLoop = (fn: () => number): { ns: number; count: number } => {
    const t = performance.now();
    const count = fn();
    return { ns: ((performance.now() - t) * 1e6) / LOOKUPS, count };
  };
  for (let i = 0; i < 200_000; i++) crl.revoked.has(hitHex[i]); // warm-up
  const hHit = timeLoop(() => hitHex.reduce((n, s) => n + (crl.revoked.has(s) ? 1 : 0), 0));
  const hMiss = timeLoop(() => missHex.reduce((n, s) => n + (crl.revoked.has(s) ? 1 : 0), 0));
  // DER serial bytes, as hasBytes gets them from a certificate (views of one buffer).
  // A serial whose first byte is >= 0x80 carries a 00 sign byte in DER.
  const toBytes = (list: string[]): Uint8Array[] => {
    list = list.map((h) => (parseInt(h[0], 16) >= 8 ? '00' + h : h));
    const all = Buffer.from(list.join(''), 'hex');
    const out = new Array<Uint8Array>(list.length);
    let o = 0;
    for (let i = 0; i < list.length; i++) {
      const n = list[i].length / 2;
      out[i] = all.subarray(o, o + n);
      o += n;
    }
    return out;
  };
  const hitBytes = toBytes(hitHex);
  const missBytes = toBytes(missHex);
  for (let i = 0; i < 200_000; i++) crl.revoked.hasBytes(hitBytes[i]);
  const bHit = timeLoop(() => hitBytes.reduce((n, s) => n + (crl.revoked.hasBytes(s) ? 1 : 0), 0));
  const bMiss = timeLoop(() => missBytes.reduce((n, s) => n + (crl.revoked.hasBytes(s) ? 1 : 0), 0));
  if (hHit.count !== LOOKUPS || bHit.count !== LOOKUPS || hMiss.count !== 0 || bMiss.count !== 0) {
    throw new Error(`lookup mismatch: has ${hHit.count}/${hMiss.count}, hasBytes ${bHit.count}/${bMiss.count}`);
  }
  console.log(`   RevokedSerials.has(hex):     hit ${fmt(hHit.ns, 0)} ns, miss ${fmt(hMiss.ns, 0)} ns`);
  console.log(`   RevokedSerials.hasBytes(DER): hit ${fmt(bHit.ns, 0)} ns, miss ${fmt(bMiss.ns, 0)} ns`);
  hitHex.length = 0;
  missHex.length = 0;
  hitBytes.length = 0;
  missBytes.length = 0;

  // CrlStore.check on real chains (leaf, root): the revoked card and the listed cards.
  const root = new X509Certificate(pki.root.certPem);
  const revokedChain = [new X509Certificate(revoked.certPem), root];
  const goodChains = cards.map((c) => [new X509Certificate(c.certPem), root]);
  const now = new Date();
  const settings = { onExpiredCrl: 'reject' as const };
  if (store.check(revokedChain, now, settings).status !== 'revoked' || store.check(goodChains[0], now, settings).status !== 'good') {
    throw new Error(`CrlStore.check gave ${store.check(revokedChain, now, settings).status}/${store.check(goodChains[0], now, settings).status}`);
  }
  const checkLoop = (pick: (i: number) => X509Certificate[], n: number): number => {
    const t = performance.now();
    let revokedSeen = 0;
    for (let i = 0; i < n; i++) if (store.check(pick(i), now, settings).status === 'revoked') revokedSeen++;
    const ns = ((performance.now() - t) * 1e6) / n;
    if (revokedSeen !== 0 && revokedSeen !== n) throw new Error('check results vary');
    return ns;
  };
  checkLoop((i) => goodChains[i & 7], 100_000);
  const cHit = checkLoop(() => revokedChain, LOOKUPS);
  const cMiss = checkLoop((i) => goodChains[i & 7], LOOKUPS);
  // As a session does it: fresh X509Certificate objects, so certInfo() parses them each time.
  const FRESH = 20_000;
  const rawLeaf = revokedChain[0].raw;
  const rawGood = goodChains[0][0].raw;
  const cFreshHit = checkLoop(() => [new X509Certificate(rawLeaf), root], FRESH);
  const cFreshMiss = checkLoop(() => [new X509Certificate(rawGood), root], FRESH);
  console.log(`   CrlStore.check(leaf, root) with parsed certificates: revoked ${fmt(cHit / 1000, 2)} µs, good ${fmt(cMiss / 1000, 2)} µs`);
  console.log(`   CrlStore.check with a new X509Certificate per call (as a session pays; ${FRESH} each): revoked ${fmt(cFreshHit / 1000, 1)} µs, good ${fmt(cFreshMiss / 1000, 1)} µs`);
  await store.stop();
  const lookupUs = Math.max(bHit.ns, bMiss.ns, hHit.ns, hMiss.ns) / 1000;
  const lookupAvgUs = (bHit.ns + bMiss.ns) / 2000;
  summary.push(`lookup per certificate: hasBytes ${fmt(lookupAvgUs * 1000, 0)} ns average (hit ${fmt(bHit.ns, 0)}, miss ${fmt(bMiss.ns, 0)}), has(hex) hit ${fmt(hHit.ns, 0)}/miss ${fmt(hMiss.ns, 0)} ns, ` +
    `CrlStore.check ${fmt(cHit / 1000, 2)}/${fmt(cMiss / 1000, 2)} µs revoked/good — target < ${TARGETS.lookupUs} µs: ${verdict(lookupUs < TARGETS.lookupUs && Math.max(cHit, cMiss) / 1000 < TARGETS.lookupUs)}`);
  checkpoint();

  // ------------------------------------------------------------------ 4
  console.log(`\n4. mutual-TLS session rate, ${CARD_COUNT} cards (root-issued, RSA), STARTTLS + EHLO + one message relayed + QUIT, ${clients} clients`);
  const load = own(await LoadChild.start(), (v) => v.stop());
  onInterrupt(() => load.abort());
  const spec: LoadSpec = {
    kind: 'smtp', host: HOST, port: workerPort, clients, warmupMs: warmup * 1000, measureMs: seconds * 1000,
    maxSessions: Math.ceil((warmup + seconds) * 5000), drainMs: 20_000, sessionTimeoutMs: SESSION_TIMEOUT_MS,
    certs: cards.map((c) => ({ cert: c.chainPem, key: c.keyPem })), users: [], from: 'sender@example.com', to: 'rcpt@example.com', message: MESSAGE,
  };
  let state: 'crl' | 'none' = 'crl';
  const switches: string[] = [];
  const setState = async (want: 'crl' | 'none'): Promise<void> => {
    if (state === want) return;
    const s0 = Date.now();
    if (want === 'none') {
      await sys.api.ok('DELETE', `/v1/crl-sources/${SOURCE}`);
      await waitForOutcome(workerPort, revoked, 'accepted', 15_000);
      const seen = Date.now() - s0;
      await waitForHeartbeat(sys, workerId, null, 15_000);
      switches.push(`deleted: revoked card accepted after ${seen} ms, heartbeat without CRLs after ${Date.now() - s0} ms`);
    } else {
      await sys.api.ok('POST', '/v1/crl-sources', sourceBody);
      await waitForOutcome(workerPort, revoked, 'revoked', 30_000);
      const seen = Date.now() - s0;
      await waitForHeartbeat(sys, workerId, entries, 15_000);
      const at = loadedAt(worker.output(), entries, s0);
      switches.push(`re-created (immediate download by the scheduler job): worker "CRL loaded" ${at === null ? 'n/a' : `${at - s0} ms`}, revoked card refused ${seen} ms after the POST`);
    }
    state = want;
    sys.sink.messages.splice(0);
    await sleep(500);
  };
  const pids: Pids = {
    worker: worker.child.pid, load: load.child.pid, api: sys.apiProc.child.pid, redis: await redisPid(sys.redis.url),
    slapd: Number((await readFile(join(sys.slapd.dir, 'slapd.pid'), 'utf8').catch(() => '')).trim()) || undefined,
  };
  const pct = (x: number): string => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : 'n/a');
  // Sandwiched: no CRL, CRL, no CRL, CRL, ..., no CRL. Each CRL run is compared with the
  // mean of the runs on either side of it, which cancels a linear drift of the machine.
  const sequence: Array<'crl' | 'none'> = ['none'];
  for (let round = 1; round <= rounds; round++) sequence.push('crl', 'none');
  const runs: Array<{ which: 'crl' | 'none'; r: Run }> = [];
  // The worker has seen no load yet: one unmeasured run first (JIT, pools), or the first
  // run of the sequence would be slow for reasons of its own.
  await setState('none');
  const warm = await runLoad(load, spec, pids);
  console.log(`   warm-up run (not counted): ${fmt(warm.rate)} sessions/s, worker CPU ${fmt(warm.cpu.worker, 2)} ms/session`);
  for (const [i, which] of sequence.entries()) {
    checkpoint();
    await setState(which);
    const r = await runLoad(load, spec, pids);
    checkpoint();
    runs.push({ which, r });
    sys.sink.messages.splice(0);
    console.log(`   run ${i + 1}  ${(which === 'crl' ? `${entries}-entry CRL loaded` : 'no CRL source').padEnd(26)} ${fmt(r.rate).padStart(6)} sessions/s  ` +
      `p50 ${fmt(r.p50, 0)} ms  p99 ${fmt(r.p99, 0)} ms  (${r.completed} ok, ${r.errors} errors)`);
    console.log(`          CPU ms/session: worker ${fmt(r.cpu.worker, 2)}, load generator ${fmt(r.cpu.load, 2)}, bench+sink ${fmt(r.cpu.bench, 2)}, API ${fmt(r.cpu.api, 2)}, ` +
      `slapd ${fmt(r.cpu.slapd, 2)}, redis ${fmt(r.cpu.redis, 2)} = ${fmt(totalCpu(r), 2)} | share of a core: worker ${pct(r.share.worker)}, load generator ${pct(r.share.load)}; ` +
      `machine busy ${pct(r.machineShare)} of ${availableParallelism() * 100}%, of which processes outside this benchmark ${pct(r.othersShare)}`);
    for (const e of r.errorSamples) console.log(`          error: ${e}`);
  }
  for (const s of switches) console.log(`   ${s}`);
  const ratios: number[] = [];
  const cpuRatios: number[] = [];
  const workerCpuRatios: number[] = [];
  const relativeRatios: number[] = [];
  for (let i = 1; i < runs.length - 1; i += 2) {
    const [before, crlRun, after] = [runs[i - 1].r, runs[i].r, runs[i + 1].r];
    ratios.push(crlRun.rate / ((before.rate + after.rate) / 2));
    cpuRatios.push((totalCpu(before) + totalCpu(after)) / 2 / totalCpu(crlRun));
    workerCpuRatios.push((before.cpu.worker + after.cpu.worker) / 2 / crlRun.cpu.worker);
    // The load generator does the same work per session either way: its CPU per session
    // gauges how fast the machine was during the run (it varies by ±20% here on its own).
    const relative = (r: Run): number => r.cpu.worker / r.cpu.load;
    relativeRatios.push((relative(before) + relative(after)) / 2 / relative(crlRun));
  }
  const ratio = median(ratios);
  const of = (which: 'crl' | 'none'): Run[] => runs.filter((x) => x.which === which).map((x) => x.r);
  const others = median(runs.map((x) => x.r.othersShare));
  summary.push(`mutual-TLS session rate with/without the CRL: ratio ${fmt(ratio, 3)} (median of ${ratios.map((x) => fmt(x, 3)).join('/')}, each CRL run over the mean of its neighbours; ` +
    `median rates ${fmt(median(of('crl').map((r) => r.rate)))} vs ${fmt(median(of('none').map((r) => r.rate)))} sessions/s) — target ≥ ${TARGETS.ratio}: ${verdict(ratio >= TARGETS.ratio)}`);
  summary.push(`  cost view (rate-independent, same pairing): worker CPU per session ${fmt(median(of('crl').map((r) => r.cpu.worker)), 2)} vs ${fmt(median(of('none').map((r) => r.cpu.worker)), 2)} ms ` +
    `(without/with ${workerCpuRatios.map((x) => fmt(x, 3)).join('/')}); relative to the load generator's CPU per session (cancels the machine's speed) without/with ` +
    `${relativeRatios.map((x) => fmt(x, 3)).join('/')}, median ${fmt(median(relativeRatios), 3)}; all benchmark processes' CPU per session without/with ${cpuRatios.map((x) => fmt(x, 3)).join('/')}; ` +
    `processes outside the benchmark took a median ${pct(others)} of a core meanwhile`);
  const busyOutside = runs.filter((x) => x.r.othersShare > 0.2).length;
  if (busyOutside) summary.push(`  WARNING: in ${busyOutside} of ${runs.length} load runs processes outside this benchmark took more than 20% of a core: the rates, and so the ratio, are not reliable`);

  console.log('\nsummary');
  for (const s of summary) console.log(`  ${s}`);
}

await runBench(main);

// `npx tsx bench/api.ts [--help]`: API throughput and latency on loopback (BENCH_DURATION_MS per route, default 5000).
//
// Starts its own Redis and the API in-process, creates a listener, then for each
// scenario runs CONCURRENCY keep-alive clients for DURATION_MS (after a warm-up) and
// prints requests/s, p50 and p99. The reference is a route returning a constant on the
// same server, behind the same auth hook: the target is reads at >= 50 % of it.
// Last, how long a write takes to reach a worker's configuration follower (SPEC §2: under
// one second): PROPAGATION_WRITES writes one after another, each timed from the request to
// the follower installing its version.
import http from 'node:http';
import { Redis } from 'ioredis';
import { buildApp } from '../api/app.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { processRedis } from '../test/helpers/follow.ts';
import { exitWithUsageIfAsked } from './lib/usage.ts';

exitWithUsageIfAsked(import.meta.url);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);
const WARMUP_MS = 1000;
const CONCURRENCY = 32;
const PROPAGATION_WRITES = 50;
const TOKEN = 'bench-token-0123456789abcdef';

interface Scenario {
  name: string;
  method: 'GET' | 'PUT';
  path: string;
  body?: string;
}

interface Result {
  requests: number;
  errors: number;
  rps: number;
  p50: number;
  p99: number;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

function request(port: number, s: Scenario): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method: s.method,
        path: s.path,
        agent,
        headers: { authorization: `Bearer ${TOKEN}`, ...(s.body && { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s.body) }) },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(s.body);
  });
}

async function run(port: number, s: Scenario, durationMs: number): Promise<Result> {
  const latencies: number[] = [];
  let errors = 0;
  const started = performance.now();
  const deadline = started + durationMs;
  const client = async () => {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const status = await request(port, s);
      latencies.push(performance.now() - t0);
      if (status >= 400) errors++;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, client));
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
  return { requests: latencies.length, errors, rps: latencies.length / elapsed, p50: at(0.5), p99: at(0.99) };
}

const redisServer = await startRedis();
const redis = new Redis(redisServer.url);
const app = await buildApp({ redis, apiToken: TOKEN, logger: false });
app.get('/bench/constant', { schema: { hide: true } }, async () => ({ ok: true }));
await app.listen({ host: '127.0.0.1', port: 0 });
const address = app.server.address();
if (address === null || typeof address === 'string') throw new Error('no port');
const { port } = address;

const listener = {
  name: 'submission',
  address: '127.0.0.1',
  port: 2587,
  hostname: 'gateway.example.com',
  senderGroups: [{ name: 'RELAYLIST', senders: ['127.0.0.0/8', '::1/128'], policy: 'RELAYED' }],
  defaultPolicy: 'RELAYED',
  acceptedDomains: ['example.com'],
  nextHop: { host: '127.0.0.1', port: 2526 },
};
for (const [path, body] of [
  ['/v1/mail-flow-policies', { name: 'RELAYED', action: 'relay' }],
  ['/v1/listeners', listener],
] as const) {
  const res = await app.inject({ method: 'POST', url: path, payload: body, headers: { authorization: `Bearer ${TOKEN}` } });
  if (res.statusCode !== 201) throw new Error(`${path}: ${res.statusCode} ${res.body}`);
}

const scenarios: Scenario[] = [
  { name: 'reference: constant route', method: 'GET', path: '/bench/constant' },
  { name: 'GET /v1/listeners/{name}', method: 'GET', path: '/v1/listeners/submission' },
  { name: 'PUT /v1/listeners/{name}', method: 'PUT', path: '/v1/listeners/submission', body: JSON.stringify(listener) },
];

process.stdout.write(`certgate API bench: ${CONCURRENCY} keep-alive clients, ${DURATION_MS / 1000} s per scenario, Node ${process.version}\n\n`);
const results = new Map<string, Result>();
for (const s of scenarios) {
  await run(port, s, WARMUP_MS);
  const r = await run(port, s, DURATION_MS);
  results.set(s.name, r);
  process.stdout.write(
    `${s.name.padEnd(28)} ${r.rps.toFixed(0).padStart(7)} req/s   p50 ${r.p50.toFixed(2).padStart(6)} ms   p99 ${r.p99.toFixed(2).padStart(6)} ms   (${r.requests} requests, ${r.errors} errors)\n`,
  );
}

const reference = results.get(scenarios[0]!.name)!;
const read = results.get(scenarios[1]!.name)!;
const write = results.get(scenarios[2]!.name)!;
const ratio = read.rps / reference.rps;
process.stdout.write(
  `\nreads: ${(ratio * 100).toFixed(0)} % of the reference (target >= 50 %: ${ratio >= 0.5 ? 'met' : 'NOT met'}); ` +
    `writes: ${((write.rps / reference.rps) * 100).toFixed(0)} % of the reference\n`,
);

// A follower as a worker runs it (mode runner, the default safety-net poll, which a notice beats).
const worker = await processRedis(redisServer.url, { mode: 'runner', name: 'bench-worker' });
/** The write waiting for the follower to install its version. */
let waiting: { version: number; applied: () => void } | null = null;
worker.follower.follow((config) => {
  if (waiting && config.version >= waiting.version) waiting.applied();
});
const waits: number[] = [];
for (let i = 0; i < PROPAGATION_WRITES; i++) {
  const t0 = performance.now();
  const res = await app.inject({ method: 'PUT', url: '/v1/listeners/submission', payload: listener, headers: { authorization: `Bearer ${TOKEN}` } });
  const version = Number(JSON.parse(res.headers.etag as string));
  await new Promise<void>((applied) => {
    // Installed already while the API answered, or announced by follow() later.
    if ((worker.follower.current()?.version ?? 0) >= version) applied();
    else waiting = { version, applied };
  });
  waiting = null;
  waits.push(performance.now() - t0);
}
waits.sort((a, b) => a - b);
const worst = waits.at(-1)!;
process.stdout.write(
  `write → worker follower: p50 ${waits[Math.floor(waits.length / 2)]!.toFixed(1)} ms, max ${worst.toFixed(1)} ms over ${PROPAGATION_WRITES} writes ` +
    `(target < 1000 ms: ${worst < 1000 ? 'met' : 'NOT met'})\n`,
);
await worker.close();

agent.destroy();
await app.close();
redis.disconnect();
await redisServer.stop();

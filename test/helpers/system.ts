// The whole product for integration tests: a real Redis, a real slapd, the API process
// and worker processes started as `npm run start:api` / `start:worker` would start them,
// a test PKI and a sink as next hop. Configuration goes through the HTTP API only.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startRedis, type TestRedis } from './redis.ts';
import { startSlapd, type Slapd } from './slapd.ts';
import { createPki, type Pki } from './pki.ts';
import { startSink, type Sink } from './smtp-sink.ts';
import { WORKER_PORT_STEP, freePort, waitForPort } from './ports.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const TOKEN = 'test-admin-token-0123456789';

export interface Proc {
  child: ChildProcess;
  output: () => string;
  stop(): Promise<void>;
}

/** Spawns `node --import tsx <entry>` from the repository root with extra environment. */
export function spawnNode(entry: string, env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', entry], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (b: Buffer) => {
    if (process.env.CERTGATE_TEST_VERBOSE) process.stderr.write(b);
    out += b.toString();
    if (out.length > 2_000_000) out = out.slice(-1_000_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return {
    child,
    output: () => out,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface ApiClient {
  url: string;
  /** JSON request with the admin token; returns status, headers and parsed body. */
  call<T = unknown>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: T; headers: Headers }>;
  /** Like call, but throws unless the status is 2xx. */
  ok<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
}

export function apiClient(url: string, token = TOKEN): ApiClient {
  const call: ApiClient['call'] = async (method, path, body, headers = {}) => {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON: keep the text */
    }
    return { status: res.status, body: parsed as never, headers: res.headers };
  };
  return {
    url,
    call,
    async ok(method, path, body) {
      const r = await call(method, path, body);
      if (r.status < 200 || r.status > 299) throw new Error(`${method} ${path} → ${r.status}: ${JSON.stringify(r.body)}`);
      return r.body as never;
    },
  };
}

export interface Worker extends Proc {
  offset: number;
  metricsPort: number;
}

export interface System {
  redis: TestRedis;
  slapd: Slapd;
  pki: Pki;
  sink: Sink;
  api: ApiClient;
  apiProc: Proc;
  workers: Worker[];
  /** Starts one more worker with its own port offset (and extra environment); resolves once it reports the current config version. */
  startWorker(env?: Record<string, string>): Promise<Worker>;
  /** Resolves once every running worker has applied the current configuration version. */
  settled(timeoutMs?: number): Promise<void>;
  /**
   * GET /v1/events?<query> until `until` holds for the items (workers write events in the
   * background, so right after a session they may not be there yet); then the items.
   * Throws with the last items seen after `timeoutMs`.
   */
  events<E = Record<string, unknown>>(query: string, until: (items: E[]) => boolean, timeoutMs?: number): Promise<E[]>;
  stop(): Promise<void>;
}

export interface SystemOptions {
  workers?: number;
  /** Extra environment for the API process. */
  apiEnv?: Record<string, string>;
  /** Extra environment for workers. */
  workerEnv?: Record<string, string>;
  /** A Redis the test started (and stops) itself, instead of a throwaway one. */
  redis?: TestRedis;
  /** How every process finds Redis, instead of REDIS_URL at `redis` (e.g. REDIS_SENTINELS). */
  redisEnv?: Record<string, string>;
}

export async function startSystem(opts: SystemOptions = {}): Promise<System> {
  const redis = opts.redis ?? (await startRedis());
  const redisEnv = opts.redisEnv ?? { REDIS_URL: redis.url };
  const [slapd, pki, sink] = await Promise.all([startSlapd(), createPki(), startSink()]);
  const apiPort = await freePort();
  const apiProc = spawnNode('api/main.ts', {
    ...redisEnv, API_HOST: '127.0.0.1', API_PORT: String(apiPort), API_TOKEN: TOKEN, SCHEDULER: 'off', LOG_LEVEL: 'warn',
    ...opts.apiEnv,
  });
  try {
    // Generous: on a busy machine (other tests provisioning directories) tsx compiling the API takes a while.
    await waitForPort(apiPort, 60_000);
  } catch (e) {
    // Stop what was started, or this test process never exits.
    await apiProc.stop();
    await Promise.all([sink.stop(), slapd.stop(), pki.cleanup(), redis.stop()]);
    throw new Error(`API did not start: ${(e as Error).message}\n${apiProc.output()}`, { cause: e });
  }
  const api = apiClient(`http://127.0.0.1:${apiPort}`);
  const workers: Worker[] = [];
  let nextOffset = 0;

  const sys: System = {
    redis, slapd, pki, sink, api, apiProc, workers,
    async startWorker(env = {}) {
      const offset = nextOffset;
      nextOffset += WORKER_PORT_STEP;
      const metricsPort = await freePort();
      const proc = spawnNode('worker/main.ts', {
        ...redisEnv, WORKER_ID: `test-worker-${offset}`, WORKER_PORT_OFFSET: String(offset), METRICS_PORT: String(metricsPort),
        ...opts.workerEnv, ...env,
      });
      const w: Worker = { ...proc, offset, metricsPort };
      workers.push(w);
      try {
        await waitForPort(metricsPort, 60_000);
      } catch (e) {
        throw new Error(`worker did not start: ${(e as Error).message}\n${proc.output()}`, { cause: e });
      }
      // Generous: a busy machine, or WORKER_PROCESSES forking its processes, makes a start slow.
      await sys.settled(20_000);
      return w;
    },
    // Generous: on a busy machine a worker may take seconds to see a write; waiting costs nothing when it is quick.
    async settled(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { version } = await api.ok<{ version: number }>('GET', '/v1/config');
        const { items } = await api.ok<{ items: Array<{ id: string; configVersion: number }> }>('GET', '/v1/workers');
        const ids = new Set(workers.filter((w) => w.child.exitCode === null).map((w) => `test-worker-${w.offset}`));
        const done = [...ids].every((id) => items.some((i) => i.id === id && i.configVersion >= version));
        if (done) return;
        if (Date.now() > deadline) throw new Error(`workers did not reach config version ${version}: ${JSON.stringify(items)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async events<E>(query: string, until: (items: E[]) => boolean, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { items } = await api.ok<{ items: E[] }>('GET', `/v1/events?${query}`);
        if (until(items)) return items;
        if (Date.now() > deadline) throw new Error(`events?${query} never satisfied the condition; last: ${JSON.stringify(items.slice(0, 5))}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      await Promise.all(workers.map((w) => w.stop()));
      await apiProc.stop();
      await Promise.all([sink.stop(), slapd.stop(), pki.cleanup()]);
      if (!opts.redis) await redis.stop();
    },
  };
  try {
    for (let i = 0; i < (opts.workers ?? 1); i++) await sys.startWorker();
  } catch (e) {
    await sys.stop();
    throw e;
  }
  return sys;
}

// An API under test: a throwaway Redis, the app built in-process, a `call` helper that
// remembers every response body (so tests can scan them all for leaked secrets), and
// minimal valid bodies of each resource kind.
import { Redis } from 'ioredis';
import { buildApp } from '../../api/app.ts';
import type { App } from '../../api/context.ts';
import { startRedis, type TestRedis } from './redis.ts';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface Response {
  status: number;
  headers: Record<string, string | string[] | number | undefined>;
  /** Parsed JSON, or undefined for an empty or non-JSON body. */
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- tests read arbitrary JSON
  text: string;
}

export interface CallOptions {
  /** Bearer token; default the admin token; null: no Authorization header. */
  token?: string | null;
  headers?: Record<string, string>;
}

export interface ApiHarness {
  app: App;
  redis: Redis;
  redisServer: TestRedis;
  /** Every response body so far, in order. */
  responses: string[];
  call(method: string, url: string, body?: unknown, opts?: CallOptions): Promise<Response>;
  /** The configuration version now (from GET /v1/config). */
  version(): Promise<number>;
  /** Stops Redis under the running API (close() then leaves it alone). */
  stopRedis(): Promise<void>;
  close(): Promise<void>;
}

export async function startApi(): Promise<ApiHarness> {
  const redisServer = await startRedis();
  const redis = new Redis(redisServer.url, { maxRetriesPerRequest: 1 });
  redis.on('error', () => undefined); // tests that stop Redis see the failures in responses
  const app = await buildApp({ redis, apiToken: ADMIN_TOKEN, logger: false });
  await app.ready();
  const responses: string[] = [];
  let redisStopped = false;
  const call = async (method: string, url: string, body?: unknown, opts: CallOptions = {}): Promise<Response> => {
    const token = opts.token === undefined ? ADMIN_TOKEN : opts.token;
    const res = await app.inject({
      method: method as 'GET',
      url,
      ...(body !== undefined && { payload: JSON.stringify(body) }),
      headers: {
        ...(body !== undefined && { 'content-type': 'application/json' }),
        ...(token !== null && { authorization: `Bearer ${token}` }),
        ...opts.headers,
      },
    });
    responses.push(res.body);
    let parsed: unknown;
    try {
      parsed = res.body === '' ? undefined : JSON.parse(res.body);
    } catch {
      parsed = undefined;
    }
    return { status: res.statusCode, headers: res.headers, body: parsed, text: res.body };
  };
  return {
    app,
    redis,
    redisServer,
    responses,
    call,
    async version() {
      return (await call('GET', '/v1/config')).body.version as number;
    },
    async stopRedis() {
      redisStopped = true;
      await redisServer.stop();
    },
    async close() {
      await app.close();
      redis.disconnect();
      // TestRedis.stop() never resolves a second time (it waits for an exit already seen).
      if (!redisStopped) await redisServer.stop();
    },
  };
}

/** Minimal valid bodies; `overrides` replace top-level properties. */
export const bodies = {
  ldapProfile: (name: string, overrides: Record<string, unknown> = {}) => ({
    name,
    hosts: ['ldap://127.0.0.1:3389'],
    baseDn: 'dc=example,dc=com',
    certificateQuery: { name: 'cac', query: '(&(caccn={cn})(cacserial={sn}))' },
    smtpAuthQuery: { name: 'smtpauth', query: '(uid={u})', allowQuery: '(&(uid={u})(|(!(caccn=*))(cacemergency>={t})))' },
    ...overrides,
  }),
  ldapAuthProfile: (name: string, ldapProfile: string, overrides: Record<string, unknown> = {}) => ({
    name,
    type: 'ldap',
    ldapProfile,
    checkWithLdap: true,
    ...overrides,
  }),
  certificateAuthProfile: (name: string, ldapProfile: string, overrides: Record<string, unknown> = {}) => ({
    name,
    type: 'certificate',
    ldapProfile,
    ...overrides,
  }),
  policy: (name: string, overrides: Record<string, unknown> = {}) => ({ name, action: 'relay', ...overrides }),
  listener: (name: string, port: number, overrides: Record<string, unknown> = {}) => ({
    name,
    address: '127.0.0.1',
    port,
    hostname: 'gateway.example.com',
    defaultPolicy: 'PLAIN',
    nextHop: { host: '127.0.0.1', port: 2526 },
    ...overrides,
  }),
  crlSource: (name: string, overrides: Record<string, unknown> = {}) => ({
    name,
    primaryUrl: `http://crl.example.com/${name}.crl`,
    ...overrides,
  }),
};

// deploy/prometheus/alerts.yml and deploy/grafana/certgate.json: valid for promtool, their own
// rule unit tests pass, and every metric they use is one the API or a worker exports (read from
// the running processes' /metrics). The metrics the alerts need carry values: relay latency and
// next-hop failures from a relayed and a failed message, CRL download state and worker
// heartbeats from Redis.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { startSink, type Sink } from './helpers/smtp-sink.ts';
import { freePort, waitForPort } from './helpers/ports.ts';
import { apiClient, spawnNode, TOKEN, type ApiClient, type Proc } from './helpers/system.ts';
import { swaks } from './helpers/smtp-clients.ts';

const run = promisify(execFile);
const DEPLOY = fileURLToPath(new URL('../deploy/', import.meta.url));
const ALERTS = `${DEPLOY}prometheus/alerts.yml`;
const DASHBOARD = `${DEPLOY}grafana/certgate.json`;

let redis: TestRedis;
let sink: Sink;
let apiProc: Proc;
let workerProc: Proc;
let api: ApiClient;
let metricsPort: number;
let smtpPort: number;
let crlDir: string;

async function promtool(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run('promtool', args, { cwd: `${DEPLOY}prometheus`, timeout: 60_000 });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new Error('promtool not found: install the Debian package prometheus (scripts/ensure-deps.sh --test)', { cause: err });
    return { code: typeof e.code === 'number' ? e.code : 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}${e.message}` };
  }
}

/** `# TYPE name kind` lines of a Prometheus text exposition. */
function exported(text: string): Map<string, string> {
  return new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1] as string, m[2] as string]));
}

/** The certgate_ metric names in PromQL expressions, with the series suffixes of histograms. */
function used(exprs: string[]): Set<string> {
  return new Set(exprs.flatMap((e) => [...e.matchAll(/\b(certgate_[a-z0-9_]+)\b/g)].map((m) => m[1] as string)));
}

function isExported(name: string, types: Map<string, string>): boolean {
  if (types.has(name)) return true;
  const base = name.replace(/_(bucket|count|sum)$/, '');
  return base !== name && types.get(base) === 'histogram';
}

async function scrape(): Promise<{ api: string; worker: string }> {
  const a = await fetch(`${api.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  const w = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  assert.equal(a.status, 200);
  assert.equal(w.status, 200);
  return { api: await a.text(), worker: await w.text() };
}

async function until(what: string, ok: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  crlDir = await mkdtemp(path.join(os.tmpdir(), 'certgate-monitoring-'));
  redis = await startRedis();
  sink = await startSink();
  const apiPort = await freePort();
  metricsPort = await freePort();
  smtpPort = await freePort();
  apiProc = spawnNode('api/main.ts', { REDIS_URL: redis.url, API_PORT: String(apiPort), API_TOKEN: TOKEN, LOG_LEVEL: 'warn', CRL_FILE_ROOT: crlDir });
  workerProc = spawnNode('worker/main.ts', { REDIS_URL: redis.url, WORKER_ID: 'monitoring-worker', METRICS_PORT: String(metricsPort), LOG_LEVEL: 'warn' });
  await Promise.all([waitForPort(apiPort, 30_000), waitForPort(metricsPort, 30_000)]).catch((err: Error) => {
    throw new Error(`${err.message}\n--- API\n${apiProc.output()}\n--- worker\n${workerProc.output()}`, { cause: err });
  });
  api = apiClient(`http://127.0.0.1:${apiPort}`);
  await api.ok('POST', '/v1/mail-flow-policies', { name: 'OPEN', action: 'relay', tls: 'off', requireSmtpAuth: false });
  await api.ok('POST', '/v1/listeners', {
    name: 'relay', address: '127.0.0.1', port: smtpPort, hostname: 'gateway.example.com', tls: null, smtpAuthProfile: null,
    senderGroups: [], defaultPolicy: 'OPEN', nextHop: { host: '127.0.0.1', port: sink.port, tls: 'none', caPem: null },
  });
  // Enabled, with a URL that cannot be read: a failing download with no CRL in force.
  await api.ok('POST', '/v1/crl-sources', { name: 'unreadable', fileType: 'asn1', primaryUrl: `file://${crlDir}/missing.crl`, schedule: { everySeconds: 600 } });
  await waitForPort(smtpPort, 15_000);
});

after(async () => {
  await workerProc?.stop();
  await apiProc?.stop();
  await sink?.stop();
  await redis?.stop();
  if (crlDir) await rm(crlDir, { recursive: true, force: true });
});

describe('Prometheus alerting rules', () => {
  test('promtool check rules accepts deploy/prometheus/alerts.yml', async () => {
    const r = await promtool(['check', 'rules', 'alerts.yml']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS: \d+ rules found/);
  });

  test('promtool test rules: each alert fires when it should and not before (alerts.test.yml)', async () => {
    const r = await promtool(['test', 'rules', 'alerts.test.yml']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS/);
  });

  test('the example scrape configuration is valid (promtool check config --syntax-only)', async () => {
    const r = await promtool(['check', 'config', '--syntax-only', 'prometheus.yml']);
    assert.equal(r.code, 0, r.out);
  });

  test('every alert the issue asks for exists', async () => {
    const doc = YAML.parse(await readFile(ALERTS, 'utf8')) as { groups: Array<{ rules: Array<{ alert: string; expr: string; labels: { severity: string } }> }> };
    const alerts = doc.groups.flatMap((g) => g.rules);
    for (const name of ['CertgateCrlExpired', 'CertgateCrlNearNextUpdate', 'CertgateCrlSchedulerStalled', 'CertgateCrlDownloadFailing', 'CertgateWorkersOnDifferentConfigVersions',
      'CertgateNoWorkerHeartbeat', 'CertgateNextHopErrors', 'CertgateDirectoryUnavailable']) {
      assert.ok(alerts.some((a) => a.alert === name), name);
    }
    assert.ok(alerts.every((a) => ['warning', 'critical'].includes(a.labels.severity)));
  });
});

describe('Grafana dashboard', () => {
  test('deploy/grafana/certgate.json: panels with queries on the datasource variable, the sections the issue asks for', async () => {
    const d = JSON.parse(await readFile(DASHBOARD, 'utf8')) as {
      uid: string; templating: { list: Array<{ name: string; type: string }> };
      panels: Array<{ id: number; type: string; title: string; datasource?: { uid: string }; targets?: Array<{ expr: string }> }>;
    };
    assert.equal(d.uid, 'certgate');
    assert.deepEqual(d.templating.list.map((v) => [v.name, v.type]), [['datasource', 'datasource']]);
    assert.equal(new Set(d.panels.map((p) => p.id)).size, d.panels.length, 'panel ids are unique');
    const graphs = d.panels.filter((p) => p.type !== 'row');
    for (const p of graphs) {
      assert.equal(p.datasource?.uid, '${datasource}', p.title);
      assert.ok((p.targets ?? []).length > 0 && p.targets!.every((t) => t.expr.includes('certgate_')), p.title);
    }
    const titles = graphs.map((p) => p.title).join('\n');
    for (const topic of [/method and outcome/, /failures/i, /throttled/i, /Relay latency/, /Next-hop errors/, /CRL age/, /nextUpdate/, /LDAP latency/, /LDAP errors/, /version per worker/]) {
      assert.match(titles, topic);
    }
  });
});

describe('metrics the monitoring files use', () => {
  test('are all exported by the API or the worker', async () => {
    const { api: a, worker: w } = await scrape();
    const types = new Map([...exported(a), ...exported(w)]);
    const alertExprs = (YAML.parse(await readFile(ALERTS, 'utf8')) as { groups: Array<{ rules: Array<{ expr: string }> }> }).groups.flatMap((g) => g.rules.map((r) => r.expr));
    const dashExprs = (JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: Array<{ targets?: Array<{ expr: string }> }> }).panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    const names = used([...alertExprs, ...dashExprs]);
    assert.ok(names.size >= 15, [...names].join(' '));
    const missing = [...names].filter((n) => !isExported(n, types));
    assert.deepEqual(missing, [], `used but exported by neither process: ${missing.join(', ')}`);
  });

  test('relay latency and next-hop failures count relayed and failed messages', async () => {
    const sent = await swaks(['--server', `127.0.0.1:${smtpPort}`, '--from', 'a@example.com', '--to', 'b@example.org']);
    assert.equal(sent.last?.code, 221, sent.transcript);
    await until('the relay latency observation', async () => /^certgate_relay_duration_seconds_count\{outcome="accepted"\} 1$/m.test((await scrape()).worker));
    const listener = await api.ok<Record<string, unknown>>('GET', '/v1/listeners/relay');
    await api.ok('PUT', '/v1/listeners/relay', { ...listener, nextHop: { host: '127.0.0.1', port: await freePort(), tls: 'none', caPem: null } });
    const { version } = await api.ok<{ version: number }>('GET', '/v1/config');
    await until('the worker to apply the change', async () => new RegExp(`^certgate_config_version ${version}$`, 'm').test((await scrape()).worker));
    const failed = await swaks(['--server', `127.0.0.1:${smtpPort}`, '--from', 'a@example.com', '--to', 'b@example.org']);
    assert.equal(failed.replyTo('.')?.code ?? failed.replies.find((r) => r.code === 451)?.code, 451, failed.transcript);
    await until('the next-hop failure', async () => /^certgate_next_hop_failures_total\{stage="connect",class="4xx"\} 1$/m.test((await scrape()).worker));
    assert.match((await scrape()).worker, /^certgate_relay_duration_seconds_count\{outcome="refused-4xx"\} 1$/m);
  });

  test('the API exports CRL download state and worker heartbeats from Redis', async () => {
    await api.call('POST', '/v1/crl-sources/unreadable/refresh');
    const { version } = await api.ok<{ version: number }>('GET', '/v1/config');
    const versionLine = new RegExp(`^certgate_worker_config_version\\{worker="monitoring-worker"\\} ${version}$`, 'm');
    // The worker's heartbeat reaches Redis (and so the API) a moment after it applied the version.
    await until('CRL and worker gauges', async () => {
      const { api: a } = await scrape();
      return /^certgate_crl_download_failing\{source="unreadable"\} 1$/m.test(a) && /^certgate_workers_alive 1$/m.test(a) && versionLine.test(a);
    });
    const { api: a } = await scrape();
    assert.match(a, /^certgate_crl_schedule_interval_seconds\{source="unreadable"\} 600$/m);
    assert.match(a, /^certgate_crl_last_attempt_timestamp_seconds\{source="unreadable"\} \d+(\.\d+)?$/m);
    assert.doesNotMatch(a, /^certgate_crl_this_update_timestamp_seconds\{/m, 'no CRL in force: no thisUpdate series (CertgateCrlMissing fires)');
    assert.match(a, versionLine);
  });
});

// docker-compose.yml, Dockerfile and .dockerignore: validated by `docker compose config -q` (or
// `docker-compose config -q`) when a compose client is on PATH (no engine needed), and always checked
// for the structure the README promises (services, no fixed host port on the worker, healthchecks).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseDocument } from 'yaml';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const COMPOSE_FILE = path.join(ROOT, 'docker-compose.yml');

// ---------------------------------------------------------------- reading the document (the yaml package)
type Yaml = string | number | boolean | null | Yaml[] | { [k: string]: Yaml };
/** docker-compose.yml as compose reads it (YAML 1.1 merge keys included). */
function parseYaml(source: string): Yaml {
  const doc = parseDocument(source, { uniqueKeys: true, merge: true });
  if (doc.errors.length > 0) throw new Error(`docker-compose.yml: ${doc.errors.map((e) => e.message).join('; ')}`);
  return doc.toJS() as Yaml;
}

function obj(v: Yaml | undefined, what: string): { [k: string]: Yaml } {
  assert.ok(v !== null && typeof v === 'object' && !Array.isArray(v), `${what} must be a mapping`);
  return v as { [k: string]: Yaml };
}

/** Environment as a map, from either the mapping or the `KEY=value` list form. */
function envOf(service: { [k: string]: Yaml }): Record<string, string> {
  const env = service.environment;
  if (env === undefined || env === null) return {};
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((e) => String(e)).map((e) => [e.split('=')[0]!, e.slice(e.indexOf('=') + 1)]));
  }
  return Object.fromEntries(Object.entries(obj(env, 'environment')).map(([k, v]) => [k, String(v)]));
}

function commandText(v: Yaml | undefined): string {
  return Array.isArray(v) ? v.join(' ') : String(v ?? '');
}

// ---------------------------------------------------------------- compose client
async function composeCommand(): Promise<{ cmd: string; pre: string[]; version: string } | { missing: string }> {
  const reasons: string[] = [];
  for (const [cmd, pre] of [['docker', ['compose']], ['docker-compose', []]] as const) {
    try {
      const r = await run(cmd, [...pre, 'version'], { timeout: 30_000 });
      return { cmd, pre: [...pre], version: r.stdout.trim().split('\n')[0] ?? '' };
    } catch (e) {
      const err = e as { code?: string | number; stderr?: string; message: string };
      reasons.push(`${[cmd, ...pre].join(' ')}: ${err.code === 'ENOENT' ? 'not on PATH' : (err.stderr || err.message).trim().split('\n')[0]}`);
    }
  }
  return { missing: reasons.join('; ') };
}

async function composeConfig(c: { cmd: string; pre: string[] }, file: string): Promise<{ code: number; out: string }> {
  try {
    const r = await run(c.cmd, [...c.pre, '-f', file, 'config', '-q'], { timeout: 60_000, cwd: path.dirname(file) });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string; message: string };
    return { code: typeof err.code === 'number' ? err.code : -1, out: `${err.stdout ?? ''}${err.stderr ?? err.message}` };
  }
}

// ---------------------------------------------------------------- tests
test('docker-compose.yml: services redis, ldap, api, worker as documented', async () => {
  const doc = obj(parseYaml(await readFile(COMPOSE_FILE, 'utf8')), 'the document');
  const services = obj(doc.services, 'services');
  for (const name of ['redis', 'ldap', 'api', 'worker']) {
    const s = obj(services[name], `services.${name}`);
    assert.ok(s.healthcheck, `services.${name} has a healthcheck`);
    assert.ok(s.image || s.build, `services.${name} has an image or a build`);
  }
  const redis = obj(services.redis, 'redis');
  assert.match(String(redis.image), /^redis:7/);

  const ldap = obj(services.ldap, 'ldap');
  assert.match(String(ldap.image), /^(osixia\/openldap|bitnami\/openldap)/);
  const ldapEnv = envOf(ldap);
  assert.ok(Object.values(ldapEnv).some((v) => /example\.com|dc=example,dc=com/.test(v)), 'ldap: example.com base DN');
  assert.ok(Object.keys(ldapEnv).some((k) => /ADMIN_PASSWORD/.test(k)), 'ldap: admin password');

  const api = obj(services.api, 'api');
  assert.equal(api.build, '.');
  const apiEnv = envOf(api);
  assert.match(apiEnv.API_TOKEN ?? '', /^\$\{API_TOKEN:-.+\}$/, 'API_TOKEN from the environment, with a local default');
  assert.equal(apiEnv.REDIS_URL, 'redis://redis:6379');
  assert.equal(apiEnv.API_HOST, '0.0.0.0');
  assert.ok(Array.isArray(api.ports) && api.ports.some((p) => /(^|:)8080:8080$/.test(String(p))), 'api publishes 8080');
  assert.equal(api.command ?? null, null, 'api uses the image default command (npm run start:api)');

  const worker = obj(services.worker, 'worker');
  assert.equal(worker.image, api.image, 'worker uses the same image as api');
  assert.match(commandText(worker.command), /npm run start:worker/);
  assert.equal(worker.ports, undefined, 'worker publishes no host port (docker compose up --scale worker=3)');
  assert.equal(worker.container_name, undefined, 'worker has no fixed container name (it scales)');
  assert.equal(envOf(worker).REDIS_URL, 'redis://redis:6379');
  assert.ok(!('network_mode' in worker) || worker.network_mode !== 'host', 'worker is not on the host network');
});

test('Dockerfile and .dockerignore', async () => {
  const dockerfile = await readFile(path.join(ROOT, 'Dockerfile'), 'utf8');
  const lines = dockerfile.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  assert.match(lines[0] ?? '', /^FROM node:20-bookworm-slim\b/);
  assert.ok(lines.some((l) => /^RUN .*\bnpm ci\b/.test(l)), 'npm ci');
  assert.ok(lines.some((l) => /^COPY (\. \.|\.\s+\/app)/.test(l)), 'copies the source');
  const cmd = lines.filter((l) => l.startsWith('CMD ')).pop() ?? '';
  assert.match(cmd, /start:api/);
  const ignore = (await readFile(path.join(ROOT, '.dockerignore'), 'utf8')).split('\n').map((l) => l.trim());
  for (const entry of ['node_modules', '.git']) assert.ok(ignore.includes(entry), `.dockerignore lists ${entry}`);
});

test('docker compose config -q accepts docker-compose.yml (when a compose client is on PATH)', async (t: TestContext) => {
  const c = await composeCommand();
  if ('missing' in c) {
    const dockerOnPath = await run('docker', ['--version']).then((r) => r.stdout.trim(), () => 'absent');
    t.diagnostic(`no compose client, only the structural checks ran (docker: ${dockerOnPath}; ${c.missing})`);
    // Still assert what can be: the file parses as YAML and names the services.
    const doc = obj(parseYaml(await readFile(COMPOSE_FILE, 'utf8')), 'the document');
    assert.deepEqual(Object.keys(obj(doc.services, 'services')).sort(), ['api', 'haproxy', 'ldap', 'redis', 'redis-replica', 'sentinel-1', 'sentinel-2', 'sentinel-3', 'worker']);
    return;
  }
  t.diagnostic(`compose client: ${[c.cmd, ...c.pre].join(' ')} (${c.version})`);
  const ok = await composeConfig(c, COMPOSE_FILE);
  assert.equal(ok.code, 0, ok.out);

  // The client really validates: a broken file is refused.
  const dir = await mkdtemp(path.join(tmpdir(), 'compose-'));
  try {
    const broken = path.join(dir, 'docker-compose.yml');
    await writeFile(broken, 'services:\n  x:\n    image: redis:7\n    ports: 12\n    healthcheck: yes please\n');
    const bad = await composeConfig(c, broken);
    assert.notEqual(bad.code, 0, `a broken compose file must be refused: ${bad.out}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// The `certgate` command line driven as an administrator runs it (`node cli/certgate.mjs`,
// and once through `npx certgate`), against a real API, worker, Redis, slapd and sink in
// deployment C: exit codes, tables, --json, configuration as code, the directory test, CRLs,
// events (also --follow) and doctor finding what is broken.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, TOKEN, type System } from './helpers/system.ts';
import { swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import type { Issued } from './helpers/pki.ts';
import { cardHolder, configureDeploymentC, people } from './fixtures/deployments.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
let sys: System;
let port: number;
let dir: string;
const certs: Record<string, Issued> = {};

interface Run { code: number | null; stdout: string; stderr: string }

/** Runs the CLI; resolves when it exits (or kills it after `timeoutMs`). */
function cli(args: string[], o: { env?: Record<string, string>; input?: string; timeoutMs?: number; command?: string[] } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const [bin, ...pre] = o.command ?? [process.execPath, 'cli/certgate.mjs'];
    const child = spawn(bin as string, [...pre, ...args], {
      cwd: ROOT,
      env: { ...process.env, CERTGATE_URL: sys.api.url, CERTGATE_TOKEN: TOKEN, ...o.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(o.input ?? '');
  });
}

const show = (r: Run) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

async function crlFile(revoked: string[], crlNumber: number): Promise<void> {
  await writeFile(path.join(dir, 'root.crl'), await sys.pki.crl('root', revoked.map((serial) => ({ serial })), { crlNumber, format: 'der' }));
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-cli-'));
  sys = await startSystem({ workers: 1, apiEnv: { SCHEDULER: 'on', CRL_FILE_ROOT: dir } });
  certs.jdoe = await sys.pki.client({ cn: 'LAST.FIRST.1234567890' });
  certs.unlisted = await sys.pki.client({ cn: 'NOT.LISTED.8888888888' });
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', certs.jdoe)]));
  port = await freePort();
  await configureDeploymentC(sys, {
    port,
    policy: { name: 'RELAYED', action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: true, smtpAuthRequiresTls: true, maxMessageBytes: 1_000_000, maxRecipients: 10 },
  });
  await crlFile([], 1);
  await sys.api.ok('POST', '/v1/crl-sources', { name: 'root-crl', fileType: 'asn1', primaryUrl: `file://${dir}/root.crl`, secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true });
  await sys.api.ok('POST', '/v1/crl-sources/root-crl/refresh');
  await sys.settled();
});

after(async () => {
  await sys?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('certgate CLI basics', () => {
  test('npx certgate --help (package.json bin) lists every command and the exit codes', async () => {
    const r = await cli(['--help'], { command: ['npx', '--no-install', 'certgate'] });
    assert.equal(r.code, 0, show(r));
    for (const c of ['status', 'workers', 'config', 'ldap', 'crl', 'events', 'doctor']) assert.match(r.stdout, new RegExp(`^  ${c}\\b`, 'm'), c);
    assert.match(r.stdout, /CERTGATE_URL/);
    assert.match(r.stdout, /Exit codes:/);
  });

  test('usage errors exit 2, a wrong token 4, an unreachable API 3', async () => {
    assert.equal((await cli(['no-such-command'])).code, 2);
    assert.equal((await cli(['events', '--outcome', 'maybe'])).code, 2);
    const denied = await cli(['workers'], { env: { CERTGATE_TOKEN: 'wrong' } });
    assert.equal(denied.code, 4, show(denied));
    assert.match(denied.stderr, /refused the token/);
    const unreachable = await cli(['status'], { env: { CERTGATE_URL: `http://127.0.0.1:${await freePort()}` } });
    assert.equal(unreachable.code, 3, show(unreachable));
    assert.match(unreachable.stderr, /cannot reach the certgate API .*ECONNREFUSED/);
  });

  test('status: API, configuration, workers and CRLs at a glance', async () => {
    const r = await cli(['status']);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^ok\s+API\s+http:\/\/127\.0\.0\.1:\d+, Redis up/m);
    assert.match(r.stdout, /^ok\s+workers\s+1 running, \d+ session\(s\) open; all on version \d+/m);
    assert.match(r.stdout, /^ok\s+CRL root-crl\s+CRL number 1, 0 revoked, next update in/m);
    const j = JSON.parse((await cli(['--json', 'status'])).stdout) as { checks: Array<{ verdict: string; subject: string }> };
    assert.ok(j.checks.every((c) => c.verdict === 'ok'), JSON.stringify(j));
  });

  test('workers: a table, or JSON', async () => {
    const r = await cli(['workers']);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^WORKER\s+VERSION\s+LISTENERS/m);
    assert.match(r.stdout, new RegExp(`^test-worker-0\\s+\\d+\\s+submission@127\\.0\\.0\\.1:${port}`, 'm'));
    const j = JSON.parse((await cli(['workers', '--json'])).stdout) as { items: Array<{ id: string }> };
    assert.deepEqual(j.items.map((w) => w.id), ['test-worker-0']);
  });
});

describe('certgate config: the configuration as a file', () => {
  test('export → diff (no change) → edit → diff (exit 1) → dry-run apply (nothing written) → apply --yes', async () => {
    const file = path.join(dir, 'certgate.yaml');
    const exported = await cli(['config', 'export', '-o', file]);
    assert.equal(exported.code, 0, show(exported));
    const text = await readFile(file, 'utf8');
    assert.match(text, /^# certgate configuration exported from .* at version \d+/);
    assert.doesNotMatch(text, /passwordSet|privateKeySet|admin-secret|PRIVATE KEY/);
    assert.match(text, /certificatePem: \|/, 'PEMs are YAML block scalars');

    const same = await cli(['config', 'diff', file]);
    assert.equal(same.code, 0, show(same));
    assert.match(same.stdout, /^No changes: the file matches configuration version \d+\./m);

    const doc = YAML.parse(text) as { mailFlowPolicies: Array<{ name: string; maxRecipients: number }>; crlSources: unknown[] };
    doc.mailFlowPolicies[0]!.maxRecipients = 20;
    doc.crlSources.reverse(); // order of a collection is no change
    await writeFile(file, YAML.stringify(doc));
    const diff = await cli(['config', 'diff', file]);
    assert.equal(diff.code, 1, show(diff));
    assert.match(diff.stdout, /^ {2}~ mail flow policy RELAYED\n {6}maxRecipients: 10 → 20$/m);

    const { version } = await sys.api.ok<{ version: number }>('GET', '/v1/config');
    const dry = await cli(['config', 'apply', file]);
    assert.equal(dry.code, 0, show(dry));
    assert.match(dry.stdout, /Dry run: nothing was changed\. Run again with --yes/);
    assert.equal((await sys.api.ok<{ version: number }>('GET', '/v1/config')).version, version);

    const applied = await cli(['config', 'apply', file, '--yes']);
    assert.equal(applied.code, 0, show(applied));
    assert.match(applied.stdout, new RegExp(`Applied: configuration version ${version + 1}\\.\\n1 worker\\(s\\) run version ${version + 1}\\.`));
    const policy = await sys.api.ok<{ maxRecipients: number }>('GET', '/v1/mail-flow-policies/RELAYED');
    assert.equal(policy.maxRecipients, 20);
    const bind = await sys.api.ok<{ bind: { passwordSet: boolean } }>('GET', '/v1/ldap-profiles/corp');
    assert.equal(bind.bind.passwordSet, true, 'a secret left out of the file is kept');
    assert.equal((await cli(['config', 'diff', file])).code, 0);
  });

  test('secrets by reference: $env and $file; an unset variable changes nothing (exit 2)', async () => {
    const file = path.join(dir, 'refs.json');
    const config = JSON.parse((await cli(['config', 'export', '--format', 'json'])).stdout) as { ldapProfiles: Array<{ bind: Record<string, unknown> }>; listeners: Array<{ tls: Record<string, unknown> }> };
    config.ldapProfiles[0]!.bind.password = { $env: 'CLI_TEST_BIND_PASSWORD' };
    config.listeners[0]!.tls.certificatePem = { $file: 'server.pem' };
    const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
    await writeFile(path.join(dir, 'server.pem'), server.certPem);
    config.listeners[0]!.tls.privateKeyPem = { $file: 'server.key' };
    await writeFile(path.join(dir, 'server.key'), server.keyPem);
    await writeFile(file, JSON.stringify(config));

    const before = (await sys.api.ok<{ version: number }>('GET', '/v1/config')).version;
    const unset = await cli(['config', 'apply', '--yes', file]);
    assert.equal(unset.code, 2, show(unset));
    assert.match(unset.stderr, /ldapProfiles\/corp\/bind\/password: environment variable CLI_TEST_BIND_PASSWORD is not set/);

    const wrong = await cli(['config', 'diff', file], { env: { CLI_TEST_BIND_PASSWORD: 'not-the-password' } });
    assert.equal(wrong.code, 1, show(wrong));
    assert.match(wrong.stdout, /~ listener submission\n\s+tls\/certificatePem: <PEM certificate, \d+ chars, sha256 [0-9a-f]{12}> → <PEM certificate/);
    assert.match(wrong.stdout, /ldapProfiles\/corp\/bind\/password\s+from \$env CLI_TEST_BIND_PASSWORD/);
    assert.doesNotMatch(wrong.stdout + wrong.stderr, /not-the-password|BEGIN (EC )?PRIVATE KEY/);
    assert.equal((await sys.api.ok<{ version: number }>('GET', '/v1/config')).version, before, 'diff writes nothing');

    const applied = await cli(['config', 'apply', '--yes', file], { env: { CLI_TEST_BIND_PASSWORD: sys.slapd.rootPassword } });
    assert.equal(applied.code, 0, show(applied));
    const stored = await sys.api.ok<{ tls: { certificatePem: string } }>('GET', '/v1/listeners/submission');
    assert.equal(stored.tls.certificatePem, server.certPem);
    // The directory still works with the password given by reference.
    const t = await cli(['ldap', 'test', 'corp', '--user', 'alice', '--password-stdin'], { input: 'alice-pw\n' });
    assert.equal(t.code, 0, show(t));
  });

  test('an invalid file: the API names the field (exit 5), nothing is written', async () => {
    const file = path.join(dir, 'bad.yaml');
    const config = YAML.parse((await cli(['config', 'export'])).stdout) as { mailFlowPolicies: Array<Record<string, unknown>> };
    config.mailFlowPolicies[0]!.tls = 'sometimes';
    await writeFile(file, YAML.stringify(config));
    const r = await cli(['config', 'apply', '--yes', file]);
    assert.equal(r.code, 5, show(r));
    assert.match(r.stderr, /400 .*mailFlowPolicies\/0\/tls/);
    const broken = path.join(dir, 'broken.yaml');
    await writeFile(broken, 'listeners: [\n');
    const parse = await cli(['config', 'diff', broken]);
    assert.equal(parse.code, 2, show(parse));
  });
});

describe('certgate ldap test, crl, events', () => {
  test('ldap test --user / --cert say what a session would get', async () => {
    const ok = await cli(['ldap', 'test', 'corp', '--user', 'alice', '--password-stdin'], { input: 'alice-pw\n' });
    assert.equal(ok.code, 0, show(ok));
    assert.match(ok.stdout, /^alice: the password is right and the allow query admits the user \(user id alice\): AUTH gets 235\./m);
    const card = await cli(['ldap', 'test', 'corp', '--user', 'bob', '--password-stdin'], { input: 'bob-pw' });
    assert.equal(card.code, 1, show(card));
    assert.match(card.stdout, /bob: the password is right, but the allow query does not admit the user/);
    const wrong = await cli(['ldap', 'test', 'corp', '--user', 'alice', '--password-stdin', '--json'], { input: 'nope\n' });
    assert.equal(wrong.code, 1);
    assert.equal((JSON.parse(wrong.stdout) as { outcome: string }).outcome, 'invalid-credentials');
    const noPassword = await cli(['ldap', 'test', 'corp', '--user', 'alice']);
    assert.equal(noPassword.code, 2, show(noPassword));

    const listed = await cli(['ldap', 'test', 'corp', '--cert', certs.jdoe!.certPath]);
    assert.equal(listed.code, 0, show(listed));
    assert.match(listed.stdout, /^The certificate maps to user jdoe \(uid=jdoe,ou=people,dc=example,dc=com\)/m);
    assert.match(listed.stdout, /^\s+\{cn\}\s+LAST\.FIRST\.1234567890$/m);
    const unlisted = await cli(['ldap', 'test', 'corp', '--cert', certs.unlisted!.certPath]);
    assert.equal(unlisted.code, 1, show(unlisted));
    assert.match(unlisted.stdout, /The directory lists no entry for this certificate/);
    assert.equal((await cli(['ldap', 'test', 'nope', '--cert', certs.jdoe!.certPath])).code, 5);
  });

  test('crl status and refresh: taken, and not taken (the previous CRL stays)', async () => {
    await crlFile([certs.unlisted!.serial], 2);
    const r = await cli(['crl', 'refresh']);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^root-crl: CRL number 2 from file:\/\/.*root\.crl, 1 revoked, next update in/m);
    assert.match(r.stderr, /\[1\/1\] downloading the CRL of root-crl/, 'progress on stderr');
    const status = await cli(['crl', 'status']);
    assert.equal(status.code, 0, show(status));
    assert.match(status.stdout, /^ok\s+root-crl\s+CN=/m);
    await writeFile(path.join(dir, 'root.crl'), 'not a CRL');
    const refused = await cli(['crl', 'refresh', 'root-crl']);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stdout, /^root-crl: not taken: .+ \(the CRL of .+ ago stays in force\)$/m);
    const warn = await cli(['crl', 'status', 'root-crl', '--json']);
    const item = (JSON.parse(warn.stdout) as { items: Array<{ health: { verdict: string; message: string } }> }).items[0]!;
    assert.equal(item.health.verdict, 'warn');
    assert.match(item.health.message, /the last download failed/);
    await crlFile([certs.unlisted!.serial], 3);
    assert.equal((await cli(['crl', 'refresh', 'root-crl'])).code, 0);
  });

  test('events: filtered table, JSON, and --follow prints new events as they come', async () => {
    const s = await swaks(['--server', `127.0.0.1:${port}`, '--tls', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'wrong', '--from', 'a@example.com', '--to', 'b@example.com']);
    assert.equal(s.replyTo('AUTH')?.code, 535, s.transcript);
    const deadline = Date.now() + 10_000;
    let r: Run;
    do r = await cli(['events', '--user', 'alice', '--outcome', 'rejected', '--since', '10m']);
    while (!/535/.test(r.stdout) && Date.now() < deadline);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^TIME\s+LISTENER\s+CLIENT\s+COMMAND\s+METHOD\s+USER\s+OUTCOME\s+REASON\s+REPLY/m);
    assert.match(r.stdout, /submission\s+127\.0\.0\.1\s+AUTH\s+smtp-auth\s+alice\s+rejected\s+.*535/);
    const j = JSON.parse((await cli(['events', '--json', '--user', 'alice', '--limit', '5'])).stdout) as Array<{ user: string }>;
    assert.ok(j.length > 0 && j.every((e) => e.user === 'alice'));

    // --follow: started now, it must print a session that happens after it started.
    const child = spawn(process.execPath, ['cli/certgate.mjs', 'events', '--follow', '--json', '--user', 'jdoe', '--since', '1s'], {
      cwd: ROOT, env: { ...process.env, CERTGATE_URL: sys.api.url, CERTGATE_TOKEN: TOKEN }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let progress = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (progress += b.toString()));
    try {
      const started = Date.now();
      while (!progress.includes('following events') && Date.now() - started < 20_000 && child.exitCode === null) await new Promise((res) => setTimeout(res, 100));
      assert.match(progress, /following events \(Ctrl-C to stop\)/);
      const sent = await swaks(['--server', `127.0.0.1:${port}`, '--tls', '--tls-cert', certs.jdoe!.certPath, '--tls-key', certs.jdoe!.keyPath, '--from', 'j@example.com', '--to', 'x@example.org']);
      assert.equal(sent.replyTo('MAIL')?.code, 250, sent.transcript);
      const until = Date.now() + 20_000;
      while (!out.includes('"user": "jdoe"') && !out.includes('"user":"jdoe"') && Date.now() < until) await new Promise((res) => setTimeout(res, 100));
      const lines = out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { user: string; method: string });
      assert.ok(lines.some((e) => e.user === 'jdoe' && e.method === 'certificate'), out);
    } finally {
      child.kill('SIGINT');
    }
  });
});

describe('certgate doctor', () => {
  test('a healthy listener: every check ok (chain verified with --ca, card authenticated with --cert)', async () => {
    const r = await cli(['doctor', 'submission', '--ca', sys.pki.root.certPath, '--cert', certs.jdoe!.certPath, '--key', certs.jdoe!.keyPath]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^ok\s+listener\s+served by test-worker-0/m);
    assert.match(r.stdout, new RegExp(`^ok\\s+smtp\\s+127\\.0\\.0\\.1:${port} greets "220 .*" and offers STARTTLS`, 'm'));
    assert.match(r.stdout, /^ok\s+tls\s+TLSv1\.[23]; presents "CN=gateway\.example\.com.*verified for gateway\.example\.com/m);
    assert.match(r.stdout, /^ok\s+client-ca\s+with .* the session is authenticated by the certificate \(EHLO offers AUTH EXTERNAL\)/m);
    assert.match(r.stdout, /^ok\s+directory\s+LDAP profile corp .*: the certificate maps to jdoe/m);
    assert.match(r.stdout, /^ok\s+directory\s+LDAP profile corp .*: reachable, the service bind is accepted, the SMTP auth query runs/m);
    assert.match(r.stdout, /^ok\s+next-hop\s+127\.0\.0\.1:\d+ greets "220/m);
    assert.match(r.stdout, /^ok\s+crl\s+root-crl \(.*\): CRL number \d+, 1 revoked/m);
    assert.match(r.stdout, /^Everything checked is right\.$/m);
  });

  test('without --ca the private CA is a warning that says what to do', async () => {
    const r = await cli(['doctor', 'submission']);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /^WARN\s+tls\s+this machine's CA store does not verify the chain \(.+\); clients need your CA, give it with --ca FILE/m);
  });

  test('broken directory and next hop: FAIL lines in words, exit 1', async () => {
    const profile = await sys.api.ok<Record<string, unknown>>('GET', '/v1/ldap-profiles/corp');
    const lst = await sys.api.ok<Record<string, unknown> & { nextHop: Record<string, unknown> }>('GET', '/v1/listeners/submission');
    const closed = await freePort();
    try {
      await sys.api.ok('PUT', '/v1/ldap-profiles/corp', { ...profile, hosts: [`ldap://127.0.0.1:${closed}`] });
      await sys.api.ok('PUT', '/v1/listeners/submission', { ...lst, nextHop: { ...lst.nextHop, port: closed } });
      await sys.settled();
      const r = await cli(['doctor', 'submission', '--json']);
      assert.equal(r.code, 1, show(r));
      const j = JSON.parse(r.stdout) as { ok: boolean; checks: Array<{ check: string; verdict: string; message: string }> };
      assert.equal(j.ok, false);
      const failed = (check: string) => j.checks.filter((c) => c.check === check && c.verdict === 'fail').map((c) => c.message).join('\n');
      assert.match(failed('directory'), new RegExp(`LDAP profile corp \\(ldap://127\\.0\\.0\\.1:${closed}\\): the directory cannot answer the certificate query: .*ECONNREFUSED.* \\(sessions get 454 4\\.7\\.0\\)`));
      assert.match(failed('next-hop'), new RegExp(`127\\.0\\.0\\.1:${closed} cannot be reached from this machine: cannot connect to 127\\.0\\.0\\.1:${closed}: ECONNREFUSED`));
    } finally {
      await sys.api.ok('PUT', '/v1/ldap-profiles/corp', profile);
      await sys.api.ok('PUT', '/v1/listeners/submission', lst);
      await sys.settled();
    }
  });

  test('an unknown listener names the ones that exist', async () => {
    const r = await cli(['doctor', 'nope']);
    assert.equal(r.code, 5, show(r));
    assert.match(r.stderr, /no listener is named nope \(listeners: submission\)/);
  });
});

// Part of `npm run demo` (scripts/demo.sh): makes the demo PKI, starts a throwaway slapd with demo
// users on the documented port (the one the README's deployment guides use), loads deployment C of
// the README through the HTTP API (same names and values), writes DEMO_DIR/ready.json, then keeps
// slapd running until SIGINT/SIGTERM.
//
// Env: API_URL (default http://127.0.0.1:8080), API_TOKEN (default demo-token), DEMO_DIR (default
// .demo), SMTP_PORT (default 2587), SINK_PORT (default 2526), LDAP_PORT (default 3389),
// LDAP_ADMIN_PASSWORD (default secret).
import { execFile } from 'node:child_process';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { createPki } from '../test/helpers/pki.ts';
import { startSlapd, type Slapd } from '../test/helpers/slapd.ts';
import { generalizedTime } from '../shared/directory/filter.ts';
import { peopleLdif } from '../test/helpers/people.ts';
import { cacAuthProfile, ldapAuthProfile, ldapProfile } from '../test/fixtures/deployments.ts';

const run = promisify(execFile);

const API_URL = (process.env.API_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
const TOKEN = process.env.API_TOKEN ?? 'demo-token';
const DEMO_DIR = path.resolve(process.env.DEMO_DIR ?? '.demo');
const PKI_DIR = path.join(DEMO_DIR, 'pki');
const SMTP_PORT = Number(process.env.SMTP_PORT ?? 2587);
const SINK_PORT = Number(process.env.SINK_PORT ?? 2526);
const LDAP_PORT = Number(process.env.LDAP_PORT ?? 3389);
const LDAP_ADMIN_PASSWORD = process.env.LDAP_ADMIN_PASSWORD || 'secret';
const PASSWORD = 'demo-pass';

function say(msg: string): void {
  process.stdout.write(`demo-setup: ${msg}\n`);
}

let slapd: Slapd | null = null;
let stopping = false;
async function shutdown(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    await slapd?.stop().catch(() => undefined);
  }
  process.exit(code);
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => void shutdown(0));

// ---------------------------------------------------------------- HTTP API
async function api(method: string, route: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${API_URL}${route}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

/** POST, or PUT when the name exists already (so a second run over the same Redis works). */
async function upsert(collection: string, item: { name: string } & Record<string, unknown>): Promise<void> {
  let r = await api('POST', `/v1/${collection}`, item);
  if (r.status === 409) r = await api('PUT', `/v1/${collection}/${encodeURIComponent(item.name)}`, item);
  if (r.status < 200 || r.status > 299) {
    throw new Error(`${collection}/${item.name}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  }
  say(`${collection}/${item.name} saved`);
}

async function waitForApi(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${API_URL}/health`);
      if (res.ok) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the API at ${API_URL} did not answer /health within ${timeoutMs / 1000} s (${last})`);
}

// ---------------------------------------------------------------- main
try {
  await rm(PKI_DIR, { recursive: true, force: true });
  await mkdir(PKI_DIR, { recursive: true });

  say('making the demo PKI (CA, server certificate, CAC-like client certificate)');
  const pki = await createPki({ dir: PKI_DIR });
  const server = await pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  const card = await pki.client({ cn: 'DOE.JOHN.1234567890', email: 'john.doe@example.com', upn: '1234567890@mil' });
  const crl = await pki.crl('root', []);
  const out = (name: string) => path.join(PKI_DIR, name);
  await copyFile(pki.root.certPath, out('ca.pem'));
  await copyFile(server.certPath, out('server.pem'));
  await copyFile(server.keyPath, out('server.key'));
  await copyFile(card.certPath, out('client.pem'));
  await copyFile(card.keyPath, out('client.key'));
  await writeFile(out('root.crl'), crl);
  // For mail clients that import a PKCS#12 file (password: demo).
  await run('openssl', ['pkcs12', '-export', '-in', out('client.pem'), '-inkey', out('client.key'), '-certfile', out('ca.pem'),
    '-name', 'DOE.JOHN.1234567890', '-out', out('client.p12'), '-passout', 'pass:demo']);

  say('starting slapd with the demo users');
  const inAWeek = new Date(Date.now() + 7 * 24 * 3600_000);
  slapd = await startSlapd({
    port: LDAP_PORT,
    rootPassword: LDAP_ADMIN_PASSWORD,
    ldif: peopleLdif([
      // card holder: relays by certificate; a password gets the 525 answer
      { uid: 'jdoe', cn: 'John Doe', mail: 'john.doe@example.com', password: PASSWORD, passwordScheme: 'ssha', caccn: 'DOE.JOHN.1234567890', cacserial: card.serial },
      // no card: relays by password
      { uid: 'asmith', cn: 'Alice Smith', mail: 'alice.smith@example.com', password: PASSWORD, passwordScheme: 'ssha' },
      // card issued, but exempt: relays by password
      { uid: 'bexempt', cn: 'Bob Exempt', mail: 'bob.exempt@example.com', password: PASSWORD, passwordScheme: 'ssha', caccn: 'EXEMPT.BOB.2222222222', cacserial: '0A1B2C', cacexempt: true },
      // card issued, emergency window open for a week: relays by password
      { uid: 'cemergency', cn: 'Carol Emergency', mail: 'carol@example.com', password: PASSWORD, passwordScheme: 'ssha', caccn: 'EMERGENCY.CAROL.3333333333', cacserial: '0D0E0F', cacemergency: generalizedTime(inAWeek) },
    ]),
  });
  say(`slapd listens on ${slapd.url}`);

  say(`waiting for the API at ${API_URL}`);
  await waitForApi(60_000);

  // Deployment C of the README, with its names and values.
  await upsert('ldap-profiles', { ...ldapProfile({ slapd }, { certificate: true, smtpAuth: true }), timeoutMs: 5000, maxConnections: 10 });
  await upsert('smtp-auth-profiles', ldapAuthProfile());
  await upsert('smtp-auth-profiles', cacAuthProfile({ fallback: true }));
  await upsert('mail-flow-policies', {
    name: 'RELAYED',
    action: 'relay',
    tls: 'preferred',
    verifyClientCertificate: false,
    requireSmtpAuth: true,
    smtpAuthRequiresTls: true,
  });
  await upsert('listeners', {
    name: 'submission',
    address: '127.0.0.1',
    port: SMTP_PORT,
    implicitTls: false,
    hostname: 'gateway.example.com',
    tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: pki.root.certPem },
    smtpAuthProfile: 'cac-auth',
    senderGroups: [{ name: 'RELAYLIST', senders: ['127.0.0.0/8', '::1/128'], policy: 'RELAYED' }],
    defaultPolicy: 'RELAYED',
    acceptedDomains: ['example.com'],
    nextHop: { host: '127.0.0.1', port: SINK_PORT, tls: 'opportunistic', caPem: null },
    enabled: true,
  });

  // Extras that are nice to see but not needed for mail to flow: failures only warn.
  try {
    await upsert('crl-sources', {
      name: 'demo-root-ca',
      fileType: 'asn1',
      primaryUrl: `file://${out('root.crl')}`,
      secondaryUrl: null,
      schedule: { everySeconds: 3600 },
      enabled: true,
    });
    const r = await api('POST', '/v1/crl-sources/demo-root-ca/refresh');
    say(`crl-sources/demo-root-ca refresh: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  } catch (err) {
    say(`warning: CRL source not loaded: ${(err as Error).message}`);
  }
  try {
    const r = await api('POST', '/v1/ldap-profiles/corp/test', { query: 'certificate', certificatePem: card.certPem });
    say(`ldap-profiles/corp/test (certificate of jdoe): HTTP ${r.status} ${JSON.stringify(r.json)}`);
  } catch (err) {
    say(`warning: LDAP profile test failed: ${(err as Error).message}`);
  }

  await writeFile(
    path.join(DEMO_DIR, 'ready.json'),
    JSON.stringify(
      {
        apiUrl: API_URL,
        ldapUrl: slapd.url,
        ldapAdmin: { dn: slapd.rootDn, password: slapd.rootPassword },
        users: { certificate: 'jdoe', password: ['asmith', 'bexempt', 'cemergency'], passwordValue: PASSWORD },
        pki: PKI_DIR,
        clientCertificateSerial: card.serial,
      },
      null,
      2,
    ) + '\n',
  );
  say('demo configuration loaded');
} catch (err) {
  process.stderr.write(`demo-setup: ${(err as Error).message}\n`);
  await shutdown(1);
}

// Keep slapd (our child) alive until told to stop.
setInterval(() => undefined, 1 << 30);

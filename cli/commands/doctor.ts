// `certgate doctor LISTENER`: checks one listener end to end from the outside, as a mail
// client and an administrator would, and says what is wrong in words:
//
//   listener    its configuration, and which workers serve it (their errors)
//   smtp        the greeting and EHLO of every address it is served on (STARTTLS offered?)
//   tls         the certificate the worker presents: the configured one, valid, naming the
//               listener's host name, a chain clients can verify (--ca, or this machine's store)
//   client-ca   the CAs client certificates must chain to; with --cert/--key, what the
//               listener answers to that certificate
//   directory   every LDAP profile the listener's auth profiles use: reachable, the service
//               bind accepted, each query answering (through the API's test route, with a
//               probe certificate and user that match nobody; --cert tests a real card)
//   next-hop    reachable from here, greeting, STARTTLS and its certificate as nextHop.tls asks
//   crl         the CRLs covering the client CAs: in force, fresh; CAs no CRL covers
//
// The SMTP and next-hop checks run from this machine, the directory checks from the API:
// a worker elsewhere may see another network (said in the output).
import { X509Certificate } from 'node:crypto';
import { call, type Connection, type Schemas } from '../api.ts';
import { crlHealth } from '../crl-health.ts';
import { CliError, EXIT, MARK, relativeTime, type Output, type Verdict } from '../output.ts';
import { readText } from '../input.ts';
import { probeSmtp, type ProbeResult, type TlsFacts } from '../smtp-probe.ts';
import { listWorkers, workerProblems } from './workers.ts';
import { crlSettings } from './crl.ts';

type Config = Schemas['ConfigExport'];
type Listener = Schemas['Listener'];
type LdapProfile = Schemas['LdapProfile'];

export interface Check {
  check: 'listener' | 'smtp' | 'tls' | 'client-ca' | 'directory' | 'next-hop' | 'crl';
  verdict: Verdict;
  message: string;
}

export interface DoctorOptions {
  /** Connect here instead of the listener's address (behind a balancer, or a 0.0.0.0 listener elsewhere). */
  host?: string;
  port?: number;
  /** Trust anchors for the listener's and the next hop's certificates (default: this machine's store). */
  ca?: string;
  /** A client certificate (and key) to present, and to run the certificate query with. */
  cert?: string;
  key?: string;
  timeoutSeconds: number;
}

/** A certificate carrying every field a certificate query may ask for ({cn}, {sn}, {e}, {upn}, {ski}, ...), and in no directory. */
const PROBE_CERTIFICATE = `-----BEGIN CERTIFICATE-----
MIICOjCCAeGgAwIBAgIGDccODccOMAoGCCqGSM49BAMCMFIxHjAcBgNVBAMMFWNl
cnRnYXRlLWRvY3Rvci1wcm9iZTEwMC4GA1UECgwnY2VydGdhdGUgZG9jdG9yIHBy
b2JlIChub3QgYSByZWFsIHVzZXIpMCAXDTI2MTIwMjE2MDQwOFoYDzIxMjYxMTA4
MTYwNDA4WjBSMR4wHAYDVQQDDBVjZXJ0Z2F0ZS1kb2N0b3ItcHJvYmUxMDAuBgNV
BAoMJ2NlcnRnYXRlIGRvY3RvciBwcm9iZSAobm90IGEgcmVhbCB1c2VyKTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABIrttCoOeu9nry2Y5ZhgEDe/wlo6AVYrpBdK
tMFXACYkgC7tPyYKTsXxYKHm5uVG1HpFuE5OezAQu9+aoLm8xIyjgaAwgZ0wVwYD
VR0RBFAwToEdZG9jdG9yLXByb2JlQGNlcnRnYXRlLmludmFsaWSgLQYKKwYBBAGC
NxQCA6AfDB1kb2N0b3ItcHJvYmVAY2VydGdhdGUuaW52YWxpZDAdBgNVHQ4EFgQU
Ej0T0Te9t51Lz/3H3SGyJxxO2o4wDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoG
CCsGAQUFBwMCMAoGCCqGSM49BAMCA0cAMEQCIQCZojvqZI1H08Pb6+HvFzQV7jUE
9CvtbsH9eVzrfBL/ywIfabtoTe9DLfGEqAjPVsCwv/8jy6t1v9gXzVw8eOgQ9w==
-----END CERTIFICATE-----
`;
const PROBE_USER = 'certgate-doctor-probe';
/** Certificates expiring sooner are worth a warning (renewals take time). */
const EXPIRY_WARNING_DAYS = 21;
const DAY_MS = 86_400_000;

export async function doctorCommand(conn: Connection, out: Output, name: string, o: DoctorOptions): Promise<number> {
  const [ca, clientCert, clientKey] = await Promise.all([o.ca, o.cert, o.key].map((f) => (f ? readText(f) : Promise.resolve(undefined))));
  if (Boolean(clientCert) !== Boolean(clientKey)) throw new CliError(EXIT.usage, '--cert and --key go together');
  const { data: config } = await call(conn, 'GET /v1/config', conn.client.GET('/v1/config'));
  const listener = config.listeners.find((l) => l.name === name);
  if (!listener) {
    throw new CliError(EXIT.api, `no listener is named ${name} (listeners: ${config.listeners.map((l) => l.name).join(', ') || 'none'})`);
  }
  const checks: Check[] = [];
  const add = (check: Check['check'], verdict: Verdict, message: string) => {
    checks.push({ check, verdict, message });
    if (!out.json) out.line(`${MARK[verdict]}  ${check.padEnd(10)} ${message}`);
  };
  const timeoutMs = o.timeoutSeconds * 1000;
  if (!out.json) out.line(`certgate doctor: listener ${name} (${listener.implicitTls ? 'implicit TLS' : 'STARTTLS'} on ${listener.address}:${listener.port}, auth profile ${listener.smtpAuthProfile ?? 'none'})`);

  out.progress('reading the workers');
  const endpoints = await listenerChecks(conn, listener, o, add);
  for (const ep of endpoints) {
    out.progress(`connecting to ${ep.host}:${ep.port}`);
    const probe = await probeSmtp({ host: ep.host, port: ep.port, implicitTls: listener.implicitTls, servername: listener.hostname, ca, timeoutMs });
    smtpChecks(listener, config, ep, probe, add);
    if (probe.tls) tlsChecks(listener, probe.tls, Boolean(ca), add);
  }
  clientCaChecks(listener, config, add);
  if (clientCert && clientKey) {
    const ep = endpoints[0];
    if (ep) {
      out.progress(`connecting to ${ep.host}:${ep.port} with ${o.cert}`);
      const probe = await probeSmtp({ host: ep.host, port: ep.port, implicitTls: listener.implicitTls, servername: listener.hostname, ca, cert: clientCert, key: clientKey, timeoutMs });
      clientCertificateSession(probe, o.cert as string, add);
    }
  }
  for (const profile of ldapProfilesOf(listener, config)) {
    out.progress(`asking the directory of LDAP profile ${profile.ldap.name}`);
    await directoryChecks(conn, profile.ldap, profile.queries, clientCert, add);
  }
  out.progress(`connecting to the next hop ${listener.nextHop.host}:${listener.nextHop.port}`);
  await nextHopChecks(listener, ca, timeoutMs, add);
  await crlChecks(conn, listener, config, clientCert, add);
  out.progressDone();

  const failed = checks.filter((c) => c.verdict === 'fail').length;
  const warned = checks.filter((c) => c.verdict === 'warn').length;
  if (out.json) out.data({ listener: name, ok: failed === 0, checks });
  else {
    out.line();
    out.line(failed === 0 && warned === 0 ? 'Everything checked is right.' : `${failed} problem(s), ${warned} warning(s).`);
  }
  return failed === 0 ? EXIT.ok : EXIT.notOk;
}

type Add = (check: Check['check'], verdict: Verdict, message: string) => void;

/** The listener in the configuration and among the workers; answers where to connect. */
async function listenerChecks(conn: Connection, l: Listener, o: DoctorOptions, add: Add): Promise<Array<{ host: string; port: number }>> {
  if (!l.enabled) add('listener', 'fail', 'disabled ("enabled": false): no worker opens it');
  const workers = await listWorkers(conn);
  const serving = workers.filter((w) => w.listeners.some((x) => x.name === l.name));
  for (const w of workers) {
    for (const p of workerProblems(w)) if (p.includes(l.name) || p.startsWith('configuration')) add('listener', 'fail', `worker ${w.id}: ${p}`);
  }
  if (workers.length === 0) add('listener', 'fail', 'no worker is running (no heartbeat in the last 15 s)');
  else if (serving.length === 0 && l.enabled) add('listener', 'fail', `none of the ${workers.length} worker(s) listens for it: see their log ("cannot start listener") and certgate workers`);
  else if (serving.length > 0) {
    const where = serving.map((w) => `${w.id} on ${w.listeners.filter((x) => x.name === l.name).map((x) => `${x.address}:${x.port}`).join(', ')}`);
    add('listener', 'ok', `served by ${where.join('; ')}`);
  }
  // proxyProtocol (SPEC §2.5) may not be in every API version yet.
  if ((l as { proxyProtocol?: unknown }).proxyProtocol && !o.host) {
    add('smtp', 'warn', 'behind a load balancer (proxyProtocol): direct connections are closed without a greeting; give --host (and --port) of the balancer to check through it');
    return [];
  }
  const reachable = (address: string) => o.host ?? (address === '0.0.0.0' ? '127.0.0.1' : address === '::' ? '::1' : address);
  if (o.host || o.port) return [{ host: reachable(l.address), port: o.port ?? l.port }];
  const seen = new Map<string, { host: string; port: number }>();
  for (const w of serving) for (const x of w.listeners) if (x.name === l.name) seen.set(`${x.address}|${x.port}`, { host: reachable(x.address), port: x.port });
  return seen.size > 0 ? [...seen.values()] : l.enabled ? [{ host: reachable(l.address), port: l.port }] : [];
}

function smtpChecks(l: Listener, config: Config, ep: { host: string; port: number }, p: ProbeResult, add: Add): void {
  const at = `${ep.host}:${ep.port}`;
  if (!p.greeting) {
    const hint = /ECONNREFUSED/.test(p.error ?? '') ? ': nothing listens there (is a worker running with this listener, and WORKER_PORT_OFFSET as expected?)' : '';
    add('smtp', 'fail', `${at}: ${p.error ?? 'no greeting'}${hint}`);
    return;
  }
  const greeting = `${p.greeting.code} ${p.greeting.lines[0] ?? ''}`.trim();
  if (p.greeting.code === 554) {
    add('smtp', 'warn', `${at} refuses this machine's address: "${greeting}" (its sender group's mail flow policy has action reject)`);
    return;
  }
  if (p.greeting.code !== 220) {
    add('smtp', 'fail', `${at} greets "${greeting}" instead of 220`);
    return;
  }
  const policies = new Set([l.defaultPolicy, ...l.senderGroups.map((g) => g.policy)]);
  const wantsTls = config.mailFlowPolicies.some((m) => policies.has(m.name) && m.tls !== 'off');
  if (l.implicitTls) add('smtp', p.error ? 'fail' : 'ok', `${at} speaks TLS from the first byte and greets "${greeting}"${p.error ? `, then: ${p.error}` : ''}`);
  else if (!p.ehlo.includes('STARTTLS') && wantsTls) add('smtp', 'fail', `${at} greets "${greeting}" but does not offer STARTTLS although a policy of the listener uses TLS (has the worker a certificate for it?)`);
  else if (p.starttls && p.starttls.code !== 220) add('smtp', 'fail', `${at}: STARTTLS answered "${p.starttls.code} ${p.starttls.lines.join(' ')}"`);
  else if (p.error) add('smtp', 'fail', `${at}: ${p.error}`);
  else add('smtp', 'ok', `${at} greets "${greeting}"${p.ehlo.includes('STARTTLS') ? ' and offers STARTTLS' : ''}`);
  if (p.refusal && p.refusal.code >= 400) {
    add('smtp', p.refusal.code === 554 ? 'warn' : 'fail', `${at} after TLS without a client certificate: "${p.refusal.code} ${p.refusal.lines.join(' ')}"${p.refusal.code === 554 ? ' (expected when the policy requires a verified client certificate)' : ''}`);
  }
}

function tlsChecks(l: Listener, t: TlsFacts, withCa: boolean, add: Add): void {
  const leaf = t.chain[0];
  if (!leaf) {
    add('tls', 'fail', 'the server presented no certificate');
    return;
  }
  const configured = l.tls?.certificatePem ? firstCertificate(l.tls.certificatePem) : null;
  const now = Date.now();
  const subject = dnText(leaf.subject);
  const expires = Date.parse(leaf.validTo);
  if (configured && configured.fingerprint256 !== leaf.fingerprint256) {
    add('tls', 'fail', `the worker presents "${subject}" (sha256 ${short(leaf.fingerprint256)}), not the listener's configured certificate (sha256 ${short(configured.fingerprint256)}): the worker has not applied the configuration, or another program holds the port`);
  }
  if (expires <= now) add('tls', 'fail', `the certificate "${subject}" expired ${relativeTime(leaf.validTo)}: clients refuse the TLS session`);
  else if (Date.parse(leaf.validFrom) > now) add('tls', 'fail', `the certificate "${subject}" is not valid before ${leaf.validFrom}`);
  else if (expires - now < EXPIRY_WARNING_DAYS * DAY_MS) add('tls', 'warn', `the certificate "${subject}" expires ${relativeTime(leaf.validTo)}: renew it`);
  if (t.hostnameError) add('tls', 'fail', `the certificate does not name the listener's hostname ${l.hostname}: ${t.hostnameError}`);
  if (leaf.keyUsage && !leaf.keyUsage.includes('1.3.6.1.5.5.7.3.1') && !leaf.keyUsage.includes('2.5.29.37.0')) {
    add('tls', 'fail', 'the certificate\'s extended key usage does not allow TLS servers (serverAuth)');
  }
  if (!t.authorized) {
    const why = explainVerifyError(t.authorizationError);
    if (withCa) add('tls', 'fail', `clients trusting the CA of --ca cannot verify the chain: ${why}`);
    else add('tls', 'warn', `this machine's CA store does not verify the chain (${why}); clients need your CA, give it with --ca FILE to check the chain against it`);
  }
  const verified = t.authorized && !t.hostnameError && expires > now;
  add('tls', verified ? 'ok' : 'warn', `${t.protocol ?? 'TLS'}; presents "${subject}", issued by "${dnText(leaf.issuer)}", valid until ${leaf.validTo}, ${t.chain.length} certificate(s) in the chain${verified ? ', verified for ' + l.hostname : ''}`);
}

function explainVerifyError(code: string | null): string {
  switch (code) {
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_GET_ISSUER_CERT':
      return `${code}: the chain does not reach a trusted CA (an intermediate certificate missing after the server certificate in certificatePem, or a CA clients do not trust)`;
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
      return `${code}: a self-signed certificate no client trusts by default`;
    case 'CERT_HAS_EXPIRED':
      return `${code}: a certificate of the chain has expired`;
    default:
      return code ?? 'not verified';
  }
}

/** Does the listener ask for client certificates, and do its CAs look right? */
function clientCaChecks(l: Listener, config: Config, add: Add): void {
  if (!needsClientCertificates(l, config)) return;
  const pem = l.tls?.clientCaPem;
  if (!pem) {
    add('client-ca', 'fail', 'the listener asks for client certificates but has no tls.clientCaPem: no certificate can be valid');
    return;
  }
  for (const ca of allCertificates(pem)) {
    const subject = dnText(ca.subject);
    if (Date.parse(ca.validTo) <= Date.now()) add('client-ca', 'fail', `client CA "${subject}" expired ${relativeTime(ca.validTo)}: certificates it issued are refused`);
    else if (!ca.ca) add('client-ca', 'fail', `"${subject}" in clientCaPem is not a CA certificate (basicConstraints CA:FALSE)`);
    else add('client-ca', Date.parse(ca.validTo) - Date.now() < EXPIRY_WARNING_DAYS * DAY_MS ? 'warn' : 'ok', `client certificates may chain to "${subject}" (valid until ${ca.validTo})`);
  }
}

function clientCertificateSession(p: ProbeResult, file: string, add: Add): void {
  if (p.error && !p.refusal) add('client-ca', 'fail', `with ${file}: ${p.error}`);
  else if (p.refusal) add('client-ca', 'fail', `with ${file} the listener answers "${p.refusal.code} ${p.refusal.lines.join(' ')}"`);
  else if (p.ehloAfterTls.some((k) => /^AUTH\b.*\bEXTERNAL\b/.test(k))) add('client-ca', 'ok', `with ${file} the session is authenticated by the certificate (EHLO offers AUTH EXTERNAL)`);
  else add('client-ca', 'warn', `with ${file} the session goes on but the certificate does not authenticate it (no AUTH EXTERNAL offered): see certgate ldap test PROFILE --cert ${file}`);
}

function needsClientCertificates(l: Listener, config: Config): boolean {
  const auth = config.smtpAuthProfiles.find((p) => p.name === l.smtpAuthProfile);
  const policies = new Set([l.defaultPolicy, ...l.senderGroups.map((g) => g.policy)]);
  return auth?.type === 'certificate' || config.mailFlowPolicies.some((m) => policies.has(m.name) && m.verifyClientCertificate);
}

/** The LDAP profiles the listener's auth profile (and its fallback) use, with the queries each needs. */
function ldapProfilesOf(l: Listener, config: Config): Array<{ ldap: LdapProfile; queries: Set<'certificate' | 'smtpAuth'> }> {
  const found = new Map<string, { ldap: LdapProfile; queries: Set<'certificate' | 'smtpAuth'> }>();
  const use = (authName: string | null | undefined) => {
    const auth = config.smtpAuthProfiles.find((p) => p.name === authName);
    const ldap = auth && config.ldapProfiles.find((p) => p.name === auth.ldapProfile);
    if (!auth || !ldap) return;
    const entry = found.get(ldap.name) ?? { ldap, queries: new Set() };
    found.set(ldap.name, entry);
    if (auth.type === 'certificate') {
      entry.queries.add('certificate');
      if (auth.allowSmtpAuthWithoutCertificate) use(auth.fallbackProfile);
    } else {
      entry.queries.add('smtpAuth');
    }
  };
  use(l.smtpAuthProfile);
  return [...found.values()];
}

async function directoryChecks(conn: Connection, ldap: LdapProfile, queries: Set<'certificate' | 'smtpAuth'>, clientCert: string | undefined, add: Add): Promise<void> {
  const where = `LDAP profile ${ldap.name} (${ldap.hosts.join(', ')})`;
  for (const query of queries) {
    if (query === 'certificate' && !ldap.certificateQuery) {
      add('directory', 'fail', `${where} has no certificateQuery, which the certificate auth profile needs: no certificate can authenticate`);
      continue;
    }
    if (query === 'smtpAuth' && !ldap.smtpAuthQuery) {
      add('directory', 'fail', `${where} has no smtpAuthQuery, which the LDAP auth profile needs: no password can authenticate`);
      continue;
    }
    const body: Schemas['LdapProfileTest'] = query === 'certificate'
      ? { query: 'certificate', certificatePem: clientCert ?? PROBE_CERTIFICATE }
      : { query: 'smtpAuth', username: PROBE_USER, password: `probe-${Date.now()}` };
    const { data: r } = await call(conn, `LDAP profile ${ldap.name}`, conn.client.POST('/v1/ldap-profiles/{name}/test', { params: { path: { name: ldap.name } }, body }));
    const took = `${r.durationMs} ms, from the API`;
    if (r.outcome === 'directory-unavailable') {
      add('directory', 'fail', `${where}: the directory cannot answer the ${query === 'certificate' ? 'certificate' : 'SMTP auth'} query: ${r.error ?? 'unavailable'} (sessions get 454 4.7.0)`);
    } else if (query === 'certificate' && clientCert) {
      if (r.outcome === 'one') add('directory', 'ok', `${where}: the certificate maps to ${r.userId} (${r.dn}; ${took})`);
      else add('directory', 'fail', `${where}: the certificate does not map to one entry (${r.outcome}; filter ${r.filter ?? 'not sent: a token the certificate lacks'}); see certgate ldap test ${ldap.name} --cert FILE`);
    } else if (r.outcome === 'many' || r.outcome === 'ambiguous') {
      add('directory', 'warn', `${where}: the ${query} query matched several entries for a probe that should match none: it is probably too broad (filter ${r.filter})`);
    } else if (r.outcome === 'missing-field') {
      add('directory', 'warn', `${where}: the certificate query needs a field the probe certificate lacks; give --cert FILE to test it with a real certificate`);
    } else {
      add('directory', 'ok', `${where}: reachable, ${ldap.bind ? 'the service bind is accepted' : 'anonymous search'}, the ${query === 'certificate' ? 'certificate' : 'SMTP auth'} query runs (${took})`);
    }
  }
}

async function nextHopChecks(l: Listener, cliCa: string | undefined, timeoutMs: number, add: Add): Promise<void> {
  const hop = l.nextHop;
  const at = `${hop.host}:${hop.port}`;
  const p = await probeSmtp({
    host: hop.host, port: hop.port, implicitTls: false, servername: hop.host, ca: hop.caPem ?? cliCa, plainOnly: hop.tls === 'none', timeoutMs,
  });
  if (!p.greeting) {
    add('next-hop', 'fail', `${at} cannot be reached from this machine: ${p.error} (messages get 451 4.4.1 if the workers cannot reach it either)`);
    return;
  }
  const greeting = `${p.greeting.code} ${p.greeting.lines[0] ?? ''}`.trim();
  if (p.greeting.code !== 220) {
    add('next-hop', 'fail', `${at} greets "${greeting}": it does not accept mail now (clients get its reply)`);
    return;
  }
  const offers = p.ehlo.includes('STARTTLS');
  if (hop.tls === 'none') {
    add('next-hop', 'ok', `${at} greets "${greeting}"; nextHop.tls is none: relayed in plain text${offers ? ' although it offers STARTTLS' : ''}`);
    return;
  }
  if (!offers) {
    add('next-hop', hop.tls === 'required' ? 'fail' : 'warn', `${at} greets "${greeting}" but offers no STARTTLS: ${hop.tls === 'required' ? 'every message gets 451 (nextHop.tls is required)' : 'messages go in plain text'}`);
    return;
  }
  if (!p.tls) {
    add('next-hop', 'fail', `${at}: STARTTLS failed: ${p.error ?? `${p.starttls?.code} ${p.starttls?.lines.join(' ')}`}`);
    return;
  }
  // As the worker decides (worker/relay/next-hop.ts): required, or a caPem given, verifies; opportunistic without caPem takes any certificate.
  const verifies = hop.tls === 'required' || hop.caPem !== null;
  const leaf = p.tls.chain[0];
  const problem = !p.tls.authorized ? explainVerifyError(p.tls.authorizationError) : p.tls.hostnameError;
  const what = `${p.tls.protocol ?? 'TLS'}, certificate "${leaf ? dnText(leaf.subject) : '?'}"`;
  if (!problem) add('next-hop', 'ok', `${at} greets "${greeting}"; STARTTLS works (${what}, verified)`);
  else if (verifies) add('next-hop', 'fail', `${at}: the next hop's certificate does not verify (${problem}${hop.caPem ? '' : '; nextHop.caPem is null, so the system store is used'}): every message gets 451`);
  else add('next-hop', 'ok', `${at} greets "${greeting}"; STARTTLS works (${what}; not verified: opportunistic without caPem takes any certificate)`);
}

async function crlChecks(conn: Connection, l: Listener, config: Config, clientCert: string | undefined, add: Add): Promise<void> {
  if (!needsClientCertificates(l, config) || !l.tls?.clientCaPem) return;
  const settings = await crlSettings(conn);
  if (!settings.inboundSmtpTls) {
    add('crl', 'warn', 'crl-settings.inboundSmtpTls is false: client certificates are not checked against CRLs');
    return;
  }
  const sources = await Promise.all(
    config.crlSources.map(async (s) => (await call(conn, `CRL source ${s.name}`, conn.client.GET('/v1/crl-sources/{name}', { params: { path: { name: s.name } } }))).data as Schemas['CrlSourceWithStatus']),
  );
  const workers = await listWorkers(conn);
  const cas = allCertificates(l.tls.clientCaPem);
  const issuers = new Map(cas.map((c) => [dnKey(c.subject), dnText(c.subject)]));
  if (clientCert) {
    const card = firstCertificate(clientCert);
    if (card) issuers.set(dnKey(card.issuer), dnText(card.issuer));
  }
  for (const [key, shown] of issuers) {
    const covering = sources.filter((s) => s.status.issuer && dnKey(s.status.issuer) === key);
    if (covering.length === 0) {
      add('crl', 'warn', `no CRL source has a CRL of "${shown}": certificates it issued are not revocation-checked (events say so)`);
      continue;
    }
    for (const s of covering) {
      const h = crlHealth(s, settings);
      add('crl', h.verdict, `${s.name} (${shown}): ${h.message}`);
      for (const w of workers) {
        const held = w.crls.find((c) => c.source === s.name);
        if (s.enabled && s.status.crlNumber && held && held.crlNumber !== s.status.crlNumber) {
          add('crl', 'warn', `${s.name}: worker ${w.id} enforces CRL number ${held.crlNumber ?? '-'}, the newest is ${s.status.crlNumber} (it loads new CRLs within seconds; if this stays, see its log)`);
        }
      }
    }
  }
}

/**
 * Names compared as the CRL status writes them (RFC 4514, most specific first) and as
 * node:crypto prints them (one attribute a line, most general first): by their sorted
 * attributes, case-insensitively. Enough to tell which CA a CRL belongs to.
 */
function dnKey(dn: string): string {
  const parts = dn.includes('\n') ? dn.split('\n') : dn.split(/(?<!\\),/);
  return parts.map((p) => p.trim().toLowerCase().replace(/\s*=\s*/, '=')).filter(Boolean).sort().join(',');
}

/** node:crypto's one-attribute-a-line name (most general first) as RFC 4514 writes it (most specific first). */
function dnText(name: string): string {
  return name.split('\n').reverse().join(', ');
}

function firstCertificate(pem: string): X509Certificate | null {
  return allCertificates(pem)[0] ?? null;
}

function allCertificates(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.flatMap((b) => {
    try {
      return [new X509Certificate(b)];
    } catch {
      return [];
    }
  });
}

const short = (fingerprint: string) => fingerprint.replace(/:/g, '').slice(0, 16);

// `certgate status`: the whole installation at a glance: the API and its Redis, the
// configuration version and what it holds, the workers (alive, on that version, their
// errors), revocation checking (CRL sources and their freshness). Exit 1 when any of it
// needs attention.
import { call, reach, type Connection, type Schemas } from '../api.ts';
import { crlHealth } from '../crl-health.ts';
import { CLI_VERSION } from '../version.ts';
import { EXIT, MARK, type Output, type Verdict } from '../output.ts';
import { crlSettings } from './crl.ts';
import { listWorkers, workerProblems } from './workers.ts';

interface Line {
  verdict: Verdict;
  subject: string;
  message: string;
}

const COUNTED: Array<[keyof Schemas['Config'], string, string]> = [
  ['ldapProfiles', 'LDAP profile', 'LDAP profiles'],
  ['smtpAuthProfiles', 'SMTP auth profile', 'SMTP auth profiles'],
  ['mailFlowPolicies', 'mail flow policy', 'mail flow policies'],
  ['listeners', 'listener', 'listeners'],
  ['crlSources', 'CRL source', 'CRL sources'],
];

export async function statusCommand(conn: Connection, out: Output): Promise<number> {
  const lines: Line[] = [];
  const health = await reach(conn, conn.client.GET('/health'));
  if (health.response.ok) lines.push({ verdict: 'ok', subject: 'API', message: `${conn.url}, Redis up (certgate CLI ${CLI_VERSION})` });
  else {
    lines.push({ verdict: 'fail', subject: 'API', message: `${conn.url} answers ${health.response.status}: its Redis is down, no configuration can be read or written` });
    return print(out, null, lines);
  }
  const { data: config } = await call(conn, 'GET /v1/config', conn.client.GET('/v1/config'));
  const counts = COUNTED.map(([k, one, many]) => {
    const n = (config[k] as unknown[]).length;
    return `${n} ${n === 1 ? one : many}`;
  }).join(', ');
  const enabled = config.listeners.filter((l) => l.enabled);
  lines.push({ verdict: enabled.length > 0 ? 'ok' : 'warn', subject: 'config', message: `version ${config.version}: ${counts}${enabled.length === 0 ? '; no listener is enabled' : ''}` });

  const workers = await listWorkers(conn);
  if (workers.length === 0) lines.push({ verdict: 'fail', subject: 'workers', message: 'none running (no heartbeat in the last 15 s): no mail is accepted' });
  else {
    const behind = workers.filter((w) => w.configVersion !== config.version);
    const sessions = workers.reduce((n, w) => n + w.sessions, 0);
    lines.push({
      verdict: behind.length > 0 ? 'warn' : 'ok',
      subject: 'workers',
      message: `${workers.length} running, ${sessions} session(s) open; ` +
        (behind.length === 0 ? `all on version ${config.version}` : `not on version ${config.version}: ${behind.map((w) => `${w.id} (${w.configVersion})`).join(', ')}`),
    });
    for (const w of workers) for (const p of workerProblems(w)) lines.push({ verdict: 'fail', subject: `worker ${w.id}`, message: p });
    for (const l of enabled) {
      if (!workers.some((w) => w.listeners.some((x) => x.name === l.name))) {
        lines.push({ verdict: 'fail', subject: `listener ${l.name}`, message: `enabled, but no worker listens for it on ${l.address}:${l.port}` });
      }
    }
  }

  const settings = await crlSettings(conn);
  const checked = [settings.inboundSmtpTls && 'SMTP client certificates', settings.outboundSmtpTls && 'the next hop', settings.webInterface && 'API clients'].filter(Boolean);
  lines.push({ verdict: 'ok', subject: 'revocation', message: `CRLs checked for ${checked.join(', ') || 'nothing'}; an expired CRL: ${settings.onExpiredCrl}` });
  const { data: ocsp } = await call(conn, 'GET /v1/ocsp-settings', conn.client.GET('/v1/ocsp-settings'));
  const asked = [ocsp.inboundSmtpTls && 'SMTP client certificates', ocsp.outboundSmtpTls && 'the next hop', ocsp.webInterface && 'API clients'].filter(Boolean);
  lines.push({
    verdict: 'ok',
    subject: 'OCSP',
    message: asked.length === 0
      ? 'not used'
      : `asked for ${asked.join(', ')} from ${ocsp.responderUrl ?? "each certificate's AIA responder"}; unavailable: ${ocsp.onUnavailable}`,
  });
  for (const s of config.crlSources) {
    const { data } = await call(conn, `CRL source ${s.name}`, conn.client.GET('/v1/crl-sources/{name}', { params: { path: { name: s.name } } }));
    const h = crlHealth(data as Schemas['CrlSourceWithStatus'], settings);
    lines.push({ verdict: h.verdict, subject: `CRL ${s.name}`, message: h.message });
  }

  return print(out, config.version, lines);
}

function print(out: Output, version: number | null, lines: Line[]): number {
  if (out.json) out.data({ version, checks: lines });
  else for (const l of lines) out.line(`${MARK[l.verdict]}  ${l.subject.padEnd(12)} ${l.message}`);
  return lines.some((l) => l.verdict === 'fail') ? EXIT.notOk : EXIT.ok;
}

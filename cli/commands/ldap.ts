// `certgate ldap test PROFILE --cert FILE | --user NAME [--password-stdin]`: runs the LDAP
// profile's certificate or SMTP AUTH query now through the API (SPEC §2.1
// `POST /v1/ldap-profiles/{name}/test`), exactly as a worker would, and says in words what
// a session would get. The password is read from standard input (--password-stdin) or
// asked for without echo on a terminal; it is never an argument (it would show in `ps`).
import { call, type Connection, type Schemas } from '../api.ts';
import { readPassword, readText } from '../input.ts';
import { CliError, EXIT, type Output } from '../output.ts';

type Result = Schemas['LdapProfileTestResult'];

export interface LdapTestOptions {
  cert?: string;
  user?: string;
  passwordStdin: boolean;
}

export async function ldapTestCommand(conn: Connection, out: Output, profile: string, o: LdapTestOptions): Promise<number> {
  if (Boolean(o.cert) === Boolean(o.user)) throw new CliError(EXIT.usage, 'give exactly one of --cert FILE or --user NAME');
  const body: Schemas['LdapProfileTest'] = o.cert
    ? { query: 'certificate', certificatePem: await readText(o.cert) }
    : { query: 'smtpAuth', username: o.user as string, password: await readPassword(o.passwordStdin) };
  out.progress(`asking the directory of LDAP profile ${profile}`);
  const { data } = await call(conn, `LDAP profile ${profile}`, conn.client.POST('/v1/ldap-profiles/{name}/test', { params: { path: { name: profile } }, body }));
  out.progressDone();
  const verdict = o.cert ? certificateVerdict(data) : userVerdict(data, o.user as string);
  if (out.json) out.data({ ...data, ok: verdict.ok, verdict: verdict.text });
  else {
    out.line(verdict.text);
    const rows: Array<[string, string | null | undefined]> = [
      ['outcome', data.outcome],
      ['entry', data.dn],
      ['user id', data.userId],
      ['filter', data.filter],
      ['allow filter', data.allowFilter],
      ['directory said', data.error],
      ['took', `${data.durationMs} ms`],
    ];
    if (data.tokens) for (const [k, v] of Object.entries(data.tokens)) rows.push([`{${k}}`, v ?? '(not in the certificate)']);
    for (const [k, v] of rows) if (v !== null && v !== undefined) out.line(`  ${k.padEnd(14)} ${v}`);
  }
  return verdict.ok ? EXIT.ok : EXIT.notOk;
}

function certificateVerdict(r: Result): { ok: boolean; text: string } {
  switch (r.outcome) {
    case 'one':
      return { ok: true, text: `The certificate maps to user ${r.userId} (${r.dn}): it authenticates a session.` };
    case 'none':
      return { ok: false, text: 'The directory lists no entry for this certificate: sessions with it are refused (554 with verifyClientCertificate, else 530 at MAIL).' };
    case 'many':
      return { ok: false, text: 'Several directory entries match this certificate: it authenticates nobody (make the certificate query match one entry).' };
    case 'missing-field':
      return { ok: false, text: 'The certificate lacks a field the certificate query needs (see the tokens below): it can never match.' };
    default:
      return { ok: false, text: `The directory could not answer (${r.error ?? r.outcome}): sessions get 454 4.7.0 until it can.` };
  }
}

function userVerdict(r: Result, user: string): { ok: boolean; text: string } {
  switch (r.outcome) {
    case 'authenticated':
      if (r.allowed === false) return { ok: false, text: `${user}: the password is right, but the allow query does not admit the user: AUTH gets the notAllowedResponse (or is logged with allow-and-log).` };
      return { ok: true, text: `${user}: the password is right${r.allowed === true ? ' and the allow query admits the user' : ''} (user id ${r.userId}): AUTH gets 235.` };
    case 'invalid-credentials':
      return { ok: false, text: `${user}: the directory refused the password (${r.error ?? 'invalid credentials'}): AUTH gets 535 5.7.8.` };
    case 'unknown-user':
      return { ok: false, text: `${user}: the SMTP auth query finds no entry: AUTH gets 535 5.7.8.` };
    case 'empty-password':
      return { ok: false, text: `${user}: an empty password is never sent to the directory: AUTH gets 535 5.7.8.` };
    case 'ambiguous':
      return { ok: false, text: `${user}: the SMTP auth query matches several entries: AUTH gets 535 5.7.8 (make the query match one entry).` };
    default:
      return { ok: false, text: `The directory could not answer (${r.error ?? r.outcome}): AUTH gets 454 4.7.0 until it can.` };
  }
}

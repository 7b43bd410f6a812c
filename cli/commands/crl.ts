// `certgate crl status [NAME]` and `certgate crl refresh [NAME]` (SPEC §2.6): the CRL in
// force for each source and how fresh it is; a download now, one source after the other,
// with progress, and whether each one was taken.
import { call, type Connection, type Schemas } from '../api.ts';
import { crlHealth } from '../crl-health.ts';
import { EXIT, MARK, relativeTime, table, type Output } from '../output.ts';

type Source = Schemas['CrlSourceWithStatus'];

async function sources(conn: Connection, name: string | undefined): Promise<Source[]> {
  const names = name ? [name] : (await call(conn, 'GET /v1/crl-sources', conn.client.GET('/v1/crl-sources'))).data.items.map((s) => s.name);
  return Promise.all(
    names.map(async (n) => (await call(conn, `CRL source ${n}`, conn.client.GET('/v1/crl-sources/{name}', { params: { path: { name: n } } }))).data as Source),
  );
}

export async function crlSettings(conn: Connection): Promise<Schemas['CrlSettings']> {
  return (await call(conn, 'GET /v1/crl-settings', conn.client.GET('/v1/crl-settings'))).data;
}

export async function crlStatusCommand(conn: Connection, out: Output, name: string | undefined): Promise<number> {
  const [list, settings] = await Promise.all([sources(conn, name), crlSettings(conn)]);
  const rows = list.map((s) => ({ source: s, health: crlHealth(s, settings) }));
  if (out.json) out.data({ settings, items: rows.map((r) => ({ ...r.source, health: r.health })) });
  else if (rows.length === 0) out.line('No CRL source is configured: client certificates are not revocation-checked by CRL.');
  else {
    out.line(table(rows, [
      { header: '', value: (r) => MARK[r.health.verdict] },
      { header: 'SOURCE', value: (r) => r.source.name },
      { header: 'ISSUER', value: (r) => r.source.status.issuer ?? '-' },
      { header: 'THIS UPDATE', value: (r) => relativeTime(r.source.status.thisUpdate) },
      { header: 'NEXT UPDATE', value: (r) => relativeTime(r.source.status.nextUpdate) },
      { header: 'REVOKED', value: (r) => String(r.source.status.revokedCount ?? '-') },
      { header: 'LAST SUCCESS', value: (r) => relativeTime(r.source.status.lastSuccessAt) },
      { header: 'STATE', value: (r) => r.health.message },
    ]));
    out.line();
    out.line(`Checked: SMTP client certificates ${settings.inboundSmtpTls ? 'yes' : 'no'}, next hop ${settings.outboundSmtpTls ? 'yes' : 'no'}, API clients ${settings.webInterface ? 'yes' : 'no'}; an expired CRL: ${settings.onExpiredCrl}.`);
  }
  return rows.some((r) => r.health.verdict === 'fail') ? EXIT.notOk : EXIT.ok;
}

export async function crlRefreshCommand(conn: Connection, out: Output, name: string | undefined): Promise<number> {
  const targets = name ? [name] : (await sources(conn, undefined)).filter((s) => s.enabled).map((s) => s.name);
  const results: Array<{ name: string; ok: boolean; status: Schemas['CrlStatus'] }> = [];
  for (const [i, n] of targets.entries()) {
    out.progress(`[${i + 1}/${targets.length}] downloading the CRL of ${n}`);
    const { data } = await call(conn, `refresh ${n}`, conn.client.POST('/v1/crl-sources/{name}/refresh', { params: { path: { name: n } } }));
    // lastError is null after a success; a refused download keeps the previous CRL and says why.
    const ok = data.lastError === null && data.lastSuccessAt !== null;
    results.push({ name: n, ok, status: data });
    if (!out.json) {
      out.line(ok
        ? `${n}: CRL number ${data.crlNumber ?? '-'} from ${data.url}, ${data.revokedCount} revoked, next update ${relativeTime(data.nextUpdate)}`
        : `${n}: not taken: ${data.lastError ?? 'no CRL downloaded'}${data.lastSuccessAt ? ` (the CRL of ${relativeTime(data.lastSuccessAt)} stays in force)` : ''}`);
    }
  }
  out.progressDone();
  if (out.json) out.data(results);
  else if (targets.length === 0) out.line('No enabled CRL source to refresh.');
  return results.every((r) => r.ok) ? EXIT.ok : EXIT.notOk;
}

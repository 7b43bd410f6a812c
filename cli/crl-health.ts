// How fresh a CRL source is, in words: the one rule `crl status`, `status` and `doctor`
// share, and the same thresholds as deploy/prometheus/alerts.yml. Pure.
//
//   fail  no CRL in force, or the CRL in force is past its nextUpdate
//   warn  less than a quarter of the CRL's validity (thisUpdate → nextUpdate) is left, or
//         under an hour; or the last download failed (the previous CRL stays in force)
//   ok    otherwise (a disabled source is not enforced: ok, said so)
import type { Schemas } from './api.ts';
import { relativeTime, type Verdict } from './output.ts';

type Source = Schemas['CrlSourceWithStatus'];
type Settings = Schemas['CrlSettings'];

export interface CrlHealth {
  verdict: Verdict;
  message: string;
}

const HOUR_MS = 3_600_000;

export function crlHealth(source: Source, settings: Settings | null, now: Date = new Date()): CrlHealth {
  const s = source.status;
  const failing = s.lastError ? `; the last download failed: ${s.lastError}` : '';
  if (!source.enabled) return { verdict: 'ok', message: 'disabled: not downloaded, not enforced' };
  if (!s.lastSuccessAt || !s.thisUpdate) {
    return { verdict: 'fail', message: `no CRL downloaded yet${failing || ' (no attempt recorded: is the CRL scheduler running?)'}` };
  }
  const issuer = s.issuer ? ` of ${s.issuer}` : '';
  if (s.nextUpdate && Date.parse(s.nextUpdate) <= now.getTime()) {
    const effect = settings?.onExpiredCrl === 'accept-and-log'
      ? 'certificates are accepted and logged (onExpiredCrl: accept-and-log)'
      : 'certificates it covers are refused (onExpiredCrl: reject)';
    return { verdict: 'fail', message: `the CRL${issuer} is past its nextUpdate (${relativeTime(s.nextUpdate, now)}): ${effect}${failing}` };
  }
  const fresh = `CRL number ${s.crlNumber ?? '-'}, ${s.revokedCount ?? 0} revoked, next update ${relativeTime(s.nextUpdate, now)}`;
  if (s.nextUpdate) {
    const left = Date.parse(s.nextUpdate) - now.getTime();
    const validity = Date.parse(s.nextUpdate) - Date.parse(s.thisUpdate);
    if (left < HOUR_MS || left < validity / 4) return { verdict: 'warn', message: `${fresh}: close to its nextUpdate and not yet replaced${failing}` };
  }
  if (s.lastError) return { verdict: 'warn', message: `${fresh}${failing}` };
  return { verdict: 'ok', message: fresh };
}

/**
 * Revocation of a validated chain by OCSP and CRLs together (SPEC §2.6,
 * §2.6b), for each of the three switches (client certificates of SMTP
 * sessions, the next hop's certificate, the API's mutual-TLS clients).
 *
 * `decideRevocation` is the rule, pure: OCSP answers for the leaf only (its
 * issuer's responder knows nothing of the issuer itself), so
 * - OCSP `good`: the leaf is not revoked and its CRL is not consulted; the
 *   issuers above it are still looked up in the CRLs (when CRLs are on);
 * - OCSP `revoked`: refused, reason `revoked`, the detail says OCSP;
 * - anything else (`unknown`, no valid answer, a timeout, no responder URL)
 *   goes to `onUnavailable`: `use-crl` applies §2.6 to the whole chain (CRLs
 *   off: not revocation-checked, and the detail says why), `reject` refuses
 *   with `revocation-unavailable`, `accept-and-log` accepts the leaf and
 *   says so (its issuers still go through the CRLs);
 * - OCSP off for the switch: §2.6 alone, as before OCSP existed.
 * Every decision carries the words for the event `detail`.
 *
 * `checkRevocation` is the thin adapter that asks the OcspChecker (bounded
 * by `timeoutMs`) and the CRL index, then decides.
 */
import type { X509Certificate } from 'node:crypto';
import type { CrlSettings, OcspSettings } from '../config/schemas.ts';
import type { CrlStore, RevocationVerdict as CrlVerdict } from './crl/store.ts';
import { describeOcsp, type OcspChecker, type OcspResult } from './ocsp/checker.ts';

/** The three places certificates are checked; the field names of both settings objects. */
export type RevocationSwitch = 'inboundSmtpTls' | 'outboundSmtpTls' | 'webInterface';

/** Why a certificate is refused for its revocation status (SPEC §3 rule 3 reasons). */
export type RevocationRefusal = 'revoked' | 'crl-expired' | 'revocation-unavailable';

export interface RevocationDecision {
  /** null: the certificate passes. */
  refuse: RevocationRefusal | null;
  /** What the checks said, for the event detail and logs. */
  detail: string;
  /** It passes although its status could not be established (`accept-and-log`, `onExpiredCrl: accept-and-log`): worth a warning. */
  unverified: boolean;
}

export interface RevocationFacts {
  switch: RevocationSwitch;
  /** The OCSP result for the leaf; null when OCSP is off for this switch. */
  ocsp: OcspResult | null;
  onUnavailable: OcspSettings['onUnavailable'];
  /**
   * The CRL verdict of the whole chain or of the issuers only (the chain
   * without its leaf); null when CRLs are off for this switch. Asked only
   * when the rule needs it.
   */
  crl: ((part: 'chain' | 'issuers') => CrlVerdict) | null;
}

const pass = (detail: string, unverified = false): RevocationDecision => ({ refuse: null, detail, unverified });
const refuse = (reason: RevocationRefusal, detail: string): RevocationDecision => ({ refuse: reason, detail, unverified: false });

/** The rule of the module header. */
export function decideRevocation(f: RevocationFacts): RevocationDecision {
  if (f.ocsp === null) {
    if (f.crl === null) return pass(`not revocation-checked: ${f.switch} is off`);
    return crlDecision(f.crl('chain'));
  }
  const ocsp = describeOcsp(f.ocsp);
  if (f.ocsp.outcome === 'revoked') return refuse('revoked', ocsp);
  if (f.ocsp.outcome === 'good') return withIssuers(f, pass(ocsp));
  switch (f.onUnavailable) {
    case 'reject':
      return refuse('revocation-unavailable', `${ocsp}; refused (onUnavailable: reject)`);
    case 'accept-and-log':
      return withIssuers(f, pass(`${ocsp}; accepted without a revocation check (onUnavailable: accept-and-log)`, true));
    case 'use-crl': {
      if (f.crl === null) return pass(`${ocsp}; not revocation-checked: CRLs are off for ${f.switch}`);
      const byCrl = crlDecision(f.crl('chain'));
      return { ...byCrl, detail: `${ocsp}; by CRL: ${byCrl.detail}` };
    }
  }
}

/** The leaf passed OCSP (or was let through): its issuers still meet the CRLs. */
function withIssuers(f: RevocationFacts, leaf: RevocationDecision): RevocationDecision {
  if (f.crl === null) return leaf;
  const issuers = crlDecision(f.crl('issuers'));
  if (issuers.refuse) return refuse(issuers.refuse, `${leaf.detail}; an issuer by CRL: ${issuers.detail}`);
  return issuers.unverified ? { ...leaf, unverified: true, detail: `${leaf.detail}; an issuer by CRL: ${issuers.detail}` } : leaf;
}

function crlDecision(v: CrlVerdict): RevocationDecision {
  switch (v.status) {
    case 'good':
      return pass('revocation-checked: not revoked');
    case 'unchecked':
      return pass('not revocation-checked: no CRL source covers its issuers');
    case 'revoked':
    case 'crl-expired':
      return refuse(v.status, v.detail);
    case 'crl-expired-accepted':
      return pass(v.detail, true);
  }
}

export interface RevocationSources {
  crls: Pick<CrlStore, 'check'> | null;
  ocsp: Pick<OcspChecker, 'check'> | null;
}

export interface RevocationSettings {
  crlSettings: CrlSettings;
  ocspSettings: OcspSettings;
}

/**
 * The decision for a validated chain (leaf first, its trust anchor last) at
 * `which`. Waits at most `ocspSettings.timeoutMs` (only when OCSP is on for
 * `which`); never throws.
 */
export async function checkRevocation(sources: RevocationSources, chain: X509Certificate[], which: RevocationSwitch, s: RevocationSettings, now = new Date()): Promise<RevocationDecision> {
  const crls = sources.crls;
  const crl = s.crlSettings[which] ? (part: 'chain' | 'issuers') => crls?.check(part === 'chain' ? chain : chain.slice(1), now, s.crlSettings) ?? { status: 'unchecked' as const } : null;
  let ocsp: OcspResult | null = null;
  if (s.ocspSettings[which]) {
    const [leaf, issuer] = chain;
    if (!sources.ocsp) ocsp = { outcome: 'unavailable', problem: 'OCSP is not available in this process' };
    else if (!leaf || !issuer) ocsp = { outcome: 'unavailable', problem: 'the certificate is itself the trust anchor: no issuer to ask' };
    else ocsp = await sources.ocsp.check(leaf, issuer, s.ocspSettings);
  }
  return decideRevocation({ switch: which, ocsp, onUnavailable: s.ocspSettings.onUnavailable, crl });
}

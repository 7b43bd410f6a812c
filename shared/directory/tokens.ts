// The query tokens of SPEC §2.2: their names, which queries may use which, and the values a
// client certificate gives them. filter.ts substitutes them (escaped) into a query.
import type { CertificateFacts } from '../pki/certificate.ts';

export const QUERY_TOKENS = ['u', 't', 'cn', 'sn', 's', 'i', 'e', 'upn', 'fp', 'ir', 'sr', 'ski'] as const;
export type QueryToken = (typeof QUERY_TOKENS)[number];
/** Unescaped token values; null or absent: the session lacks it (the query then matches nothing). */
export type TokenValues = Partial<Record<QueryToken, string | null>>;

/** Tokens a certificate query may use (its values come from the certificate, plus the time). */
export const CERTIFICATE_TOKENS: readonly QueryToken[] = ['cn', 'sn', 's', 'i', 'e', 'upn', 'fp', 'ir', 'sr', 'ski', 't'];
/** Tokens an SMTP AUTH or allowance query may use. */
export const SMTP_AUTH_TOKENS: readonly QueryToken[] = ['u', 't'];

/** The tokens whose values come from the client certificate. */
export type CertificateToken = Exclude<QueryToken, 'u' | 't'>;
export type CertificateTokenValues = Record<CertificateToken, string | null>;

/**
 * The certificate's token values (null where the certificate lacks the field).
 * `{ir}`, `{sr}` and `{ski}` are the forms of Active Directory's strong
 * certificate mapping (altSecurityIdentities, KB5014754): the issuer in X.500
 * order, `{sn}`'s bytes reversed, the subject key identifier.
 */
export function certificateTokenValues(f: CertificateFacts): CertificateTokenValues {
  return {
    cn: f.subjectCn, sn: f.serial, s: f.subjectDn, i: f.issuerDn, e: f.email, upn: f.upn, fp: f.fingerprint,
    ir: f.issuerDnReversed, sr: reversedBytes(f.serial), ski: f.subjectKeyId,
  };
}

/** `0A1B2C` → `2C1B0A` (whole bytes of uppercase hex, as `{sn}` has them). */
function reversedBytes(hex: string): string {
  return ((hex.length % 2 ? '0' : '') + hex).match(/../g)?.reverse().join('') ?? '';
}

/**
 * What an OCSP response says of one certificate, if it may be believed
 * (SPEC §2.6b, RFC 6960 §3.2, §4.2.2.2). Pure: no I/O; node:crypto verifies
 * hashes and signatures, `@peculiar/asn1-ocsp` decodes the structures.
 *
 * A response counts only when every one of these holds, else the judgement
 * is `{ ok: false, problem }` (the caller treats it as "unavailable"):
 * - `responseStatus` is `successful` and the bytes are a BasicOCSPResponse;
 * - one of its SingleResponses has the CertID of the certificate asked about;
 * - it is signed (the signature over `tbsResponseData` verifies) by the
 *   certificate the ResponderID names, which is
 *   - the issuer itself (its key), or
 *   - a delegated responder: issued directly by the issuer, listing
 *     `id-kp-OCSPSigning` in its extended key usage (anyExtendedKeyUsage does
 *     not delegate), a key usage that allows signing, no critical extension
 *     we do not know, inside its validity period, or
 *   - a certificate of `responderCaPem` itself (a locally trusted
 *     responder), or one that lists `id-kp-OCSPSigning` and chains to a CA
 *     of `responderCaPem` through certificates the response includes;
 * - the responder certificate's own revocation is not checked (RFC 6960
 *   §4.2.2.2.1 leaves it to local policy; responders are usually marked
 *   id-pkix-ocsp-nocheck, and asking OCSP about OCSP would loop);
 * - `thisUpdate` is at most 5 minutes in the future, `nextUpdate` (when
 *   present) has not passed;
 * - with a nonce sent, the response carries the same nonce extension.
 *
 * Signatures with SHA-1 and algorithms we do not know are refused (so is
 * RSASSA-PSS, which no common responder uses); a refusal is never a crash.
 */
import { verify as verifySignature, X509Certificate, type KeyObject } from 'node:crypto';
import { BasicOCSPResponse, OCSPResponse, OCSPResponseStatus, id_pkix_ocsp_basic, id_pkix_ocsp_nonce, type SingleResponse } from '@peculiar/asn1-ocsp';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CRLReasons } from '@peculiar/asn1-x509';
import { canonicalName, formatName, nameTlv } from '../names.ts';
import { certInfo } from '../certificate.ts';
import { bytesEqual, certIdMatches, keyHash } from './request.ts';

/** Clock skew allowed for a `thisUpdate` in the future (SPEC §2.6b). */
export const THIS_UPDATE_SKEW_MS = 5 * 60_000;

export type OcspCertStatus = 'good' | 'revoked' | 'unknown';

/** A verified answer about one certificate. */
export interface OcspAnswer {
  status: OcspCertStatus;
  thisUpdate: Date;
  nextUpdate: Date | null;
  producedAt: Date;
  /** For `revoked`: when, and the CRLReason name when the responder gave one. */
  revokedAt: Date | null;
  reason: string | null;
  /** Who signed it, for events: "the issuer", "delegated responder CN=..." or "trusted responder CN=...". */
  signer: string;
}

export type OcspJudgement = { ok: true; answer: OcspAnswer } | { ok: false; problem: string };

export interface JudgeContext {
  /** The certificate asked about and its issuer (the next certificate of its validated chain). */
  leaf: X509Certificate;
  issuer: X509Certificate;
  /** `responderCaPem`: extra anchors (or pinned responder certificates) for responder certificates. */
  responderCas: X509Certificate[];
  /** The nonce extension value sent (OcspRequest.nonce), or null. */
  nonce: Buffer | null;
  now: Date;
}

/** Signature algorithms accepted on responses: OID -> digest for node:crypto (null: the key type implies it). */
const SIGNATURE_ALGORITHMS: ReadonlyMap<string, string | null> = new Map([
  ['1.2.840.113549.1.1.11', 'sha256'], // sha256WithRSAEncryption
  ['1.2.840.113549.1.1.12', 'sha384'],
  ['1.2.840.113549.1.1.13', 'sha512'],
  ['1.2.840.113549.1.1.14', 'sha224'],
  ['1.2.840.10045.4.3.1', 'sha224'], // ecdsa-with-SHA224
  ['1.2.840.10045.4.3.2', 'sha256'],
  ['1.2.840.10045.4.3.3', 'sha384'],
  ['1.2.840.10045.4.3.4', 'sha512'],
  ['1.3.101.112', null], // Ed25519
  ['1.3.101.113', null], // Ed448
]);
const SHA1_SIGNATURES = new Set(['1.2.840.113549.1.1.5', '1.2.840.10045.4.1', '1.2.840.10040.4.3']);

const OCSP_SIGNING = '1.3.6.1.5.5.7.3.9';
/** Extensions a responder certificate (or a CA above it) may mark critical: what such certificates carry. */
const KNOWN_CRITICAL = new Set([
  '2.5.29.15', // keyUsage
  '2.5.29.37', // extKeyUsage
  '2.5.29.19', // basicConstraints
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.35', // authorityKeyIdentifier
  '2.5.29.17', // subjectAltName
  '2.5.29.32', // certificatePolicies
  '1.3.6.1.5.5.7.1.1', // authorityInfoAccess
  '2.5.29.31', // cRLDistributionPoints
  '1.3.6.1.5.5.7.48.1.5', // id-pkix-ocsp-nocheck
]);
/** keyUsage digitalSignature | nonRepudiation (contentCommitment): either may sign responses. */
const SIGNING_KEY_USAGE = 0b11;
/** Longest path from a responder certificate to responderCaPem (responder, intermediates, anchor). */
const MAX_RESPONDER_CHAIN = 4;

const STATUS_NAMES: Record<number, string> = {
  [OCSPResponseStatus.malformedRequest]: 'malformedRequest',
  [OCSPResponseStatus.internalError]: 'internalError',
  [OCSPResponseStatus.tryLater]: 'tryLater',
  [OCSPResponseStatus.sigRequired]: 'sigRequired',
  [OCSPResponseStatus.unauthorized]: 'unauthorized',
};

function refuse(problem: string): OcspJudgement {
  return { ok: false, problem };
}

/** Judges the DER of an OCSPResponse for `ctx.leaf`. Never throws. */
export function judgeOcspResponse(der: Uint8Array, ctx: JudgeContext): OcspJudgement {
  let basic: BasicOCSPResponse;
  try {
    const response = AsnConvert.parse(der, OCSPResponse);
    if (response.responseStatus !== OCSPResponseStatus.successful) {
      return refuse(`responder answered ${STATUS_NAMES[response.responseStatus] ?? `status ${response.responseStatus}`}`);
    }
    if (!response.responseBytes) return refuse('successful response without responseBytes');
    if (response.responseBytes.responseType !== id_pkix_ocsp_basic) return refuse(`unsupported response type ${response.responseBytes.responseType}`);
    basic = AsnConvert.parse(response.responseBytes.response, BasicOCSPResponse);
  } catch (e) {
    return refuse(`not a well-formed OCSP response: ${(e as Error).message}`);
  }
  try {
    return judgeBasic(basic, ctx);
  } catch (e) {
    return refuse(`OCSP response cannot be read: ${(e as Error).message}`);
  }
}

function judgeBasic(basic: BasicOCSPResponse, ctx: JudgeContext): OcspJudgement {
  const data = basic.tbsResponseData;
  const single = data.responses.find((r) => certIdMatches(r.certID, ctx.leaf, ctx.issuer));
  if (!single) return refuse('the response does not answer for this certificate (no matching CertID)');

  const signer = authorizedSigner(basic, ctx);
  if (!signer.ok) return refuse(signer.problem);

  const now = ctx.now.getTime();
  if (single.thisUpdate.getTime() > now + THIS_UPDATE_SKEW_MS) return refuse(`thisUpdate ${single.thisUpdate.toISOString()} is in the future`);
  if (single.nextUpdate && single.nextUpdate.getTime() < now) return refuse(`the response expired at its nextUpdate ${single.nextUpdate.toISOString()}`);

  if (ctx.nonce) {
    const echoed = data.responseExtensions?.find((e) => e.extnID === id_pkix_ocsp_nonce);
    if (!echoed) return refuse('the response does not echo the nonce');
    if (!bytesEqual(echoed.extnValue.buffer, ctx.nonce)) return refuse('the response carries another nonce');
  }
  return { ok: true, answer: answerOf(single, data.producedAt, signer.name) };
}

function answerOf(single: SingleResponse, producedAt: Date, signer: string): OcspAnswer {
  const { certStatus } = single;
  const base = { thisUpdate: single.thisUpdate, nextUpdate: single.nextUpdate ?? null, producedAt, signer };
  if (certStatus.revoked) {
    const reason = certStatus.revoked.revocationReason?.reason;
    return { ...base, status: 'revoked', revokedAt: certStatus.revoked.revocationTime, reason: reason === undefined ? null : (CRLReasons[reason] ?? String(reason)) };
  }
  // asn1-schema decodes `good [0] IMPLICIT NULL` as null; a CHOICE with neither good nor revoked set is unknown.
  const status: OcspCertStatus = certStatus.unknown !== undefined || certStatus.good === undefined ? 'unknown' : 'good';
  return { ...base, status, revokedAt: null, reason: null };
}

type SignerCheck = { ok: true; name: string } | { ok: false; problem: string };

/** The certificate that signed `basic`, if it may answer for `ctx.issuer`'s certificates. */
function authorizedSigner(basic: BasicOCSPResponse, ctx: JudgeContext): SignerCheck {
  const algorithm = basic.signatureAlgorithm.algorithm;
  if (SHA1_SIGNATURES.has(algorithm)) return { ok: false, problem: 'the response is signed with SHA-1, which is not accepted' };
  if (!SIGNATURE_ALGORITHMS.has(algorithm)) return { ok: false, problem: `unsupported signature algorithm ${algorithm}` };
  const tbs = basic.tbsResponseDataRaw;
  if (!tbs) return { ok: false, problem: 'response data bytes unavailable' };

  const data = Buffer.from(tbs);
  const signature = Buffer.from(basic.signature);
  // The common case first, without decoding the certificates the response carries: the issuer signed it.
  if (namedByResponderId(basic, ctx.issuer) && signatureVerifies(algorithm, data, signature, ctx.issuer.publicKey)) return { ok: true, name: 'the issuer' };

  const included = (basic.certs ?? []).flatMap((c) => {
    try {
      return [new X509Certificate(Buffer.from(AsnConvert.serialize(c)))];
    } catch {
      return []; // an unreadable extra certificate can only fail to help
    }
  });
  const candidates = [ctx.issuer, ...included, ...ctx.responderCas].filter((c) => namedByResponderId(basic, c));
  if (candidates.length === 0) return { ok: false, problem: `the responder (${responderIdText(basic)}) is neither the issuer nor a certificate the response includes` };

  let problem: string | null = null;
  for (const cert of candidates) {
    if (!signatureVerifies(algorithm, data, signature, cert.publicKey)) {
      problem ??= `the response signature does not verify with the key of ${subjectOf(cert)}`;
      continue;
    }
    const authority = authorityOf(cert, included, ctx);
    if (authority.ok) return authority;
    problem ??= authority.problem;
  }
  return { ok: false, problem: problem ?? 'no authorized responder' };
}

/** Why `cert`, whose key signed the response, may (or may not) answer for the issuer's certificates. */
function authorityOf(cert: X509Certificate, included: X509Certificate[], ctx: JudgeContext): SignerCheck {
  if (cert === ctx.issuer || keyHash(cert).equals(keyHash(ctx.issuer))) return { ok: true, name: 'the issuer' };
  const name = subjectOf(cert);
  const now = ctx.now;
  if (!validAt(cert, now)) return { ok: false, problem: `responder certificate ${name} is outside its validity period` };
  if (ctx.responderCas.some((a) => a.fingerprint256 === cert.fingerprint256)) return { ok: true, name: `trusted responder ${name}` };
  // Node's `keyUsage` is the extended key usage list (undefined without the extension).
  if (!cert.keyUsage?.includes(OCSP_SIGNING)) return { ok: false, problem: `responder certificate ${name} lacks the OCSPSigning extended key usage` };
  const ku = certInfo(cert).keyUsage;
  if (ku !== null && !(ku & SIGNING_KEY_USAGE)) return { ok: false, problem: `responder certificate ${name} key usage does not allow signing` };
  if (unknownCritical(cert)) return { ok: false, problem: `responder certificate ${name} has unsupported critical extensions` };
  // Delegated by the issuer: issued directly by it (RFC 6960 §4.2.2.2).
  if (issuedBy(cert, ctx.issuer)) return { ok: true, name: `delegated responder ${name}` };
  if (ctx.responderCas.length > 0) {
    if (chainsTo(cert, included, ctx.responderCas, now)) return { ok: true, name: `trusted responder ${name}` };
    return { ok: false, problem: `responder certificate ${name} is neither issued by the certificate's issuer nor valid under responderCaPem` };
  }
  return { ok: false, problem: `responder certificate ${name} is not issued by the certificate's issuer` };
}

/** `issuer` issued `cert`: names and key identifiers match, the issuer may sign certificates, and the signature verifies. */
function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function validAt(cert: X509Certificate, now: Date): boolean {
  const { notBefore, notAfter } = certInfo(cert).parsed;
  return now >= notBefore && now <= notAfter;
}

function unknownCritical(cert: X509Certificate): boolean {
  return [...certInfo(cert).parsed.extensions].some(([oid, e]) => e.critical && !KNOWN_CRITICAL.has(oid));
}

/**
 * A path from `cert` up to a certificate of `anchors`, through the certificates the response
 * included: every link issued and signed, every CA on it a CA inside its validity period.
 */
function chainsTo(cert: X509Certificate, pool: X509Certificate[], anchors: X509Certificate[], now: Date): boolean {
  let current = cert;
  for (let depth = 1; depth < MAX_RESPONDER_CHAIN; depth++) {
    const anchor = anchors.find((a) => issuedBy(current, a));
    if (anchor) return anchor.ca && validAt(anchor, now);
    const next = pool.find((c) => c.fingerprint256 !== current.fingerprint256 && c.ca && validAt(c, now) && !unknownCritical(c) && issuedBy(current, c));
    if (!next) return false;
    current = next;
  }
  return false;
}

/** Whether the ResponderID of `basic` designates `cert` (byKey: SHA-1 of its key; byName: its subject). */
function namedByResponderId(basic: BasicOCSPResponse, cert: X509Certificate): boolean {
  const id = basic.tbsResponseData.responderID;
  try {
    if (id.byKey) return bytesEqual(id.byKey.buffer, keyHash(cert));
    if (id.byName) {
      const der = Buffer.from(AsnConvert.serialize(id.byName));
      return canonicalName(der, nameTlv(der)) === certInfo(cert).subjectCanon;
    }
  } catch {
    return false;
  }
  return false;
}

function responderIdText(basic: BasicOCSPResponse): string {
  const id = basic.tbsResponseData.responderID;
  if (id.byKey) return `key hash ${Buffer.from(id.byKey.buffer).toString('hex').toUpperCase()}`;
  try {
    const der = Buffer.from(AsnConvert.serialize(id.byName));
    return formatName(der, nameTlv(der));
  } catch {
    return 'an unreadable name';
  }
}

function signatureVerifies(algorithm: string, data: Buffer, signature: Buffer, key: KeyObject): boolean {
  try {
    return verifySignature(SIGNATURE_ALGORITHMS.get(algorithm) ?? null, data, key, signature);
  } catch {
    return false; // e.g. an RSA algorithm with an EC key
  }
}

function subjectOf(cert: X509Certificate): string {
  try {
    const { subjectName } = certInfo(cert).parsed;
    return formatName(subjectName, nameTlv(subjectName));
  } catch {
    return cert.subject.replace(/\n/g, ', ');
  }
}

/**
 * Until when (ms since the epoch) an answer may be served from the cache
 * (SPEC §2.6b): `nextUpdate`, at most `maxCacheSeconds` after `thisUpdate`;
 * a `revoked` until its `nextUpdate` whatever `maxCacheSeconds` says, except
 * a `certificateHold`, which can be lifted and so is kept no longer than a
 * `good`. Null: not worth caching (already past).
 */
export function cacheUntil(answer: Pick<OcspAnswer, 'status' | 'thisUpdate' | 'nextUpdate' | 'reason'>, maxCacheSeconds: number, now: Date): number | null {
  const cap = answer.thisUpdate.getTime() + maxCacheSeconds * 1000;
  const next = answer.nextUpdate?.getTime() ?? null;
  const permanent = answer.status === 'revoked' && answer.reason !== 'certificateHold';
  const until = permanent ? (next ?? cap) : Math.min(next ?? cap, cap);
  return until > now.getTime() ? until : null;
}

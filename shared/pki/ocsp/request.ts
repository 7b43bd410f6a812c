/**
 * OCSP requests (RFC 6960 §4.1): what to ask a responder about one
 * certificate, and where to ask it. Pure: no I/O.
 *
 * - The CertID is built with SHA-1, as RFC 6960 §4.3 and RFC 5019 require of
 *   clients for interoperability (responders must understand it; not all
 *   understand SHA-256). SHA-1 here is an identifier, not a signature: its
 *   collision weakness does not let anyone forge an answer.
 * - The structures are encoded by `@peculiar/asn1-ocsp` (DER), never by hand.
 * - `certIdMatches()` recomputes a response's CertID with the hash algorithm
 *   the response names, so a responder that answers with SHA-256 CertIDs is
 *   matched too; unknown algorithms never match.
 * - `ocspUrlOf()` reads the certificate's Authority Information Access and
 *   promises only `http:` URLs (SPEC §2.6b): OCSP over https would need its
 *   own revocation check of the responder's TLS certificate.
 */
import { createHash, randomBytes, type X509Certificate } from 'node:crypto';
import { CertID, Nonce, OCSPRequest, Request, TBSRequest, id_pkix_ocsp_nonce } from '@peculiar/asn1-ocsp';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { AlgorithmIdentifier, AuthorityInfoAccessSyntax, Extension, SubjectPublicKeyInfo, id_ad_ocsp } from '@peculiar/asn1-x509';
import { OID, certInfo } from '../certificate.ts';

/** Hash algorithms a CertID may use, by OID, as node:crypto names them. */
const CERT_ID_HASHES: ReadonlyMap<string, string> = new Map([
  ['1.3.14.3.2.26', 'sha1'],
  ['2.16.840.1.101.3.4.2.1', 'sha256'],
  ['2.16.840.1.101.3.4.2.2', 'sha384'],
  ['2.16.840.1.101.3.4.2.3', 'sha512'],
]);
const SHA1_OID = '1.3.14.3.2.26';

/** Bytes of a nonce we send (RFC 8954: 1 to 32; 16 is what OpenSSL sends). */
const NONCE_BYTES = 16;

export interface OcspRequest {
  /** The DER of the OCSPRequest, the body of the HTTP POST. */
  der: Buffer;
  /** The DER of the (SHA-1) CertID: identifies the certificate, e.g. as a cache key. */
  certIdDer: Buffer;
  /** The nonce extension's value as sent (the DER of the Nonce), or null without one. */
  nonce: Buffer | null;
}

/** The issuer's facts a CertID hashes: its subject Name DER and its public key bits. */
interface IssuerFacts {
  nameDer: Buffer;
  keyBits: Buffer;
}

const issuerFacts = new WeakMap<X509Certificate, IssuerFacts>();

function factsOf(issuer: X509Certificate): IssuerFacts {
  const cached = issuerFacts.get(issuer);
  if (cached) return cached;
  const spki = AsnConvert.parse(issuer.publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo);
  const facts = { nameDer: certInfo(issuer).parsed.subjectName, keyBits: Buffer.from(spki.subjectPublicKey) };
  issuerFacts.set(issuer, facts);
  return facts;
}

/** SHA-1 of a certificate's subjectPublicKey bits: the `byKey` ResponderID and CertID issuerKeyHash. */
export function keyHash(cert: X509Certificate, algorithm = 'sha1'): Buffer {
  return createHash(algorithm).update(factsOf(cert).keyBits).digest();
}

function certIdFor(leaf: X509Certificate, issuer: X509Certificate, hashOid: string): CertID {
  const hash = CERT_ID_HASHES.get(hashOid);
  if (!hash) throw new Error(`unsupported CertID hash algorithm ${hashOid}`);
  const { nameDer } = factsOf(issuer);
  return new CertID({
    // RFC 6960 examples and OpenSSL send the parameters as an explicit NULL.
    hashAlgorithm: new AlgorithmIdentifier({ algorithm: hashOid, parameters: null }),
    issuerNameHash: new OctetString(createHash(hash).update(nameDer).digest()),
    issuerKeyHash: new OctetString(keyHash(issuer, hash)),
    serialNumber: bufferOf(certInfo(leaf).parsed.serialBytes),
  });
}

/** The request for `leaf` issued by `issuer`, with a fresh random nonce when `withNonce`. */
export function buildOcspRequest(leaf: X509Certificate, issuer: X509Certificate, withNonce: boolean): OcspRequest {
  const certId = certIdFor(leaf, issuer, SHA1_OID);
  const nonce = withNonce ? Buffer.from(AsnConvert.serialize(new Nonce(randomBytes(NONCE_BYTES)))) : null;
  const tbsRequest = new TBSRequest({
    requestList: [new Request({ reqCert: certId })],
    requestExtensions: nonce ? [new Extension({ extnID: id_pkix_ocsp_nonce, critical: false, extnValue: new OctetString(nonce) })] : undefined,
  });
  return {
    der: Buffer.from(AsnConvert.serialize(new OCSPRequest({ tbsRequest }))),
    certIdDer: Buffer.from(AsnConvert.serialize(certId)),
    nonce,
  };
}

/** Whether a response's CertID designates `leaf` issued by `issuer` (with the hash algorithm it names). */
export function certIdMatches(candidate: CertID, leaf: X509Certificate, issuer: X509Certificate): boolean {
  if (!CERT_ID_HASHES.has(candidate.hashAlgorithm.algorithm)) return false;
  // Parameters absent or NULL both mean "none" for these hashes (RFC 5754 §2).
  const expected = certIdFor(leaf, issuer, candidate.hashAlgorithm.algorithm);
  return (
    bytesEqual(candidate.issuerNameHash.buffer, expected.issuerNameHash.buffer) &&
    bytesEqual(candidate.issuerKeyHash.buffer, expected.issuerKeyHash.buffer) &&
    bytesEqual(candidate.serialNumber, expected.serialNumber)
  );
}

/**
 * The first `http:` OCSP URL of the certificate's Authority Information
 * Access, or null (no extension, no OCSP entry, only other schemes).
 * Throws when the extension is present but malformed.
 */
export function ocspUrlOf(cert: X509Certificate): string | null {
  const ext = certInfo(cert).parsed.extensions.get(OID.authorityInfoAccess);
  if (!ext) return null;
  const aia = AsnConvert.parse(ext.value, AuthorityInfoAccessSyntax);
  for (const access of aia) {
    const uri = access.accessMethod === id_ad_ocsp ? access.accessLocation.uniformResourceIdentifier : undefined;
    if (uri !== undefined && isHttpUrl(uri)) return uri;
  }
  return null;
}

/** Whether `url` is an absolute `http:` URL (the only scheme OCSP requests are sent to). */
export function isHttpUrl(url: string): boolean {
  return URL.canParse(url) && new URL(url).protocol === 'http:';
}

function bufferOf(b: Buffer): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer;
}

export function bytesEqual(a: ArrayBuffer | Uint8Array, b: ArrayBuffer | Uint8Array): boolean {
  return Buffer.from(a instanceof Uint8Array ? a : new Uint8Array(a)).equals(Buffer.from(b instanceof Uint8Array ? b : new Uint8Array(b)));
}

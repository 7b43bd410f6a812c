// Peer certificates are verified once, by OpenSSL, in the TLS handshake: against the listener's
// trust anchors (clientCaPem, with allowPartialTrustChain so that an intermediate may be the
// anchor), with validity periods, key usage and extended key usage for the TLS role, signatures,
// basic and name constraints. certgate maps that verdict to the reasons of SPEC §3 and its
// events, and adds only what OpenSSL cannot know: revocation (from the CRL index) and the
// directory. This module holds the mapping, and the walk from a verified leaf up to its anchor
// that the revocation check needs (each certificate with its issuer).
import { constants, type X509Certificate } from 'node:crypto';

/**
 * OpenSSL options of every TLS server that verifies client certificates (SMTP listeners, the
 * API with mutual TLS). No session tickets: a resumed session carries the first handshake's
 * certificate and verdict without a new signature, so a saved session would let a client in as
 * the card holder without the card (shown by test/deployment-a.test.ts with `openssl s_client
 * -sess_in`), past an expiry OpenSSL never rechecks. Each process has its own ticket keys, so
 * behind a load balancer few resumptions would succeed anyway; and issuing two tickets per
 * handshake (OpenSSL 3.0 re-decodes the client's certificates for each) cost ~0.4 ms of
 * the worker's CPU per session (bench/smtp; perf: tls_construct_new_session_ticket). With the
 * option, OpenSSL still sends TLS 1.3 tickets that name a session no server keeps: a client
 * offering one gets a full handshake. No renegotiation either: in TLS 1.2 that is a
 * handshake's RSA work at the client's will (TLS 1.3 has none).
 */
export const SERVER_SECURE_OPTIONS = constants.SSL_OP_NO_TICKET | constants.SSL_OP_NO_RENEGOTIATION;

/** Why a presented certificate is not valid, in the words of events and refusals. */
export type VerifyFailure =
  | 'expired'
  | 'not-yet-valid'
  | 'untrusted-issuer'
  | 'bad-key-usage'
  | 'bad-signature'
  | 'not-a-ca'
  | 'malformed';

/**
 * OpenSSL's X509_V_ERR_* names, as Node reports them in `authorizationError`, by reason. Node
 * names only these codes; every other one (name constraints, a CA without keyCertSign, ...)
 * reaches it as UNSPECIFIED. Two verdicts are OpenSSL's rather than a wording of ours: an
 * issuer that is not a CA fails its purpose check (INVALID_PURPOSE, so `bad-key-usage`), and
 * anyExtendedKeyUsage alone does not make a certificate fit for client authentication.
 */
const REASON_OF_CODE: Record<string, VerifyFailure> = {
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not-yet-valid',
  UNABLE_TO_GET_ISSUER_CERT: 'untrusted-issuer',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'untrusted-issuer',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'untrusted-issuer',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'untrusted-issuer',
  SELF_SIGNED_CERT_IN_CHAIN: 'untrusted-issuer',
  CERT_UNTRUSTED: 'untrusted-issuer',
  CERT_REJECTED: 'untrusted-issuer',
  CERT_CHAIN_TOO_LONG: 'untrusted-issuer',
  INVALID_PURPOSE: 'bad-key-usage',
  CERT_SIGNATURE_FAILURE: 'bad-signature',
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: 'bad-signature',
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: 'bad-signature',
  INVALID_CA: 'not-a-ca',
  PATH_LENGTH_EXCEEDED: 'not-a-ca',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'malformed',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'malformed',
};

/**
 * The reason for OpenSSL's verdict on a presented certificate. Any code not listed (OpenSSL
 * has dozens) still refuses: as `untrusted-issuer`, the event's detail keeping the code.
 */
export function verifyFailure(code: string | Error | null | undefined): VerifyFailure {
  const name = typeof code === 'string' ? code : ((code as { code?: string } | null | undefined)?.code ?? String(code ?? ''));
  return REASON_OF_CODE[name] ?? 'untrusted-issuer';
}

/** Links followed at most: deeper chains are refused by OpenSSL's own depth limit long before. */
const MAX_CHAIN = 10;
/** Certificates a peer sent besides its own that are looked at (OpenSSL bounds the list to 100 KB). */
const MAX_PRESENTED = 64;

/**
 * A verified leaf with its issuers, leaf first, up to the first trust anchor: the certificates
 * the peer presented, until one is issued by an anchor of `anchors`, which ends the chain (an
 * anchor is trusted, not revocation-checked, as an intermediate CA in a listener's bundle is:
 * SPEC §2.6 covers issuers by their CRL sources).
 *
 * Node links the presented certificates in the order the peer sent them (`issuerCertificate` is
 * simply the next one), and a peer may send others first: a client whose card is revoked would
 * otherwise have the revocation check look at a certificate of its choosing. So each link is
 * found by issuance: name and key identifier (`checkIssued`) and the issuer's signature, which a
 * certificate forged with the real intermediate's name and key identifier does not carry.
 */
export function verifiedChain(leaf: X509Certificate, anchors: readonly X509Certificate[]): X509Certificate[] {
  const presented: X509Certificate[] = [];
  for (let c = leaf.issuerCertificate; c && presented.length < MAX_PRESENTED; c = c.issuerCertificate) presented.push(c);
  const chain = [leaf];
  for (let cert = leaf; chain.length < MAX_CHAIN && !cert.checkIssued(cert); ) {
    const anchor = anchors.find((a) => issuedBy(cert, a));
    if (anchor) {
      chain.push(anchor);
      break;
    }
    const next = presented.find((p) => !chain.includes(p) && issuedBy(cert, p));
    if (!next) break;
    chain.push(next);
    cert = next;
  }
  return chain;
}

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
}

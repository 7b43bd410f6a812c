// What a session needs of the client's certificate after OpenSSL verified the handshake: its
// facts (names for the directory tokens and the events) and the chain whose revocation is
// checked. Both are pure functions of the certificate (and of the listener's anchors), and a
// card holder reconnects many times a day, so they are kept by the certificate's SHA-256.
//
// Why not simply socket.getPeerX509Certificate(): on the server side Node copies every
// certificate the client sent besides its own (X509_dup, which on OpenSSL 3.0 re-decodes it,
// public key included): 0.17-0.21 ms per session for a card sent with its intermediate, as
// CAC/PIV clients send it (bench/smtp --profile). getPeerCertificate(false) reads the leaf only
// and gives its fingerprint (~0.08 ms); the X509Certificate objects are made on a miss only.
//
// The kept chain is the one verifiedChain() built from the first verified session of this
// certificate under these anchors. Another verified session can only have sent an intermediate
// with the same name and key (OpenSSL checked the leaf's signature with it): the same issuing
// CA, whose revocation answers for that leaf.
import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { certificateFacts, type CertificateFacts } from '../../shared/pki/certificate.ts';
import { verifiedChain } from '../../shared/pki/verify.ts';

export interface PeerCertificate {
  /** null when the certificate's names cannot be decoded (a session refuses it as malformed). */
  facts: CertificateFacts | null;
  /** The chain for the revocation check, leaf first; ask only when OpenSSL authorized it. */
  chain(): X509Certificate[];
}

interface Known {
  leaf: X509Certificate;
  facts: CertificateFacts | null;
  /** By the listener's anchor list (a new list when its clientCaPem changes). */
  chains: WeakMap<readonly X509Certificate[], X509Certificate[]>;
}

const known = new Map<string, Known>();
/**
 * An entry holds the leaf and the intermediate its client sent (~6.5 KB each as Node objects,
 * measured): 2048 of them ~28 MB. Cleared when full; a miss costs the copy above once more.
 */
const MAX_KNOWN = 2048;

/** The client's certificate of a finished handshake, or null when it sent none. */
export function peerCertificate(socket: TLSSocket, anchors: readonly X509Certificate[]): PeerCertificate | null {
  const fingerprint = socket.getPeerCertificate(false)?.fingerprint256;
  if (!fingerprint) return null;
  let entry = known.get(fingerprint);
  if (!entry) {
    const leaf = socket.getPeerX509Certificate();
    if (!leaf) return null;
    entry = { leaf, facts: factsOf(leaf), chains: new WeakMap() };
    // Only from a verified handshake: the leaf keeps what its client sent with it, and a chain
    // built from a refused session (an intermediate left out) must not serve a later one.
    if (socket.authorized) {
      if (known.size >= MAX_KNOWN) known.clear();
      known.set(fingerprint, entry);
    }
  }
  const { leaf, facts, chains } = entry;
  return {
    facts,
    chain() {
      let chain = chains.get(anchors);
      if (!chain) chains.set(anchors, (chain = verifiedChain(leaf, anchors)));
      return chain;
    },
  };
}

function factsOf(cert: X509Certificate): CertificateFacts | null {
  try {
    return certificateFacts(cert);
  } catch {
    return null;
  }
}

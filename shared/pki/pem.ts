// Strict PEM input for certificates, keys and CRLs given through the API or downloaded: every
// BEGIN needs its END and the body must be clean base64 (Node's decoder silently skips garbage,
// which would let a damaged bundle half-load). Errors are worded for a 400 answer.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { certInfo } from './certificate.ts';

export interface PemBlock {
  label: string;
  der: Buffer;
}

/** Byte classes for PEM bodies: 1 base64 character, 2 white space, 3 `=`, 4 `:` (a header line). */
const PEM_BYTE = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') PEM_BYTE[c.charCodeAt(0)] = 1;
for (const c of ' \t\r\n') PEM_BYTE[c.charCodeAt(0)] = 2;
PEM_BYTE[0x3d] = 3;
PEM_BYTE[0x3a] = 4;

/**
 * Strict PEM reader: text outside blocks is allowed (bundles often carry
 * `subject=` lines), but every BEGIN needs its matching END and the body must
 * be clean base64 (Node's decoder would silently skip garbage). It works on
 * bytes with indexOf and a table lookup per byte rather than on strings with
 * regular expressions, because a million-entry CRL is a 37 MB PEM body.
 */
export function readPemBlocks(input: string | Uint8Array): PemBlock[] {
  const buf = typeof input === 'string' ? Buffer.from(input, 'utf8') : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const blocks: PemBlock[] = [];
  let pos = 0;
  for (;;) {
    const begin = buf.indexOf('-----BEGIN ', pos, 'latin1');
    if (begin < 0) break;
    const labelEnd = buf.indexOf('-----', begin + 11, 'latin1');
    const label = labelEnd < 0 ? '' : buf.toString('latin1', begin + 11, Math.min(labelEnd, begin + 80));
    if (!/^[A-Z0-9 ]{1,64}$/.test(label)) throw new Error('malformed PEM: bad BEGIN line');
    const bodyStart = labelEnd + 5;
    const end = buf.indexOf('-----END ', bodyStart, 'latin1');
    const nextBegin = buf.indexOf('-----BEGIN', bodyStart, 'latin1');
    if (end < 0 || (nextBegin >= 0 && nextBegin < end)) throw new Error('malformed PEM: a BEGIN line without its END line');
    const endLabelEnd = buf.indexOf('-----', end + 9, 'latin1');
    const endLabel = endLabelEnd < 0 ? '' : buf.toString('latin1', end + 9, Math.min(endLabelEnd, end + 80));
    if (endLabel !== label) throw new Error(`malformed PEM: BEGIN ${label} closed by END ${endLabel || '?'}`);
    blocks.push({ label, der: decodeBase64Strict(buf, bodyStart, end, label) });
    pos = endLabelEnd + 5;
  }
  return blocks;
}

function decodeBase64Strict(buf: Buffer, start: number, end: number, label: string): Buffer {
  let n = 0;
  let pad = 0;
  for (let i = start; i < end; i++) {
    const k = PEM_BYTE[buf[i]];
    if (k === 1 && pad === 0) n++;
    else if (k === 2) continue;
    else if (k === 3) {
      pad++;
      n++;
    } else if (k === 4) throw new Error(`PEM block ${label} has headers (encrypted or legacy format); not supported`);
    else throw new Error(`malformed PEM: block ${label} is not valid base64`);
  }
  if (n === 0 || n % 4 !== 0 || pad > 2) throw new Error(`malformed PEM: block ${label} is not valid base64`);
  return Buffer.from(buf.toString('latin1', start, end), 'base64');
}

/** All certificates of a PEM text; throws with a message fit for a 400 answer. */
export function parsePemCertificates(pem: string): X509Certificate[] {
  if (typeof pem !== 'string' || pem.trim() === '') throw new Error('no PEM certificate given (empty input)');
  const blocks = readPemBlocks(pem);
  if (blocks.length === 0) throw new Error('no PEM certificate found (expected -----BEGIN CERTIFICATE-----)');
  return blocks.map((b, i) => {
    if (b.label !== 'CERTIFICATE') throw new Error(`PEM block #${i + 1} is ${b.label}, expected CERTIFICATE`);
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(b.der);
      // OpenSSL stops at the end of the first certificate; trailing bytes mean a damaged block.
      if (!cert.raw.equals(b.der)) throw new Error('trailing data after the certificate');
      certInfo(cert); // our own parse must succeed too, or later use would fail
    } catch (e) {
      throw new Error(`PEM certificate #${i + 1} is invalid: ${(e as Error).message}`, { cause: e });
    }
    return cert;
  });
}

/** A private key from PEM; encrypted keys are refused (no passphrase handling). */
export function parsePrivateKeyPem(pem: string): KeyObject {
  if (typeof pem !== 'string' || pem.trim() === '') throw new Error('no PEM private key given (empty input)');
  const blocks = readPemBlocks(pem);
  if (blocks.length === 0) throw new Error('no PEM private key found (expected -----BEGIN PRIVATE KEY-----)');
  if (blocks.length > 1) throw new Error(`expected one PEM private key, found ${blocks.length} PEM blocks`);
  const { label } = blocks[0];
  if (label === 'ENCRYPTED PRIVATE KEY') throw new Error('encrypted private keys are not supported');
  if (!/^(|RSA |EC )PRIVATE KEY$/.test(label)) throw new Error(`PEM block is ${label}, expected PRIVATE KEY`);
  try {
    return createPrivateKey({ key: pem, format: 'pem' });
  } catch (e) {
    throw new Error(`invalid private key: ${(e as Error).message}`, { cause: e });
  }
}

/** Whether the key is the private half of the (first) certificate's public key. */
export function keyMatchesCertificate(keyPem: string, certPem: string): boolean {
  const [cert] = parsePemCertificates(certPem);
  return cert.checkPrivateKey(parsePrivateKeyPem(keyPem));
}

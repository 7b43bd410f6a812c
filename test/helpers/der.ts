// DER (and LDAP's BER subset) written by hand, for tests that craft what no real tool makes:
// CRLs openssl will not sign, LDAP messages a server should never send.

/** One TLV: a one-byte tag, the definite length (short or long form), then the content. */
export function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  const length = n < 0x80 ? [n] : [0x80 | bytes.length, ...bytes];
  return Buffer.concat([Buffer.from([tag, ...length]), body]);
}

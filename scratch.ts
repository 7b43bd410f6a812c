import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { buildOcspRequest, ocspUrlOf } from './shared/pki/ocsp/request.ts';
const ca = new X509Certificate(readFileSync('/tmp/ocspx/ca.pem')); const leaf = new X509Certificate(readFileSync('/tmp/ocspx/leaf.pem'));
const r = buildOcspRequest(leaf, ca, true);
writeFileSync('/tmp/ocspx/req.der', r.der);
console.log(ocspUrlOf(leaf), ocspUrlOf(ca), r.certIdDer.toString('hex'));

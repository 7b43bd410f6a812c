// decideRevocation (shared/pki/revocation.ts): every combination of an OCSP result, onUnavailable
// and CRL verdicts (for the whole chain and for the issuers only), against SPEC §2.6b read
// literally: good → CRLs not consulted for the leaf; revoked → `revoked`; anything else →
// onUnavailable (use-crl: §2.6, reject: `revocation-unavailable`, accept-and-log: accepted and said);
// `unverified` marks what passes without an established status.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { decideRevocation, type RevocationFacts, type RevocationSwitch } from '../shared/pki/revocation.ts';
import type { RevocationVerdict as CrlVerdict } from '../shared/pki/crl/store.ts';
import type { OcspResult } from '../shared/pki/ocsp/checker.ts';

const answer = (status: 'good' | 'revoked' | 'unknown') => ({
  status, thisUpdate: '2026-12-01T12:00:00.000Z', nextUpdate: null, revokedAt: status === 'revoked' ? '2026-11-30T00:00:00.000Z' : null,
  reason: status === 'revoked' ? 'keyCompromise' : null, signer: 'the issuer', url: 'http://ocsp.example.mil/', until: 0,
});
const OCSP: Record<string, OcspResult | null> = {
  off: null,
  good: { outcome: 'good', answer: answer('good'), from: 'responder' },
  revoked: { outcome: 'revoked', answer: answer('revoked'), from: 'redis' },
  unknown: { outcome: 'unknown', answer: answer('unknown'), from: 'responder' },
  unavailable: { outcome: 'unavailable', problem: 'responder http://ocsp.example.mil/ did not answer within the 3000 ms left' },
};
const CRL: Record<string, CrlVerdict | null> = {
  off: null,
  good: { status: 'good' },
  unchecked: { status: 'unchecked' },
  revoked: { status: 'revoked', detail: 'revoked by CRL ca59 on 2026-11-01' },
  'crl-expired': { status: 'crl-expired', detail: 'CRL of CN=CA expired' },
  'crl-expired-accepted': { status: 'crl-expired-accepted', detail: 'CRL of CN=CA expired; accepted' },
};
const ON_UNAVAILABLE = ['use-crl', 'reject', 'accept-and-log'] as const;
const refusalOf = (v: CrlVerdict | null) => (v && (v.status === 'revoked' || v.status === 'crl-expired') ? v.status : null);

describe('decideRevocation', () => {
  let count = 0;
  for (const [ocspName, ocsp] of Object.entries(OCSP)) {
    for (const onUnavailable of ON_UNAVAILABLE) {
      for (const [chainName, chainVerdict] of Object.entries(CRL)) {
        for (const [issuersName, issuersVerdict] of Object.entries(CRL)) {
          // Both parts come from one CRL setting: off together or on together.
          if ((chainVerdict === null) !== (issuersVerdict === null)) continue;
          const which: RevocationSwitch = (['inboundSmtpTls', 'outboundSmtpTls', 'webInterface'] as const)[count++ % 3]!;
          test(`OCSP ${ocspName}, ${onUnavailable}, CRL chain ${chainName} / issuers ${issuersName}`, () => {
            const asked: string[] = [];
            const facts: RevocationFacts = {
              switch: which,
              ocsp,
              onUnavailable,
              crl: chainVerdict === null ? null : (part) => (asked.push(part), (part === 'chain' ? chainVerdict : issuersVerdict) as CrlVerdict),
            };
            const d = decideRevocation(facts);
            const unavailable = ocsp !== null && ocsp.outcome !== 'good' && ocsp.outcome !== 'revoked';
            let refuse, expectAsked: string[];
            if (ocsp === null) [refuse, expectAsked] = [refusalOf(chainVerdict), chainVerdict ? ['chain'] : []];
            else if (ocsp.outcome === 'revoked') [refuse, expectAsked] = ['revoked', []];
            else if (ocsp.outcome === 'good' || onUnavailable === 'accept-and-log') [refuse, expectAsked] = [refusalOf(issuersVerdict), issuersVerdict ? ['issuers'] : []];
            else if (onUnavailable === 'reject') [refuse, expectAsked] = ['revocation-unavailable', []];
            else [refuse, expectAsked] = [refusalOf(chainVerdict), chainVerdict ? ['chain'] : []];
            assert.equal(d.refuse, refuse);
            assert.deepEqual(asked, expectAsked, 'the CRLs asked');
            const crlAccepted = asked.some((part) => (part === 'chain' ? chainVerdict : issuersVerdict)?.status === 'crl-expired-accepted');
            const unverified = refuse === null && ((unavailable && onUnavailable === 'accept-and-log') || crlAccepted);
            assert.equal(d.unverified, unverified, 'passes without an established status');
            if (ocsp !== null) assert.match(d.detail, /^OCSP/, 'the detail says OCSP');
            if (ocsp?.outcome === 'revoked') assert.match(d.detail, /OCSP: revoked at .*keyCompromise/);
            if (unavailable && onUnavailable === 'accept-and-log') assert.match(d.detail, /accepted without a revocation check \(onUnavailable: accept-and-log\)/);
            if (unavailable && onUnavailable === 'use-crl' && chainVerdict === null) assert.match(d.detail, new RegExp(`not revocation-checked: CRLs are off for ${which}`));
            if (ocsp === null && chainVerdict === null) assert.equal(d.detail, `not revocation-checked: ${which} is off`);
            if (ocsp === null && chainVerdict?.status === 'good') assert.equal(d.detail, 'revocation-checked: not revoked');
            if (refuse === 'crl-expired' || (refuse === 'revoked' && ocsp?.outcome !== 'revoked')) assert.match(d.detail, /CRL/);
          });
        }
      }
    }
  }
});

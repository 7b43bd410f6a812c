// POST /v1/ldap-profiles/{name}/test (SPEC §2.1): runs a profile's certificate or SMTP
// auth query now, exactly as a worker would, and says what the directory answered.
import { Directory } from '../shared/directory/client.ts';
import type { LdapProfile } from '../shared/config/schemas.ts';
import { certificateFacts } from '../shared/pki/certificate.ts';
import { parsePemCertificates } from '../shared/pki/pem.ts';
import { certificateTokenValues, type CertificateTokenValues } from '../shared/directory/tokens.ts';
import { badRequest } from './errors.ts';
import type { LdapProfileTest, LdapProfileTestResult } from './http-schemas.ts';

export async function runLdapTest(profile: LdapProfile, body: LdapProfileTest, now: Date = new Date()): Promise<LdapProfileTestResult> {
  const started = performance.now();
  const directory = new Directory(profile);
  try {
    return body.query === 'certificate'
      ? await certificateTest(profile, directory, body.certificatePem, started)
      : await smtpAuthTest(profile, directory, body.username, body.password, now, started);
  } finally {
    await directory.close();
  }
}

async function certificateTest(profile: LdapProfile, directory: Directory, pem: string, started: number): Promise<LdapProfileTestResult> {
  if (!profile.certificateQuery) throw badRequest(`body/query: LDAP profile "${profile.name}" has no certificateQuery`);
  let tokens: CertificateTokenValues;
  try {
    const [cert] = parsePemCertificates(pem);
    if (!cert) throw new Error('no certificate');
    tokens = certificateTokenValues(certificateFacts(cert));
  } catch (e) {
    throw badRequest(`body/certificatePem: ${(e as Error).message}`);
  }
  const found = await directory.lookupCertificate(tokens);
  return {
    matched: found.outcome === 'one', dn: found.dn, userId: found.userId, authenticated: null, allowed: null,
    durationMs: elapsed(started), filter: found.filter, outcome: found.outcome, tokens, allowFilter: null, error: found.detail ?? null,
  };
}

async function smtpAuthTest(profile: LdapProfile, directory: Directory, username: string, password: string, now: Date, started: number): Promise<LdapProfileTestResult> {
  const query = profile.smtpAuthQuery;
  if (!query) throw badRequest(`body/query: LDAP profile "${profile.name}" has no smtpAuthQuery`);
  const auth = await directory.authenticate(username, password);
  const allow = query.allowQuery ? await directory.checkAllowed(username, now) : null;
  return {
    matched: auth.dn !== null,
    dn: auth.dn,
    userId: auth.userId,
    authenticated: auth.outcome === 'authenticated',
    // null when there is no allowQuery or the directory could not answer it
    allowed: allow && allow.outcome !== 'directory-unavailable' ? allow.outcome === 'allowed' : null,
    durationMs: elapsed(started),
    filter: auth.filter,
    outcome: auth.outcome,
    tokens: null,
    allowFilter: allow?.filter ?? null,
    error: auth.detail ?? (allow?.outcome === 'directory-unavailable' ? (allow.detail ?? 'directory unavailable') : null),
  };
}

const elapsed = (started: number) => Math.round((performance.now() - started) * 10) / 10;

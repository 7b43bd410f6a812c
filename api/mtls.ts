/**
 * The API with mutual TLS (SPEC §2.6 and §2.6b `webInterface`): HTTPS options
 * from the environment, and an `onRequest` hook that refuses client
 * certificates that OCSP or the CRLs revoke (shared/pki/revocation.ts).
 *
 * The TLS layer (`requestCert` + `rejectUnauthorized` against API_CLIENT_CA)
 * already refuses clients without a valid certificate; the hook adds the
 * revocation check, which follows CRL changes without new TLS contexts (Node's
 * own `crl` option would need a context rebuild per CRL and scales badly,
 * see FIELD-NOTES).
 */
import type { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { checkRevocation, type RevocationRefusal, type RevocationSettings, type RevocationSources } from '../shared/pki/revocation.ts';
import { keyMatchesCertificate, parsePemCertificates, parsePrivateKeyPem } from '../shared/pki/pem.ts';
import { SERVER_SECURE_OPTIONS, verifiedChain } from '../shared/pki/verify.ts';

export interface ApiHttpsOptions {
  key: string;
  cert: string;
  ca: string;
  requestCert: true;
  rejectUnauthorized: true;
  minVersion: 'TLSv1.2';
  secureOptions: number;
}

const TLS_ENV = ['API_TLS_CERT', 'API_TLS_KEY', 'API_CLIENT_CA'] as const;

/**
 * HTTPS options for Fastify from API_TLS_CERT, API_TLS_KEY and API_CLIENT_CA
 * (PEM file paths): all three, or none (null: plain HTTP). Throws a one-line
 * reason when they are incomplete, unreadable or do not fit together.
 */
export function httpsOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): ApiHttpsOptions | null {
  const given = TLS_ENV.filter((n) => env[n]);
  if (given.length === 0) return null;
  if (given.length < TLS_ENV.length) {
    const missing = TLS_ENV.filter((n) => !env[n]);
    throw new Error(`mutual TLS needs ${TLS_ENV.join(', ')} together; ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not set`);
  }
  const [cert, key, ca] = TLS_ENV.map((name) => readPem(name, env[name] as string));
  check('API_TLS_CERT', () => parsePemCertificates(cert));
  check('API_TLS_KEY', () => parsePrivateKeyPem(key));
  check('API_CLIENT_CA', () => parsePemCertificates(ca));
  if (!keyMatchesCertificate(key, cert)) throw new Error('API_TLS_KEY is not the private key of the API_TLS_CERT certificate');
  // Every request's connection proves its certificate's key: no resumption (SERVER_SECURE_OPTIONS).
  return { key, cert, ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2', secureOptions: SERVER_SECURE_OPTIONS };
}

function readPem(name: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`${name} "${path}" cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

function check(name: string, parse: () => unknown): void {
  try {
    parse();
  } catch (err) {
    throw new Error(`${name}: ${(err as Error).message}`, { cause: err });
  }
}

/** The client's verified chain, leaf first (cached per connection: it cannot change on it). */
const chains = new WeakMap<TLSSocket, X509Certificate[]>();

function peerChain(socket: TLSSocket, anchors: readonly X509Certificate[]): X509Certificate[] {
  const cached = chains.get(socket);
  if (cached) return cached;
  const leaf = socket.getPeerX509Certificate();
  const chain = leaf ? verifiedChain(leaf, anchors) : [];
  chains.set(socket, chain);
  return chain;
}

function forbidden(reply: FastifyReply, message: string): FastifyReply {
  return reply.code(403).send({ statusCode: 403, error: 'Forbidden', message });
}

const REFUSALS: Record<RevocationRefusal, string> = {
  revoked: 'client certificate revoked',
  'crl-expired': 'client certificate cannot be checked: the CRL has expired',
  'revocation-unavailable': 'client certificate cannot be checked: its revocation status is unavailable',
};

/**
 * A Fastify `onRequest` hook: with `webInterface` on (in the CRL or OCSP
 * settings) and a TLS connection, a certificate refused by the revocation
 * check gets 403 with the reason (revoked, CRL expired under `onExpiredCrl:
 * reject`, OCSP unavailable under `onUnavailable: reject`). A certificate let
 * through without a revocation status (`accept-and-log`) is logged with a
 * warning. Plain-HTTP requests are not affected: there is no client
 * certificate to check.
 */
export function revocationHook(sources: RevocationSources, getSettings: () => Promise<RevocationSettings> | RevocationSettings, https: Pick<ApiHttpsOptions, 'ca'>) {
  const anchors = parsePemCertificates(https.ca);
  return async function checkClientCertificate(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
    const socket = request.raw.socket as TLSSocket;
    if (!socket.encrypted) return undefined;
    const settings = await getSettings();
    if (!settings.crlSettings.webInterface && !settings.ocspSettings.webInterface) return undefined;
    const chain = peerChain(socket, anchors);
    // Unreachable with rejectUnauthorized, but a check that cannot run must not pass.
    if (chain.length === 0) return forbidden(reply, 'client certificate required');
    const decision = await checkRevocation(sources, chain, 'webInterface', settings);
    if (decision.refuse) {
      request.log.warn({ detail: decision.detail, reason: decision.refuse }, 'client certificate refused');
      return forbidden(reply, REFUSALS[decision.refuse]);
    }
    if (decision.unverified) request.log.warn({ detail: decision.detail }, 'client certificate accepted without a revocation status');
    return undefined;
  };
}

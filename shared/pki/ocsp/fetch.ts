/**
 * Sends one OCSP request by HTTP POST (RFC 6960 Appendix A.1) and returns
 * the raw answer, bounded in every way a responder could make us spend:
 *
 * - `http:` URLs only (SPEC §2.6b); redirects are not followed (a responder
 *   that moved is an unavailable one, as for OpenSSL's client);
 * - the whole exchange, connecting included, ends by `deadline` (an absolute
 *   time), whatever the responder does: silence, a trickle, a stalled body;
 * - the body is cut off beyond `maxBytes` (responses are a few KB);
 * - a status other than 200 is an error; the content type is not insisted
 *   on (responders in the field get it wrong, and the DER is verified anyway).
 *
 * Connections are kept alive per responder, at most MAX_SOCKETS at once, so
 * a burst of cold checks cannot open unbounded sockets.
 */
import http from 'node:http';
import { isHttpUrl } from './request.ts';

/** Largest response read: real ones are 1-5 KB, with a responder chain 10 KB. */
export const MAX_RESPONSE_BYTES = 64 * 1024;
const MAX_SOCKETS = 16;

const agent = new http.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS, maxFreeSockets: 4, timeout: 30_000 });

/** Why an exchange failed, for events ("OCSP unavailable: <message>") and the request metric. */
export class OcspFetchError extends Error {
  constructor(
    message: string,
    /** `timeout`, `http` (a status), `too-large`, `network`. */
    readonly kind: 'timeout' | 'http' | 'too-large' | 'network',
  ) {
    super(message);
  }
}

export async function postOcspRequest(url: string, body: Buffer, deadline: number, maxBytes = MAX_RESPONSE_BYTES): Promise<Buffer> {
  if (!isHttpUrl(url)) throw new OcspFetchError(`responder URL ${url} is not http:`, 'network');
  const wait = deadline - Date.now();
  if (wait <= 0) throw new OcspFetchError('no time left for the OCSP request', 'timeout');
  return new Promise<Buffer>((resolve, reject) => {
    let settled = false;
    const finish = (err: OcspFetchError | null, value?: Buffer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        req.destroy();
        reject(err);
      } else resolve(value as Buffer);
    };
    const req = http.request(url, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/ocsp-request', accept: 'application/ocsp-response', 'content-length': body.length },
    });
    const timer = setTimeout(() => finish(new OcspFetchError(`responder ${url} did not answer within the ${wait} ms left`, 'timeout')), wait);
    req.on('error', (e) => finish(new OcspFetchError(`responder ${url}: ${e.message}`, 'network')));
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return finish(new OcspFetchError(`responder ${url} answered HTTP ${res.statusCode}`, 'http'));
      }
      const declared = Number(res.headers['content-length']);
      if (declared > maxBytes) return finish(new OcspFetchError(`responder ${url} announced ${declared} bytes (limit ${maxBytes})`, 'too-large'));
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) return finish(new OcspFetchError(`responder ${url} sent more than ${maxBytes} bytes`, 'too-large'));
        chunks.push(chunk);
      });
      res.on('end', () => finish(null, Buffer.concat(chunks)));
      res.on('error', (e) => finish(new OcspFetchError(`responder ${url}: ${e.message}`, 'network')));
      res.on('close', () => {
        if (!res.complete) finish(new OcspFetchError(`responder ${url} closed the connection mid-answer`, 'network'));
      });
    });
    req.end(body);
  });
}

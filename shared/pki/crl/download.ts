/**
 * Fetching a CRL file from an `http:`, `https:` or `file:` URL (SPEC §2.6),
 * with a byte cap and a deadline, and errors an administrator can act on
 * (they end up in the source's `status.lastError`).
 *
 * Why node:http(s) and not `fetch`: Node's fetch takes no CA certificates per
 * request (that needs an undici Agent, and undici is not a dependency), and
 * `caPem` must work for a CRL server under a private CA. node:https takes
 * `ca`, an AbortSignal and streams the body just as well.
 *
 * `file:` URLs read only below CRL_FILE_ROOT: both the root and the target are
 * resolved to real paths, so neither `..` nor a symbolic link can escape it.
 */
import { open, realpath } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { joinChunks } from '../../util/buffers.ts';

export const DEFAULT_MAX_CRL_BYTES = 64 * 1024 * 1024;
export const DEFAULT_DOWNLOAD_TIMEOUT_MS = 30_000;
const MAX_REDIRECTS = 5;

export interface DownloadOptions {
  /** The only directory `file:` URLs may read (CRL_FILE_ROOT); null refuses them. */
  fileRoot: string | null;
  maxBytes?: number;
  timeoutMs?: number;
  /** CA certificates (PEM) for `https:` servers, instead of Node's bundled roots. */
  caPem?: string | null;
}

/**
 * A download that failed. `reason` says why without the URL (the caller
 * usually names the URL itself); `message` is the reason with the URL.
 */
export class CrlDownloadError extends Error {
  constructor(
    readonly url: string,
    readonly reason: string,
  ) {
    super(reasonWithUrl(reason, url));
    this.name = 'CrlDownloadError';
  }
}

/** "HTTP 404" → "HTTP 404 from <url>"; other reasons read "<url>: <reason>". */
function reasonWithUrl(reason: string, url: string): string {
  return /^HTTP \d{3}\b/.test(reason) ? reason.replace(/^HTTP (\d{3})/, `HTTP $1 from ${url}`) : `${url}: ${reason}`;
}

function size(bytes: number): string {
  return bytes < 1024 * 1024 ? `${bytes} bytes` : `${Math.round((bytes / 1024 / 1024) * 10) / 10} MiB`;
}

/** Downloads the file at `url` (see the top of this file). */
export async function downloadCrl(url: string, opts: DownloadOptions): Promise<Buffer> {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_CRL_BYTES;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_DOWNLOAD_TIMEOUT_MS;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new CrlDownloadError(url, 'not a valid URL');
  }
  switch (parsed.protocol) {
    case 'http:':
    case 'https:':
      return httpGet(parsed, { maxBytes, timeoutMs, caPem: opts.caPem ?? null });
    case 'file:':
      return readFileUrl(parsed, opts.fileRoot, maxBytes);
    default:
      throw new CrlDownloadError(url, `unsupported URL scheme ${parsed.protocol} (use http, https or file)`);
  }
}

// ---------------------------------------------------------------------------
// http: and https:
// ---------------------------------------------------------------------------

interface HttpOptions {
  maxBytes: number;
  timeoutMs: number;
  caPem: string | null;
}

/** GET with redirects followed (http/https only); the deadline covers all of them and the body. */
async function httpGet(first: URL, o: HttpOptions): Promise<Buffer> {
  const signal = AbortSignal.timeout(o.timeoutMs);
  let url = first;
  for (let hop = 0; ; hop++) {
    const res = await request(url, o, signal, first);
    const status = res.statusCode ?? 0;
    const location = res.headers.location;
    if (status >= 300 && status < 400 && location) {
      res.resume();
      if (hop >= MAX_REDIRECTS) throw new CrlDownloadError(first.href, `more than ${MAX_REDIRECTS} redirects`);
      const next = URL.canParse(location, url) ? new URL(location, url) : null;
      // A redirect must not turn a network URL into a local file read.
      if (!next || (next.protocol !== 'http:' && next.protocol !== 'https:')) {
        throw new CrlDownloadError(first.href, `redirected to an unsupported location "${location}"`);
      }
      url = next;
      continue;
    }
    if (status < 200 || status > 299) {
      res.resume();
      const via = url.href === first.href ? '' : ` (redirected to ${url.href})`;
      throw new CrlDownloadError(first.href, `HTTP ${status}${via}`);
    }
    return readBody(res, o, signal, first);
  }
}

function request(url: URL, o: HttpOptions, signal: AbortSignal, first: URL): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const options = { signal, headers: { accept: 'application/pkix-crl, application/x-pkcs7-crl, */*' } };
    const req =
      url.protocol === 'https:'
        ? https.get(url, { ...options, ...(o.caPem ? { ca: o.caPem } : {}) }, resolve)
        : http.get(url, options, resolve);
    req.on('error', (err) => reject(networkError(err, first, o.timeoutMs, signal)));
  });
}

/** Streams the body into one Buffer, refusing it as soon as it passes the cap. */
async function readBody(res: IncomingMessage, o: HttpOptions, signal: AbortSignal, first: URL): Promise<Buffer> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > o.maxBytes) {
    res.destroy();
    throw tooLarge(first.href, o.maxBytes);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > o.maxBytes) {
        res.destroy();
        throw tooLarge(first.href, o.maxBytes);
      }
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof CrlDownloadError) throw err;
    throw networkError(err as Error, first, o.timeoutMs, signal);
  }
  return joinChunks(chunks, total);
}

function tooLarge(url: string, maxBytes: number): CrlDownloadError {
  return new CrlDownloadError(url, `the file is larger than the limit of ${size(maxBytes)}`);
}

/** Connection-level failures, named by their cause (refused, DNS, TLS, deadline). */
function networkError(err: Error & { code?: string }, first: URL, timeoutMs: number, signal: AbortSignal): CrlDownloadError {
  if (signal.aborted) return new CrlDownloadError(first.href, `timed out after ${timeoutMs} ms`);
  const code = err.code ?? '';
  const detail = code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  if (/CERT|SSL|TLS|UNABLE_TO_|SELF_SIGNED/.test(code)) return new CrlDownloadError(first.href, `TLS handshake failed (${detail})`);
  if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE') return new CrlDownloadError(first.href, `connection closed early (${detail})`);
  return new CrlDownloadError(first.href, `cannot reach the server (${detail})`);
}

// ---------------------------------------------------------------------------
// file:
// ---------------------------------------------------------------------------

async function readFileUrl(url: URL, fileRoot: string | null, maxBytes: number): Promise<Buffer> {
  const href = url.href;
  if (fileRoot === null || fileRoot === '') throw new CrlDownloadError(href, 'file: URLs are refused (CRL_FILE_ROOT is not set)');
  let path: string;
  try {
    path = fileURLToPath(url);
  } catch (e) {
    throw new CrlDownloadError(href, `not a local file URL (${(e as Error).message})`);
  }
  let root: string;
  try {
    root = await realpath(fileRoot);
  } catch (e) {
    throw new CrlDownloadError(href, `CRL_FILE_ROOT ${fileRoot} is not accessible (${(e as Error).message})`);
  }
  let real: string;
  try {
    real = await realpath(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CrlDownloadError(href, code === 'ENOENT' ? 'no such file' : `cannot read the file (${(e as Error).message})`);
  }
  // The real path, not the URL's: a symbolic link inside the root may point outside it.
  if (!real.startsWith(root.endsWith(sep) ? root : root + sep)) {
    throw new CrlDownloadError(href, `refused: the file is outside CRL_FILE_ROOT (${root})`);
  }
  return readCapped(real, href, maxBytes);
}

/**
 * Reads the file in one pass, at most maxBytes: the size is checked first, and
 * a file that grows while it is read (a CRL being rewritten in place) is an
 * error rather than a silently truncated CRL.
 */
async function readCapped(path: string, href: string, maxBytes: number): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new CrlDownloadError(href, `cannot read the file (${(e as Error).message})`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new CrlDownloadError(href, 'not a regular file');
    if (st.size > maxBytes) throw tooLarge(href, maxBytes);
    const buf = Buffer.allocUnsafe(st.size + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > st.size) throw new CrlDownloadError(href, 'the file changed while it was read');
    }
    return buf.subarray(0, n);
  } catch (e) {
    if (e instanceof CrlDownloadError) throw e;
    throw new CrlDownloadError(href, `cannot read the file (${(e as Error).message})`);
  } finally {
    await fh.close();
  }
}

// The CLI's HTTP client: openapi-fetch typed by cli/api-types.ts (generated from
// openapi/openapi.json), pointed at CERTGATE_URL with CERTGATE_TOKEN. Every failure becomes
// a CliError with the exit code scripts can test (see EXIT in output.ts): the API cannot
// be reached, refused the token, or answered an error (its own message is kept).
import createClient from 'openapi-fetch';
import type { components, paths } from './api-types.ts';
import { CliError, EXIT } from './output.ts';

export type Schemas = components['schemas'];
export type ApiClient = ReturnType<typeof createClient<paths>>;

export const DEFAULT_URL = 'http://127.0.0.1:8080';
/** A request that takes longer is given up (a CRL refresh waits for its download). */
const REQUEST_TIMEOUT_MS = 120_000;

export interface Connection {
  url: string;
  client: ApiClient;
}

/** CERTGATE_URL (default http://127.0.0.1:8080) and CERTGATE_TOKEN, read once per run. */
export function connect(env: NodeJS.ProcessEnv = process.env): Connection {
  const url = (env.CERTGATE_URL?.trim() || DEFAULT_URL).replace(/\/+$/, '');
  if (!/^https?:\/\//.test(url)) throw new CliError(EXIT.usage, `CERTGATE_URL must start with http:// or https://, got ${url}`);
  const token = env.CERTGATE_TOKEN?.trim();
  const client = createClient<paths>({
    baseUrl: url,
    headers: token ? { authorization: `Bearer ${token}` } : {},
    fetch: (request) => fetch(request, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }),
  });
  return { url, client };
}

interface Answer<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/**
 * The data of a successful answer; a CliError otherwise. `what` names the request in
 * messages ("GET /v1/workers").
 */
export async function call<T>(
  conn: Connection,
  what: string,
  request: Promise<Answer<T>>,
  /** Messages for statuses that mean something particular to this request. */
  meaning: Partial<Record<number, string>> = {},
): Promise<{ data: T; response: Response }> {
  const answer = await reach(conn, request);
  const { response } = answer;
  if (response.ok) return { data: answer.data as T, response };
  const message = errorMessage(answer.error) ?? response.statusText;
  const particular = meaning[response.status];
  if (particular) throw new CliError(EXIT.api, `${what}: ${particular} (${response.status} ${message})`, { status: response.status, body: answer.error });
  if (response.status === 401) {
    throw new CliError(EXIT.auth, `${what}: the API refused the token (401 ${message}); set CERTGATE_TOKEN to an API token`);
  }
  if (response.status === 403) throw new CliError(EXIT.auth, `${what}: this token may not do that (403 ${message})`);
  throw new CliError(EXIT.api, `${what}: ${response.status} ${message}`, { status: response.status, body: answer.error });
}

/** Any HTTP answer as it came; a CliError only when there was none. */
export async function reach<T>(conn: Connection, request: Promise<Answer<T>>): Promise<Answer<T>> {
  try {
    return await request;
  } catch (err) {
    throw new CliError(EXIT.unreachable, `cannot reach the certgate API at ${conn.url} (${describeFetchError(err)}); set CERTGATE_URL`);
  }
}

function errorMessage(body: unknown): string | null {
  if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') return (body as { message: string }).message;
  if (typeof body === 'string' && body.trim()) return body.trim().slice(0, 300);
  return null;
}

function describeFetchError(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError') return `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
  return e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
}

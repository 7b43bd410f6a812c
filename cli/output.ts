// What the CLI prints and how it exits. Results go to stdout: aligned tables and
// sentences for people, or one JSON document with --json for scripts. Progress of long
// operations and errors go to stderr, so that a script reading stdout never sees them.
//
// Exit codes (documented in `certgate --help` and the README):
//   0  done; every check passed
//   1  done, but what was checked is not right (doctor found a problem, a user or
//      certificate does not authenticate, a CRL refresh failed, `config diff` found
//      differences, workers did not confirm a change)
//   2  usage: bad arguments, an unreadable or invalid file, an unset secret reference
//   3  the API cannot be reached
//   4  the API refused the token (401) or its role (403)
//   5  the API answered another error (400 with the field it names, 404, 409, 412, 5xx)
//  70  an internal error of the CLI (a bug)

export const EXIT = { ok: 0, notOk: 1, usage: 2, unreachable: 3, auth: 4, api: 5, internal: 70 } as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export const EXIT_CODES_HELP = `Exit codes:
  0  done; every check passed
  1  done, but what was checked is not right (a problem found by doctor or status,
     a user or certificate that does not authenticate, a failed CRL refresh,
     differences found by config diff, workers that did not confirm a change)
  2  usage error: bad arguments, an unreadable or invalid file, an unset $env reference
  3  the API cannot be reached (CERTGATE_URL)
  4  the API refused the token (CERTGATE_TOKEN) or its role
  5  the API answered another error (its message is printed)
 70  an internal error of the CLI (a bug: please report it)`;

export class CliError extends Error {
  constructor(
    readonly exitCode: ExitCode,
    message: string,
    /** With --json: printed as the error document's `detail`. */
    readonly detail?: unknown,
  ) {
    super(message);
  }
}

export interface Output {
  json: boolean;
  /** Writes one line (or lines) to stdout. */
  line(text?: string): void;
  /** With --json: the whole result, once. */
  data(value: unknown): void;
  /** Shows what a long operation is doing (stderr; rewritten in place on a terminal). */
  progress(text: string): void;
  /** Ends the progress line. */
  progressDone(): void;
  /** A warning to stderr (never to stdout). */
  warn(text: string): void;
}

export function createOutput(opts: { json: boolean; quiet?: boolean }, out: NodeJS.WriteStream = process.stdout, err: NodeJS.WriteStream = process.stderr): Output {
  let progressShown = false;
  const clearProgress = () => {
    if (progressShown && err.isTTY) err.write('\r\x1b[2K');
    progressShown = false;
  };
  return {
    json: opts.json,
    line(text = '') {
      clearProgress();
      out.write(`${text}\n`);
    },
    data(value) {
      clearProgress();
      out.write(`${JSON.stringify(value, null, 2)}\n`);
    },
    progress(text) {
      if (opts.quiet) return;
      if (err.isTTY) {
        err.write(`\r\x1b[2K${text}`);
        progressShown = true;
      } else {
        err.write(`${text}\n`);
      }
    },
    progressDone: clearProgress,
    warn(text) {
      clearProgress();
      err.write(`warning: ${text}\n`);
    },
  };
}

export interface Column<T> {
  header: string;
  value(row: T): string;
}

/** Rows as an aligned table with a header line; the last column is not padded. */
export function table<T>(rows: readonly T[], columns: ReadonlyArray<Column<T>>): string {
  const cells = [columns.map((c) => c.header), ...rows.map((r) => columns.map((c) => oneLine(c.value(r))))];
  const widths = columns.map((_, i) => Math.max(...cells.map((row) => (row[i] as string).length)));
  return cells
    .map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] as number))).join('  ').trimEnd())
    .join('\n');
}

const oneLine = (s: string) => s.replace(/\s*\n\s*/g, ' ');

/** `in 3 h`, `5 min ago`: how far `iso` is from `now`, in the largest sensible unit. */
export function relativeTime(iso: string | null | undefined, now: Date = new Date()): string {
  if (!iso) return '-';
  const ms = Date.parse(iso) - now.getTime();
  if (Number.isNaN(ms)) return iso;
  const s = Math.abs(ms) / 1000;
  const amount =
    s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : s < 129_600 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86_400)} d`;
  return ms >= 0 ? `in ${amount}` : `${amount} ago`;
}

/** One check's verdict, as `doctor` and `status` print them. */
export type Verdict = 'ok' | 'warn' | 'fail';
export const MARK: Record<Verdict, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL' };

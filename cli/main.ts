// The `certgate` command line (package.json `bin`, run as `npx certgate ...` from a
// checkout; cli/certgate.mjs loads this file through tsx). Commands for what mail
// administrators do daily, over the HTTP API at CERTGATE_URL with CERTGATE_TOKEN; each one
// prints tables and sentences, or JSON with --json, and exits with a code scripts can use
// (EXIT_CODES_HELP).
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { connect, DEFAULT_URL, type Connection } from './api.ts';
import { configApply, configDiff, configExport } from './commands/config.ts';
import { crlRefreshCommand, crlStatusCommand } from './commands/crl.ts';
import { doctorCommand } from './commands/doctor.ts';
import { eventsCommand, parseOutcome, type EventsOptions } from './commands/events.ts';
import { ldapTestCommand } from './commands/ldap.ts';
import { statusCommand } from './commands/status.ts';
import { workersCommand } from './commands/workers.ts';
import { CliError, createOutput, EXIT, EXIT_CODES_HELP, type Output } from './output.ts';
import { CLI_VERSION } from './version.ts';

const ENVIRONMENT_HELP = `Environment:
  CERTGATE_URL    the certgate API (default ${DEFAULT_URL})
  CERTGATE_TOKEN  an API bearer token (API_TOKEN of the API, or one made with POST /v1/tokens)`;

interface GlobalOptions {
  json?: boolean;
  quiet?: boolean;
}

type Action = (conn: Connection, out: Output, command: Command) => Promise<number>;

function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('a positive number is needed');
  return n;
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('a port number 1-65535 is needed');
  return n;
}

export function buildProgram(run: (action: Action, command: Command) => Promise<void>): Command {
  const program = new Command('certgate')
    .description('Operate a certgate mail relay gateway through its HTTP API.')
    .version(CLI_VERSION, '-V, --version', 'print the version')
    .option('--json', 'print JSON for scripts instead of tables')
    .option('-q, --quiet', 'no progress messages on stderr')
    .showHelpAfterError('(certgate --help lists the commands)')
    .addHelpText('after', `\n${ENVIRONMENT_HELP}\n\n${EXIT_CODES_HELP}`);

  const action = (fn: Action) =>
    async function (this: Command) {
      await run(fn, this);
    };

  program
    .command('status')
    .description('health of the API and its Redis, configuration version, workers, CRL freshness, at a glance')
    .action(action((conn, out) => statusCommand(conn, out)));

  program
    .command('workers')
    .description('the SMTP workers alive: configuration version, listeners, sessions, errors')
    .action(action((conn, out) => workersCommand(conn, out)));

  const config = program.command('config').description('the configuration as a file: export it, compare a file with it, apply a file');
  config
    .command('export')
    .description('print the whole configuration (without secrets) as YAML or JSON')
    .addOption(new Option('--format <format>', 'file format').choices(['yaml', 'json']).default('yaml'))
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .action(action((conn, out, cmd) => configExport(conn, out, cmd.opts<{ format: 'yaml' | 'json'; output?: string }>())));
  config
    .command('diff')
    .description('show what applying FILE would change (exit 1 when it differs)')
    .argument('<file>', 'configuration file (YAML or JSON, the whole configuration)')
    .action(action((conn, out, cmd) => configDiff(conn, out, cmd.args[0] as string)));
  config
    .command('apply')
    .description('make the configuration what FILE says: a dry run showing the diff unless --yes')
    .argument('<file>', 'configuration file (YAML or JSON, the whole configuration)')
    .option('-y, --yes', 'apply (with If-Match: only if nobody changed the configuration since the diff)')
    .option('--wait <seconds>', 'how long to wait for every worker to run the new version', positiveNumber, 10)
    .addHelpText('after', `
Secrets are given by reference, never written in the file:
  password: { $env: LDAP_BIND_PASSWORD }          an environment variable (unset is an error)
  privateKeyPem: { $file: /run/secrets/smtp.key } a file (relative to FILE's folder)
Any string may be a reference. A secret left out keeps the stored one; null clears it.`)
    .action(action((conn, out, cmd) => {
      const o = cmd.opts<{ yes?: boolean; wait: number }>();
      return configApply(conn, out, cmd.args[0] as string, { yes: Boolean(o.yes), wait: o.wait });
    }));

  const ldap = program.command('ldap').description('the LDAP directories of the LDAP profiles');
  ldap
    .command('test')
    .description("run an LDAP profile's certificate query (--cert) or SMTP AUTH query (--user) now, as a worker would")
    .argument('<profile>', 'LDAP profile name')
    .option('--cert <file>', 'a client certificate (PEM): which user does it map to?')
    .option('--user <name>', 'an SMTP AUTH user name: is the password right, does the allow query admit the user?')
    .option('--password-stdin', 'read the password from standard input (else asked for on a terminal)')
    .action(action((conn, out, cmd) => {
      const o = cmd.opts<{ cert?: string; user?: string; passwordStdin?: boolean }>();
      return ldapTestCommand(conn, out, cmd.args[0] as string, { ...o, passwordStdin: Boolean(o.passwordStdin) });
    }));

  const crl = program.command('crl').description('certificate revocation lists');
  crl
    .command('status')
    .description('the CRL in force for each source (or NAME): issuer, updates, revoked count, last error')
    .argument('[name]', 'CRL source name')
    .action(action((conn, out, cmd) => crlStatusCommand(conn, out, cmd.args[0])));
  crl
    .command('refresh')
    .description('download the CRL of NAME (or of every enabled source) now and say whether it was taken')
    .argument('[name]', 'CRL source name')
    .action(action((conn, out, cmd) => crlRefreshCommand(conn, out, cmd.args[0])));

  program
    .command('events')
    .description('authentication and session events, newest first (--follow: new ones as they come)')
    .option('--user <name>', 'only this user')
    .option('--outcome <outcome>', 'accepted, rejected or allowed-not-permitted', parseOutcome)
    .option('--listener <name>', 'only this listener')
    .option('--since <time>', 'ISO 8601 time, or a duration back from now: 15m, 2h, 1d')
    .option('--limit <n>', 'at most this many (1-1000)', (v) => Math.min(1000, Math.floor(positiveNumber(v))), 50)
    .option('-f, --follow', 'keep printing new events (one JSON object a line with --json) until Ctrl-C')
    .action(action((conn, out, cmd) => {
      const o = cmd.opts<Omit<EventsOptions, 'follow'> & { follow?: boolean }>();
      return eventsCommand(conn, out, { ...o, follow: Boolean(o.follow) });
    }));

  program
    .command('doctor')
    .description("check one listener end to end from the outside: its TLS certificate and chain, its directory's reachability and bind, the next hop's reachability and TLS, CRL freshness")
    .argument('<listener>', 'listener name')
    .option('--ca <file>', "CA certificates (PEM) the listener's and the next hop's chains must verify against (default: this machine's store)")
    .option('--cert <file>', 'also connect with this client certificate (PEM) and run the certificate query with it')
    .option('--key <file>', 'the private key of --cert')
    .option('--host <host>', "connect here instead of the listener's address (a load balancer, another machine)")
    .option('--port <port>', "with --host: the port (default the listener's)", port)
    .option('--timeout <seconds>', 'per network step', positiveNumber, 10)
    .action(action((conn, out, cmd) => {
      const o = cmd.opts<{ ca?: string; cert?: string; key?: string; host?: string; port?: number; timeout: number }>();
      return doctorCommand(conn, out, cmd.args[0] as string, { ...o, timeoutSeconds: o.timeout });
    }));

  return program;
}

/** Runs the CLI with `argv` (as process.argv); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  let code: number = EXIT.ok;
  let json = false;
  const program = buildProgram(async (fn, command) => {
    const globals = command.optsWithGlobals<GlobalOptions>();
    json = Boolean(globals.json);
    code = await fn(connect(), createOutput({ json, quiet: globals.quiet }), command);
  });
  program.exitOverride();
  for (const c of allCommands(program)) c.exitOverride();
  try {
    await program.parseAsync(argv);
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here with 0; a usage error was already printed.
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof CliError) {
      process.stderr.write(`certgate: ${err.message}\n`);
      if (json) process.stdout.write(`${JSON.stringify({ error: err.message, exitCode: err.exitCode, detail: err.detail ?? null }, null, 2)}\n`);
      return err.exitCode;
    }
    process.stderr.write(`certgate: unexpected error: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT.internal;
  }
}

function allCommands(c: Command): Command[] {
  return c.commands.flatMap((sub) => [sub, ...allCommands(sub)]);
}

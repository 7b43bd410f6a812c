/**
 * `--help` (or `-h`) for the bench scripts: prints the script's opening comment, which is its
 * usage, and exits. One source for the usage text: the header every module has anyway.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The first comment of a script: a block comment, or the run of `//` lines it opens with. */
export function openingComment(source: string): string {
  const text = source.replace(/^#!.*\n/, '');
  const block = /^\s*\/\*\*?([\s\S]*?)\*\//.exec(text);
  if (block) return block[1]!.split('\n').map((l) => l.replace(/^\s*\* ?/, '')).join('\n').trim();
  const lines: string[] = [];
  for (const l of text.split('\n')) {
    if (!/^\s*\/\//.test(l)) break;
    lines.push(l.replace(/^\s*\/\/ ?/, ''));
  }
  return lines.join('\n').trim();
}

export function exitWithUsageIfAsked(scriptUrl: string, args: string[] = process.argv.slice(2)): void {
  if (!args.includes('--help') && !args.includes('-h')) return;
  console.log(openingComment(readFileSync(fileURLToPath(scriptUrl), 'utf8')));
  process.exit(0);
}

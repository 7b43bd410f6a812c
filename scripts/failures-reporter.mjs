// A node:test reporter that writes one line per failing test, "file: parent > test", and nothing
// else. scripts/test.sh runs it beside the usual reporter and prints its lines last, so that the
// end of a failed run says exactly what failed.
import path from 'node:path';
import process from 'node:process';

export default async function* failures(source) {
  const names = []; // the names of the open suites/tests by nesting level
  for await (const event of source) {
    if (event.type !== 'test:start' && event.type !== 'test:fail') continue;
    const { name, nesting, file } = event.data;
    names[nesting] = name;
    names.length = nesting + 1;
    if (event.type !== 'test:fail') continue;
    // A suite fails because of its subtests, which are listed on their own lines.
    if (event.data.details?.error?.failureType === 'subtestsFailed') continue;
    const where = file ? path.relative(process.cwd(), file) : '(unknown file)';
    yield `${where}: ${names.join(' > ')}\n`;
  }
}

/**
 * CRL benchmark: `npx tsx bench/crl-parse.ts [count=1000000] [--help]`
 *
 * Makes a `count`-entry DER CRL with the test PKI helper (openssl), then
 * measures our parser against node-forge, the memory the parsed CRL holds,
 * lookup speed, signature verification and how long `parseCrlOffThread`
 * blocks the event loop. Prints numbers, then a one-line summary.
 */
import { execFile } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseCrl, parseCrlOffThread, verifyCrlSignature, type ParsedCrl } from '../shared/pki/crl/parse.ts';
import { createPki } from '../test/helpers/pki.ts';
import { exitWithUsageIfAsked } from './lib/usage.ts';

exitWithUsageIfAsked(import.meta.url);
const execFileAsync = promisify(execFile);
const count = Number(process.argv[2] ?? 1_000_000);
if (!Number.isInteger(count) || count < 1) throw new Error('usage: bench/crl-parse.ts [count]');

// A gc() without --expose-gc on the command line, for honest memory deltas.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const MB = 1024 * 1024;
const ms = (t: number): string => t.toFixed(1);
function mem(): { rss: number; heap: number; external: number } {
  gc();
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed, external: m.external }; // external includes ArrayBuffers
}
function time<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const r = fn();
  return [r, performance.now() - t0];
}

const pki = await createPki();
try {
  const tGen = performance.now();
  const big = await pki.bigCrl(count);
  console.log(`CRL: ${count} entries, ${(big.der.length / MB).toFixed(1)} MB DER, made in ${ms((performance.now() - tGen) / 1000)} s (openssl ca -gencrl ${ms(big.opensslSeconds)} s)`);

  // 1. parse + index (best of 3; the first run includes JIT warm-up)
  const parseTimes: number[] = [];
  for (let i = 0; i < 3; i++) {
    const [, t] = time(() => parseCrl(big.der, 'asn1'));
    parseTimes.push(t);
  }
  const parseMs = Math.min(...parseTimes);
  console.log(`parse+index (ours): ${parseTimes.map(ms).join(' / ')} ms (best ${ms(parseMs)} ms)`);

  // 2. memory held by one parsed CRL (the DER itself is the caller's and not counted)
  const before = mem();
  let held: ParsedCrl | null = parseCrl(big.der, 'asn1');
  const afterMem = mem();
  const rssMb = (afterMem.rss - before.rss) / MB;
  const heapMb = (afterMem.heap - before.heap) / MB;
  const extMb = (afterMem.external - before.external) / MB;
  const signed = (x: number): string => (x >= 0 ? '+' : '') + x.toFixed(1);
  console.log(`memory held: rss ${signed(rssMb)} MB, heap ${signed(heapMb)} MB, external/ArrayBuffers ${signed(extMb)} MB (index ${(held.revoked.byteLength / MB).toFixed(1)} MB)`);

  // 3. lookups: hits and misses in random order
  const n = Math.max(1_000_000, count);
  const hits: string[] = new Array<string>(n); // released before step 5
  const misses: string[] = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    hits[i] = big.serialAt(Math.floor(Math.random() * count));
    misses[i] = big.serialAt(count + i);
  }
  const crl: ParsedCrl = held;
  let found = 0;
  for (let i = 0; i < 100_000; i++) found += crl.revoked.has(hits[i]) ? 1 : 0; // warm-up
  found = 0;
  const [, tHit] = time(() => {
    for (let i = 0; i < n; i++) if (crl.revoked.has(hits[i])) found++;
  });
  let wrong = 0;
  const [, tMiss] = time(() => {
    for (let i = 0; i < n; i++) if (crl.revoked.has(misses[i])) wrong++;
  });
  if (found !== n || wrong !== 0) throw new Error(`lookup mismatch: ${found}/${n} hits, ${wrong} false positives`);
  const nsHit = (tHit * 1e6) / n;
  const nsMiss = (tMiss * 1e6) / n;
  const nsAvg = (nsHit + nsMiss) / 2;
  console.log(`lookup: hit ${nsHit.toFixed(0)} ns, miss ${nsMiss.toFixed(0)} ns, average ${nsAvg.toFixed(0)} ns (${n} each)`);

  // 3b. the obvious alternative, for scale: a JS Set of the serial strings
  {
    const m0 = mem();
    const [set, tSet] = time(() => {
      const st = new Set<string>();
      for (let i = 0; i < count; i++) st.add(big.serialAt(i));
      return st;
    });
    const m1 = mem();
    let c = 0;
    const [, tSetHit] = time(() => {
      for (let i = 0; i < n; i++) if (set.has(hits[i])) c++;
    });
    if (c !== n) throw new Error('Set lookup mismatch');
    console.log(`JS Set baseline: build ${ms(tSet)} ms (making the strings included), heap +${((m1.heap - m0.heap) / MB).toFixed(1)} MB, hit ${((tSetHit * 1e6) / n).toFixed(0)} ns`);
  }

  // 4. signature
  const tA = performance.now();
  if (!(await verifyCrlSignature(crl, [pki.foreign.x509, pki.root.x509, pki.intermediate.x509]))) throw new Error('signature did not verify');
  const tVerify = performance.now() - tA;
  console.log(`signature verify: ${ms(tVerify)} ms (hashing on the thread pool)`);
  held = null;

  // 5. event-loop block during parseCrlOffThread (first call includes worker start and tsx compile).
  // A 1 ms interval measures the longest gap between timer callbacks; an idle
  // window of the same length first shows what the machine itself adds
  // (on a loaded 2-core box the OS alone stalls a process for tens of ms).
  hits.length = 0;
  misses.length = 0;
  const watch = async <T>(work: () => Promise<T>): Promise<{ worst: number; p99: number; wall: number; result: T }> => {
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    let last = performance.now();
    let worst = 0;
    const tick = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last);
      last = now;
    }, 1);
    const t0 = performance.now();
    const result = await work();
    const wall = performance.now() - t0;
    clearInterval(tick);
    h.disable();
    return { worst: Math.max(worst, h.max / 1e6), p99: h.percentile(99) / 1e6, wall, result };
  };
  const idle = await watch(() => new Promise<null>((resolve) => setTimeout(() => resolve(null), 1000)));
  const rounds: Array<{ worst: number; p99: number; wall: number }> = [];
  for (let round = 0; round < 3; round++) {
    const r = await watch(() => parseCrlOffThread(big.der, 'asn1'));
    if (r.result.revokedCount !== count || !r.result.revoked.has(big.serialAt(0))) throw new Error('off-thread result differs');
    rounds.push(r);
  }
  const worstBlock = Math.max(...rounds.map((r) => r.worst));
  const syncBlock = await watch(async () => {
    const r = parseCrl(big.der, 'asn1');
    await new Promise((resolve) => setTimeout(resolve, 5)); // let the timer see the block
    return r;
  });
  console.log(
    `parseCrlOffThread: wall ${rounds.map((r) => ms(r.wall)).join(' / ')} ms; worst event-loop gap ${rounds.map((r) => ms(r.worst)).join(' / ')} ms ` +
      `(p99 ${rounds.map((r) => ms(r.p99)).join(' / ')} ms); idle baseline worst ${ms(idle.worst)} ms; synchronous parseCrl for comparison ${ms(syncBlock.worst)} ms`,
  );

  // 6. node-forge for comparison, in a child process so its peak RSS is its own
  const forgeScript = `
    const forge = require('node-forge');
    const der = require('fs').readFileSync(process.argv[1]);
    const t0 = performance.now();
    const asn1 = forge.asn1.fromDer(forge.util.createBuffer(der.toString('binary')));
    const entries = asn1.value[0].value.find((v) => v.tagClass === 0 && v.type === 16 && Array.isArray(v.value) && v.value[0] && v.value[0].type === 16 && v.value[0].value[0].type === 2);
    const serials = new Set(entries.value.map((e) => forge.util.bytesToHex(e.value[0].value).toUpperCase()));
    const t = performance.now() - t0;
    console.log(JSON.stringify({ ms: t, entries: serials.size, maxRssMb: process.resourceUsage().maxRSS / 1024 }));
  `;
  let forge: { ms: number; entries: number; maxRssMb: number } | null = null;
  try {
    const { stdout } = await execFileAsync(process.execPath, ['--max-old-space-size=8192', '-e', forgeScript, big.derPath], { cwd: new URL('..', import.meta.url).pathname, maxBuffer: MB });
    forge = JSON.parse(stdout) as { ms: number; entries: number; maxRssMb: number };
    console.log(`node-forge asn1.fromDer + serial Set: ${ms(forge.ms)} ms, peak RSS ${forge.maxRssMb.toFixed(0)} MB (${forge.entries} entries)`);
  } catch (e) {
    console.log(`node-forge comparison failed: ${(e as Error).message.split('\n')[0]}`);
  }

  console.log(
    `SUMMARY count=${count} der=${(big.der.length / MB).toFixed(1)}MB parse=${ms(parseMs)}ms rss${signed(rssMb)}MB heap${signed(heapMb)}MB ext${signed(extMb)}MB ` +
      `lookup=${nsAvg.toFixed(0)}ns verify=${ms(tVerify)}ms offthread-block=${ms(worstBlock)}ms(idle ${ms(idle.worst)}ms) forge=${forge ? `${ms(forge.ms)}ms/${forge.maxRssMb.toFixed(0)}MB` : 'n/a'}`,
  );
} finally {
  await pki.cleanup();
}

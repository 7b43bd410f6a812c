// bench/smtp's --pin: the CPU lists it reads and the process trees it pins (bench/lib/pinning.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { allowedCpus, cpuSplit, parseCpuList, pinTrees } from '../bench/lib/pinning.ts';
import { processTreePids } from '../bench/lib/stats.ts';
import { eventually } from './helpers/wait.ts';

test('CPU lists as the kernel writes them', () => {
  assert.deepEqual(parseCpuList('0'), [0]);
  assert.deepEqual(parseCpuList('0-3'), [0, 1, 2, 3]);
  assert.deepEqual(parseCpuList('0-1,4,6-7\n'), [0, 1, 4, 6, 7]);
  assert.throws(() => parseCpuList('0-a'), /not a CPU list/);
});

test('a process tree is pinned whole, children forked before and after alike', async (t) => {
  // sh forks one sleep now; the one it forks after the pin inherits the pinned CPUs.
  const child = spawn('sh', ['-c', 'sleep 30 & read go; sleep 30 & wait'], { stdio: ['pipe', 'ignore', 'ignore'] });
  t.after(() => child.kill('SIGKILL'));
  const pid = child.pid!;
  const tree = await eventually(async () => {
    const pids = await processTreePids(pid);
    return pids.length >= 2 && pids;
  }, 30_000, 'sh and its first sleep');
  assert.equal(tree[0], pid);

  const split = await cpuSplit();
  // Below two CPUs the bench runs unpinned and says why; pinning to the one CPU still works.
  const target = typeof split === 'string' ? String((await allowedCpus())[0]) : split.client;
  if (typeof split === 'string') assert.match(split, /CPU|taskset/);
  assert.equal(await pinTrees([pid, undefined], target), tree.length);
  for (const p of tree) assert.deepEqual(await allowedCpus(p), parseCpuList(target));

  child.stdin!.write('go\n');
  const late = await eventually(async () => {
    const pids = (await processTreePids(pid)).filter((p) => !tree.includes(p));
    return pids.length >= 1 && pids;
  }, 30_000, 'the second sleep');
  for (const p of late) assert.deepEqual(await allowedCpus(p), parseCpuList(target));
});

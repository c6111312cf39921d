// util/malloc-trim.ts: freed C heap goes back to the kernel only when trimmed. Buffers of 8 KiB
// come from glibc's arena (below its mmap threshold); once collected, their memory stays in the
// process's resident set until releaseFreedMemory().
import { readFileSync } from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import { releaseFreedMemory } from '../../src/util/malloc-trim';

const rssMiB = () => Number(/^Rss:\s+(\d+) kB/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))![1]) / 1024;

test('freed C heap stays resident until releaseFreedMemory() hands it back', () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  let held: Buffer[] | null = [];
  for (let i = 0; i < 20_000; i++) held.push(Buffer.allocUnsafeSlow(8192).fill(1)); // ~156 MiB
  const full = rssMiB();
  held = null;
  gc();
  gc();
  const freed = rssMiB();
  expect(releaseFreedMemory()).toBe(true); // glibc (Debian): the call binds and runs
  const trimmed = rssMiB();
  expect(full - freed).toBeLessThan(60); // collected, but most of it still resident
  expect(freed - trimmed).toBeGreaterThan(100); // the trim gave it back
});

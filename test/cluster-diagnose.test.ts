// The cluster e2e's failure diagnosis (e2e/cluster/support/diagnose.ts) reads logs that grow
// without bound (podvisor's, kubelet's): what it picks from them must stay bounded and be the
// newest lines that name the pod.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileTail, linesNaming, qemuThreads } from '../e2e/cluster/support/diagnose';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-diagnose-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('cluster failure diagnosis', () => {
  it('keeps the newest lines naming one of the ids, within the byte bound, each line cut', () => {
    const log = path.join(dir, 'daemon.log');
    const lines: string[] = [];
    for (let i = 0; i < 5000; i++) lines.push(i % 10 === 0 ? `{"sandbox":"abcdef123456","n":${i}${i === 4990 ? `,"pad":"${'x'.repeat(2000)}"` : ''}}` : `{"sandbox":"other0000000","n":${i}}`);
    fs.writeFileSync(log, lines.join('\n') + '\n');
    const out = linesNaming(log, ['abcdef123456'], 600, 100);
    expect(out.length).toBeLessThanOrEqual(600);
    const got = out.split('\n');
    expect(got.every((l) => l.includes('abcdef123456'))).toBe(true);
    // the newest one last, the long line cut to its bound
    expect(got[got.length - 1]).toContain('"n":4990');
    expect(got[got.length - 1].length).toBeLessThanOrEqual(101);
    expect(got[got.length - 2]).toContain('"n":4980');
  });

  it('names nothing for needles too short to be ids, or a log that is not there', () => {
    const log = path.join(dir, 'short.log');
    fs.writeFileSync(log, 'a\nb\n');
    expect(linesNaming(log, ['', 'a'], 1000)).toBe('');
    expect(linesNaming(path.join(dir, 'missing.log'), ['abcdef123456'], 1000)).toBe('');
  });

  it('reads only the tail of a big file', () => {
    const f = path.join(dir, 'console.log');
    fs.writeFileSync(f, 'A'.repeat(100_000) + 'END');
    expect(fileTail(f, 10)).toBe('AAAAAAAEND');
    expect(fileTail(path.join(dir, 'missing'), 10)).toBe('');
  });

  it("names a process's threads with their CPU seconds and their use over the last second", async () => {
    const out = await qemuThreads(process.pid);
    // this jest worker: its main thread by its name, with figures
    expect(out).toMatch(/^\S.* \d+\.\ds \(\+\d+\.\d\d\)/);
    expect(out.split(', ').length).toBeGreaterThan(1);
  });
});

// setProcessNice against the real kernel: every thread of a running process gets the value (a
// spare VM's QEMU already has its vCPU and I/O threads when it is reniced), and back.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { ownNice, setProcessNice } from '../../src/util/priority';

/** nice of each thread of `pid` (/proc/<pid>/task/<tid>/stat field 19) */
function threadNices(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
}

test('setProcessNice sets every thread of a process, and sets them back', async () => {
  // a node process: several threads (libuv pool, V8 workers) besides its main one
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
  try {
    const pid = child.pid!;
    for (let i = 0; i < 100 && threadNices(pid).length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    expect(threadNices(pid).length).toBeGreaterThan(1);
    const base = ownNice();
    setProcessNice(pid, base + 7);
    expect(new Set(threadNices(pid))).toEqual(new Set([Math.min(19, base + 7)]));
    setProcessNice(pid, base); // raising it again needs CAP_SYS_NICE: the daemon runs as root
    expect(new Set(threadNices(pid))).toEqual(new Set([base]));
    setProcessNice(pid, 99); // clamped
    expect(new Set(threadNices(pid))).toEqual(new Set([19]));
  } finally {
    child.kill('SIGKILL');
  }
});

test('setProcessNice on a process that is gone does nothing', () => {
  expect(() => setProcessNice(2 ** 22 + 1, 5)).not.toThrow(); // above pid_max's ceiling: never a pid
});

// A VM's logs are bounded: boundLog cuts a file over its cap to a one-line note, and a writer
// holding it with O_APPEND (QEMU's console with append=on, its stderr as the daemon opens it)
// goes on at the new end, leaving no hole where the old bytes were.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { boundLog, LogSweep } from '../../src/vm/log-bound';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-logbound-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('a log over its cap is cut to a note; an O_APPEND writer goes on at its start', () => {
  const file = path.join(dir, 'console.log');
  const fd = fs.openSync(file, 'a');
  fs.writeSync(fd, Buffer.alloc(64 * 1024, 'x'));
  expect(boundLog(file, 128 * 1024)).toBe(false); // under the cap: untouched
  expect(fs.statSync(file).size).toBe(64 * 1024);
  fs.writeSync(fd, Buffer.alloc(96 * 1024, 'y'));
  expect(boundLog(file, 128 * 1024)).toBe(true);
  const note = fs.readFileSync(file, 'utf8');
  expect(note).toMatch(/^\[podvisor .*: 163840 bytes cut: this log is bounded to 131072 bytes\]\n$/);
  fs.writeSync(fd, 'after\n');
  fs.closeSync(fd);
  const st = fs.statSync(file);
  expect(st.size).toBe(note.length + 'after\n'.length); // no hole up to the old offset
  expect(fs.readFileSync(file, 'utf8')).toBe(note + 'after\n');
});

test('a missing log is no error', () => {
  expect(boundLog(path.join(dir, 'gone.log'), 10)).toBe(false);
});

test('one sweep (one timer) bounds every watched VM until its stop(); no timer once none is watched', () => {
  jest.useFakeTimers();
  try {
    const vm = (n: string) => ['console.log', 'qemu.log'].map((f) => path.join(dir, `${n}-${f}`));
    const [a, b] = [vm('a'), vm('b')];
    for (const f of [...a, ...b]) fs.writeFileSync(f, Buffer.alloc(4096, 'z'));
    const sweep = new LogSweep(1000);
    const stopA = sweep.watch([...a, path.join(dir, 'absent.log')], 1024);
    const stopB = sweep.watch(b, 2048);
    expect(sweep.size).toBe(2);
    expect(jest.getTimerCount()).toBe(1); // one timer for both VMs
    jest.advanceTimersByTime(999);
    for (const f of [...a, ...b]) expect(fs.statSync(f).size).toBe(4096); // not before the interval
    jest.advanceTimersByTime(1);
    for (const f of a) expect(fs.readFileSync(f, 'utf8')).toMatch(/^\[podvisor .*: 4096 bytes cut: this log is bounded to 1024 bytes\]\n$/);
    for (const f of b) expect(fs.readFileSync(f, 'utf8')).toMatch(/bounded to 2048 bytes\]\n$/);
    stopA(); // A's VM ended: its logs are no longer checked, B's still are
    expect(jest.getTimerCount()).toBe(1);
    for (const f of [...a, ...b]) fs.appendFileSync(f, Buffer.alloc(4096, 'z'));
    jest.advanceTimersByTime(1000);
    for (const f of a) expect(fs.statSync(f).size).toBeGreaterThan(4096);
    for (const f of b) expect(fs.statSync(f).size).toBeLessThan(2048);
    stopB();
    expect(sweep.size).toBe(0);
    expect(jest.getTimerCount()).toBe(0); // no VM, no timer
    const again = sweep.watch(a, 1024); // a new VM starts the sweep again
    expect(jest.getTimerCount()).toBe(1);
    jest.advanceTimersByTime(1000);
    for (const f of a) expect(fs.statSync(f).size).toBeLessThan(1024);
    again();
    expect(jest.getTimerCount()).toBe(0);
  } finally {
    jest.useRealTimers();
  }
});

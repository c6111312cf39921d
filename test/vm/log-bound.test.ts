// A VM's logs are bounded: boundLog cuts a file over its cap to a one-line note, and a writer
// holding it with O_APPEND (QEMU's console with append=on, its stderr as the daemon opens it)
// goes on at the new end, leaving no hole where the old bytes were.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { boundLog, boundLogs } from '../../src/vm/log-bound';

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

test('a missing log is no error; boundLogs checks on its interval until stopped', async () => {
  expect(boundLog(path.join(dir, 'gone.log'), 10)).toBe(false);
  const file = path.join(dir, 'qemu.log');
  fs.writeFileSync(file, Buffer.alloc(4096, 'z'));
  const stop = boundLogs([file, path.join(dir, 'absent.log')], 1024, 20);
  for (let i = 0; i < 100 && fs.statSync(file).size > 1024; i++) await new Promise((r) => setTimeout(r, 20));
  expect(fs.statSync(file).size).toBeLessThan(1024);
  stop();
  fs.appendFileSync(file, Buffer.alloc(4096, 'z'));
  await new Promise((r) => setTimeout(r, 100));
  expect(fs.statSync(file).size).toBeGreaterThan(4096); // stopped: no more cuts
});

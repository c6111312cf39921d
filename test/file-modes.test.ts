// Issue 17 item 6, the host-file parts: the CRI socket is never reachable with umask
// permissions, existing directories get the mode asked for (and a symlink in their place is
// refused), and a Localhost seccomp profile that is not what it should be is refused without
// its content ever reaching the caller.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { loadCri } from '../cri-api';
import { loadLocalhostProfile } from '../src/runtime/seccomp';
import { startServer } from '../src/server';
import { ensureDir, ensureDirSync } from '../src/util/dirs';

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-modes-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test('under umask 000 the CRI socket is never reachable with loose permissions: bound in a 0700 directory, 0660 when it appears', async () => {
  const socket = path.join(dir, 'cri.sock');
  // the moment gRPC has bound the socket (before podvisor can chmod it): where, and how reachable
  const atBind: Array<{ path: string; mode: number; dirMode: number }> = [];
  const bindAsync = grpc.Server.prototype.bindAsync;
  const spy = jest.spyOn(grpc.Server.prototype, 'bindAsync').mockImplementation(function (this: grpc.Server, port, creds, cb) {
    return bindAsync.call(this, port, creds, (err, n) => {
      const p = port.replace(/^unix:\/\//, '');
      if (!err) atBind.push({ path: p, mode: fs.lstatSync(p).mode & 0o777, dirMode: fs.statSync(path.dirname(p)).mode & 0o777 });
      cb(err, n);
    });
  });
  // and every name that appears in the socket's directory, with its mode then
  const seen: string[] = [];
  const watcher = fs.watch(dir, (_ev, name) => {
    try {
      const st = fs.lstatSync(path.join(dir, String(name)));
      seen.push(`${name === 'cri.sock' ? 'socket' : st.isDirectory() ? 'dir' : 'other'} ${(st.mode & 0o777).toString(8)}`);
    } catch {
      /* gone already */
    }
  });
  const old = process.umask(0);
  let server: grpc.Server;
  try {
    server = await startServer(socket, {}, {}, pino({ level: 'silent' }));
  } finally {
    process.umask(old);
    spy.mockRestore();
  }
  await new Promise((r) => setTimeout(r, 100));
  watcher.close();
  expect(atBind).toHaveLength(1);
  // umask 000: the fresh socket is 0777, so it must not be at its final path, and only root may
  // enter the directory it is in
  expect(atBind[0].path).not.toBe(socket);
  expect(atBind[0].dirMode).toBe(0o700);
  expect(fs.statSync(socket).mode & 0o777).toBe(0o660);
  expect(seen.filter((s) => s.startsWith('socket') && s !== 'socket 660')).toEqual([]);
  expect(fs.readdirSync(dir)).toEqual(['cri.sock']); // the bind directory is gone
  // and it serves
  const client = new (loadCri().RuntimeServiceClient)(`unix://${socket}`, grpc.credentials.createInsecure()) as any;
  const err = await new Promise<any>((resolve) => client.Version({}, (e: any) => resolve(e)));
  expect(err?.code).toBe(grpc.status.UNIMPLEMENTED);
  client.close();
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
});

test('ensureDir fixes the mode of an existing directory and refuses a symlink or a file', async () => {
  const d = path.join(dir, 'state');
  fs.mkdirSync(d, { mode: 0o777 });
  fs.chmodSync(d, 0o777);
  await ensureDir(d, 0o700);
  expect(fs.statSync(d).mode & 0o7777).toBe(0o700);
  ensureDirSync(d, 0o711);
  expect(fs.statSync(d).mode & 0o7777).toBe(0o711);
  const link = path.join(dir, 'link');
  fs.symlinkSync('/tmp', link);
  await expect(ensureDir(link, 0o700)).rejects.toThrow(/symlink/);
  expect(() => ensureDirSync(link, 0o700)).toThrow(/symlink/);
  expect(fs.statSync('/tmp').mode & 0o7777).toBe(0o1777); // not followed
  fs.writeFileSync(path.join(dir, 'file'), '');
  await expect(ensureDir(path.join(dir, 'file'), 0o700)).rejects.toThrow();
});

describe('Localhost seccomp profiles', () => {
  const code = (fn: () => unknown) => {
    try {
      fn();
    } catch (e: any) {
      return { code: e.code, message: String(e.message ?? e.details) };
    }
    return { code: 0, message: '' };
  };

  test('a file that is not JSON: INVALID_ARGUMENT without any of its content', () => {
    const f = path.join(dir, 'shadow');
    fs.writeFileSync(f, 'root:$6$secretsalt$secrethash:19000:0:99999:7:::\n');
    const r = code(() => loadLocalhostProfile(f, []));
    expect(r.code).toBe('invalid_argument');
    expect(r.message).toMatch(/not valid JSON/);
    expect(r.message).not.toMatch(/secret|root:/);
  });

  test('/dev/zero, a FIFO and a directory are refused at once; a 2 MiB file too', () => {
    const fifo = path.join(dir, 'fifo');
    require('node:child_process').execFileSync('mkfifo', [fifo]);
    for (const f of ['/dev/zero', fifo, dir]) {
      const t0 = Date.now();
      const r = code(() => loadLocalhostProfile(f, []));
      expect(r).toEqual({ code: 'invalid_argument', message: expect.stringMatching(/not a regular file|cannot open/) });
      expect(Date.now() - t0).toBeLessThan(1000);
    }
    const big = path.join(dir, 'big.json');
    fs.writeFileSync(big, `{"defaultAction":"SCMP_ACT_ALLOW","x":"${'a'.repeat(2 << 20)}"}`);
    expect(code(() => loadLocalhostProfile(big, []))).toEqual({ code: 'invalid_argument', message: expect.stringMatching(/larger than/) });
    expect(code(() => loadLocalhostProfile(path.join(dir, 'missing'), []))).toEqual({ code: 'invalid_argument', message: expect.stringMatching(/cannot open \(ENOENT\)/) });
  });

  test('a valid profile still loads', () => {
    const f = path.join(dir, 'ok.json');
    fs.writeFileSync(f, JSON.stringify({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }] }));
    expect(loadLocalhostProfile(f, [])).toEqual({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }] });
  });
});

// Test helpers for image files: mount an erofs image read-only on a loop device (the real
// kernel reads it), read and set xattrs through libc (koffi, async calls only), build tar
// archives with raw PAX records (tar-stream writes PAX values as UTF-8 text only), and a
// registry proxy that sends blobs slowly.
import { execFile } from 'node:child_process';
import http from 'node:http';
import type net from 'node:net';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

// ---- loop mounts ---------------------------------------------------------------------------

interface Mounted {
  dir: string;
  dev: string;
}
const mounted: Mounted[] = [];

/** Attaches `image` to a free loop device (read-only) and mounts it on `dir` as erofs. */
export async function mountErofs(image: string, dir: string): Promise<void> {
  // util-linux's `mount -o loop` waits for udev, which this machine does not run.
  const { stdout } = await execFileP('losetup', ['-f', '--show', '-r', image], { timeout: 20_000 });
  const dev = stdout.trim();
  try {
    await execFileP('mount', ['-t', 'erofs', '-o', 'ro', dev, dir], { timeout: 20_000 });
  } catch (e) {
    await execFileP('losetup', ['-d', dev], { timeout: 20_000 }).catch(() => undefined);
    throw e;
  }
  mounted.push({ dir, dev });
}

/** Unmounts every image mounted by mountErofs and detaches its loop device. */
export async function unmountAll(): Promise<void> {
  while (mounted.length) {
    const m = mounted.pop()!;
    await execFileP('umount', [m.dir], { timeout: 20_000 }).catch(() => execFileP('umount', ['-l', m.dir], { timeout: 20_000 }));
    await execFileP('losetup', ['-d', m.dev], { timeout: 20_000 }).catch(() => undefined);
  }
}

// ---- xattrs --------------------------------------------------------------------------------

type Fn = ((...args: any[]) => any) & { async: (...args: any[]) => void };
let libc: { lsetxattr: Fn; lgetxattr: Fn; llistxattr: Fn } | undefined;
function lib() {
  if (!libc) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi');
    const so = koffi.load('libc.so.6');
    libc = {
      lsetxattr: so.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)'),
      lgetxattr: so.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
      llistxattr: so.func('intptr_t llistxattr(const char *path, void *list, size_t size)'),
    };
  }
  return libc;
}
const call = (f: Fn, ...args: unknown[]): Promise<number> => new Promise((resolve, reject) => f.async(...args, (e: Error | null, r: number) => (e ? reject(e) : resolve(Number(r)))));

/** lsetxattr(2) (never follows a symlink). */
export async function setXattr(p: string, name: string, value: Buffer): Promise<void> {
  const r = await call(lib().lsetxattr, p, name, value, value.length, 0);
  if (r !== 0) throw new Error(`lsetxattr ${p} ${name} failed`);
}

/** Every xattr of `path` (not following a symlink), name → value. A Buffer path may hold any bytes. */
export async function readXattrs(path: string | Buffer): Promise<Record<string, Buffer>> {
  const l = lib();
  const p = Buffer.isBuffer(path) ? Buffer.concat([path, Buffer.alloc(1)]) : path;
  const n = await call(l.llistxattr, p, null, 0);
  if (n < 0) throw new Error(`llistxattr ${p} failed`);
  const out: Record<string, Buffer> = {};
  if (n === 0) return out;
  const list = Buffer.alloc(n);
  const got = await call(l.llistxattr, p, list, n);
  for (const name of list.subarray(0, got).toString('latin1').split('\0').filter(Boolean)) {
    const size = await call(l.lgetxattr, p, name, null, 0);
    if (size < 0) continue; // listed but not readable (e.g. user.* on a symlink)
    const v = Buffer.alloc(size);
    const r = await call(l.lgetxattr, p, name, v, size);
    out[name] = v.subarray(0, r);
  }
  return out;
}

// ---- raw tar -------------------------------------------------------------------------------

export interface RawEntry {
  name: string;
  type?: '0' | '1' | '2' | '3' | '4' | '5' | '6' | 'S';
  data?: Buffer;
  mode?: number;
  linkname?: string;
  /** PAX records with raw byte values (key → value). */
  pax?: [string, Buffer][];
}

export interface TarHeaderOptions {
  mode?: number;
  linkname?: string;
  /** device numbers: written only when given */
  major?: number;
  minor?: number;
}

/** One ustar header block; a number beyond its field is cut to fit (the fuzzer sends any). */
export function tarHeader(name: string, type: string, size: number, o: TarHeaderOptions = {}): Buffer {
  const h = Buffer.alloc(512);
  const field = (off: number, len: number, v: number) => h.write(Math.max(0, v).toString(8).padStart(len - 1, '0').slice(-(len - 1)) + '\0', off, len, 'latin1');
  h.write(name, 0, 100, 'latin1');
  field(100, 8, o.mode ?? 0o644);
  field(108, 8, 0);
  field(116, 8, 0);
  field(124, 12, size);
  field(136, 12, 1704067200);
  h.write(type, 156, 1, 'latin1');
  h.write(o.linkname ?? '', 157, 100, 'latin1');
  h.write('ustar\0' + '00', 257, 8, 'latin1');
  if (o.major !== undefined) field(329, 8, o.major);
  if (o.minor !== undefined) field(337, 8, o.minor);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return h;
}

/** `b` padded with zeros to whole 512-byte tar blocks. */
export const pad512 = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);

/** One PAX record: "<len> <key>=<value>\n", where len counts itself. */
export function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** A ustar archive with optional PAX headers carrying raw bytes. */
export function rawTar(entries: RawEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    if (e.pax?.length) {
      const body = Buffer.concat(e.pax.map(([k, v]) => paxRecord(k, v)));
      parts.push(tarHeader('PaxHeaders/x', 'x', body.length), pad512(body));
    }
    const data = e.data ?? Buffer.alloc(0);
    parts.push(tarHeader(e.name, e.type ?? '0', data.length, { mode: e.mode, linkname: e.linkname }));
    if (data.length) parts.push(pad512(data));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

// ---- a slow registry -----------------------------------------------------------------------

/**
 * An HTTP proxy in front of a registry that sends blob bodies in 64 KiB pieces, one every
 * `tickMs`: a pull then reads a layer while it is still downloading.
 */
export async function startSlowProxy(target: string, tickMs = 5): Promise<{ host: string; stop(): Promise<void> }> {
  const t = new URL(target);
  const server = http.createServer((req, res) => {
    const slow = (req.url ?? '').includes('/blobs/');
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      if (!slow) {
        ur.pipe(res);
        return;
      }
      ur.pause();
      const pending: Buffer[] = [];
      let ended = false;
      ur.on('data', (c: Buffer) => pending.push(c));
      ur.on('end', () => (ended = true));
      ur.resume();
      const timer = setInterval(() => {
        let budget = 64 << 10;
        while (budget > 0 && pending.length) {
          const c = pending[0];
          const n = Math.min(budget, c.length);
          res.write(c.subarray(0, n));
          if (n === c.length) pending.shift();
          else pending[0] = c.subarray(n);
          budget -= n;
        }
        if (ended && !pending.length) {
          clearInterval(timer);
          res.end();
        }
      }, tickMs);
      res.on('close', () => clearInterval(timer));
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    async stop() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

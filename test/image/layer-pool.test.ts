// Layers read on worker threads (layer-pool.ts): the result is the same as on the main thread,
// image-wide limits are shared between layers read by different workers, a failure stops the
// other layers (also one whose input stalls) and leaves no file, and input chunks the caller
// still owns are copied, never taken away. Workers go after IDLE_MS without work, also those
// started ahead of a pull that never got one.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, mkdtempSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { silentLogger } from '../../src/util/log';
import { closeLayerWorkers, IDLE_MS, layerWorkerCount, prewarmLayerWorkers } from '../../src/image/layer-pool';
import { BuildFailedError, ImageBuilder, UnsafeArchiveError } from '../../src/image/unpack';
import { makeTar, type TarEntry } from '../support/images';

const execFileP = promisify(execFile);
jest.setTimeout(60_000);

const base = mkdtempSync(path.join(os.tmpdir(), 'podvisor-layerpool-'));
afterAll(async () => {
  await closeLayerWorkers();
  await fsp.rm(base, { recursive: true, force: true });
});

let n = 0;
const leftovers = () => readdirSync(base).filter((f) => f.startsWith('.tmp-'));
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Every file of the image (fsck.erofs --extract) as path → sha256, plus modes. */
async function tree(image: string): Promise<Record<string, string>> {
  const dir = path.join(base, `x-${++n}`);
  await execFileP('fsck.erofs', [`--extract=${dir}`, image], { timeout: 60_000 });
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const name of (await fsp.readdir(d)).sort()) {
      const f = path.join(d, name);
      const st = await fsp.lstat(f);
      const rel = path.relative(dir, f);
      if (st.isDirectory()) {
        out[rel] = `dir ${(st.mode & 0o7777).toString(8)}`;
        await walk(f);
      } else if (st.isSymbolicLink()) out[rel] = `-> ${await fsp.readlink(f)}`;
      else out[rel] = `${(st.mode & 0o7777).toString(8)} ${st.size} ${createHash('sha256').update(await fsp.readFile(f)).digest('hex')}`;
    }
  };
  await walk(dir);
  await fsp.rm(dir, { recursive: true, force: true });
  return out;
}

function layers(): TarEntry[][] {
  const big = (i: number, size: number) => ({ name: `data/f${i}`, content: randomBytes(size), mode: 0o640 });
  return [
    [{ name: 'etc/', type: 'directory', mode: 0o755 }, { name: 'etc/hello', content: 'hello\n' }, { name: 'bin/sh', content: randomBytes(70_000), mode: 0o755 }],
    Array.from({ length: 40 }, (_, i) => big(i, (i % 7) * 5000 + 1 + ((i * 977) % 9000))),
    [{ name: 'etc/.wh.hello' }, { name: 'data/f3', content: 'replaced\n' }, { name: 'link', type: 'symlink', linkname: 'data/f4' }, { name: 'data/big', content: randomBytes(3 << 20) }],
  ] as TarEntry[][];
}

/** Builds one image from gzip layers, all applied at once (explicit indexes), fed in small pieces. */
async function build(blobs: Buffer[], diffIds: string[], workers: boolean, piece = 50_000, owned = false): Promise<string> {
  const out = path.join(base, `img-${++n}.erofs`);
  const b = await ImageBuilder.create(out, silentLogger, {}, { workers });
  // Owned: every piece in its own ArrayBuffer (transferred when large enough).
  const cut = (buf: Buffer, i: number) => (owned ? Buffer.from(new Uint8Array(buf.subarray(i * piece, (i + 1) * piece))) : buf.subarray(i * piece, (i + 1) * piece));
  const pieces = (buf: Buffer) => Readable.from(Array.from({ length: Math.ceil(buf.length / piece) }, (_, i) => cut(buf, i)));
  try {
    await Promise.all(blobs.map((blob, i) => b.applyLayer(pieces(blob), { index: i, diffId: diffIds[i], label: `l${i}`, owned })));
    await b.commit();
  } catch (e) {
    await b.abort();
    throw e;
  }
  return out;
}

test('workers and the main thread build the same tree; the caller\'s chunks stay intact', async () => {
  const tars = await Promise.all(layers().map((l) => makeTar(l)));
  const blobs = tars.map((t) => gzipSync(t));
  const copies = blobs.map((b) => Buffer.from(b));
  const diffIds = tars.map(sha);
  const viaWorkers = await tree(await build(blobs, diffIds, true));
  const local = await tree(await build(blobs, diffIds, false));
  expect(viaWorkers).toEqual(local);
  // Owned pieces of 300 kB (transferred) and of 1000 bytes (packed into shared slabs).
  expect(await tree(await build(blobs, diffIds, true, 300_000, true))).toEqual(local);
  expect(await tree(await build(blobs, diffIds, true, 1000, true))).toEqual(local);
  expect(viaWorkers['etc/hello']).toBeUndefined();
  expect(viaWorkers['data/f3']).toMatch(/^644 9 /);
  expect(viaWorkers['link']).toBe('-> data/f4');
  // Not owned (no `owned: true`): the pieces were copied, the caller's buffers are untouched.
  blobs.forEach((b, i) => expect(b.equals(copies[i])).toBe(true));
});

test('a wrong diff_id is refused on a worker as on the main thread', async () => {
  const tars = await Promise.all(layers().map((l) => makeTar(l)));
  const diffIds = tars.map(sha);
  diffIds[1] = sha(Buffer.from('something else'));
  for (const workers of [true, false]) {
    const err = await build(tars.map((t) => gzipSync(t)), diffIds, workers).catch((e) => e);
    expect(err).toBeInstanceOf(UnsafeArchiveError);
    expect(String(err.message)).toMatch(/does not match diff_id/);
  }
  expect(leftovers()).toEqual([]);
});

test('limits are shared by layers read on different workers', async () => {
  const a = await makeTar(Array.from({ length: 150 }, (_, i) => ({ name: `a/f${i}`, content: 'x' })));
  const b2 = await makeTar(Array.from({ length: 150 }, (_, i) => ({ name: `b/f${i}`, content: 'y' })));
  const out = path.join(base, `img-${++n}.erofs`);
  const b = await ImageBuilder.create(out, silentLogger, { maxEntries: 200 }, { workers: true });
  const results = await Promise.allSettled([a, b2].map((t, i) => b.applyLayer(Readable.from([gzipSync(t)]), { index: i })));
  await b.abort();
  const errors = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason);
  expect(errors.length).toBeGreaterThan(0);
  expect(errors.some((e) => e instanceof UnsafeArchiveError && /more than 200 entries/.test(e.message))).toBe(true);
  expect(leftovers()).toEqual([]);
});

test('a refused layer stops a layer whose input stalls; abort() leaves no file', async () => {
  const out = path.join(base, `img-${++n}.erofs`);
  const b = await ImageBuilder.create(out, silentLogger, {}, { workers: true });
  const good = gzipSync(await makeTar([{ name: 'f', content: randomBytes(1 << 20) }]));
  // Layer 0: half of its bytes, then nothing (a download that hangs).
  let release!: () => void;
  const hung = new Promise<void>((r) => (release = r));
  const stalled = (async function* () {
    yield good.subarray(0, good.length >> 1);
    await hung;
  })();
  const p0 = b.applyLayer(stalled, { index: 0 });
  const p1 = b.applyLayer(Readable.from([Buffer.from('not a tar archive at all, not gzip either'.repeat(20))]), { index: 1 });
  const [r0, r1] = await Promise.allSettled([p0, p1]);
  release();
  expect(r1.status).toBe('rejected');
  expect((r1 as PromiseRejectedResult).reason).toBeInstanceOf(UnsafeArchiveError);
  expect(r0.status).toBe('rejected');
  expect((r0 as PromiseRejectedResult).reason).toBeInstanceOf(BuildFailedError);
  await b.abort();
  expect(leftovers()).toEqual([]);
  await expect(fsp.access(out)).rejects.toThrow();
});

test('an input error fails the layer with that error', async () => {
  const out = path.join(base, `img-${++n}.erofs`);
  const b = await ImageBuilder.create(out, silentLogger, {}, { workers: true });
  const good = gzipSync(await makeTar([{ name: 'f', content: randomBytes(1 << 20) }]));
  const broken = (async function* () {
    yield good.subarray(0, 4096);
    throw Object.assign(new Error('connection reset'), { code: 'ECONNRESET' });
  })();
  await expect(b.applyLayer(broken, { index: 0 })).rejects.toThrow('connection reset');
  await b.abort();
  expect(leftovers()).toEqual([]);
});

test('startWriteback is only a hint: it resolves for a file, and for a bad descriptor too', async () => {
  const { startWriteback } = await import('../../src/image/writeback');
  const f = path.join(base, 'wb');
  const fh = await fsp.open(f, 'w');
  await fh.write(randomBytes(1 << 20));
  await expect(startWriteback(fh.fd)).resolves.toBeUndefined();
  await fh.close();
  await expect(startWriteback(987654)).resolves.toBeUndefined();
});

test('prewarmed workers that never got a job stop after IDLE_MS, as used ones do', async () => {
  await closeLayerWorkers();
  jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
  try {
    await prewarmLayerWorkers();
    expect(layerWorkerCount()).toBeGreaterThan(0);
    jest.advanceTimersByTime(IDLE_MS - 1000);
    expect(layerWorkerCount()).toBeGreaterThan(0);
    jest.advanceTimersByTime(2000);
    expect(layerWorkerCount()).toBe(0);
  } finally {
    jest.useRealTimers();
  }
});

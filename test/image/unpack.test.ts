// Layer application: whiteouts, links, devices, metadata, and every hostile-archive case.
// Each case runs in <tmp>/case-N/{rootfs,outside}; after it, the test proves that nothing
// outside rootfs/ changed (listing + contents of the case dir, and the host's /etc/passwd).
import { createHash } from 'node:crypto';
import { promises as fsp, mkdtempSync, readFileSync, statSync, lstatSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { silentLogger } from '../../src/log';
import { cleanEntryPath, RootfsBuilder, UnsafeArchiveError, type UnpackLimits } from '../../src/image/unpack';
import { makeLayer, makeTar, type TarEntry } from '../support/images';

const base = mkdtempSync(path.join(os.tmpdir(), 'podvisor-unpack-'));
afterAll(() => fsp.rm(base, { recursive: true, force: true }));

let n = 0;
const hostPasswd = () => {
  const st = statSync('/etc/passwd');
  return { sha: createHash('sha256').update(readFileSync('/etc/passwd')).digest('hex'), nlink: st.nlink, mode: st.mode, uid: st.uid };
};

/** Everything under dir except rootfs/, with type, mode and content hash. */
async function snapshot(dir: string, skip: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (p: string) => {
    for (const name of (await fsp.readdir(p)).sort()) {
      const f = path.join(p, name);
      if (f === skip) continue;
      const st = await fsp.lstat(f);
      let extra = '';
      if (st.isFile()) extra = createHash('sha256').update(await fsp.readFile(f)).digest('hex');
      if (st.isSymbolicLink()) extra = await fsp.readlink(f);
      out.push(`${path.relative(dir, f)} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.nlink} ${extra}`);
      if (st.isDirectory()) await walk(f);
    }
  };
  await walk(dir);
  return out;
}

interface Case {
  dir: string;
  root: string;
  outside: string;
  error?: unknown;
}

/**
 * Applies the layers (entry lists, or raw tar buffers) to a fresh rootfs and checks that
 * nothing outside it changed. Returns the error, if the layer was refused.
 */
async function apply(layers: ((c: Case) => TarEntry[] | Buffer)[], limits?: Partial<UnpackLimits>): Promise<Case> {
  const dir = path.join(base, `case-${++n}`);
  const c: Case = { dir, root: path.join(dir, 'rootfs'), outside: path.join(dir, 'outside') };
  await fsp.mkdir(c.root, { recursive: true });
  await fsp.mkdir(path.join(c.outside, 'sub'), { recursive: true });
  await fsp.writeFile(path.join(c.outside, 'keep'), 'precious\n');
  await fsp.writeFile(path.join(c.outside, 'sub', 'deep'), 'deep\n');
  const before = await snapshot(dir, c.root);
  const passwdBefore = hostPasswd();
  const b = new RootfsBuilder(c.root, silentLogger, { maxEntries: 10_000, maxEntryBytes: 1 << 30, maxTotalBytes: 2 ** 31, ...limits });
  try {
    for (const l of layers) {
      const spec = l(c);
      const buf = Buffer.isBuffer(spec) ? spec : await makeTar(spec);
      await b.applyTarStream(Readable.from([buf]));
    }
    await b.finish();
  } catch (e) {
    c.error = e;
  }
  expect(await snapshot(dir, c.root)).toEqual(before);
  expect(hostPasswd()).toEqual(passwdBefore);
  return c;
}

const at = (c: Case, p: string) => path.join(c.root, p);
const exists = (p: string) => fsp.lstat(p).then(() => true, () => false);

describe('cleanEntryPath', () => {
  test.each([
    ['a/b', 'a/b'],
    ['./a/./b/', 'a/b'],
    ['/etc/passwd', 'etc/passwd'],
    ['//x', 'x'],
    ['a/../b', 'b'],
    ['./', ''],
  ])('%s → %s', (i, o) => expect(cleanEntryPath(i)).toBe(o));
  test.each(['..', '../x', 'a/../../x', '/../x', './..'])('%s is refused', (i) => expect(() => cleanEntryPath(i)).toThrow(UnsafeArchiveError));
});

describe('layer semantics', () => {
  test('files, dirs, ownership, modes (setuid, sticky) and times', async () => {
    const mtime = new Date('2020-02-02T02:02:02Z');
    const c = await apply([
      () => [
        { name: 'usr/', type: 'directory', mode: 0o755 },
        { name: 'usr/bin/', type: 'directory', mode: 0o755, mtime },
        { name: 'usr/bin/su', content: 'x', mode: 0o4755, uid: 0, gid: 0 },
        { name: 'home/u/f', content: 'hello', mode: 0o640, uid: 1000, gid: 50, mtime },
        { name: 'tmp/', type: 'directory', mode: 0o1777 },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(statSync(at(c, 'usr/bin/su')).mode & 0o7777).toBe(0o4755);
    const f = statSync(at(c, 'home/u/f'));
    expect([f.uid, f.gid, f.mode & 0o7777, f.mtime.getTime()]).toEqual([1000, 50, 0o640, mtime.getTime()]);
    expect(readFileSync(at(c, 'home/u/f'), 'utf8')).toBe('hello');
    expect(statSync(at(c, 'tmp')).mode & 0o7777).toBe(0o1777);
    expect(statSync(at(c, 'usr/bin')).mtime.getTime()).toBe(mtime.getTime());
  });

  test('symlinks keep their text, hard links share the inode', async () => {
    const c = await apply([
      () => [
        { name: 'bin/busybox', content: 'BB', mode: 0o755 },
        { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
        { name: 'bin/abs', type: 'symlink', linkname: '/etc/passwd' },
        { name: 'bin/ls', type: 'link', linkname: 'bin/busybox' },
        { name: 'bin/cat', type: 'link', linkname: './bin/busybox' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(await fsp.readlink(at(c, 'bin/sh'))).toBe('busybox');
    expect(await fsp.readlink(at(c, 'bin/abs'))).toBe('/etc/passwd');
    const st = statSync(at(c, 'bin/busybox'));
    expect(st.nlink).toBe(3);
    expect(statSync(at(c, 'bin/ls')).ino).toBe(st.ino);
  });

  test('device nodes and fifos', async () => {
    const c = await apply([
      () => [
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'dev/loop9', type: 'block-device', devmajor: 7, devminor: 9, mode: 0o660, gid: 6 },
        { name: 'run/fifo', type: 'fifo', mode: 0o600 },
      ],
    ]);
    expect(c.error).toBeUndefined();
    const nul = lstatSync(at(c, 'dev/null'));
    expect(nul.isCharacterDevice()).toBe(true);
    expect(nul.rdev).toBe(statSync('/dev/null').rdev);
    expect(nul.mode & 0o777).toBe(0o666);
    const loop = lstatSync(at(c, 'dev/loop9'));
    expect(loop.isBlockDevice()).toBe(true);
    expect(loop.gid).toBe(6);
    expect(lstatSync(at(c, 'run/fifo')).isFIFO()).toBe(true);
  });

  test('whiteouts delete lower files and dirs', async () => {
    const c = await apply([
      () => [
        { name: 'a/b', content: 'b' },
        { name: 'a/c', content: 'c' },
        { name: 'd/e/f', content: 'f' },
      ],
      () => [
        { name: 'a/.wh.b', content: '' },
        { name: '.wh.d', content: '' },
        { name: '.wh.nonexistent', content: '' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(await exists(at(c, 'a/b'))).toBe(false);
    expect(await exists(at(c, 'a/.wh.b'))).toBe(false);
    expect(readFileSync(at(c, 'a/c'), 'utf8')).toBe('c');
    expect(await exists(at(c, 'd'))).toBe(false);
  });

  test('opaque directories hide lower content but keep their own (marker first or last)', async () => {
    const c = await apply([
      () => [
        { name: 'd/x', content: 'x' },
        { name: 'd/sub/y', content: 'y' },
        { name: 'e/x', content: 'x' },
      ],
      () => [
        { name: 'd/', type: 'directory' },
        { name: 'd/.wh..wh..opq', content: '' },
        { name: 'd/z', content: 'z' },
        { name: 'e/new', content: 'n' },
        { name: 'e/.wh..wh..opq', content: '' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect((await fsp.readdir(at(c, 'd'))).sort()).toEqual(['z']);
    expect((await fsp.readdir(at(c, 'e'))).sort()).toEqual(['new']);
  });

  test('replacing across layers: file→dir, dir→file, dir→symlink', async () => {
    const c = await apply([
      () => [
        { name: 'p', content: 'file' },
        { name: 'q/inner', content: 'i' },
        { name: 'r/inner', content: 'i' },
      ],
      () => [
        { name: 'p/', type: 'directory' },
        { name: 'p/child', content: 'c' },
        { name: 'q', content: 'now a file' },
        { name: 'r', type: 'symlink', linkname: 'q' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(readFileSync(at(c, 'p/child'), 'utf8')).toBe('c');
    expect(readFileSync(at(c, 'q'), 'utf8')).toBe('now a file');
    expect(await fsp.readlink(at(c, 'r'))).toBe('q');
  });

  test('applyLayerFile: gzip, zstd, plain tar; diff_id checked', async () => {
    const dir = path.join(base, `files-${++n}`);
    const root = path.join(dir, 'rootfs');
    await fsp.mkdir(root, { recursive: true });
    const b = new RootfsBuilder(root, silentLogger);
    for (const [i, kind] of (['gzip', 'zstd', 'none'] as const).entries()) {
      const l = await makeLayer([{ name: `f${i}`, content: kind }], kind);
      await fsp.writeFile(path.join(dir, `l${i}`), l.blob);
      await b.applyLayerFile(path.join(dir, `l${i}`), l.diffId);
      expect(readFileSync(path.join(root, `f${i}`), 'utf8')).toBe(kind);
    }
    const l = await makeLayer([{ name: 'g', content: 'g' }]);
    await fsp.writeFile(path.join(dir, 'bad'), l.blob);
    await expect(b.applyLayerFile(path.join(dir, 'bad'), `sha256:${'0'.repeat(64)}`)).rejects.toThrow(/diff_id/);
    await fsp.writeFile(path.join(dir, 'corrupt'), Buffer.concat([l.blob.subarray(0, 20), Buffer.alloc(50, 7)]));
    await expect(b.applyLayerFile(path.join(dir, 'corrupt'))).rejects.toThrow();
  });
});

/** A tar whose single file header claims `size` (base-256 encoded), with a little data. */
function absurdSizeTar(size: bigint): Buffer {
  const h = Buffer.alloc(512);
  h.write('huge', 0);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h[124] = 0x80; // base-256 size
  let v = size;
  for (let i = 135; i > 124; i--) {
    h[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  h.write('00000000000\0', 136);
  h.write('0', 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return Buffer.concat([h, Buffer.alloc(4096, 0x41)]);
}

describe('hostile archives', () => {
  const refused = (c: Case) => {
    expect(c.error).toBeInstanceOf(UnsafeArchiveError);
  };

  test('../x is refused', async () => {
    refused(await apply([() => [{ name: '../x', content: 'pwned' }]]));
    refused(await apply([() => [{ name: 'a/../../outside/keep', content: 'pwned' }]]));
  });

  test('absolute paths are neutralized into the root', async () => {
    const c = await apply([(c) => [{ name: `${c.outside}/pwned`, content: 'pwned' }, { name: '/etc/passwd', content: 'image passwd' }]]);
    expect(c.error).toBeUndefined();
    expect(readFileSync(at(c, `${c.outside}/pwned`), 'utf8')).toBe('pwned');
    expect(readFileSync(at(c, 'etc/passwd'), 'utf8')).toBe('image passwd');
  });

  test('a symlink pointing outside, then a file written through it, stays inside', async () => {
    const c = await apply([
      (c) => [
        { name: 'evil', type: 'symlink', linkname: c.outside },
        { name: 'evil/pwned', content: 'pwned' },
        { name: 'rel', type: 'symlink', linkname: '../../../../../../../outside' },
        { name: 'rel/pwned2', content: 'pwned' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(await fsp.readlink(at(c, 'evil'))).toBe(c.outside);
    expect(readFileSync(at(c, `${c.outside}/pwned`), 'utf8')).toBe('pwned');
    expect(readFileSync(at(c, 'outside/pwned2'), 'utf8')).toBe('pwned');
  });

  test('a file entry replacing a symlink to a host file replaces the link, not the target', async () => {
    const c = await apply([
      (c) => [
        { name: 'passwd', type: 'symlink', linkname: '/etc/passwd' },
        { name: 'keep', type: 'symlink', linkname: `${c.outside}/keep` },
      ],
      () => [
        { name: 'passwd', content: 'overwritten?' },
        { name: 'keep', content: 'overwritten?', mode: 0o777 },
        { name: 'dirlink', type: 'symlink', linkname: '/etc' },
      ],
      () => [{ name: 'dirlink/', type: 'directory', mode: 0o777 }],
    ]);
    expect(c.error).toBeUndefined();
    expect(lstatSync(at(c, 'passwd')).isFile()).toBe(true);
    expect(lstatSync(at(c, 'dirlink')).isDirectory()).toBe(true);
  });

  test('entries under a symlinked parent (also a dir swapped for a link mid-layer) stay inside', async () => {
    const c = await apply([
      (c) => [
        { name: 'a/', type: 'directory' },
        { name: 'a/x', content: 'x' },
        { name: 'a', type: 'symlink', linkname: c.outside },
        { name: 'a/sub/deep', content: 'pwned' },
        { name: 'a/dev', type: 'character-device', devmajor: 1, devminor: 3 },
        { name: 'a/keep', type: 'symlink', linkname: '/' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(readFileSync(at(c, `${c.outside}/sub/deep`), 'utf8')).toBe('pwned');
    expect(lstatSync(at(c, `${c.outside}/dev`)).isCharacterDevice()).toBe(true);
  });

  test('whiteouts and opaque markers through a symlinked parent do not delete outside', async () => {
    const c = await apply([
      (c) => [{ name: 'evil', type: 'symlink', linkname: c.outside }],
      () => [
        { name: 'evil/.wh.keep', content: '' },
        { name: 'evil/sub/.wh..wh..opq', content: '' },
        { name: 'rel', type: 'symlink', linkname: '../outside' },
      ],
      () => [{ name: 'rel/.wh.keep', content: '' }, { name: '.wh.rel', content: '' }],
    ]);
    expect(c.error).toBeUndefined();
    expect(await exists(at(c, 'rel'))).toBe(false);
  });

  test('hard links to host files or out of the root are refused', async () => {
    refused(await apply([() => [{ name: 'pw', type: 'link', linkname: '/etc/passwd' }]]));
    refused(await apply([() => [{ name: 'pw', type: 'link', linkname: '../../../../../../etc/passwd' }]]));
    refused(await apply([() => [{ name: 'up', type: 'link', linkname: '../' }]]));
    refused(await apply([(c) => [{ name: 'k', type: 'link', linkname: `../outside/keep` }]]));
    refused(await apply([() => [{ name: 'etc', type: 'symlink', linkname: '/etc' }, { name: 'pw', type: 'link', linkname: 'etc/passwd' }]]));
    refused(await apply([() => [{ name: 'd/', type: 'directory' }, { name: 'dl', type: 'link', linkname: 'd' }]]));
  });

  test('a hard link through a symlink resolves inside the root', async () => {
    const c = await apply([
      (c) => [
        { name: `${c.outside.slice(1)}/keep`, content: 'image copy' },
        { name: 'o', type: 'symlink', linkname: c.outside },
        { name: 'k', type: 'link', linkname: 'o/keep' },
      ],
    ]);
    expect(c.error).toBeUndefined();
    expect(readFileSync(at(c, 'k'), 'utf8')).toBe('image copy');
  });

  test('absurd size headers are refused before any data is written', async () => {
    const c = await apply([() => absurdSizeTar(1n << 45n)]);
    refused(c);
    expect(String((c.error as Error).message)).toMatch(/absurd size/);
    expect(await exists(at(c, 'huge'))).toBe(false);
    refused(await apply([() => [{ name: 'big', content: 'x'.repeat(5000) }]], { maxEntryBytes: 4096 }));
    refused(await apply([() => [{ name: 'a', content: 'x'.repeat(3000) }, { name: 'b', content: 'x'.repeat(3000) }]], { maxTotalBytes: 5000 }));
  });

  test('too many entries are refused', async () => {
    const entries: TarEntry[] = Array.from({ length: 300 }, (_, i) => ({ name: `f${i}`, content: '' }));
    const c = await apply([() => entries], { maxEntries: 200 });
    refused(c);
    expect(String((c.error as Error).message)).toMatch(/more than 200 entries/);
  });

  test('symlink loops are refused, not followed forever', async () => {
    refused(
      await apply([
        () => [
          { name: 'l1', type: 'symlink', linkname: 'l2' },
          { name: 'l2', type: 'symlink', linkname: 'l1' },
          { name: 'l1/x', content: 'x' },
        ],
      ]),
    );
  });

  test('truncated archives are refused', async () => {
    const t = await makeTar([{ name: 'f', content: 'y'.repeat(10000) }]);
    refused(await apply([() => t.subarray(0, 2048)]));
  });
});

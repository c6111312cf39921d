// Layer application: whiteouts, links, devices, metadata, xattrs, and every hostile-archive
// case. Each case builds an erofs image from its layers, then mounts it read-only (loop device,
// the host kernel's erofs) on <tmp>/case-N/rootfs and looks at the result there; fsck.erofs
// checks every image too. The test also proves that nothing outside rootfs/ changed (listing +
// contents of the case dir, and the host's /etc/passwd), and that a refused image leaves no file.
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp, mkdtempSync, readFileSync, statSync, lstatSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { silentLogger } from '../../src/util/log';
import { cleanEntryPath, ImageBuilder, UnsafeArchiveError, type UnpackLimits } from '../../src/image/unpack';
import { makeLayer, makeTar, type TarEntry } from '../support/images';
import { mountErofs, rawTar, readXattrs, setXattr, unmountAll } from './helpers';

const execFileP = promisify(execFile);
jest.setTimeout(30_000);

const base = mkdtempSync(path.join(os.tmpdir(), 'podvisor-unpack-'));
afterEach(unmountAll);
afterAll(async () => {
  await unmountAll();
  await fsp.rm(base, { recursive: true, force: true });
});

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
  image: string;
  error?: unknown;
}

/** fsck.erofs (erofs-utils) walks the whole image: a second, independent reader. */
async function fsck(image: string): Promise<void> {
  await execFileP('fsck.erofs', [image], { timeout: 60_000 });
}

/** Temp files ImageBuilder left next to its images (a refused build must leave none). */
const leftovers = () => readdirSync(base).filter((f) => f.startsWith('.tmp-'));

/**
 * Builds an image from the layers (entry lists, or raw tar buffers), checks that nothing
 * outside the case's rootfs changed, and mounts the image on rootfs. Returns the error, if
 * a layer was refused.
 */
async function apply(layers: ((c: Case) => TarEntry[] | Buffer)[], limits?: Partial<UnpackLimits>): Promise<Case> {
  const dir = path.join(base, `case-${++n}`);
  const c: Case = { dir, root: path.join(dir, 'rootfs'), outside: path.join(dir, 'outside'), image: path.join(base, `case-${n}.erofs`) };
  await fsp.mkdir(c.root, { recursive: true });
  await fsp.mkdir(path.join(c.outside, 'sub'), { recursive: true });
  await fsp.writeFile(path.join(c.outside, 'keep'), 'precious\n');
  await fsp.writeFile(path.join(c.outside, 'sub', 'deep'), 'deep\n');
  const before = await snapshot(dir, c.root);
  const passwdBefore = hostPasswd();
  const b = await ImageBuilder.create(c.image, silentLogger, { maxEntries: 10_000, maxEntryBytes: 1 << 30, maxTotalBytes: 2 ** 31, ...limits });
  try {
    for (const l of layers) {
      const spec = l(c);
      const buf = Buffer.isBuffer(spec) ? spec : await makeTar(spec);
      await b.applyTarStream(Readable.from([buf]));
    }
    await b.commit();
  } catch (e) {
    c.error = e;
    await b.abort();
  }
  expect(await snapshot(dir, c.root)).toEqual(before);
  expect(hostPasswd()).toEqual(passwdBefore);
  expect(leftovers()).toEqual([]);
  if (c.error) {
    expect(await exists(c.image)).toBe(false);
  } else {
    await fsck(c.image);
    await mountErofs(c.image, c.root);
  }
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
    const b = await ImageBuilder.create(path.join(dir, 'img.erofs'), silentLogger);
    for (const [i, kind] of (['gzip', 'zstd', 'none'] as const).entries()) {
      const l = await makeLayer([{ name: `f${i}`, content: kind }], kind);
      await fsp.writeFile(path.join(dir, `l${i}`), l.blob);
      await b.applyLayerFile(path.join(dir, `l${i}`), l.diffId);
    }
    await b.commit();
    await mountErofs(path.join(dir, 'img.erofs'), root);
    for (const [i, kind] of ['gzip', 'zstd', 'none'].entries()) expect(readFileSync(path.join(root, `f${i}`), 'utf8')).toBe(kind);

    const b2 = await ImageBuilder.create(path.join(dir, 'img2.erofs'), silentLogger);
    const l = await makeLayer([{ name: 'g', content: 'g' }]);
    await fsp.writeFile(path.join(dir, 'bad'), l.blob);
    await expect(b2.applyLayerFile(path.join(dir, 'bad'), `sha256:${'0'.repeat(64)}`)).rejects.toThrow(/diff_id/);
    await fsp.writeFile(path.join(dir, 'corrupt'), Buffer.concat([l.blob.subarray(0, 20), Buffer.alloc(50, 7)]));
    await expect(b2.applyLayerFile(path.join(dir, 'corrupt'))).rejects.toThrow();
    await b2.abort();
    expect(readdirSync(dir).filter((f) => f.endsWith('.erofs') || f.startsWith('.tmp-'))).toEqual(['img.erofs']);
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

// ---- whole trees and xattrs --------------------------------------------------------------

/** type, mode, owner, size, mtime, link count, device, link target, content hash, xattrs of every entry under dir. */
async function describeTree(dir: string, dropXattr: (name: string) => boolean = () => false): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const walk = async (rel: Buffer) => {
    const p = Buffer.concat([Buffer.from(dir + '/'), rel]);
    const st = await fsp.lstat(p);
    const x = await readXattrs(p);
    const xattrs = Object.fromEntries(Object.entries(x).filter(([k]) => !dropXattr(k)).map(([k, v]) => [k, v.toString('hex')]));
    const d: Record<string, unknown> = { mode: st.mode.toString(8), uid: st.uid, gid: st.gid, mtime: st.mtimeMs, nlink: st.isDirectory() ? undefined : st.nlink, xattrs };
    if (st.isFile()) Object.assign(d, { size: st.size, sha: createHash('sha256').update(await fsp.readFile(p)).digest('hex') });
    if (st.isSymbolicLink()) d.target = (await fsp.readlink(p, { encoding: 'buffer' })).toString('hex');
    if (st.isCharacterDevice() || st.isBlockDevice()) d.rdev = st.rdev;
    out[rel.toString('hex') || '.'] = d;
    if (st.isDirectory()) {
      const names = (await fsp.readdir(p, { encoding: 'buffer' })).sort(Buffer.compare);
      for (const name of names) await walk(rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name);
    }
  };
  await walk(Buffer.alloc(0));
  return out;
}

// security.capability v2: cap_net_raw (bit 13) permitted, effective flag set.
const CAP_NET_RAW = Buffer.from('0100000200200000000000000000000000000000', 'hex');

describe('whole trees', () => {
  test('a GNU tar (POSIX format, --xattrs) of a real tree comes out identical, xattrs included', async () => {
    const src = path.join(base, `src-${++n}`);
    await fsp.mkdir(src);
    // file sizes around the block size (inline tails, plain blocks, exact multiples)
    for (const size of [0, 1, 100, 2900, 3000, 4031, 4095, 4096, 4097, 8191, 8192, 12289, 100_000, (1 << 20) + 3])
      await fsp.writeFile(path.join(src, `f${size}`), Buffer.from(Array.from({ length: size }, (_, i) => (i * 7 + size) & 0xff)));
    // a directory spanning several blocks, and long and non-UTF-8 names
    await fsp.mkdir(path.join(src, 'big'));
    for (let i = 0; i < 700; i++) await fsp.writeFile(path.join(src, 'big', `entry-${String(i).padStart(4, '0')}-${'x'.repeat(i % 40)}`), `${i}\n`);
    await fsp.writeFile(path.join(src, 'n'.repeat(255)), 'long name');
    await fsp.writeFile(Buffer.from([...Buffer.from(src + '/latin-'), 0xe9, 0xff, 0x80]) as unknown as string, 'bytes');
    // symlinks: short (inline), long (a data block), dangling; hard links; special files
    await fsp.symlink('f100', path.join(src, 'short'));
    await fsp.symlink('t'.repeat(4000), path.join(src, 'long'));
    await fsp.symlink('/nowhere/at/all', path.join(src, 'dangling'));
    for (const l of ['h1', 'h2', 'h3']) await fsp.link(path.join(src, 'f4097'), path.join(src, l));
    execFileSync('mknod', [path.join(src, 'null'), 'c', '1', '3']);
    execFileSync('mknod', [path.join(src, 'loop'), 'b', '7', '300']);
    execFileSync('mkfifo', [path.join(src, 'fifo')]);
    // owners, modes, times (with nanoseconds)
    await fsp.mkdir(path.join(src, 'deep/er/still'), { recursive: true });
    await fsp.writeFile(path.join(src, 'deep/er/still/suid'), 'x');
    await fsp.chmod(path.join(src, 'deep/er/still/suid'), 0o4755);
    await fsp.chown(path.join(src, 'deep/er/still/suid'), 100_000, 4_000_000_000);
    await fsp.chmod(path.join(src, 'deep'), 0o1777);
    await fsp.lchown(path.join(src, 'short'), 7, 8);
    // xattrs: a file capability, user.* on a file and a directory, trusted.* on a symlink
    await setXattr(path.join(src, 'f1'), 'security.capability', CAP_NET_RAW);
    await setXattr(path.join(src, 'f1'), 'user.mime', Buffer.from('text/plain'));
    await setXattr(path.join(src, 'f2900'), 'user.bin', Buffer.from([0, 0xff, 0x80, 0x0a, 0x3d, 0]));
    await setXattr(path.join(src, 'f2900'), 'trusted.big', Buffer.alloc(1100, 0xab)); // no longer fits inline with the tail
    await setXattr(path.join(src, 'deep'), 'user.dir', Buffer.from('yes'));
    await setXattr(path.join(src, 'deep'), 'trusted.overlay.opaque', Buffer.from('y')); // overlayfs' own: dropped
    await setXattr(path.join(src, 'short'), 'trusted.link', Buffer.from('on a symlink'));
    const when = new Date('2021-03-04T05:06:07.123456789Z');
    for (const f of ['f1', 'deep/er', 'big', 'short']) await fsp.lutimes(path.join(src, f), when, when);
    await fsp.utimes(src, when, when);

    const tarball = execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--format=posix', '--numeric-owner', '-C', src, '-cf', '-', '.'], { maxBuffer: 64 << 20 });
    const c = await apply([() => tarball]);
    expect(c.error).toBeUndefined();
    const want = await describeTree(src, (x) => x.startsWith('trusted.overlay.'));
    const got = await describeTree(c.root);
    expect(got).toEqual(want);
    // the checks above compare against the source; these pin the interesting ones
    expect((await readXattrs(at(c, 'f1')))['security.capability']).toEqual(CAP_NET_RAW);
    expect((await readXattrs(at(c, 'deep')))['trusted.overlay.opaque']).toBeUndefined();
    expect(statSync(at(c, 'f4097')).nlink).toBe(4);
    expect(lstatSync(at(c, 'loop')).rdev).toBe(lstatSync(path.join(src, 'loop')).rdev);
  });

  test('an image with megabytes of metadata (30000 entries, big directories, long symlinks)', async () => {
    const entries: TarEntry[] = [];
    for (let d = 0; d < 30; d++) {
      entries.push({ name: `dir${d}/`, type: 'directory', mode: 0o750 + (d % 8) });
      for (let f = 0; f < 900; f++) entries.push({ name: `dir${d}/file-${f}-${'n'.repeat(f % 60)}`, content: `${d}/${f}\n`.repeat(f % 50), uid: f, gid: d });
      for (let l = 0; l < 100; l++) entries.push({ name: `dir${d}/link-${l}`, type: 'symlink', linkname: `${'../'.repeat(l % 5)}t${'t'.repeat(l * 40)}` });
    }
    const c = await apply([() => entries], { maxEntries: 100_000 }); // fsck.erofs walks it all in apply()
    expect(c.error).toBeUndefined();
    for (const d of [0, 17, 29]) {
      const names = await fsp.readdir(at(c, `dir${d}`));
      expect(names).toHaveLength(1000);
      for (const f of [0, 449, 899]) {
        const st = statSync(at(c, `dir${d}/file-${f}-${'n'.repeat(f % 60)}`));
        expect([st.uid, st.gid, st.size]).toEqual([f, d, Buffer.byteLength(`${d}/${f}\n`.repeat(f % 50))]);
        expect(readFileSync(at(c, `dir${d}/file-${f}-${'n'.repeat(f % 60)}`), 'utf8')).toBe(`${d}/${f}\n`.repeat(f % 50));
      }
      for (const l of [0, 51, 99]) expect(await fsp.readlink(at(c, `dir${d}/link-${l}`))).toBe(`${'../'.repeat(l % 5)}t${'t'.repeat(l * 40)}`);
      expect(statSync(at(c, `dir${d}`)).mode & 0o777).toBe(0o750 + (d % 8));
    }
    expect(statSync(c.image).size).toBeGreaterThan(4 << 20);
  });
});

describe('xattrs', () => {
  test('SCHILY values are kept byte for byte, LIBARCHIVE ones are base64 with %-escaped names', async () => {
    const binary = Buffer.from([0xff, 0xfe, 0, 0x80, 0xc3, 0x28, 0x0a]);
    const c = await apply([
      () =>
        rawTar([
          { name: 'bin/', type: '5', mode: 0o755 },
          { name: 'bin/ping', data: Buffer.from('ELF'), mode: 0o755, pax: [['SCHILY.xattr.security.capability', CAP_NET_RAW], ['SCHILY.xattr.user.raw', binary]] },
          { name: 'lib', data: Buffer.from('x'), pax: [['LIBARCHIVE.xattr.user.a%3Db%25', Buffer.from(binary.toString('base64'))], ['LIBARCHIVE.xattr.trusted.t', Buffer.from('aGk=')]] },
          { name: 'sym', type: '2', linkname: 'lib', pax: [['SCHILY.xattr.security.selinux', Buffer.from('system_u:object_r:bin_t:s0\0')]] },
        ]),
    ]);
    expect(c.error).toBeUndefined();
    expect(await readXattrs(at(c, 'bin/ping'))).toEqual({ 'security.capability': CAP_NET_RAW, 'user.raw': binary });
    expect(await readXattrs(at(c, 'lib'))).toEqual({ 'user.a=b%': binary, 'trusted.t': Buffer.from('hi') });
    expect(await readXattrs(at(c, 'sym'))).toEqual({ 'security.selinux': Buffer.from('system_u:object_r:bin_t:s0\0') });
  });

  test('overlayfs, system.* and user.* on special files are dropped; an upper directory entry adds to lower xattrs', async () => {
    const c = await apply([
      () =>
        rawTar([
          { name: 'd/', type: '5', pax: [['SCHILY.xattr.user.low', Buffer.from('1')], ['SCHILY.xattr.user.both', Buffer.from('old')]] },
          { name: 'f', data: Buffer.from('f'), pax: [['SCHILY.xattr.trusted.overlay.redirect', Buffer.from('/etc')], ['SCHILY.xattr.user.overlay.origin', Buffer.from('x')], ['SCHILY.xattr.system.posix_acl_access', Buffer.from('AgAAAAEABgD/////', 'base64')], ['SCHILY.xattr.os2.name', Buffer.from('x')], ['SCHILY.xattr.user.ok', Buffer.from('ok')]] },
          { name: 'l', type: '2', linkname: 'f', pax: [['SCHILY.xattr.user.onlink', Buffer.from('no')]] },
          { name: 'p', type: '6', pax: [['SCHILY.xattr.user.onfifo', Buffer.from('no')], ['SCHILY.xattr.trusted.onfifo', Buffer.from('yes')]] },
        ]),
      () => rawTar([{ name: 'd/', type: '5', pax: [['SCHILY.xattr.user.up', Buffer.from('2')], ['SCHILY.xattr.user.both', Buffer.from('new')]] }]),
    ]);
    expect(c.error).toBeUndefined();
    expect(await readXattrs(at(c, 'f'))).toEqual({ 'user.ok': Buffer.from('ok') });
    expect(await readXattrs(at(c, 'l'))).toEqual({});
    expect(await readXattrs(at(c, 'p'))).toEqual({ 'trusted.onfifo': Buffer.from('yes') });
    expect(await readXattrs(at(c, 'd'))).toEqual({ 'user.low': Buffer.from('1'), 'user.up': Buffer.from('2'), 'user.both': Buffer.from('new') });
  });

  test('absurd xattrs are refused: too many, too large, bad names, a huge PAX record', async () => {
    const one = (pax: [string, Buffer][]) => () => rawTar([{ name: 'f', data: Buffer.from('x'), pax }]);
    const tooMany = Array.from({ length: 200 }, (_, i): [string, Buffer] => [`SCHILY.xattr.user.a${i}`, Buffer.from('v')]);
    const cases = [
      one(tooMany),
      one([['SCHILY.xattr.user.big', Buffer.alloc(70_000)]]),
      one([['SCHILY.xattr.user.a', Buffer.alloc(40_000)], ['SCHILY.xattr.user.b', Buffer.alloc(40_000)]]),
      one([[`SCHILY.xattr.user.${'n'.repeat(300)}`, Buffer.from('v')]]),
      one([['SCHILY.xattr.user.a\0b', Buffer.from('v')]]),
      one([['SCHILY.xattr.user.pad', Buffer.alloc(2 << 20)]]),
    ];
    for (const layer of cases) {
      const c = await apply([layer]);
      expect(c.error).toBeInstanceOf(UnsafeArchiveError);
    }
    // the root directory's xattrs must fit next to the superblock
    const root = await apply([() => rawTar([{ name: './', type: '5', pax: [['SCHILY.xattr.user.r', Buffer.alloc(3000)]] }])]);
    expect(String((root.error as Error).message)).toMatch(/root directory/);
    const ok = await apply([() => rawTar([{ name: './', type: '5', pax: [['SCHILY.xattr.user.r', Buffer.from('small')]] }, { name: 'x', data: Buffer.from('x') }])]);
    expect(ok.error).toBeUndefined();
    expect(await readXattrs(ok.root)).toEqual({ 'user.r': Buffer.from('small') });
  });
});

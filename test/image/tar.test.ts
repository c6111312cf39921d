// The layer tar reader against archives written by GNU tar (every format it has) and by
// tar-stream, fed whole and one byte at a time; and against malformed input.
import { execFileSync } from 'node:child_process';
import { promises as fsp, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TarFormatError, TarParser, parseNumeric, type TarHeader } from '../../src/image/tar';
import { makeTar } from '../support/images';
import { paxRecord, rawTar } from './helpers';

const base = mkdtempSync(path.join(os.tmpdir(), 'podvisor-tar-'));
afterAll(() => fsp.rm(base, { recursive: true, force: true }));

interface Seen {
  h: Omit<TarHeader, 'xattrs'> & { xattrs?: Record<string, string> };
  data: string;
}

/** Parses `buf` fed in pieces of `step` bytes (0: whole). */
function parse(buf: Buffer, step = 0): Seen[] {
  const out: Seen[] = [];
  let cur: Buffer[] = [];
  const p = new TarParser({
    entry(h) {
      const { xattrs, ...rest } = h;
      out.push({ h: { ...rest, ...(xattrs ? { xattrs: Object.fromEntries([...xattrs].map(([k, v]) => [k, v.toString('hex')])) } : {}) }, data: '' });
      cur = [];
    },
    data(c) {
      cur.push(Buffer.from(c)); // the parser's chunk is only valid during the call
    },
    end() {
      out[out.length - 1].data = Buffer.concat(cur).toString('latin1');
    },
  });
  if (step === 0) p.write(buf);
  else for (let i = 0; i < buf.length; i += step) p.write(buf.subarray(i, i + step));
  p.finish();
  return out;
}

/** A small tree archived by GNU tar; ustar gets names that fit its prefix+name fields. */
function gnuTar(format: string, ustar: boolean): { buf: Buffer; long: string; uid: number } {
  const src = mkdtempSync(path.join(base, 'src-'));
  const long = ustar ? `d/${Array(10).fill('segment-xx').join('/')}/${'file-'.repeat(10)}` : `d/${'long-directory-name-'.repeat(8)}/${'file-'.repeat(30)}`;
  const target = ustar ? 'target-'.repeat(12) : `${'../'.repeat(3)}${'target-'.repeat(20)}`;
  const uid = ustar ? 1000 : 3000000;
  execFileSync('sh', ['-c', `
    cd ${src}
    mkdir -p "${path.dirname(long)}"
    printf 'hello' > d/f
    head -c 5000 /dev/zero | tr '\\0' 'z' > "${long}"
    ln -s ${target} d/longlink
    ln d/f d/hard
    mkfifo d/fifo
    touch -d '2020-01-02 03:04:05.5' d/f
  `]);
  const buf = execFileSync('tar', [`--format=${format}`, '--numeric-owner', `--owner=${uid}`, '--group=5', '-C', src, '-cf', '-', 'd'], { maxBuffer: 16 << 20 });
  return { buf, long, uid };
}

describe('GNU tar formats', () => {
  test.each(['gnu', 'oldgnu', 'posix', 'ustar'])('%s: names, links, data, owners, fed whole and byte by byte', (format) => {
    const { buf, long, uid } = gnuTar(format, format === 'ustar');
    const whole = parse(buf);
    expect(parse(buf, 1)).toEqual(whole);
    expect(parse(buf, 511)).toEqual(whole);
    const byName = Object.fromEntries(whole.map((e) => [e.h.name.replace(/^\.\//, ''), e]));
    expect(byName[long].h.type).toBe('file');
    expect(byName[long].data).toBe('z'.repeat(5000));
    expect(byName['d/f'].data).toBe('hello');
    expect(byName['d/f'].h.mtime).toBe(Math.floor(new Date('2020-01-02T03:04:05').getTime() / 1000));
    expect(byName['d/f'].h.uid).toBe(uid); // 3000000: base-256 (gnu) or PAX (posix)
    expect(byName['d/f'].h.gid).toBe(5);
    expect(byName['d/longlink'].h.type).toBe('symlink');
    expect(byName['d/longlink'].h.linkname).toMatch(/(target-){12}$/);
    expect(byName['d/hard'].h).toMatchObject({ type: 'link', linkname: 'd/f', size: 0 });
    expect(byName['d/fifo'].h.type).toBe('fifo');
    expect(byName['d/'].h.type).toBe('dir');
    if (format === 'posix') expect(byName['d/f'].h.mtimeNsec).toBe(500_000_000);
  });

  test('GNU sparse files are refused, not silently mangled', () => {
    const src = mkdtempSync(path.join(base, 'sparse-'));
    execFileSync('sh', ['-c', `cd ${src} && truncate -s 1M s && printf x | dd of=s bs=1 seek=500000 conv=notrunc 2>/dev/null`]);
    for (const format of ['gnu', 'posix']) {
      const buf = execFileSync('tar', [`--format=${format}`, '--sparse', '-C', src, '-cf', '-', 's']);
      expect(() => parse(buf)).toThrow(/sparse/);
    }
  });
});

describe('PAX', () => {
  test('global headers apply to later entries; per-entry records override them', () => {
    const g = Buffer.concat([paxRecord('uid', Buffer.from('77')), paxRecord('comment', Buffer.from('ignored'))]);
    const archive = rawTar([{ name: 'a', data: Buffer.from('1') }, { name: 'b', data: Buffer.from('2'), pax: [['uid', Buffer.from('99')]] }]);
    // splice a global header ('g') in front
    const gh = rawTar([{ name: 'PaxGlobal', data: g }]).subarray(0, 512 + 512);
    gh[156] = 'g'.charCodeAt(0);
    gh.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of gh.subarray(0, 512)) sum += b;
    gh.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
    const seen = parse(Buffer.concat([gh, archive]));
    expect(seen.map((e) => [e.h.name, e.h.uid])).toEqual([
      ['a', 77],
      ['b', 99],
    ]);
  });

  test('path, linkpath and size records; names keep their bytes', () => {
    const name = Buffer.from([0x64, 0x2f, 0xe9, 0xff, 0x00 + 0x41]);
    const seen = parse(
      rawTar([
        { name: 'short', data: Buffer.from('abc'), pax: [['path', name]] },
        { name: 'l', type: '2', linkname: 'x', pax: [['linkpath', Buffer.from('y'.repeat(300))]] },
      ]),
    );
    expect(Buffer.from(seen[0].h.name, 'latin1')).toEqual(name);
    expect(seen[0].data).toBe('abc');
    expect(seen[1].h.linkname).toBe('y'.repeat(300));
  });

  test('malformed records and oversized metadata are refused', () => {
    const bad = rawTar([{ name: 'f', data: Buffer.from('x'), pax: [['path', Buffer.from('p')]] }]);
    bad.write('99', 512, 'latin1'); // record length beyond the header
    expect(() => parse(bad)).toThrow(TarFormatError);
    const big = rawTar([{ name: 'f', pax: [['comment', Buffer.alloc(2 << 20, 0x61)]] }]);
    expect(() => parse(big)).toThrow(/larger than/);
    expect(() => parse(rawTar([{ name: 'f', pax: [['size', Buffer.from('12x')]] }]))).toThrow(/bad PAX size/);
  });
});

describe('malformed archives', () => {
  test('a bad checksum, an unknown magic and garbage are refused', async () => {
    const t = await makeTar([{ name: 'f', content: 'x' }]);
    const c = Buffer.from(t);
    c[0] ^= 1;
    expect(() => parse(c)).toThrow(/checksum/);
    expect(() => parse(Buffer.alloc(1024, 0x41))).toThrow(TarFormatError);
  });

  test('archives cut inside a header, a record or data are refused; trailing bytes after the end are ignored', async () => {
    const t = await makeTar([{ name: 'f', content: 'y'.repeat(2000) }, { name: 'g', content: 'g' }]);
    for (const cut of [100, 512 + 100, 1536 + 300]) expect(() => parse(t.subarray(0, cut))).toThrow(/truncated/);
    expect(parse(Buffer.concat([t, Buffer.from('junk after the end')])).map((e) => e.h.name)).toEqual(['f', 'g']);
  });

  test('numeric fields: octal with spaces, base-256, malformed', () => {
    const f = (s: string | number[]) => parseNumeric(Buffer.isBuffer(s) ? s : Buffer.from(s as any), 0, Array.isArray(s) ? s.length : (s as string).length);
    expect(f(' 0000755\0')).toBe(0o755);
    expect(f('\0\0\0\0')).toBe(0);
    expect(f([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])).toBe(256);
    expect(f([0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])).toBe(Infinity);
    expect(f([0xff, 0xff])).toBeNaN();
    expect(f('12a4')).toBeNaN();
  });
});

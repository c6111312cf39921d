// Fuzz: image layers built from random entries (names with .., /, NUL, whiteouts, long
// components; links and symlinks anywhere; devices; PAX records with xattrs of any size) and
// then damaged (bit flips, truncation, garbage appended), as plain tar, gzip and zstd, applied to
// a real ImageBuilder. Each layer must be applied or refused with UnsafeArchiveError (never any
// other error, never a crash), a refused build leaves no file, and the process's peak RSS over
// the run is printed and bounded.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, promises as fsp, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { silentLogger } from '../../src/util/log';
import { ImageBuilder, UnsafeArchiveError } from '../../src/image/unpack';
import { pad512, paxRecord, tarHeader } from '../image/helpers';
import { fc, fuzzParams } from '../support/fuzz';
import { MiB, measurePeak } from '../support/rss';

jest.setTimeout(120_000);
const base = mkdtempSync(path.join(os.tmpdir(), 'podvisor-layer-fuzz-'));
afterAll(() => fsp.rm(base, { recursive: true, force: true }));


const component = fc.oneof(fc.constantFrom('a', 'b', 'etc', '..', '.', '', '.wh.a', '.wh..wh..opq', 'x'.repeat(300), 'caf\u00e9', 'n\0ul'), fc.string({ minLength: 1, maxLength: 8 }));
const name = fc.array(component, { minLength: 1, maxLength: 4 }).map((c) => c.join('/')).chain((n) => fc.constantFrom(n, '/' + n, n + '/'));
const xattrs = fc.array(fc.tuple(fc.constantFrom('SCHILY.xattr.user.a', 'SCHILY.xattr.security.capability', 'SCHILY.xattr.trusted.overlay.opaque', 'SCHILY.xattr.system.posix_acl_access', 'LIBARCHIVE.xattr.user.b', 'path', 'linkpath', 'size', 'GNU.sparse.map'), fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(new Uint8Array(70_000), new Uint8Array(0)))), { maxLength: 3 });
const entry = fc.record({
  name,
  type: fc.constantFrom('0', '0', '5', '2', '1', '3', '4', '6', 'x', 'g', 'L', 'K', 'S', 'M', 'Z'),
  data: fc.uint8Array({ maxLength: 1500 }),
  linkname: name,
  mode: fc.constantFrom(0o644, 0o7777, 0o4755, 0),
  pax: xattrs,
  major: fc.constantFrom(0, 8, 4095, 4096),
});

function build(entries: any[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    if (e.pax.length) {
      const body = Buffer.concat(e.pax.map(([k, v]: [string, Uint8Array]) => paxRecord(k, Buffer.from(v))));
      parts.push(tarHeader('PaxHeaders/x', 'x', body.length), pad512(body));
    }
    const data = ['0', 'x', 'g', 'L', 'K'].includes(e.type) ? Buffer.from(e.data) : Buffer.alloc(0);
    parts.push(tarHeader(e.name, e.type, data.length, { linkname: e.linkname, mode: e.mode ?? 0o644, major: e.major ?? 0, minor: 1 }), pad512(data));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

const damage = fc.oneof(
  fc.constant((b: Buffer) => b),
  fc.tuple(fc.nat(), fc.integer({ min: 0, max: 7 })).map(([at, bit]) => (b: Buffer) => {
    const c = Buffer.from(b);
    if (c.length) c[at % c.length] ^= 1 << bit;
    return c;
  }),
  fc.nat().map((at) => (b: Buffer) => b.subarray(0, at % (b.length + 1))),
  fc.uint8Array({ maxLength: 600 }).map((g) => (b: Buffer) => Buffer.concat([b, Buffer.from(g)])),
);

let n = 0;
const outcomes: Record<string, number> = {};
async function applyCase(entries: any[], compression: 'none' | 'gzip' | 'zstd', dmg: (b: Buffer) => Buffer, damageCompressed: boolean): Promise<void> {
  let raw = build(entries);
  if (!damageCompressed) raw = dmg(raw);
  let blob = compression === 'gzip' ? zlib.gzipSync(raw) : compression === 'zstd' ? execFileSync('zstd', ['-q', '-c'], { input: raw }) : raw;
  if (damageCompressed) blob = dmg(blob);
  const image = path.join(base, `img-${n++}.erofs`);
  const b = await ImageBuilder.create(image, silentLogger, { maxEntries: 10_000, maxEntryBytes: 1 << 20, maxTotalBytes: 64 << 20 });
  let outcome = 'applied';
  try {
    await b.applyTarStream(Readable.from([blob]));
    await b.commit();
    await fsp.rm(image, { force: true });
  } catch (e) {
    await b.abort();
    if (!(e instanceof UnsafeArchiveError)) throw new Error(`not an UnsafeArchiveError: ${(e as Error)?.name}: ${(e as Error)?.message}`);
    outcome = 'refused';
  }
  outcomes[`${compression}:${outcome}`] = (outcomes[`${compression}:${outcome}`] ?? 0) + 1;
  expect(readdirSync(base).filter((f) => f !== path.basename(image) && f.startsWith('img-') || f.startsWith('.tmp-'))).toEqual([]);
}

// the layer worker threads start with the first build: not part of the figure
beforeAll(async () => {
  const b = await ImageBuilder.create(path.join(base, 'warm.erofs'), silentLogger);
  await b.applyTarStream(Readable.from([build([])]));
  await b.abort();
});

test('random, hostile and damaged layers (tar, gzip, zstd): applied or refused with UnsafeArchiveError, nothing left, RSS bounded', async () => {
  const { growth } = await measurePeak('layer fuzz', 'self', () =>
    fc.assert(
      fc.asyncProperty(fc.array(entry, { maxLength: 10 }), fc.constantFrom('none', 'gzip', 'zstd'), damage, fc.boolean(), applyCase),
      fuzzParams('layers', 300, 20_000),
    ),
  );
  console.log(`layer fuzz outcomes: ${JSON.stringify(outcomes)}`);
  expect(Object.keys(outcomes).some((k) => k.endsWith('applied'))).toBe(true);
  expect(Object.keys(outcomes).some((k) => k.endsWith('refused'))).toBe(true);
  expect(growth).toBeLessThan(128 * MiB);
});

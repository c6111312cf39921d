// Layers built to exhaust memory through tar metadata (issue 17 item 2): runs of PAX `x`
// records holding megabytes of xattrs before one entry, oversized xattr values, `g` records that
// pile up for the whole archive, and thousands of dropped xattr names. Each layer is ~1000×
// smaller compressed than what it claims; each must be refused (or reported) while the peak RSS
// of the process during the unpack stays bounded: printed, and asserted.
import { mkdtempSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import * as zlib from 'node:zlib';
import pino from 'pino';
import { silentLogger } from '../../src/util/log';
import { ImageBuilder, UnsafeArchiveError } from '../../src/image/unpack';
import { MiB, measurePeak } from '../support/rss';
import { pad512, paxRecord, tarHeader } from './helpers';

jest.setTimeout(60_000);
const base = mkdtempSync(path.join(os.tmpdir(), 'podvisor-hostile-layer-'));
afterAll(() => fsp.rm(base, { recursive: true, force: true }));
// the first unpack starts the layer worker threads: not part of any attack's figure
beforeAll(async () => {
  const file = path.join(base, 'warm-up');
  await fsp.writeFile(file, zlib.gzipSync(Buffer.concat([tarHeader('f', '0', 1), pad512(Buffer.from('x')), Buffer.alloc(1024)])));
  expect(await unpack(file)).toBeUndefined();
});


/**
 * A gzip layer of `records` metadata records of type `type`, each made by `body(i)`, then one
 * file: written through gzip record by record, so the test never holds the inflated layer.
 */
async function metaLayer(file: string, records: number, type: 'x' | 'g', body: (i: number) => Buffer): Promise<number> {
  const gz = zlib.createGzip({ level: 1 });
  const out = (await fsp.open(file, 'w')).createWriteStream();
  gz.pipe(out);
  const write = (b: Buffer) => new Promise<void>((r) => (gz.write(b) ? r() : gz.once('drain', () => r())));
  for (let i = 0; i < records; i++) {
    const b = body(i);
    await write(tarHeader(`PaxHeaders/${i}`, type, b.length));
    await write(pad512(b));
  }
  await write(tarHeader('f', '0', 1));
  await write(pad512(Buffer.from('x')));
  await write(Buffer.alloc(1024));
  gz.end();
  await new Promise<void>((r) => out.once('close', () => r()));
  return (await fsp.stat(file)).size;
}

/**
 * `n` xattrs of `size` bytes each, as one PAX record body; names carry the record number
 * (`#####` in a template built once, so making 400 bodies costs copies, not rebuilding).
 */
function xattrs(tag: string, n: number, size: number): (i: number) => Buffer {
  const template = Buffer.concat(Array.from({ length: n }, (_, k) => paxRecord(`SCHILY.xattr.user.${tag}#####-${k}`, Buffer.alloc(size, 0x61))));
  const at: number[] = [];
  for (let p = template.indexOf('#####'); p >= 0; p = template.indexOf('#####', p + 5)) at.push(p);
  return (i) => {
    const b = Buffer.from(template);
    for (const p of at) b.write(String(i).padStart(5, '0'), p, 'latin1');
    return b;
  };
}
const comments = paxRecord('comment', Buffer.alloc((1 << 20) - 100, 0x20));

async function unpack(file: string, logger = silentLogger): Promise<unknown> {
  const b = await ImageBuilder.create(path.join(base, `${path.basename(file)}.erofs`), logger);
  try {
    await b.applyLayerFile(file);
    await b.commit();
    return undefined;
  } catch (e) {
    await b.abort();
    return e;
  }
}

const cases: Array<[string, number, 'x' | 'g', (i: number) => Buffer, RegExp]> = [
  // the reproduction: 400 records of ~1 MiB, each one xattr value of ~1 MiB
  ['400 × 1 MiB x records of one xattr each', 400, 'x', xattrs('big', 1, (1 << 20) - 200), /xattr .* value of \d+ bytes/],
  // values within the per-xattr limit: the run of records before the entry is what is bounded
  ['400 × ~1 MiB x records of 16 × 60 KiB xattrs', 400, 'x', xattrs('r', 16, 60_000), /metadata records before one entry/],
  ['100 × ~1 MiB x records of comments', 100, 'x', () => comments, /metadata records before one entry/],
  ['100 × ~1 MiB global g records', 100, 'g', xattrs('g', 16, 60_000), /global PAX records/],
  ['an x record of 200 small xattrs', 1, 'x', xattrs('n', 200, 10), /more than 128 PAX xattrs/],
];

test.each(cases)('%s: refused, RSS bounded', async (label, records, type, body, message) => {
  const file = path.join(base, label.replace(/\W+/g, '-'));
  const size = await metaLayer(file, records, type, body);
  expect(size).toBeLessThan(8 * MiB);
  const { result, growth } = await measurePeak(`hostile layer "${label}" (${(size / 1024).toFixed(0)} KiB gzip)`, 'self', () => unpack(file));
  expect(result).toBeInstanceOf(UnsafeArchiveError);
  expect(String((result as Error).message)).toMatch(message);
  expect(growth).toBeLessThan(64 * MiB);
});

test('5000 distinct dropped xattr names: the layer is read, the log names 20 and counts all', async () => {
  const file = path.join(base, 'dropped');
  const gz = zlib.createGzip();
  const parts: Buffer[] = [];
  for (let i = 0; i < 5000; i++) {
    const pax = paxRecord(`SCHILY.xattr.system.x${i}`, Buffer.from('v'));
    parts.push(tarHeader(`PaxHeaders/${i}`, 'x', pax.length), pad512(pax), tarHeader(`f${i}`, '0', 0));
  }
  parts.push(Buffer.alloc(1024));
  await fsp.writeFile(file, zlib.gzipSync(Buffer.concat(parts)));
  gz.close();
  const lines: any[] = [];
  const logger = pino({ level: 'warn' }, new Writable({ write: (c, _e, cb) => (lines.push(JSON.parse(String(c))), cb()) }));
  expect(await unpack(file, logger)).toBeUndefined();
  const warn = lines.find((l) => /xattrs dropped/.test(l.msg));
  expect(warn.count).toBe(5000);
  expect(warn.xattrs).toHaveLength(20);
});

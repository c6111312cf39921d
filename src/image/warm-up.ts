// JIT warm-up of the image build path. V8 compiles a function to fast machine code only after
// it has run often, so the first pull of a fresh daemon ran the tar parser, the layer reader,
// the replay and the erofs writer mostly unoptimized: ~0.5 s for bench/pull's image against
// ~0.33 s once warm (bench/README). At startup the image service therefore builds a throwaway
// image from a synthetic layer made here, the way a pull does, once per process. Nothing of it
// is kept; the synthetic blob goes over loopback only. Its freed C heap (~35 MB: zlib, the
// blob, chunk buffers) goes back to the kernel at the end (util/malloc-trim.ts), so that a
// daemon that has just started is not the larger for it; the layer workers it warmed stay for
// their idle time (layer-pool.ts IDLE_MS, 30 s), so a pull that comes soon after the start
// gains in both; a later one gains only on this thread (new workers start cold).
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import type { Logger } from '../util/log';
import { releaseFreedMemory } from '../util/malloc-trim';
import type { FetchOutcome } from './layer-fetch';
import { ImageBuilder } from './unpack';

function header(name: string, type: string, size: number, link = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100);
  h.write(type === '5' ? '0000755\0' : '0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write('14000000000\0', 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write(link, 157, 100);
  h.write('ustar\0' + '00', 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}

/** A gzip layer of ~1900 entries (directories, files of 1 B to 16 KiB, links), ~9 MB unpacked. */
export function syntheticLayer(): { blob: Buffer; diffId: string } {
  const parts: Buffer[] = [];
  const add = (name: string, type: string, data?: Buffer, link?: string) => {
    parts.push(header(name, type, data?.length ?? 0, link));
    if (data?.length) parts.push(data, Buffer.alloc((512 - (data.length % 512)) % 512));
  };
  // Deterministic, partly compressible content (text-like runs and noise).
  const pool = Buffer.alloc(1 << 20);
  for (let i = 0, x = 1; i < pool.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    pool[i] = i % 64 < 40 ? 97 + (i % 26) : x >>> 24;
  }
  for (let d = 0; d < 40; d++) {
    add(`w${d}/`, '5');
    for (let f = 0; f < 45; f++) {
      const n = (d * 45 + f) % 7 === 0 ? 16 << 10 : ((d * 131 + f * 977) % 6000) + 1;
      const off = (d * 7919 + f * 104729) % (pool.length - n);
      add(`w${d}/f${f}`, '0', pool.subarray(off, off + n));
    }
    add(`w${d}/s`, '2', undefined, `f0`);
    add(`w${d}/h`, '1', undefined, `w${d}/f1`);
  }
  parts.push(Buffer.alloc(1024));
  const tar = Buffer.concat(parts);
  return { blob: gzipSync(tar, { level: 1 }), diffId: `sha256:${createHash('sha256').update(tar).digest('hex')}` };
}

let done: Promise<void> | undefined;

/**
 * Builds a throwaway image in `dir` (made, then removed) from the synthetic layer, twice, once
 * per process: each worker thread fetches a copy from a loopback HTTP server started for this
 * (the download path of a pull, layer-fetch.ts) and reads it; this thread replays and writes
 * the metadata.
 */
export function warmUpImageBuild(dir: string, logger: Logger): Promise<void> {
  done ??= (async () => {
    const t0 = Date.now();
    const { blob, diffId } = syntheticLayer();
    const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-length': blob.length });
      res.end(blob);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/blob`;
    const out = path.join(dir, `warm-up-${process.pid}.erofs`);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    try {
      for (let round = 0; round < 2; round++) {
        const b = await ImageBuilder.create(out, logger);
        const files: fsp.FileHandle[] = [];
        try {
          await Promise.all(
            [0, 1].map(async (index) => {
              const fh = await fsp.open(path.join(dir, `warm-up-${process.pid}-${index}.blob`), 'w');
              files.push(fh);
              let fetched: FetchOutcome | undefined;
              await b.applyLayer(null, {
                index,
                diffId,
                label: 'warm-up',
                remote: { blob: { source: { url, headers: {}, tls: { skipVerify: false, ca: [], client: [] } }, digest, size: blob.length, fd: fh.fd }, onFetched: (o) => (fetched = o), signals: [] },
              });
              if (!fetched?.ok || fetched.digest !== digest) throw new Error(`synthetic layer fetch: ${fetched && !fetched.ok ? fetched.message : 'digest mismatch'}`);
            }),
          );
          await b.commit();
        } catch (e) {
          await b.abort();
          throw e;
        } finally {
          for (const fh of files) await fh.close();
          await fsp.rm(out, { force: true });
          for (const index of [0, 1]) await fsp.rm(path.join(dir, `warm-up-${process.pid}-${index}.blob`), { force: true });
        }
      }
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await fsp.rm(dir, { recursive: true, force: true });
      releaseFreedMemory();
    }
    logger.debug({ ms: Date.now() - t0 }, 'image build path warmed up');
  })().catch((e) => logger.warn({ err: e }, 'warming up the image build path failed (pulls work, the first is slower)'));
  return done;
}

// Turns an unpacked root filesystem into the read-only erofs image that is hot-plugged into
// pod VMs. Uncompressed by default: the guest runs under TCG where every decompression costs
// emulated CPU on each page-cache miss, and lz4 saves little on already-compressed binaries
// (bench/pull.ts prints both). The file appears under its final name only once complete.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fsyncDir } from './content-store';

export type ErofsCompression = 'none' | 'lz4' | 'lz4hc';

export interface ErofsOptions {
  compression?: ErofsCompression;
  /** mkfs.erofs binary (tests may override). */
  mkfs?: string;
}

function run(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} failed: ${String(stderr || err.message).trim().slice(-2000)}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** Builds `out` from directory `src` atomically (temp file in the same dir, fsync, rename). */
export async function buildErofs(src: string, out: string, opts: ErofsOptions = {}): Promise<void> {
  const tmp = path.join(path.dirname(out), `.tmp-${path.basename(out)}-${randomBytes(4).toString('hex')}`);
  const args: string[] = ['--quiet'];
  if (opts.compression && opts.compression !== 'none') args.push(`-z${opts.compression}`);
  args.push(tmp, src);
  try {
    await run(opts.mkfs ?? 'mkfs.erofs', args);
    const fh = await fsp.open(tmp, 'r+');
    try {
      await fh.chmod(0o444);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, out);
    await fsyncDir(path.dirname(out));
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

// Pull benchmark: builds a ~100 MB multi-layer image from local data (random incompressible
// files, text from /usr/share and /usr/lib, binaries), pushes it to a local docker-registry,
// then pulls it with ImageManager and with `skopeo copy docker://… dir:…`, and prints the
// times. Then, for comparison, unpacks the pulled image to a directory (fsck.erofs --extract,
// which also checks it) and times Debian's mkfs.erofs on that tree, uncompressed and lz4.
//   bash bench/pull.sh            (runs this file through TypeScript's transpiler)
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync, lstatSync, readFileSync, mkdtempSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { ImageManager } from '../src/image/manager';
import { closeAgents } from '../src/image/registry';
import { busyboxEntries, makeLayer, pushImage, type TarEntry } from '../test/support/images';
import { startRegistry } from '../test/support/registry';

const MB = 1 << 20;

/** Regular files under `dir` matching `want`, up to `budget` bytes. */
function collect(dirs: string[], want: (f: string) => boolean, budget: number, prefix: string): TarEntry[] {
  const out: TarEntry[] = [];
  let used = 0;
  const walk = (d: string) => {
    let names: string[];
    try {
      names = readdirSync(d).sort();
    } catch {
      return;
    }
    for (const n of names) {
      if (used >= budget) return;
      const f = path.join(d, n);
      const st = lstatSync(f);
      if (st.isDirectory()) walk(f);
      else if (st.isFile() && st.size > 0 && st.size < 8 * MB && want(f)) {
        out.push({ name: `${prefix}${f}`, content: readFileSync(f), mode: st.mode & 0o777 });
        used += st.size;
      }
    }
  };
  dirs.forEach(walk);
  return out;
}

async function time<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = process.hrtime.bigint();
  const v = await fn();
  return [v, Number(process.hrtime.bigint() - t) / 1e6];
}

async function main() {
  const work = mkdtempSync(path.join(os.tmpdir(), 'podvisor-bench-'));
  const reg = await startRegistry();
  try {
    console.log('building layers…');
    const random: TarEntry[] = Array.from({ length: 40 }, (_, i) => ({ name: `data/random-${i}.bin`, content: randomBytes(MB) }));
    const text = collect(['/usr/share/doc', '/usr/lib/python3', '/usr/share/perl', '/usr/share/perl5', '/usr/share/man'], () => true, 30 * MB, 'text');
    const bins = collect(['/usr/lib/x86_64-linux-gnu', '/usr/bin'], () => true, 30 * MB, 'bin');
    const layers = [];
    for (const entries of [busyboxEntries(), random, text, bins]) layers.push(await makeLayer(entries));
    const raw = [busyboxEntries(), random, text, bins].map((es) => es.reduce((n, e) => n + (e.content ? Buffer.byteLength(e.content) : 0), 0));
    const files = text.length + bins.length + random.length;
    console.log(`image: ${layers.length} layers, ${files} files, ${(raw.reduce((a, b) => a + b) / MB).toFixed(1)} MB uncompressed, ${(layers.reduce((n, l) => n + l.blob.length, 0) / MB).toFixed(1)} MB compressed`);
    await pushImage(reg, 'bench/big', 'v1', { layers });

    // 1. ImageManager (fresh store), with the per-phase log lines captured.
    const lines: any[] = [];
    const logger = pino({ level: 'debug' }, new Writable({ write: (c, _e, cb) => (lines.push(...c.toString().trim().split('\n').map((l: string) => JSON.parse(l))), cb()) }));
    const root = path.join(work, 'images');
    const m = new ImageManager({ root, configDir: path.join(work, 'etc'), logger });
    await m.init();
    const [rec, tPull] = await time(() => m.pull(`${reg.host}/bench/big:v1`));
    const built = lines.find((l) => l.msg === 'image built');
    console.log(
      `ImageManager.pull: ${(tPull / 1000).toFixed(2)} s total (layers downloaded+read+applied ${built.layersMs} ms, erofs metadata+fsync ${built.erofsMs} ms); erofs ${(statSync(rec.erofsPath).size / MB).toFixed(1)} MB, ${built.inodes} inodes`,
    );
    for (const l of lines.filter((x) => x.msg === 'layer applied')) console.log(`  layer ${l.index} ${l.layer.slice(7, 19)}: applied ${l.doneMs} ms after the build started`);
    const [, tAgain] = await time(() => m.pull(`${reg.host}/bench/big:v1`));
    console.log(`ImageManager.pull again (present): ${tAgain.toFixed(0)} ms`);

    // 2. skopeo copy to a dir: download + verify only (no unpack).
    const [, tSkopeo] = await time(async () => execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/bench/big:v1`, `dir:${path.join(work, 'skopeo')}`]));
    console.log(`skopeo copy docker:// dir: ${(tSkopeo / 1000).toFixed(2)} s`);
    console.log(`→ ImageManager / skopeo: ${(tPull / tSkopeo).toFixed(2)}x`);

    // 3. For comparison: the same tree through Debian's mkfs.erofs (what the image service used
    // before it wrote erofs itself), uncompressed and lz4.
    const tree = path.join(work, 'tree');
    const [, tExtract] = await time(async () => execFileSync('fsck.erofs', [`--extract=${tree}`, rec.erofsPath]));
    console.log(`fsck.erofs --extract of the pulled image (reads and checks every file): ${tExtract.toFixed(0)} ms`);
    for (const c of ['none', 'lz4'] as const) {
      const out = path.join(work, `img-${c}.erofs`);
      const [, t] = await time(async () => execFileSync('mkfs.erofs', ['--quiet', ...(c === 'none' ? [] : [`-z${c}`]), out, tree]));
      console.log(`mkfs.erofs ${c.padEnd(4)} of that tree: ${t.toFixed(0).padStart(5)} ms, ${(statSync(out).size / MB).toFixed(1).padStart(6)} MB`);
    }
  } finally {
    await closeAgents();
    await reg.stop();
    await fsp.rm(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

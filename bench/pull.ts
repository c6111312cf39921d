// Pull benchmark: builds a ~100 MB multi-layer image from local data (random incompressible
// files, text from /usr/share and /usr/lib, binaries), pushes it to a local docker-registry,
// then pulls it N times, alternating: ImageManager into a fresh store (until the erofs image is
// synced and recorded, i.e. ready for CreateContainer) and `skopeo copy docker://… dir:…` into
// a fresh directory; prints every pair, the medians and the machine's load. Then checks the
// pulled image with fsck.erofs --extract and, for comparison, times Debian's mkfs.erofs on
// the extracted tree (what the image service ran before it wrote erofs itself).
//   bash bench/pull.sh [--runs N] [--workers-idled]   (default 5; runs this file through TypeScript's transpiler)
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync, lstatSync, readFileSync, mkdtempSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { ImageManager } from '../src/image/manager';
import { closeLayerWorkers, prewarmLayerWorkers } from '../src/image/layer-pool';
import { warmUpImageBuild } from '../src/image/warm-up';
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
    // The daemon starts its layer reader threads and warms up the build path at startup
    // (ImageManager.init, in the background): so does this, and waits for both.
    await prewarmLayerWorkers();
    await warmUpImageBuild(work, pino({ level: 'warn' }));
    // --workers-idled: run 1 is a daemon's first pull after its warmed workers stopped for
    // being idle (layer-pool.ts IDLE_MS): the main thread warm, the threads new.
    if (process.argv.includes('--workers-idled')) await closeLayerWorkers();

    const runs = Math.max(1, Number(process.argv[process.argv.indexOf('--runs') + 1]) || 5);
    const load = () => os.loadavg().map((x) => x.toFixed(2)).join(' ');
    console.log(`${runs} runs, alternating; load average before: ${load()} (${os.cpus().length} cores)`);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
    const pulls: number[] = [];
    const skopeos: number[] = [];
    let rec: Awaited<ReturnType<ImageManager['pull']>> | undefined;
    let m: ImageManager | undefined;
    for (let i = 0; i < runs; i++) {
      // ImageManager into a fresh store, with the per-phase log lines captured.
      const lines: any[] = [];
      const logger = pino({ level: 'debug' }, new Writable({ write: (c, _e, cb) => (lines.push(...c.toString().trim().split('\n').map((l: string) => JSON.parse(l))), cb()) }));
      const root = path.join(work, `images-${i}`);
      if (m) await fsp.rm(path.dirname(path.dirname(rec!.erofsPath)), { recursive: true, force: true });
      m = new ImageManager({ root, configDir: path.join(work, 'etc'), logger });
      await m.init();
      const [r, tPull] = await time(() => m!.pull(`${reg.host}/bench/big:v1`));
      rec = r;
      pulls.push(tPull);
      const built = lines.find((l) => l.msg === 'image built');
      const at = (msg: string) => lines.filter((x) => x.msg === msg).sort((a, b) => a.index - b.index).map((l) => `${l.index}:${l.doneMs}`).join(' ');
      const layersAt = `downloaded ${at('layer downloaded')}; applied ${at('layer applied')}`;
      // skopeo copy to a fresh dir: download + verify only (no unpack).
      const dir = path.join(work, `skopeo-${i}`);
      const [, tSkopeo] = await time(async () => execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/bench/big:v1`, `dir:${dir}`]));
      await fsp.rm(dir, { recursive: true, force: true });
      skopeos.push(tSkopeo);
      console.log(
        `run ${i + 1}: ImageManager.pull ${(tPull / 1000).toFixed(2)} s (layers ${built.layersMs} ms [ms after start: ${layersAt}], erofs metadata ${built.metadataMs} ms + fsync ${built.syncMs} ms) | skopeo copy ${(tSkopeo / 1000).toFixed(2)} s`,
      );
    }
    console.log(`load average after: ${load()}`);
    console.log(`median: ImageManager.pull ${(median(pulls) / 1000).toFixed(2)} s, skopeo copy ${(median(skopeos) / 1000).toFixed(2)} s → ${(median(pulls) / median(skopeos)).toFixed(2)}x`);
    console.log(`erofs image ${(statSync(rec!.erofsPath).size / MB).toFixed(1)} MB`);
    const [, tAgain] = await time(() => m!.pull(`${reg.host}/bench/big:v1`));
    console.log(`ImageManager.pull again (present): ${tAgain.toFixed(0)} ms`);

    // 3. For comparison: the same tree through Debian's mkfs.erofs (what the image service used
    // before it wrote erofs itself), uncompressed and lz4.
    const tree = path.join(work, 'tree');
    const [, tExtract] = await time(async () => execFileSync('fsck.erofs', [`--extract=${tree}`, rec!.erofsPath]));
    console.log(`fsck.erofs --extract of the pulled image (reads and checks every file): ${tExtract.toFixed(0)} ms`);
    for (const c of ['none', 'lz4'] as const) {
      const out = path.join(work, `img-${c}.erofs`);
      const [, t] = await time(async () => execFileSync('mkfs.erofs', ['--quiet', ...(c === 'none' ? [] : [`-z${c}`]), out, tree]));
      console.log(`mkfs.erofs ${c.padEnd(4)} of that tree: ${t.toFixed(0).padStart(5)} ms, ${(statSync(out).size / MB).toFixed(1).padStart(6)} MB`);
    }
  } finally {
    await closeAgents();
    await closeLayerWorkers();
    await reg.stop();
    await fsp.rm(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

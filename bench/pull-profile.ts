// Profiling helper for ImageManager.pull (bench/pull.sh is the benchmark): pushes the same
// image as bench/pull.ts, then pulls it N times into fresh stores and prints per pull: wall
// time, the process's and the registry's CPU time, event-loop utilization, when each layer
// finished downloading / was applied, and the log's phases. Options:
//   --runs N          pulls (default 3)
//   --out FILE        V8 CPU profile of the last pull (inspector), for DevTools or a script
//   --skopeo          a `skopeo copy` after each pull, with its CPU time
//   --ab VAR          odd pulls with VAR=1 in the environment, even ones without; medians of both
//   --wait FILE       writes the pid to FILE and waits 1.5 s before pulling (to attach perf -p)
//   bash bench/pull.sh --profile --runs 8 --out /tmp/pull.cpuprofile
// or compiled: npx tsc -p tsconfig.json && node dist/bench/pull-profile.js --runs 8
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync, lstatSync, readFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import pino from 'pino';
import { ImageManager } from '../src/image/manager';
import { closeLayerWorkers, prewarmLayerWorkers } from '../src/image/layer-pool';
import { warmUpImageBuild } from '../src/image/warm-up';
import { closeAgents } from '../src/image/registry';
import { busyboxEntries, makeLayer, pushImage, type TarEntry } from '../test/support/images';
import { startRegistry } from '../test/support/registry';

const MB = 1 << 20;
function collect(dirs: string[], budget: number, prefix: string): TarEntry[] {
  const out: TarEntry[] = [];
  let used = 0;
  const walk = (d: string) => {
    let names: string[];
    try { names = readdirSync(d).sort(); } catch { return; }
    for (const n of names) {
      if (used >= budget) return;
      const f = path.join(d, n);
      const st = lstatSync(f);
      if (st.isDirectory()) walk(f);
      else if (st.isFile() && st.size > 0 && st.size < 8 * MB) {
        out.push({ name: `${prefix}${f}`, content: readFileSync(f), mode: st.mode & 0o777 });
        used += st.size;
      }
    }
  };
  dirs.forEach(walk);
  return out;
}

async function main() {
  const arg = (k: string, d: string) => (process.argv.includes(k) ? process.argv[process.argv.indexOf(k) + 1] : d);
  const runs = Number(arg('--runs', '3'));
  const out = arg('--out', '');
  const work = mkdtempSync(path.join(os.tmpdir(), 'pv-prof-'));
  const reg = await startRegistry();
  const sess = new Session();
  sess.connect();
  const post = (m: string, p?: any) => new Promise<any>((res, rej) => sess.post(m, p, (e, r) => (e ? rej(e) : res(r))));
  try {
    const random: TarEntry[] = Array.from({ length: 40 }, (_, i) => ({ name: `data/random-${i}.bin`, content: randomBytes(MB) }));
    const text = collect(['/usr/share/doc', '/usr/lib/python3', '/usr/share/perl', '/usr/share/perl5', '/usr/share/man'], 30 * MB, 'text');
    const bins = collect(['/usr/lib/x86_64-linux-gnu', '/usr/bin'], 30 * MB, 'bin');
    const layers = [];
    for (const entries of [busyboxEntries(), random, text, bins]) layers.push(await makeLayer(entries));
    await pushImage(reg, 'bench/big', 'v1', { layers });
    // The daemon starts its layer reader threads at startup (ImageManager.init): so does this.
    await prewarmLayerWorkers();
    await warmUpImageBuild(work, pino({ level: 'warn' }));
    const waitFile = arg('--wait', '');
    if (waitFile) {
      writeFileSync(waitFile, String(process.pid));
      await new Promise((r) => setTimeout(r, 1500));
    }
    if (out) { await post('Profiler.enable'); await post('Profiler.setSamplingInterval', { interval: 200 }); }
    const abVar = arg('--ab', '');
    const ab: Record<string, number[]> = { A: [], B: [] };
    for (let i = 0; i < runs; i++) {
      const cfg = i % 2 === 0 ? 'A' : 'B';
      if (abVar) {
        if (cfg === 'B') process.env[abVar] = '1';
        else delete process.env[abVar];
      }
      const lines: any[] = [];
      const logger = pino({ level: 'debug' }, new Writable({ write: (c, _e, cb) => (lines.push(...c.toString().trim().split('\n').map((l: string) => JSON.parse(l))), cb()) }));
      const m = new ImageManager({ root: path.join(work, `images-${i}`), configDir: path.join(work, 'etc'), logger });
      await m.init();
      if (out && i === runs - 1) await post('Profiler.start');
      const regCpu = () => {
        let t = 0;
        for (const c of readFileSync(`/proc/${process.pid}/task/${process.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) {
          try { const f = readFileSync(`/proc/${c}/stat`, 'utf8').split(') ')[1].split(' '); t += Number(f[11]) + Number(f[12]); } catch { /* gone */ }
        }
        return t * 10; // ms (USER_HZ 100)
      };
      const reg0 = regCpu();
      const elu0 = performance.eventLoopUtilization();
      const cpu0 = process.cpuUsage();
      const t = performance.now();
      await m.pull(`${reg.host}/bench/big:v1`);
      const ms = performance.now() - t;
      const cpu = process.cpuUsage(cpu0);
      if (i >= 2) ab[cfg].push(ms);
      const elu = performance.eventLoopUtilization(elu0);
      const regMs = regCpu() - reg0;
      if (out && i === runs - 1) {
        const { profile } = await post('Profiler.stop');
        writeFileSync(out, JSON.stringify(profile));
      }
      const at = (msg: string) => lines.filter((x) => x.msg === msg).sort((a, b) => a.index - b.index).map((l) => `${l.index}:${l.doneMs}`).join(' ');
      const built = lines.find((l) => l.msg === 'image built');
      const t0l = lines[0]?.time ?? 0;
      const phases = lines.filter((l) => ['pulling image', 'downloading layer', 'layer downloaded', 'layer applied', 'image built', 'pulled image'].includes(l.msg) && (l.msg !== 'downloading layer' || l.pct === 0)).map((l) => `${l.msg.replace(/ /g, '_')}${l.index ?? ''}@${l.time - t0l}`).join(' ');
      console.log(`  phases (ms after the first log line): ${phases}`);
      console.log(`pull ${i + 1}: ${ms.toFixed(0)} ms, process cpu ${(cpu.user / 1000).toFixed(0)}u+${(cpu.system / 1000).toFixed(0)}s ms, registry cpu ${regMs} ms, event loop busy ${(elu.utilization * 100).toFixed(0)}%; downloaded ${at('layer downloaded')}; applied ${at('layer applied')}; meta ${built.metadataMs} sync ${built.syncMs}`);
      await fsp.rm(path.join(work, `images-${i}`), { recursive: true, force: true });
      if (process.argv.includes('--skopeo')) {
        const r0 = regCpu();
        const t1 = performance.now();
        const { execFileSync } = await import('node:child_process');
        execFileSync('bash', ['-c', `/usr/bin/time -f '%U %S' skopeo copy --quiet --src-tls-verify=false docker://${reg.host}/bench/big:v1 dir:${work}/sk 2>&1`], { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim().split('\n').slice(-1).forEach((l) => {
          const [u, s] = l.split(' ').map(Number);
          console.log(`  skopeo: ${(performance.now() - t1).toFixed(0)} ms, cpu ${(u * 1000).toFixed(0)}u+${(s * 1000).toFixed(0)}s ms, registry cpu ${regCpu() - r0} ms`);
        });
        await fsp.rm(`${work}/sk`, { recursive: true, force: true });
      }
    }
    if (abVar) {
      const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
      for (const k of ['A', 'B']) console.log(`${k}${k === 'B' ? ` (${abVar}=1)` : ''}: median ${med(ab[k]).toFixed(0)} ms of ${ab[k].map((x) => x.toFixed(0)).join(' ')}`);
    }
  } finally {
    sess.disconnect();
    await closeAgents();
    await closeLayerWorkers();
    await reg.stop();
    await fsp.rm(work, { recursive: true, force: true });
  }
}
main().catch((e) => { console.error(e); process.exit(1); });

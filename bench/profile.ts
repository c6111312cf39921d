// Step profile of one pod's container path under TCG: per step the client-side time and what
// QEMU translated during it (`info jit` over a second QMP socket, PODVISOR_DEBUG_QMP=1).
//   bash bench/profile.sh [--iterations N]
// Environment: PROFILE_MORE=1 then creates, starts and execs into three more containers of the
// same pod (same image, another image, same image): the same work with the code translated;
// PROFILE_WARM=1 runs a throwaway container through create/start/exec/stop/remove
// in each pod first; PROFILE_INASM=<dir> logs the guest code of iteration 1's steps there
// (QEMU's `log in_asm`); PROFILE_OUT=<dir> keeps the daemon's log (debug level: step times);
// PROFILE_VM_TOML: extra [vm] settings; PROFILE_EXEC_DELAY_MS: a pause before each container's
// first exec.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { TestDaemon } from '../e2e/support/daemon';
import { pushBusybox } from '../test/support/images';
import { startRegistry } from '../test/support/registry';

function qmpHmp(sock: string, cmd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock);
    let buf = '';
    let step = 0;
    s.on('data', (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const m = JSON.parse(line);
        if (m.event) continue;
        if (step === 0) { s.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n'); step = 1; }
        else if (step === 1) { s.write(JSON.stringify({ execute: 'human-monitor-command', arguments: { 'command-line': cmd } }) + '\n'); step = 2; }
        else { s.end(); resolve(m.return ?? JSON.stringify(m.error)); }
      }
    });
    s.on('error', reject);
  });
}

interface Jit { code: number; tbs: number; flushes: number; inval: number; max: number }
async function jit(dir: string): Promise<Jit> {
  const t = await qmpHmp(path.join(dir, 'qmp-debug.sock'), 'info jit');
  const num = (re: RegExp) => Number(t.match(re)?.[1] ?? NaN);
  const m = t.match(/gen code size\s+(\d+)\/(\d+)/);
  return { code: Number(m?.[1]), max: Number(m?.[2]), tbs: num(/TB count\s+(\d+)/), flushes: num(/TB flush count\s+(\d+)/), inval: num(/TB invalidate count\s+(\d+)/) };
}

function translatedMiB(a: Jit, b: Jit): number {
  return ((b.flushes - a.flushes) * a.max + b.code - a.code) / 1048576;
}

/** PROFILE_EXEC_DELAY_MS: a pause between a container's start and its first exec (untimed), as
 * a probe that comes later than the bench's back-to-back ExecSync. */
const execDelay = () => new Promise((r) => setTimeout(r, Number(process.env.PROFILE_EXEC_DELAY_MS ?? 0)));

async function main() {
  const iterations = Number(process.argv[process.argv.indexOf('--iterations') + 1]) || 3;
  const reg = await startRegistry();
  const d = await TestDaemon.start({ registries: { [reg.host]: `http://${reg.host}` }, env: { ...process.env, PODVISOR_DEBUG_QMP: '1' }, vmToml: process.env.PROFILE_VM_TOML });
  try {
    await pushBusybox(reg, 'bench/busybox', 'latest');
    const image = `${reg.host}/bench/busybox:latest`;
    await d.image('PullImage', { image: { image } });
    await pushBusybox(reg, 'bench/warm', 'latest', { extra: [{ name: 'warm', content: 'x' }] });
    const warmImage = `${reg.host}/bench/warm:latest`;
    await d.image('PullImage', { image: { image: warmImage } });
    for (let i = 0; i <= iterations; i++) {
      const name = `prof-${i}`;
      const logDir = path.join(d.logs, name);
      fs.mkdirSync(logDir, { recursive: true });
      const cfg = {
        metadata: { name, namespace: 'bench', uid: crypto.randomBytes(6).toString('hex'), attempt: 0 },
        hostname: name, log_directory: logDir, labels: {}, annotations: {},
        linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
      };
      const rows: string[] = [];
      const spares = path.join(d.state, 'spares');
      const spareDir = fs.existsSync(spares) ? fs.readdirSync(spares).map((n) => path.join(spares, n)).find((p) => fs.existsSync(path.join(p, 'ready'))) : undefined;
      const before = spareDir ? await jit(spareDir) : undefined;
      let t0 = performance.now();
      const { pod_sandbox_id: pod } = await d.runtime('RunPodSandbox', { config: cfg }, 180_000);
      let ms = performance.now() - t0;
      const vmdir = fs.readdirSync(path.join(d.state, 'vm')).map((n) => path.join(d.state, 'vm', n)).find((p) => pod.startsWith(path.basename(p)))!;
      let j = await jit(vmdir);
      rows.push(`RunPodSandbox ${ms.toFixed(0)} ms; buffer ${(j.code / 1048576).toFixed(1)} MiB, flushes ${j.flushes}${before ? `; the spare had ${(before.code / 1048576).toFixed(1)} MiB, flushes ${before.flushes}: taking it translated ${translatedMiB(before, j).toFixed(1)} MiB` : ''}`);
      const step = async (label: string, fn: () => Promise<unknown>) => {
        const trace = process.env.PROFILE_INASM && i === 1;
        if (trace) {
          await qmpHmp(path.join(vmdir, 'qmp-debug.sock'), `logfile ${path.join(process.env.PROFILE_INASM!, `inasm-${label.replace(/\W+/g, '')}.log`)}`);
          await qmpHmp(path.join(vmdir, 'qmp-debug.sock'), 'log in_asm');
        }
        const t = performance.now();
        await fn();
        if (trace) await qmpHmp(path.join(vmdir, 'qmp-debug.sock'), 'log none');
        const dt = performance.now() - t;
        const k = await jit(vmdir);
        rows.push(`${label.padEnd(24)} ${dt.toFixed(0).padStart(5)} ms  translated ${translatedMiB(j, k).toFixed(1).padStart(5)} MiB  TBs +${k.tbs - j.tbs} flushes +${k.flushes - j.flushes} inval +${k.inval - j.inval}  buffer ${(k.code / 1048576).toFixed(1)} MiB`);
        j = k;
      };
      if (process.env.PROFILE_WARM) {
        await step('warm create', async () => {
          const w = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { metadata: { name: 'warm', attempt: 0 }, image: { image: warmImage }, command: ['/bin/sleep', '3600'], labels: {}, annotations: {}, linux: {} }, sandbox_config: cfg }, 90_000)).container_id;
          await d.runtime('StartContainer', { container_id: w }, 90_000);
          await d.runtime('ExecSync', { container_id: w, cmd: ['/bin/true'], timeout: 30 }, 60_000);
          await d.runtime('StopContainer', { container_id: w, timeout: 0 }, 60_000);
          await d.runtime('RemoveContainer', { container_id: w }, 60_000);
        });
      }
      let cid = '';
      await step('CreateContainer', async () => {
        cid = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { metadata: { name: 'sleep', attempt: 0 }, image: { image }, command: ['/bin/sleep', '3600'], log_path: 'sleep.log', labels: {}, annotations: {}, linux: {} }, sandbox_config: cfg }, 90_000)).container_id;
      });
      await step('StartContainer', () => d.runtime('StartContainer', { container_id: cid }, 90_000));
      await execDelay();
      for (let n = 1; n <= 5; n++) await step(`ExecSync #${n}`, () => d.runtime('ExecSync', { container_id: cid, cmd: ['/bin/true'], timeout: 30 }, 60_000));
      if (process.env.PROFILE_MORE) {
        // the same pod again, its code translated: a second and fourth container of the same image,
        // a third of an image this pod has not mounted yet (the floor without translation)
        const more: [string, string][] = [['same image', image], ['other image', warmImage], ['same image', image]];
        for (const [k, [what, img]] of more.entries()) {
          const n = k + 2;
          let c = '';
          await step(`Create #${n} ${what}`, async () => {
            c = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { metadata: { name: `more-${n}`, attempt: 0 }, image: { image: img }, command: ['/bin/sleep', '3600'], log_path: `more-${n}.log`, labels: {}, annotations: {}, linux: {} }, sandbox_config: cfg }, 90_000)).container_id;
          });
          await step(`Start #${n}`, () => d.runtime('StartContainer', { container_id: c }, 90_000));
          await execDelay();
          for (let e = 1; e <= 2; e++) await step(`Exec #${e} in #${n}`, () => d.runtime('ExecSync', { container_id: c, cmd: ['/bin/true'], timeout: 30 }, 60_000));
        }
      }
      // the guest's own timings (the agent logs libcontainer's create and each exec's start)
      if (process.env.PROFILE_OUT) fs.copyFileSync(path.join(vmdir, 'console.log'), path.join(process.env.PROFILE_OUT, `console-${i}.log`));
      t0 = performance.now();
      await d.runtime('StopPodSandbox', { pod_sandbox_id: pod }, 60_000);
      const stopMs = performance.now() - t0;
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod }, 60_000);
      ms = performance.now() - t0;
      rows.push(`Stop ${stopMs.toFixed(0)} + Remove ${(ms - stopMs).toFixed(0)} ms`);
      process.stdout.write(`--- iteration ${i}${i === 0 ? ' (warm-up)' : ''}\n${rows.join('\n')}\n`);
      await new Promise((r) => setTimeout(r, Number(process.env.PROFILE_PAUSE_MS ?? 1500)));
    }
  } finally {
    if (process.env.PROFILE_OUT) fs.copyFileSync(path.join(d.dir, 'daemon.log'), path.join(process.env.PROFILE_OUT, 'daemon.log'));
    await d.destroy().catch(() => undefined);
    await reg.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

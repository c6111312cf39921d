// Pod lifecycle benchmark (bash bench/lifecycle.sh [--iterations N] [--pods 10,50]).
//
// Prints medians/p90/min over N iterations of RunPodSandbox, CreateContainer+StartContainer
// (`sleep 3600`), ExecSync `true` and StopPodSandbox+RemovePodSandbox for
//   - podvisor with VM templates (pods are copy-on-write clones),
//   - podvisor with templates off (cold boot),
//   - podvisor's host pods (the `runc` handler: pinned namespaces, a shim per container, no VM;
//     issue 16's target: RunPodSandbox and pod+container ≤ 1.0× containerd+runc),
//   - containerd+runc (Debian's, started here on its own socket/root/state),
// all driven by the same gRPC CRI sequence (cri-api loadCri clients), the same kind of CNI bridge
// conflist (own bridge, private subnet, no gateway, no masquerade: nothing leaves the bridge),
// the same busybox image from a local registry. Then the host PSS per idle pod with 1, 10 and 50
// pods running (QEMU processes + the daemon's share; containerd: shims, pause, sleep, containerd)
// and the MemAvailable drop. A failing phase is reported as FAILED with its error, never a crash.
// Everything it starts is removed at the end, on errors and on SIGINT/SIGTERM.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../cri-api';
import { TestDaemon } from '../e2e/support/daemon';
import { defaultConfig } from '../src/config/config';
import { makeLayer, pushBusybox, pushImage } from '../test/support/images';
import { startRegistry, type Registry } from '../test/support/registry';

// ---------------------------------------------------------------- options

interface Options {
  iterations: number;
  pods: number[];
  containerd: boolean;
  cold: boolean;
  /** the VM clone run (templates) */
  clone: boolean;
  /** the host-pod run (runtime handler `runc`) */
  host: boolean;
  /** idle pods run a sleep container each (default); false: pod sandboxes only (containerd: pause) */
  idleContainers: boolean;
  /** [vm] tcg_code_mib of the podvisor daemons (default: the daemon's) */
  tcgCodeMiB?: number;
  /** [vm] ksm = true, and ksmd on while idle pods are measured (see ksmSettle) */
  ksm: boolean;
  /** [vm] kernel_args of the podvisor daemons: more guest kernel arguments (the last of a name wins) */
  kernelArgs?: string;
  /** CheckpointPod / RestorePod of an idle and a busy pod (podvisor clone run) */
  checkpoint: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { iterations: 10, pods: [10, 50], containerd: true, cold: true, clone: true, host: true, idleContainers: true, ksm: false, checkpoint: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--iterations' || a === '-n') o.iterations = Math.max(1, parseInt(val(), 10));
    else if (a === '--pods') o.pods = val().split(',').filter(Boolean).map((x) => parseInt(x, 10)).filter((x) => x > 0);
    else if (a === '--no-containerd') o.containerd = false;
    else if (a === '--no-cold') o.cold = false;
    else if (a === '--no-clone') o.clone = false;
    else if (a === '--no-host') o.host = false;
    else if (a === '--idle-sandboxes-only') o.idleContainers = false;
    else if (a === '--tcg-code-mib') o.tcgCodeMiB = parseInt(val(), 10);
    else if (a === '--ksm') o.ksm = true;
    else if (a === '--kernel-args') o.kernelArgs = val();
    else if (a === '--no-checkpoint') o.checkpoint = false;
    else if (a === '--help' || a === '-h') {
      console.log('usage: bash bench/lifecycle.sh [--iterations N] [--pods 10,50[,200]] [--no-containerd] [--no-cold] [--no-clone] [--no-host] [--idle-sandboxes-only] [--tcg-code-mib N] [--ksm] [--kernel-args ARGS] [--no-checkpoint]');
      process.exit(0);
    } else if (a !== '--') throw new Error(`unknown argument ${a}`);
  }
  if (!Number.isFinite(o.iterations)) throw new Error('--iterations: not a number');
  return o;
}

// ---------------------------------------------------------------- small helpers

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (msg: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
const errMsg = (e: unknown) => ((e as any)?.details || (e as Error)?.message || String(e)).split('\n')[0].slice(0, 400);

function sh(cmd: string, args: string[], opts: { ignore?: boolean } = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (opts.ignore) return '';
    throw new Error(`${cmd} ${args.join(' ')}: ${(e as any).stderr || (e as Error).message}`);
  }
}

const loadavg = () => os.loadavg().map((x) => x.toFixed(2)).join(' ');

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = process.hrtime.bigint();
  const v = await fn();
  return [v, Number(process.hrtime.bigint() - t) / 1e6];
}

interface Stat { n: number; median: number; p90: number; min: number }
function stats(xs: number[]): Stat | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  const p90 = s[Math.min(s.length - 1, Math.ceil(0.9 * s.length) - 1)];
  return { n: s.length, median, p90, min: s[0] };
}

/** Pss (kB) of one process from smaps_rollup; 0 when it is gone. */
function pssKb(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Where a QEMU's PSS lies, kB, from /proc/<pid>/smaps (see BREAKDOWN_KEYS). */
const BREAKDOWN_KEYS = ['guest RAM', 'TCG code', 'heap', 'other anon', 'libs+bin', 'other'] as const;
type Breakdown = Record<(typeof BREAKDOWN_KEYS)[number], number>;
function qemuBreakdownKb(pid: number): Breakdown | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return undefined;
  }
  const b = Object.fromEntries(BREAKDOWN_KEYS.map((k) => [k, 0])) as Breakdown;
  let key: keyof Breakdown = 'other';
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      const [, from, to, perms, file] = head;
      const big = parseInt(to, 16) - parseInt(from, 16) >= 64 * 1024 * 1024 && perms.startsWith('rw');
      // a clone's RAM is the template file; a cold boot's is one big anonymous block
      if (file.startsWith('/dev/shm/') || file.includes('/templates/') || (file === '' && big)) key = 'guest RAM';
      else if (file === '' && perms.startsWith('rwx')) key = 'TCG code'; // TCG's code buffer is the one rwx mapping
      else if (file === '[heap]') key = 'heap';
      else if (file === '' || file.startsWith('[stack')) key = 'other anon'; // glibc arenas, thread stacks, RAM blocks that are not guest RAM
      else if (file.startsWith('/')) key = 'libs+bin';
      else key = 'other';
      continue;
    }
    const pss = /^Pss:\s+(\d+) kB/.exec(line);
    if (pss) b[key] += Number(pss[1]);
  }
  return b;
}

function memAvailableKb(): number {
  return Number(/^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]);
}

function pgrep(pattern: string): number[] {
  return sh('pgrep', ['-f', pattern], { ignore: true }).split('\n').filter(Boolean).map(Number).filter((p) => p !== process.pid);
}

/** pid → ppid for every process. */
function processTree(): Map<number, number[]> {
  const children = new Map<number, number[]>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid)!.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return children;
}

function descendants(roots: number[]): number[] {
  const tree = processTree();
  const out = new Set<number>();
  const stack = [...roots];
  while (stack.length) {
    const p = stack.pop()!;
    if (out.has(p)) continue;
    out.add(p);
    stack.push(...(tree.get(p) ?? []));
  }
  return [...out];
}

const CLK_TCK = 100;
/** utime + stime of the processes, in clock ticks (processes that exit meanwhile are left out). */
function cpuTicks(pids: number[]): number {
  let t = 0;
  for (const p of pids) {
    try {
      const st = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      t += Number(f[11]) + Number(f[12]);
    } catch {
      /* gone */
    }
  }
  return t;
}

function duKb(dir: string): number {
  const out = sh('du', ['-sk', dir], { ignore: true });
  return Number(out.split('\t')[0]) || 0;
}

// ---------------------------------------------------------------- cleanup

const cleanups: Array<{ name: string; fn: () => Promise<void> | void }> = [];
function onCleanup(name: string, fn: () => Promise<void> | void): () => void {
  const entry = { name, fn };
  cleanups.push(entry);
  return () => {
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
  };
}
let cleaning: Promise<void> | undefined;
function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const c = cleanups.pop()!;
      try {
        await c.fn();
      } catch (e) {
        log(`cleanup ${c.name}: ${errMsg(e)}`);
      }
    }
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    log(`${sig}: cleaning up…`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- CRI endpoints

interface Cri {
  runtime(method: string, req: object, timeoutMs?: number): Promise<any>;
  image(method: string, req: object, timeoutMs?: number): Promise<any>;
}

/** CRI client for any unix socket (containerd here), the project's generated clients. */
class SocketCri implements Cri {
  private readonly rt: any;
  private readonly im: any;
  constructor(socket: string) {
    const cri = loadCri();
    this.rt = new cri.RuntimeServiceClient(`unix://${socket}`, grpc.credentials.createInsecure());
    this.im = new cri.ImageServiceClient(`unix://${socket}`, grpc.credentials.createInsecure());
  }
  private call(c: any, method: string, req: object, timeoutMs: number): Promise<any> {
    return new Promise((resolve, reject) => c[method](req, { deadline: Date.now() + timeoutMs }, (err: any, res: any) => (err ? reject(err) : resolve(res))));
  }
  runtime(method: string, req: object, timeoutMs = 120_000) { return this.call(this.rt, method, req, timeoutMs); }
  image(method: string, req: object, timeoutMs = 300_000) { return this.call(this.im, method, req, timeoutMs); }
  close() { this.rt.close(); this.im.close(); }
}

// ---------------------------------------------------------------- the CRI sequence

const PHASES = ['RunPodSandbox', 'Create+StartContainer', 'pod+container', 'ExecSync true', 'ExecSync true, 5th', 'Stop+RemovePodSandbox'] as const;
/**
 * Targets as ratios of the clone's median to containerd+runc's in the same run (issue 21; the
 * RunPodSandbox one is older). pod+container = RunPodSandbox + CreateContainer + StartContainer
 * of one iteration: what a user waits for until the container runs.
 */
const RATIO_TARGETS: Record<(typeof PHASES)[number], number> = {
  RunPodSandbox: 1.0,
  'Create+StartContainer': 1.5,
  'pod+container': 1.2,
  'ExecSync true': 2.0,
  'ExecSync true, 5th': 1.5,
  'Stop+RemovePodSandbox': 1.0,
};
/** PSS per idle pod at 50 pods must not get worse than this (bench/README, 2026-11-24) while the phases get faster. */
const PSS_AT_50_LIMIT_MIB = 52.7;
/** The 5th ExecSync in the same container: a probe's steady state. Under TCG it shows whether the
 *  exec path's translated code stays in the translation buffer (`[vm] tcg_code_mib`). */
const REPEATED_EXEC = 5;
type Phase = (typeof PHASES)[number];

interface RunResult {
  label: string;
  times: Record<Phase, number[]>;
  errors: Record<Phase, string[]>;
  skipped: Partial<Record<Phase, string>>;
  firstRun?: number;
  firstRunError?: string;
  iterations: number;
  containersWork: boolean;
}

interface Target {
  label: string;
  cri: Cri;
  image: string;
  logRoot: string;
  /** RunPodSandbox's runtime_handler (default: the runtime's default) */
  handler?: string;
  /** runtime-specific info once a pod is up (netns to clean after a crash …) */
  afterRun?: (podId: string) => Promise<void>;
}

function podConfig(name: string, logDir: string): any {
  return {
    metadata: { name, namespace: 'bench', uid: `${name}-${crypto.randomBytes(6).toString('hex')}`, attempt: 0 },
    hostname: name,
    log_directory: logDir,
    labels: { app: 'lifecycle-bench', 'io.kubernetes.pod.name': name },
    annotations: {},
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

function containerConfig(image: string, name: string): any {
  return {
    metadata: { name, attempt: 0 },
    image: { image },
    command: ['/bin/sleep', '3600'],
    log_path: `${name}.log`,
    labels: { 'io.kubernetes.container.name': name },
    annotations: {},
    linux: {},
  };
}

/** Starts one pod (plus its sleep container when `withContainer`); returns its id and times. */
async function startPod(t: Target, name: string, withContainer: boolean): Promise<{ pod: string; runMs: number; createMs?: number; containerId?: string; containerError?: string }> {
  const logDir = path.join(t.logRoot, name);
  fs.mkdirSync(logDir, { recursive: true });
  const cfg = podConfig(name, logDir);
  const [res, runMs] = await timed(() => t.cri.runtime('RunPodSandbox', { config: cfg, runtime_handler: t.handler ?? '' }, 180_000));
  const pod = res.pod_sandbox_id as string;
  await t.afterRun?.(pod);
  if (!withContainer) return { pod, runMs };
  try {
    const [containerId, createMs] = await timed(async () => {
      const { container_id } = await t.cri.runtime('CreateContainer', { pod_sandbox_id: pod, config: containerConfig(t.image, 'sleep'), sandbox_config: cfg }, 90_000);
      await t.cri.runtime('StartContainer', { container_id }, 90_000);
      return container_id as string;
    });
    return { pod, runMs, createMs, containerId };
  } catch (e) {
    return { pod, runMs, containerError: errMsg(e) };
  }
}

async function removePod(t: Target, pod: string): Promise<number> {
  const [, ms] = await timed(async () => {
    await t.cri.runtime('StopPodSandbox', { pod_sandbox_id: pod }, 120_000);
    await t.cri.runtime('RemovePodSandbox', { pod_sandbox_id: pod }, 120_000);
  });
  return ms;
}

async function lifecycle(t: Target, iterations: number): Promise<RunResult> {
  const r: RunResult = {
    label: t.label,
    times: Object.fromEntries(PHASES.map((p) => [p, []])) as any,
    errors: Object.fromEntries(PHASES.map((p) => [p, []])) as any,
    skipped: {},
    iterations,
    containersWork: false,
  };
  let containerFailures = 0;
  // iteration 0 is the warm-up (template build, first image use …): reported apart, not in the medians
  for (let i = 0; i <= iterations; i++) {
    const warm = i === 0;
    const name = `lc-${t.label.replace(/\W+/g, '-')}-${i}`;
    const logDir = path.join(t.logRoot, name);
    fs.mkdirSync(logDir, { recursive: true });
    const cfg = podConfig(name, logDir);
    let pod: string;
    let runMs = 0;
    try {
      const [res, ms] = await timed(() => t.cri.runtime('RunPodSandbox', { config: cfg, runtime_handler: t.handler ?? '' }, 180_000));
      pod = res.pod_sandbox_id;
      runMs = ms;
      if (warm) r.firstRun = ms;
      else r.times.RunPodSandbox.push(ms);
      await t.afterRun?.(pod);
    } catch (e) {
      if (warm) r.firstRunError = errMsg(e);
      else r.errors.RunPodSandbox.push(errMsg(e));
      log(`${t.label} #${i} RunPodSandbox failed: ${errMsg(e)}`);
      continue;
    }
    try {
      if (containerFailures < 2) {
        let containerId: string | undefined;
        try {
          const [cid, ms] = await timed(async () => {
            const { container_id } = await t.cri.runtime('CreateContainer', { pod_sandbox_id: pod, config: containerConfig(t.image, 'sleep'), sandbox_config: cfg }, 90_000);
            await t.cri.runtime('StartContainer', { container_id }, 90_000);
            return container_id as string;
          });
          containerId = cid;
          if (!warm) r.times['Create+StartContainer'].push(ms);
          if (!warm) r.times['pod+container'].push(runMs + ms);
          containerFailures = 0;
          r.containersWork = true;
        } catch (e) {
          containerFailures++;
          r.errors['Create+StartContainer'].push(errMsg(e));
          log(`${t.label} #${i} Create+StartContainer failed: ${errMsg(e)}`);
        }
        if (containerId) {
          let n = 1;
          try {
            for (; n <= REPEATED_EXEC; n++) {
              const [res, ms] = await timed(() => t.cri.runtime('ExecSync', { container_id: containerId, cmd: ['/bin/true'], timeout: 30 }, 60_000));
              if (res.exit_code !== 0) throw new Error(`exit code ${res.exit_code}: ${Buffer.from(res.stderr ?? '').toString().trim()}`);
              if (!warm && n === 1) r.times['ExecSync true'].push(ms);
              if (!warm && n === REPEATED_EXEC) r.times['ExecSync true, 5th'].push(ms);
            }
          } catch (e) {
            r.errors[n === 1 ? 'ExecSync true' : 'ExecSync true, 5th'].push(errMsg(e));
            log(`${t.label} #${i} ExecSync ${n} failed: ${errMsg(e)}`);
          }
        }
      } else if (!r.skipped['Create+StartContainer']) {
        r.skipped['Create+StartContainer'] = r.skipped['pod+container'] = r.skipped['ExecSync true'] = r.skipped['ExecSync true, 5th'] = `skipped after 2 failures in a row: ${r.errors['Create+StartContainer'].at(-1)}`;
      }
    } finally {
      try {
        const ms = await removePod(t, pod);
        if (!warm) r.times['Stop+RemovePodSandbox'].push(ms);
      } catch (e) {
        r.errors['Stop+RemovePodSandbox'].push(errMsg(e));
        log(`${t.label} #${i} Stop+RemovePodSandbox failed: ${errMsg(e)}`);
      }
    }
    log(`${t.label} #${i}${warm ? ' (warm-up)' : ''} done`);
  }
  return r;
}

// ---------------------------------------------------------------- idle pods and PSS

interface IdleResult {
  label: string;
  wanted: number;
  running: number;
  withContainers: boolean;
  /** why the pods are bare, when they are */
  bareNote?: string;
  containerErrors: number;
  rampSeconds: number;
  /** MiB per running pod */
  pssPerPod?: number;
  /** of which: runtime VMs/shims/containers, the daemon's share */
  workloadPerPod?: number;
  daemonSharePerPod?: number;
  daemonPssMiB?: number;
  memAvailableDropPerPod?: number;
  memAvailableDropMiB?: number;
  /** CPU of the pods and the daemon while idle, % of one core (all pods together) */
  idleCpuPercent?: number;
  /** tmpfs holding VM templates (podvisor) */
  templateTmpfsMiB?: number;
  /** podvisor: where the QEMU processes' PSS lies, MiB per pod */
  breakdown?: Breakdown;
  /** with --ksm: how merging went before the measurement */
  ksmNote?: string;
  errors: string[];
}

interface Measurer {
  /** pids whose PSS is the pods' cost (QEMU processes; shims and their children) */
  workloadPids(): number[];
  /** the daemon process(es) */
  daemonPids(): number[];
  extraKb?(): number;
  /** the workload pids are QEMU processes: their smaps make the per-pod breakdown */
  qemu?: boolean;
  /** runs once the pods are idle, before the measurement; says how it went */
  settle?(): Promise<string>;
  /** more pids whose CPU is the pods' cost (ksmd) */
  extraCpuPids?(): number[];
}

async function idlePods(t: Target, k: number, withContainers: boolean, m: Measurer, settleMs: number, bareNote = 'bare pods (containers failed)'): Promise<IdleResult> {
  const r: IdleResult = { label: t.label, wanted: k, running: 0, withContainers, bareNote, containerErrors: 0, rampSeconds: 0, errors: [] };
  const pods: string[] = [];
  const before = memAvailableKb();
  const t0 = Date.now();
  try {
    let failuresInARow = 0;
    for (let i = 0; i < k; i++) {
      try {
        const p = await startPod(t, `idle-${k}-${i}`, withContainers);
        pods.push(p.pod);
        if (p.containerError) {
          r.containerErrors++;
          if (r.errors.length < 3) r.errors.push(`container: ${p.containerError}`);
        }
        failuresInARow = 0;
      } catch (e) {
        if (r.errors.length < 3) r.errors.push(`RunPodSandbox: ${errMsg(e)}`);
        if (++failuresInARow >= 3) {
          log(`${t.label}: 3 RunPodSandbox failures in a row, measuring the ${pods.length} pods that run`);
          break;
        }
      }
      if ((i + 1) % 10 === 0) log(`${t.label}: ${i + 1}/${k} idle pods started (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    }
    r.rampSeconds = (Date.now() - t0) / 1000;
    r.running = pods.length;
    if (pods.length > 0) {
      await sleep(settleMs); // let the guests go idle after boot/clone
      if (m.settle) r.ksmNote = await m.settle();
      // two samples a few seconds apart, the lower kept (boot-time transients); CPU in between
      let best: { work: number; daemon: number; avail: number } | undefined;
      const cpuPids = () => [...m.workloadPids(), ...m.daemonPids(), ...(m.extraCpuPids?.() ?? [])];
      const cpu0 = cpuTicks(cpuPids());
      const c0 = Date.now();
      for (let s = 0; s < 2; s++) {
        if (s) {
          await sleep(3000);
          r.idleCpuPercent = ((cpuTicks(cpuPids()) - cpu0) / CLK_TCK) / ((Date.now() - c0) / 1000) * 100;
        }
        const work = m.workloadPids().reduce((a, p) => a + pssKb(p), 0) + (m.extraKb?.() ?? 0);
        const daemon = m.daemonPids().reduce((a, p) => a + pssKb(p), 0);
        const avail = memAvailableKb();
        if (!best || work + daemon < best.work + best.daemon) best = { work, daemon, avail };
      }
      const n = pods.length;
      r.workloadPerPod = best!.work / 1024 / n;
      r.daemonPssMiB = best!.daemon / 1024;
      r.daemonSharePerPod = best!.daemon / 1024 / n;
      r.pssPerPod = (best!.work + best!.daemon) / 1024 / n;
      r.memAvailableDropMiB = (before - best!.avail) / 1024;
      r.memAvailableDropPerPod = r.memAvailableDropMiB / n;
      const parts = m.qemu ? m.workloadPids().map(qemuBreakdownKb).filter((x): x is Breakdown => !!x) : [];
      if (parts.length) {
        r.breakdown = Object.fromEntries(BREAKDOWN_KEYS.map((k) => [k, parts.reduce((a, x) => a + x[k], 0) / 1024 / parts.length])) as Breakdown;
      }
    }
  } finally {
    log(`${t.label}: removing ${pods.length} idle pods`);
    const queue = [...pods];
    await Promise.all(Array.from({ length: 4 }, async () => {
      for (let p = queue.shift(); p; p = queue.shift()) await removePod(t, p).catch((e) => r.errors.push(`remove: ${errMsg(e)}`));
    }));
  }
  return r;
}

// ---------------------------------------------------------------- KSM (--ksm)

const KSM = '/sys/kernel/mm/ksm';
const ksmRead = (f: string) => fs.readFileSync(path.join(KSM, f), 'utf8').trim();
const ksmWrite = (f: string, v: string | number) => fs.writeFileSync(path.join(KSM, f), String(v));
/** The operator's KSM settings, put back when the bench ends. */
let ksmSaved: Record<string, string> | undefined;

/**
 * ksmd on, scanning fast until two full scans have passed since the pods went idle (merged
 * pages need a page seen twice), then at the kernel's default rate (100 pages / 200 ms): the idle
 * CPU that follows counts ksmd at that rate.
 */
async function ksmSettle(): Promise<string> {
  if (!ksmSaved) {
    ksmSaved = Object.fromEntries(['run', 'pages_to_scan', 'sleep_millisecs'].map((f) => [f, ksmRead(f)]));
    onCleanup('KSM settings', () => {
      for (const [f, v] of Object.entries(ksmSaved!)) ksmWrite(f, v);
    });
  }
  ksmWrite('pages_to_scan', 20000);
  ksmWrite('sleep_millisecs', 20);
  ksmWrite('run', 1);
  const t0 = Date.now();
  const scans0 = Number(ksmRead('full_scans'));
  while (Number(ksmRead('full_scans')) < scans0 + 2 && Date.now() - t0 < 300_000) await sleep(500);
  ksmWrite('pages_to_scan', 100);
  ksmWrite('sleep_millisecs', 200);
  const mib = (pages: string) => ((Number(pages) * 4096) / MiB).toFixed(0);
  return `KSM: ${Number(ksmRead('full_scans')) - scans0} full scans in ${((Date.now() - t0) / 1000).toFixed(0)} s, ${mib(ksmRead('pages_sharing'))} MiB saved (pages_sharing); then 100 pages/200 ms, ksmd in idle CPU%`;
}

// ---------------------------------------------------------------- environment: images, CNI

/** A static pause (the critest-images pause.c) as <registry>/bench/pause:3.9. */
async function pushPause(reg: Registry, work: string): Promise<string> {
  const src = '/work/shared/critest-images/pause.c';
  const c = path.join(work, 'pause.c');
  if (fs.existsSync(src)) fs.copyFileSync(src, c);
  else fs.writeFileSync(c, '#include <unistd.h>\n#include <signal.h>\n#include <stdlib.h>\nstatic void q(int s){(void)s;_exit(0);}\nint main(void){signal(SIGINT,q);signal(SIGTERM,q);for(;;)pause();}\n');
  sh('gcc', ['-O2', '-static', '-o', path.join(work, 'pause'), c]);
  const layer = await makeLayer([{ name: 'pause', content: fs.readFileSync(path.join(work, 'pause')), mode: 0o755 }]);
  await pushImage(reg, 'bench/pause', '3.9', { layers: [layer], config: { Entrypoint: ['/pause'], Cmd: null, Env: [] } });
  return `${reg.host}/bench/pause:3.9`;
}

/** A bridge conflist on its own bridge and subnet; no gateway and no masquerade: pods reach only each other. */
function writeConflist(dir: string, bridge: string, subnet: string, dataDir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, '10-bench.conflist'), JSON.stringify({
    cniVersion: '1.0.0',
    name: 'lifecycle-bench',
    plugins: [{
      type: 'bridge', bridge, isGateway: false, ipMasq: false, hairpinMode: false,
      ipam: { type: 'host-local', ranges: [[{ subnet }]], dataDir },
    }],
  }, null, 2));
}

/** A /20 in 10.64.0.0/10 that no interface or route of this machine uses. */
function freeSubnet(): string {
  const used = sh('ip', ['-4', 'route', 'show', 'table', 'all'], { ignore: true }) + sh('ip', ['-4', 'addr'], { ignore: true });
  for (let i = 0; i < 50; i++) {
    const b = 64 + crypto.randomInt(0, 64);
    const c = crypto.randomInt(0, 16) * 16;
    if (!used.includes(`10.${b}.`)) return `10.${b}.${c}.0/20`;
  }
  return '10.123.48.0/20';
}

// ---------------------------------------------------------------- podvisor

interface PvResult {
  label: string; run?: RunResult; idle: IdleResult[]; error?: string; vm?: any; cniError?: string;
  /** RunPodSandbox of the daemon's first pod (with templates: includes building the template) */
  probeMs?: number;
  checkpoints?: CheckpointResult[];
}

interface CheckpointResult {
  kind: 'idle' | 'busy';
  checkpointMs?: number;
  bytes?: number;
  restoreMs?: number;
  /** RunPodSandbox + Create/StartContainer of the same pod afresh, for comparison */
  coldStartMs?: number;
  error?: string;
}

/**
 * CheckpointPod and RestorePod of one pod with one container: idle (sleep) or busy (a process
 * dirtying 32 MiB of memory in a loop, 32 MiB of random data on its writable layer); the checkpoint's
 * size on disk; beside it a fresh start of the same pod (pod + container) on the same daemon.
 */
async function checkpointBench(t: Target, kind: 'idle' | 'busy', work: string): Promise<CheckpointResult> {
  const r: CheckpointResult = { kind };
  const pods: string[] = [];
  const dir = path.join(work, `checkpoint-${kind}`);
  try {
    const name = `cp-${kind}-${crypto.randomBytes(3).toString('hex')}`;
    const logDir = path.join(t.logRoot, name);
    fs.mkdirSync(logDir, { recursive: true });
    const cfg = podConfig(name, logDir);
    const busy = 'dd if=/dev/urandom of=/layer bs=1M count=32 2>/dev/null; while true; do dd if=/dev/zero bs=32M count=1 2>/dev/null | md5sum >/dev/null; done';
    const c = { ...containerConfig(t.image, 'main'), command: kind === 'busy' ? ['/bin/sh', '-c', busy] : ['/bin/sleep', '3600'] };
    const [, coldMs] = await timed(async () => {
      const { pod_sandbox_id: pod } = await t.cri.runtime('RunPodSandbox', { config: cfg, runtime_handler: t.handler ?? '' }, 180_000);
      pods.push(pod);
      const { container_id } = await t.cri.runtime('CreateContainer', { pod_sandbox_id: pod, config: c, sandbox_config: cfg }, 90_000);
      await t.cri.runtime('StartContainer', { container_id }, 90_000);
    });
    r.coldStartMs = coldMs;
    if (kind === 'busy') await sleep(5000); // the layer written, the loop going
    const [, cpMs] = await timed(() => t.cri.runtime('CheckpointPod', { pod_sandbox_id: pods[0], output_path: dir }, 600_000));
    r.checkpointMs = cpMs;
    r.bytes = duKb(dir) * 1024;
    const restored = podConfig(`${name}-r`, logDir);
    const [res, restoreMs] = await timed(() => t.cri.runtime('RestorePod', { checkpoint_path: dir, config: restored }, 600_000));
    pods.push(res.pod_sandbox_id);
    r.restoreMs = restoreMs;
  } catch (e) {
    r.error = errMsg(e);
  } finally {
    for (const p of pods) await removePod(t, p).catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return r;
}

function checkpointRows(results: CheckpointResult[]): string[] {
  const out = ['Pod checkpoints (one pod, one container; CheckpointPod keeps the pod running; size = the checkpoint directory on disk)'];
  out.push(`${'pod'.padEnd(8)}${'checkpoint ms'.padStart(16)}${'size MiB'.padStart(12)}${'restore ms'.padStart(14)}${'fresh start ms'.padStart(18)}`);
  for (const r of results) {
    if (r.error) out.push(`${r.kind.padEnd(8)}  ERROR ${r.error}`);
    else out.push(`${r.kind.padEnd(8)}${f0(r.checkpointMs).padStart(16)}${f0(r.bytes === undefined ? undefined : r.bytes / MiB).padStart(12)}${f0(r.restoreMs).padStart(14)}${f0(r.coldStartMs).padStart(18)}`);
  }
  return out;
}

async function benchPodvisor(label: string, templates: boolean, reg: Registry, image: string, conflist: (dir: string, dataDir: string) => void, opts: Options, idleCounts: number[]):
  Promise<PvResult> {
  const out: PvResult = { label, idle: [] };
  let d: TestDaemon | undefined;
  const undo = onCleanup(`daemon ${label}`, async () => { await d?.destroy(); });
  try {
    log(`${label}: starting the daemon (templates ${templates ? 'on' : 'off'})`);
    const vmToml = (opts.tcgCodeMiB ? `tcg_code_mib = ${opts.tcgCodeMiB}\n` : '') + (opts.ksm ? 'ksm = true\n' : '') + (opts.kernelArgs ? `kernel_args = ${JSON.stringify(opts.kernelArgs)}\n` : '');
    d = await TestDaemon.start({ templates, registries: { [reg.host]: `http://${reg.host}` }, vmToml: vmToml || undefined });
    const dd = d;
    // podvisor reaps netns of pods it knows; after a crash the records name the rest
    onCleanup(`netns of ${label}`, () => {
      const recs = path.join(dd.root, 'sandboxes');
      for (const f of fs.existsSync(recs) ? fs.readdirSync(recs) : []) {
        const id = f.replace(/\.json$/, '');
        if (/^[0-9a-f]{16,}$/.test(id)) sh('ip', ['netns', 'delete', `pv-${id.slice(0, 16)}`], { ignore: true });
      }
    });
    conflist(d.cniConfDir, path.join(d.dir, 'cni-ipam'));
    await networkReady(d);
    const [, pullMs] = await timed(() => d!.image('PullImage', { image: { image } }));
    log(`${label}: pulled ${image} in ${pullMs.toFixed(0)} ms`);
    const target: Target = { label, cri: d, image, logRoot: d.logs };
    // a probe pod: what a pod VM looks like (accelerator, boot mode, size); when pods cannot
    // start with the CNI conflist (a guest without network support), go on without CNI and say so
    const probe = async () => {
      const p = await startPod(target, `probe-${crypto.randomBytes(3).toString('hex')}`, false);
      out.probeMs = p.runMs;
      const st = await d!.runtime('PodSandboxStatus', { pod_sandbox_id: p.pod, verbose: true });
      out.vm = JSON.parse(st.info?.info ?? '{}').vm;
      await removePod(target, p.pod);
    };
    try {
      await probe();
    } catch (e) {
      log(`${label}: probe pod with CNI: ${errMsg(e)}`);
      out.cniError = errMsg(e);
      for (const f of fs.readdirSync(d.cniConfDir)) fs.rmSync(path.join(d.cniConfDir, f));
      for (let i = 0; ; i++) {
        const st = await d.runtime('Status', {});
        if (!st.status.conditions.find((c: any) => c.type === 'NetworkReady')?.status) break;
        if (i > 100) throw new Error('NetworkReady stays true after the conflist was removed');
        await sleep(100);
      }
      target.label = out.label = `${label} (no CNI)`;
      try {
        await probe();
        log(`${label}: pods start without CNI: measuring without pod networking`);
      } catch (e2) {
        log(`${label}: probe pod without CNI: ${errMsg(e2)}`);
      }
    }
    out.run = await lifecycle(target, opts.iterations);
    if (opts.checkpoint && templates) {
      out.checkpoints = [];
      for (const kind of ['idle', 'busy'] as const) {
        log(`${label}: checkpoint and restore of a ${kind} pod…`);
        out.checkpoints.push(await checkpointBench(target, kind, d.dir));
      }
    }
    const daemonPattern = `${d.configFile} --socket ${d.socket}`;
    const m: Measurer = {
      workloadPids: () => pgrep(`qemu-system.*${dd.state}`),
      qemu: true,
      daemonPids: () => pgrep(daemonPattern),
      ...(opts.ksm ? { settle: ksmSettle, extraCpuPids: () => sh('pgrep', ['-x', 'ksmd'], { ignore: true }).split('\n').filter(Boolean).map(Number) } : {}),
    };
    for (const k of idleCounts) {
      log(`${label}: ${k} idle pod(s)…`);
      const r = await idlePods(target, k, out.run.containersWork && opts.idleContainers, m, Math.min(20_000, 3000 + k * 200), opts.idleContainers ? undefined : SANDBOXES_ONLY);
      r.templateTmpfsMiB = templates ? duKb(d.templateDir) / 1024 : undefined;
      out.idle.push(r);
      log(`${label}: ${r.running} idle pods: ${r.pssPerPod?.toFixed(1)} MiB PSS per pod`);
    }
  } catch (e) {
    failed(label, out, d, e);
  } finally {
    await stopDaemon(label, d, `/tmp/pvbench-${templates ? 'clone' : 'cold'}-daemon.log`);
    undo();
  }
  return out;
}

// ---------------------------------------------------------------- podvisor host pods

/**
 * Host pods (issue 16): the same daemon code, pods on the `runc` handler, so each runs on the host
 * backend (pinned network/IPC/UTS namespaces with the CNI veth in them, a shim per container
 * holding it, an overlay root on the image's erofs): no VM at all. Idle PSS counts the shims,
 * their containers and any PID-namespace init (podvisor-launch processes under the state dir and
 * their children) plus the daemon.
 */
async function benchHostPods(reg: Registry, image: string, conflist: (dir: string, dataDir: string) => void, opts: Options, idleCounts: number[]): Promise<PvResult> {
  const label = 'podvisor host pod (runc)';
  const out: PvResult = { label, idle: [] };
  let d: TestDaemon | undefined;
  const undo = onCleanup(`daemon ${label}`, async () => { await d?.destroy(); });
  try {
    log(`${label}: starting the daemon`);
    d = await TestDaemon.start({ templates: false, registries: { [reg.host]: `http://${reg.host}` } });
    const dd = d;
    conflist(d.cniConfDir, path.join(d.dir, 'cni-ipam'));
    await networkReady(d);
    const [, pullMs] = await timed(() => d!.image('PullImage', { image: { image } }));
    log(`${label}: pulled ${image} in ${pullMs.toFixed(0)} ms`);
    const target: Target = { label, cri: d, image, logRoot: d.logs, handler: 'runc' };
    const probe = await startPod(target, `probe-${crypto.randomBytes(3).toString('hex')}`, false);
    out.probeMs = probe.runMs;
    const backend = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: probe.pod, verbose: true })).info?.info ?? '{}').backend;
    await removePod(target, probe.pod);
    if (backend !== 'host') throw new Error(`the runc handler's pod ran on the ${backend} backend, not on the host`);
    out.run = await lifecycle(target, opts.iterations);
    const daemonPattern = `${d.configFile} --socket ${d.socket}`;
    const m: Measurer = {
      workloadPids: () => descendants(pgrep(`podvisor-launch .*${dd.state}/`)),
      daemonPids: () => pgrep(daemonPattern),
    };
    for (const k of idleCounts) {
      log(`${label}: ${k} idle pod(s)…`);
      const r = await idlePods(target, k, out.run.containersWork && opts.idleContainers, m, 3000, opts.idleContainers ? undefined : SANDBOXES_ONLY);
      out.idle.push(r);
      log(`${label}: ${r.running} idle pods: ${r.pssPerPod?.toFixed(1)} MiB PSS per pod`);
    }
  } catch (e) {
    failed(label, out, d, e);
  } finally {
    await stopDaemon(label, d, '/tmp/pvbench-host-daemon.log');
    undo();
  }
  return out;
}

// ---------------------------------------------------------------- containerd + runc

async function benchContainerd(reg: Registry, image: string, pauseImage: string, conflist: (dir: string, dataDir: string) => void, opts: Options, idleCounts: number[]):
  Promise<{ run?: RunResult; idle: IdleResult[]; error?: string; version?: string }> {
  const out: { run?: RunResult; idle: IdleResult[]; error?: string; version?: string } = { idle: [] };
  const bin = sh('sh', ['-c', 'command -v containerd'], { ignore: true }).trim();
  if (!bin || !sh('sh', ['-c', 'command -v runc'], { ignore: true }).trim()) {
    out.error = 'containerd/runc not installed (bench/lifecycle.sh installs them with apt)';
    return out;
  }
  out.version = `${sh('containerd', ['--version']).trim().split(' ').slice(2).join(' ')}, runc ${sh('runc', ['--version']).split('\n')[0].split(' ')[2]}`;
  const dir = fs.mkdtempSync('/tmp/pvbench-ctd-');
  const sock = path.join(dir, 'containerd.sock');
  const netnsPaths = new Set<string>();
  let proc: ChildProcess | undefined;
  let cri: SocketCri | undefined;
  const pods = new Set<string>();
  const teardown = async () => {
    if (cri) {
      for (const p of pods) {
        await cri.runtime('StopPodSandbox', { pod_sandbox_id: p }, 30_000).catch(() => undefined);
        await cri.runtime('RemovePodSandbox', { pod_sandbox_id: p }, 30_000).catch(() => undefined);
      }
      cri.close();
    }
    // shims and everything under them (pause, sleep), then containerd
    const shims = pgrep(`containerd-shim.*-address ${sock}`);
    const all = descendants(shims);
    for (const p of all.reverse()) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    if (proc && proc.exitCode === null) {
      const gone = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([gone, sleep(10_000)]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
    // its mounts (sandbox shm, rootfs overlays) — deepest first
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((mp) => mp && mp.startsWith(dir));
    for (const mp of mounts.sort((a, b) => b.length - a.length)) sh('umount', ['-l', mp], { ignore: true });
    for (const ns of netnsPaths) {
      if (fs.existsSync(ns)) {
        sh('umount', ['-l', ns], { ignore: true });
        fs.rmSync(ns, { force: true });
      }
    }
    try { fs.copyFileSync(path.join(dir, 'containerd.log'), '/tmp/pvbench-containerd.log'); } catch { /* none */ }
    fs.rmSync(dir, { recursive: true, force: true });
    // shim sockets live under /run/containerd/s whatever the state dir: drop what is left empty
    sh('find', ['/run/containerd', '-mindepth', '1', '-type', 'd', '-empty', '-delete'], { ignore: true });
    sh('rmdir', ['/run/containerd'], { ignore: true });
  };
  const undo = onCleanup('containerd', teardown);
  try {
    const certs = path.join(dir, 'certs.d', reg.host);
    fs.mkdirSync(certs, { recursive: true });
    fs.writeFileSync(path.join(certs, 'hosts.toml'), `server = "http://${reg.host}"\n\n[host."http://${reg.host}"]\n  capabilities = ["pull", "resolve"]\n`);
    conflist(path.join(dir, 'cni'), path.join(dir, 'cni-ipam'));
    const config = `version = 2
root = "${dir}/root"
state = "${dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${sock}"
[ttrpc]
  address = "${sock}.ttrpc"
[debug]
  address = "${dir}/debug.sock"
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${pauseImage}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # the sandbox's oom_score_adj -998 is refused on machines like this one (runc: "failed to update
  # /proc/self/oom_score_adj: Permission denied"); clamp it to containerd's own, as rootless setups do
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "${dir}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${dir}/cni"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "${dir}/certs.d"
`;
    fs.writeFileSync(path.join(dir, 'config.toml'), config);
    const logFd = fs.openSync(path.join(dir, 'containerd.log'), 'a');
    // own process group: a Ctrl-C reaches the bench, which then stops containerd in order
    proc = spawn(bin, ['--config', path.join(dir, 'config.toml')], { stdio: ['ignore', logFd, logFd], detached: true });
    fs.closeSync(logFd);
    cri = new SocketCri(sock);
    const c = cri;
    for (let i = 0; ; i++) {
      try {
        const st = await c.runtime('Status', {}, 2000);
        if (st.status.conditions.find((x: any) => x.type === 'NetworkReady')?.status) break;
      } catch {
        /* not up yet */
      }
      if (proc.exitCode !== null || i > 150) throw new Error(`containerd not ready: ${fs.readFileSync(path.join(dir, 'containerd.log'), 'utf8').slice(-1500)}`);
      await sleep(200);
    }
    log(`containerd ${out.version} up on ${sock}`);
    for (const img of [pauseImage, image]) await c.image('PullImage', { image: { image: img } });
    const track: Target = {
      label: 'containerd+runc', cri: c, image, logRoot: path.join(dir, 'logs'),
      afterRun: async (pod) => {
        pods.add(pod);
        try {
          const st = await c.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true }, 10_000);
          const info = JSON.parse(st.info?.info ?? '{}');
          for (const ns of info.runtimeSpec?.linux?.namespaces ?? []) if (ns.type === 'network' && ns.path) netnsPaths.add(ns.path);
        } catch {
          /* only for crash cleanup */
        }
      },
    };
    const wrapped: Cri = {
      runtime: async (method, req, t) => {
        const res = await c.runtime(method, req, t);
        if (method === 'RemovePodSandbox') pods.delete((req as any).pod_sandbox_id);
        return res;
      },
      image: (method, req, t) => c.image(method, req, t),
    };
    track.cri = wrapped;
    out.run = await lifecycle(track, opts.iterations);
    const m: Measurer = {
      workloadPids: () => descendants(pgrep(`containerd-shim.*-address ${sock}`)),
      daemonPids: () => (proc?.pid ? [proc.pid] : []),
    };
    for (const k of idleCounts) {
      log(`containerd+runc: ${k} idle pod(s)…`);
      const r = await idlePods(track, k, opts.idleContainers, m, 3000, SANDBOXES_ONLY);
      out.idle.push(r);
      log(`containerd+runc: ${r.running} idle pods: ${r.pssPerPod?.toFixed(1)} MiB PSS per pod`);
    }
  } catch (e) {
    out.error = errMsg(e);
    log(`containerd: ${out.error}`);
  } finally {
    log('containerd: stopping and cleaning up');
    undo();
    await teardown().catch((e) => log(`containerd teardown: ${errMsg(e)}`));
  }
  return out;
}

// ---------------------------------------------------------------- report

const f0 = (x?: number) => (x === undefined ? '—' : x >= 100 ? x.toFixed(0) : x.toFixed(1));

function phaseRows(runs: Array<{ label: string; r?: RunResult; error?: string }>): string[] {
  const lines: string[] = [];
  const head = `${'phase'.padEnd(24)}${'runtime'.padEnd(30)}${'median ms'.padStart(11)}${'p90 ms'.padStart(10)}${'min ms'.padStart(10)}${'ok/N'.padStart(8)}${'× ctd'.padStart(8)}  note`;
  const base = runs.find((x) => x.label === 'containerd+runc')?.r;
  lines.push(head, '-'.repeat(head.length + 10));
  for (const phase of PHASES) {
    for (const { label, r, error } of runs) {
      if (!r) {
        lines.push(`${phase.padEnd(24)}${label.padEnd(30)}${'NOT MEASURED'.padStart(39)}  ${error ?? ''}`);
        continue;
      }
      const s = stats(r.times[phase]);
      const errs = r.errors[phase];
      const ok = `${r.times[phase].length}/${r.iterations}`;
      let note = '';
      if (r.skipped[phase]) note = `FAILED: ${r.skipped[phase]}`;
      else if (errs.length) note = `FAILED ${errs.length}x: ${[...new Set(errs)].slice(0, 2).join(' | ')}`;
      if (!s) lines.push(`${phase.padEnd(24)}${label.padEnd(30)}${'FAILED'.padStart(11)}${'—'.padStart(10)}${'—'.padStart(10)}${ok.padStart(8)}  ${note}`);
      else {
        const b = base && r !== base ? stats(base.times[phase])?.median : undefined;
        const ratio = b ? `${(s.median / b).toFixed(2)}×` : '';
        lines.push(`${phase.padEnd(24)}${label.padEnd(30)}${s.median.toFixed(0).padStart(11)}${s.p90.toFixed(0).padStart(10)}${s.min.toFixed(0).padStart(10)}${ok.padStart(8)}${ratio.padStart(8)}  ${note}`);
      }
    }
  }
  for (const { label, r } of runs) {
    if (r) lines.push(`${'first RunPodSandbox'.padEnd(24)}${label.padEnd(30)}${(r.firstRun === undefined ? 'FAILED' : r.firstRun.toFixed(0)).padStart(11)}${''.padStart(28)}  warm-up, not in the medians${r.firstRunError ? `: ${r.firstRunError}` : ''}`);
  }
  return lines;
}

const SANDBOXES_ONLY = 'pod sandboxes only (--idle-sandboxes-only)';

function idleRows(idle: IdleResult[]): string[] {
  const head = `${'runtime'.padEnd(30)}${'pods'.padStart(8)}${'PSS/pod'.padStart(10)}${'procs/pod'.padStart(10)}${'daemon/pod'.padStart(12)}${'daemon'.padStart(9)}${'MemAvail↓/pod'.padStart(15)}${'MemAvail↓'.padStart(11)}${'tmpl tmpfs'.padStart(12)}${'idle CPU%'.padStart(11)}${'start s'.padStart(9)}  note`;
  const lines = [head, '-'.repeat(head.length + 10)];
  for (const r of idle) {
    const pods = `${r.running}/${r.wanted}`;
    const note = [
      r.withContainers ? `each with a sleep container${r.containerErrors ? ` (${r.containerErrors} FAILED)` : ''}` : r.bareNote,
      ...(r.ksmNote ? [r.ksmNote] : []),
      ...r.errors.slice(0, 2),
    ].join('; ');
    lines.push(`${r.label.padEnd(30)}${pods.padStart(8)}${f0(r.pssPerPod).padStart(10)}${f0(r.workloadPerPod).padStart(10)}${f0(r.daemonSharePerPod).padStart(12)}${f0(r.daemonPssMiB).padStart(9)}${f0(r.memAvailableDropPerPod).padStart(15)}${f0(r.memAvailableDropMiB).padStart(11)}${f0(r.templateTmpfsMiB).padStart(12)}${f0(r.idleCpuPercent).padStart(11)}${r.rampSeconds.toFixed(0).padStart(9)}  ${note}`);
  }
  return lines;
}

// ---------------------------------------------------------------- main

/**
 * Copies the guest build (vmlinux, initramfs.img, podvisor-launch) into the work dir and points the daemons at
 * the copy, so a guest rebuilt while the bench runs does not change what is measured.
 */
function snapshotGuest(work: string): string {
  const src = process.env.PODVISOR_GUEST_DIR ?? path.resolve(__dirname, '..', 'build', 'guest');
  const dst = path.join(work, 'guest');
  fs.mkdirSync(dst);
  const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
  let manifest: any;
  try {
    manifest = JSON.parse(fs.readFileSync(path.join(src, 'manifest.json'), 'utf8'));
  } catch {
    /* no manifest: nothing to check against */
  }
  for (let attempt = 0; ; attempt++) {
    for (const f of ['vmlinux', 'initramfs.img']) fs.copyFileSync(path.join(src, f), path.join(dst, f));
    // the host helper that starts QEMU is found next to the kernel
    fs.copyFileSync(path.join(src, 'podvisor-launch'), path.join(dst, 'podvisor-launch'));
    fs.chmodSync(path.join(dst, 'podvisor-launch'), 0o755);
    const want = manifest?.initramfs?.sha256;
    if (!want || sha(path.join(dst, 'initramfs.img')) === want || attempt >= 5) break;
    sh('sleep', ['2']); // being rebuilt: wait for a consistent copy
  }
  process.env.PODVISOR_GUEST_DIR = dst;
  return `${src} (initramfs ${sha(path.join(dst, 'initramfs.img')).slice(0, 12)}, vmlinux ${sha(path.join(dst, 'vmlinux')).slice(0, 12)}${manifest?.kernel_version ? `, kernel ${manifest.kernel_version}` : ''})`;
}

async function main() {
  const opts = parseArgs(process.argv.slice(1).filter((a, i) => !(i === 0 && a.endsWith('.ts'))));
  const started = new Date();
  const work = fs.mkdtempSync('/tmp/pvbench-');
  onCleanup('work dir', () => fs.rmSync(work, { recursive: true, force: true }));
  const guest = snapshotGuest(work);
  const reg = await startRegistry();
  onCleanup('registry', () => reg.stop());
  await pushBusybox(reg, 'bench/busybox', 'latest');
  const image = `${reg.host}/bench/busybox:latest`;
  let pauseImage = '';
  try {
    pauseImage = await pushPause(reg, work);
  } catch (e) {
    log(`pause image: ${errMsg(e)}`);
  }
  // one bridge and subnet for all runs (they run one after another), each with its own IPAM dir
  const bridge = `pvb${crypto.randomBytes(3).toString('hex')}`;
  const subnet = freeSubnet();
  onCleanup('bridge', () => { sh('ip', ['link', 'delete', bridge], { ignore: true }); });
  const conflist = (dir: string, dataDir: string) => writeConflist(dir, bridge, subnet, dataDir);
  log(`registry ${reg.host}, CNI bridge ${bridge} ${subnet}, iterations ${opts.iterations}, idle pods ${opts.pods.join(',')}`);

  const loads: string[] = [`start ${loadavg()}`];
  const clone: PvResult = opts.clone ? await benchPodvisor(opts.ksm ? 'podvisor clone, KSM' : 'podvisor clone', true, reg, image, conflist, opts, [1, ...opts.pods]) : { label: 'podvisor clone', idle: [], error: 'skipped (--no-clone)' };
  if (opts.clone) loads.push(`after podvisor clone ${loadavg()}`);
  const cold = opts.cold ? await benchPodvisor('podvisor cold boot', false, reg, image, conflist, opts, [1]) : { idle: [], error: 'skipped (--no-cold)' } as any;
  const host: PvResult = opts.host ? await benchHostPods(reg, image, conflist, opts, opts.pods) : { label: 'podvisor host pod (runc)', idle: [], error: 'skipped (--no-host)' };
  if (opts.host) loads.push(`after podvisor host pods ${loadavg()}`);
  const ctd = opts.containerd
    ? (pauseImage ? await benchContainerd(reg, image, pauseImage, conflist, opts, opts.pods) : { idle: [], error: 'no pause image' } as any)
    : { idle: [], error: 'skipped (--no-containerd)' } as any;
  loads.push(`end ${loadavg()}`);

  const qemuVersion = sh('qemu-system-x86_64', ['--version'], { ignore: true }).split('\n')[0].replace(/^QEMU emulator version /, '');
  const vm = clone.vm ?? cold.vm;
  const lines: string[] = [];
  lines.push(`podvisor lifecycle bench — ${started.toISOString()} — ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, QEMU ${qemuVersion}` +
    `${vm ? `, accel ${vm.accelerator}, pod VM ${vm.vcpus} vCPU/${vm.memoryMiB} MiB${vm.accelerator === 'tcg' ? `, TCG code buffer ${opts.tcgCodeMiB ?? defaultConfig().vm.tcgCodeMiB} MiB` : ''}${opts.ksm ? ', [vm] ksm on' : ''}` : ''}\nguest ${guest}` +
    `, containerd ${ctd.version ?? 'n/a'}`);
  lines.push(`${opts.iterations} iterations after one warm-up; times are client-side gRPC round trips; CNI: bridge ${bridge} ${subnet} (no gateway, no masquerade) for every runtime`);
  lines.push(`load average (1, 5, 15 min): ${loads.join('; ')}`);
  lines.push('');
  lines.push(...phaseRows([
    { label: clone.label, r: clone.run, error: clone.error },
    { label: cold.label ?? 'podvisor cold boot', r: cold.run, error: cold.error },
    { label: host.label, r: host.run, error: host.error },
    { label: 'containerd+runc', r: ctd.run, error: ctd.error },
  ]));
  lines.push('');
  lines.push('Host PSS of idle pods, MiB (PSS/pod = (runtime processes + daemon) / pods; podvisor: QEMU processes under the daemon\'s state dir;');
  lines.push('containerd: shims + pause + sleep; daemon = podvisor daemon or containerd; MemAvail↓ = drop of /proc/meminfo MemAvailable while they run;');
  lines.push('tmpl tmpfs = VM templates on /dev/shm (shared by all clones, not in PSS/pod); idle CPU% = pods + daemon over ~3 s, % of one core)');
  lines.push('host pods: shims + their containers + daemon');
  lines.push(...idleRows([...clone.idle, ...cold.idle, ...host.idle, ...ctd.idle]));
  const split = [...clone.idle, ...cold.idle].filter((r) => r.breakdown);
  if (split.length) {
    lines.push('');
    lines.push('Where a pod QEMU\'s PSS lies, MiB per pod (/proc/<pid>/smaps; guest RAM = the RAM file: pages written privately + its share of the template\'s;');
    lines.push('TCG code = the translation buffer; other anon = glibc arenas, thread stacks, ROM/firmware blocks; libs+bin = QEMU and its libraries)');
    lines.push(`${'runtime'.padEnd(30)}${'pods'.padStart(8)}${BREAKDOWN_KEYS.map((k) => k.padStart(12)).join('')}`);
    for (const r of split) lines.push(`${r.label.padEnd(30)}${String(r.running).padStart(8)}${BREAKDOWN_KEYS.map((k) => f0(r.breakdown![k]).padStart(12)).join('')}  ${r.withContainers ? 'with a sleep container' : 'sandbox only'}`);
  }
  if (clone.checkpoints?.length) {
    lines.push('');
    lines.push(...checkpointRows(clone.checkpoints));
  }
  for (const [l, e] of [['podvisor clone', clone.error], ['podvisor cold boot', cold.error], [host.label, host.error], ['containerd+runc', ctd.error]]) if (e) lines.push(`${l}: ERROR ${e}`);
  for (const r of [clone, cold] as PvResult[]) if (r.probeMs !== undefined) lines.push(`${r.label}: the daemon's first RunPodSandbox${r === clone ? ' (builds the VM template)' : ''}: ${r.probeMs.toFixed(0)} ms`);
  for (const r of [clone, cold] as PvResult[]) if (r.cniError) lines.push(`${r.label}: pods FAILED with the CNI bridge conflist (${r.cniError}); measured without pod networking (loopback only), containerd+runc with CNI`);
  lines.push('');
  const idleTarget = clone.idle.filter((r: IdleResult) => r.wanted > 1 && r.pssPerPod !== undefined);
  const verdict = (ok: boolean | undefined) => (ok === undefined ? 'NOT MEASURED' : ok ? 'met' : 'NOT met');
  for (const phase of PHASES) {
    const a = stats(clone.run?.times[phase] ?? [])?.median;
    const b = stats(ctd.run?.times[phase] ?? [])?.median;
    const limit = RATIO_TARGETS[phase];
    const ratio = a !== undefined && b !== undefined ? a / b : undefined;
    lines.push(`target ${phase} median (clone) ≤ ${limit.toFixed(1)}× containerd+runc: ${f0(a)} vs ${f0(b)} ms = ${ratio === undefined ? '—' : `${ratio.toFixed(2)}×`} → ${verdict(ratio === undefined ? undefined : ratio <= limit)}`);
  }
  // issue 16: host pods no slower than containerd+runc to a running pod
  for (const phase of ['RunPodSandbox', 'pod+container'] as const) {
    const a = stats(host.run?.times[phase] ?? [])?.median;
    const b = stats(ctd.run?.times[phase] ?? [])?.median;
    const ratio = a !== undefined && b !== undefined ? a / b : undefined;
    lines.push(`target ${phase} median (host pod) ≤ 1.0× containerd+runc: ${f0(a)} vs ${f0(b)} ms = ${ratio === undefined ? '—' : `${ratio.toFixed(2)}×`} → ${verdict(ratio === undefined ? undefined : ratio <= 1.0)}`);
  }
  const at50 = clone.idle.find((r: IdleResult) => r.wanted === 50 && r.pssPerPod !== undefined);
  lines.push(`target PSS per idle pod at 50 pods ≤ ${PSS_AT_50_LIMIT_MIB} MiB (no worse than before issue 21): ${at50 ? `${f0(at50.pssPerPod)} MiB → ${verdict(at50.pssPerPod! <= PSS_AT_50_LIMIT_MIB)}` : 'NOT MEASURED (use --pods 50)'}`);
  for (const r of idleTarget) lines.push(`target ≤ 32 MiB PSS per idle pod (${r.running} pods, TCG${opts.ksm ? ', with KSM' : ''}): ${f0(r.pssPerPod)} MiB → ${verdict(r.pssPerPod! <= 32)}`);
  if (!idleTarget.length) lines.push('target ≤ 32 MiB PSS per idle pod: NOT MEASURED');
  const two = clone.idle.find((r: IdleResult) => r.wanted >= 200);
  lines.push(`target 200 idle pods: ${two ? `${two.running}/${two.wanted} ran${two.running >= 200 ? ' → met' : ' → NOT met'}` : 'not run (use --pods 200)'}`);
  console.log(lines.join('\n'));
  const summary = (r?: RunResult) => r && Object.fromEntries(PHASES.map((p) => [p, { ...stats(r.times[p]), failed: r.errors[p].length, skipped: r.skipped[p], errors: [...new Set(r.errors[p])].slice(0, 3) }]).concat([['firstRunPodSandbox', r.firstRun as any]]));
  console.log(JSON.stringify({
    bench: 'lifecycle', date: started.toISOString(), guest, iterations: opts.iterations, cores: os.cpus().length, qemu: qemuVersion, vm, containerd: ctd.version,
    runs: { podvisorClone: summary(clone.run), podvisorCold: summary(cold.run), podvisorHost: summary(host.run), containerd: summary(ctd.run) },
    idle: [...clone.idle, ...cold.idle, ...host.idle, ...ctd.idle],
    firstPodMs: { podvisorClone: clone.probeMs, podvisorCold: cold.probeMs },
    checkpoints: clone.checkpoints,
    errors: { podvisorClone: clone.error, podvisorCold: cold.error, podvisorHost: host.error, containerd: ctd.error, podvisorCloneCni: clone.cniError, podvisorColdCni: cold.cniError },
  }));
}

main()
  .catch((e) => {
    console.error(`lifecycle bench failed: ${(e as Error).stack ?? e}`);
    process.exitCode = 1;
  })
  .finally(async () => {
    await cleanupAll();
    // gRPC channels and timers must not keep the process alive
    setTimeout(() => process.exit(), 200).unref();
  });

/** Waits until the daemon reports NetworkReady (its CNI conflist was read), ~10 s at most. */
async function networkReady(d: TestDaemon): Promise<void> {
  for (let i = 0; ; i++) {
    const st = await d.runtime('Status', {});
    const net = st.status.conditions.find((c: any) => c.type === 'NetworkReady');
    if (net?.status) return;
    if (i > 100) throw new Error(`NetworkReady stays false: ${net?.reason} ${net?.message}`);
    await sleep(100);
  }
}

/** A podvisor run that failed: its error in the result and the log, with the daemon's last output. */
function failed(label: string, out: PvResult, d: TestDaemon | undefined, e: unknown): void {
  out.error = errMsg(e);
  log(`${label}: ${out.error}`);
  if (d) log(`daemon log tail: ${d.output.slice(-1500)}`);
}

/** Stops a run's daemon, keeping a copy of its log at `keepLog`. */
async function stopDaemon(label: string, d: TestDaemon | undefined, keepLog: string): Promise<void> {
  log(`${label}: stopping the daemon`);
  if (d) try { fs.copyFileSync(path.join(d.dir, 'daemon.log'), keepLog); } catch { /* none */ }
  await d?.destroy().catch((e) => log(`destroy: ${errMsg(e)}`));
}

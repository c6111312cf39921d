// Runs the real `podvisor serve` (compiled CLI) in a scratch directory and talks CRI to it
// over its unix socket, as kubelet and crictl do.
import { ChildProcess, spawn, spawnSync, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../../cri-api';
import { netnsNameFor } from '../../network/network-driver';
import { podCgroupDirs, removeCgroups, type CgroupDriver } from '../../src/runtime/pod-cgroup';

const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface DaemonOptions {
  /** extra TOML appended to the generated config */
  configToml?: string;
  /** extra keys for its [vm] table */
  vmToml?: string;
  /** certs.d hosts to configure: host → server URL */
  registries?: Record<string, string>;
  /** start pods from VM templates (the default) or cold-boot them */
  templates?: boolean;
  /** run this program (argv before `serve …`) instead of the checkout's compiled CLI on this Node */
  command?: string[];
  /** the daemon's environment (default: this process's) */
  env?: NodeJS.ProcessEnv;
  /** [vm] accelerator (default tcg: this machine's KVM cannot run stock guests) */
  accelerator?: 'auto' | 'kvm' | 'tcg';
}

export class TestDaemon {
  readonly socket: string;
  readonly root: string;
  readonly state: string;
  readonly logs: string;
  readonly configFile: string;
  /** CNI conf dir of this daemon: empty (pods get loopback only) until a test writes a conflist */
  readonly cniConfDir: string;
  /** on tmpfs, like the real default */
  readonly templateDir: string;
  private proc?: ChildProcess;
  /** every daemon process it launched (a template build's netns carries its builder's pid) */
  private readonly pids: number[] = [];
  private runtimeClient?: grpc.Client;
  private imageClient?: grpc.Client;
  output = '';

  private constructor(readonly dir: string, private readonly opts: DaemonOptions) {
    this.socket = path.join(dir, 'cri.sock');
    this.root = path.join(dir, 'root');
    this.state = path.join(dir, 'state');
    this.logs = path.join(dir, 'logs');
    this.configFile = path.join(dir, 'config.toml');
    this.cniConfDir = path.join(dir, 'cni');
    this.templateDir = path.join('/dev/shm', path.basename(dir));
  }

  static async start(opts: DaemonOptions = {}): Promise<TestDaemon> {
    if (!opts.command && !fs.existsSync(CLI)) throw new Error(`${CLI} missing: run npm run build first`);
    const d = new TestDaemon(fs.mkdtempSync('/tmp/pv-'), opts);
    fs.mkdirSync(d.logs);
    const certsd = path.join(d.dir, 'etc');
    for (const [host, server] of Object.entries(opts.registries ?? {})) {
      fs.mkdirSync(path.join(certsd, 'certs.d', host), { recursive: true });
      fs.writeFileSync(path.join(certsd, 'certs.d', host, 'hosts.toml'), `server = "${server}"\n\n[host."${server}"]\n  capabilities = ["pull", "resolve"]\n`);
    }
    fs.mkdirSync(d.cniConfDir);
    // PODVISOR_GUEST_DIR: test another guest build than build/guest
    const guest = process.env.PODVISOR_GUEST_DIR ? `kernel = "${process.env.PODVISOR_GUEST_DIR}/vmlinux"\ninitramfs = "${process.env.PODVISOR_GUEST_DIR}/initramfs.img"\n` : '';
    // a cold TCG boot beside other test runs (load 60 on 2 cores) took over the default 30 s:
    // tests check what a pod does, not how fast it boots (a test may still set its own bound)
    const bootTimeout = /^boot_timeout_s\s*=/m.test(opts.vmToml ?? '') ? '' : 'boot_timeout_s = 300\n';
    fs.writeFileSync(d.configFile, `log_level = "debug"\n[vm]\naccelerator = "${opts.accelerator ?? 'tcg'}"\ntemplate = ${opts.templates ?? process.env.PODVISOR_TEMPLATES !== "0"}\ntemplate_dir = "${d.templateDir}"\n${guest}${bootTimeout}${opts.vmToml ?? ''}[image]\nconfig_dir = "${certsd}"\n[cni]\nconf_dir = "${d.cniConfDir}"\n${opts.configToml ?? ''}`);
    try {
      await d.launch();
    } catch (err) {
      // a daemon that does not come up (bad config …) leaves neither its dirs nor a process
      d.closeClients();
      await d.destroy().catch(() => undefined);
      throw err;
    }
    return d;
  }

  /** Starts (or restarts) the daemon process and waits for its socket to answer Version. */
  async launch(env: Record<string, string> = {}): Promise<void> {
    const [cmd, ...pre] = this.opts.command ?? [process.execPath, CLI];
    const args = [...pre, 'serve', '--config', this.configFile, '--socket', this.socket, '--root', this.root, '--state', this.state];
    // env: extra variables for this run only (e.g. PODVISOR_FAULT); jest's process.env is a copy
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...(this.opts.env ?? process.env), ...env }, cwd: this.opts.command ? '/' : undefined });
    this.proc = proc;
    if (proc.pid) this.pids.push(proc.pid);
    const log = fs.createWriteStream(path.join(this.dir, 'daemon.log'), { flags: 'a' });
    proc.stdout!.pipe(log);
    proc.stderr!.on('data', (d) => { this.output += d; log.write(d); });
    const exited = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`daemon exited with ${code}: ${this.output.slice(-2000)}`))));
    exited.catch(() => undefined);
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        await Promise.race([this.runtime('Version', {}), exited]);
        return;
      } catch (err) {
        if (proc.exitCode !== null || Date.now() > deadline) throw err;
        this.closeClients();
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private client(kind: 'runtime' | 'image'): grpc.Client {
    const cri = loadCri();
    if (kind === 'runtime') return (this.runtimeClient ??= new cri.RuntimeServiceClient(`unix://${this.socket}`, grpc.credentials.createInsecure()));
    return (this.imageClient ??= new cri.ImageServiceClient(`unix://${this.socket}`, grpc.credentials.createInsecure()));
  }

  private call(kind: 'runtime' | 'image', method: string, req: object, timeoutMs: number): Promise<any> {
    const c = this.client(kind) as any;
    return new Promise((resolve, reject) => {
      c[method](req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: any) => (err ? reject(err) : resolve(res)));
    });
  }

  runtime(method: string, req: object, timeoutMs = 120_000): Promise<any> {
    return this.call('runtime', method, req, timeoutMs);
  }

  image(method: string, req: object, timeoutMs = 300_000): Promise<any> {
    return this.call('image', method, req, timeoutMs);
  }

  private closeClients(): void {
    this.runtimeClient?.close();
    this.imageClient?.close();
    this.runtimeClient = this.imageClient = undefined;
  }

  /** The daemon's process id (undefined before launch). */
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Whether the daemon process is still running. */
  get alive(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** The daemon process's exit code once it has exited (null while it runs, or if killed). */
  get exitCode(): number | null {
    return this.proc?.exitCode ?? null;
  }

  /** A client of its own (as a second kubelet connection would be); the caller closes it. */
  newRuntimeClient(): grpc.Client {
    return new (loadCri().RuntimeServiceClient)(`unix://${this.socket}`, grpc.credentials.createInsecure());
  }

  /** SIGTERM: the daemon exits, pod VMs keep running (SIGKILL after 10 s). */
  stopProcess(): Promise<void> {
    return this.signal('SIGTERM');
  }

  /** The daemon's log lines so far (JSON, one entry a line), all its processes. */
  logLines(): Array<{ msg?: string; level?: number; [k: string]: unknown }> {
    return fs.readFileSync(path.join(this.dir, 'daemon.log'), 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  }

  /** How the last daemon process ended: its exit status, or the signal that killed it. */
  get lastExit(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    const p = this.proc;
    return p && (p.exitCode !== null || p.signalCode !== null) ? { code: p.exitCode, signal: p.signalCode } : undefined;
  }

  /** SIGKILL: the daemon dies without cleaning up (a crash). */
  killProcess(): Promise<void> {
    return this.signal('SIGKILL');
  }

  private async signal(sig: 'SIGTERM' | 'SIGKILL'): Promise<void> {
    this.closeClients();
    const p = this.proc;
    // ended already: exited, or killed by a signal (killProcess, a PODVISOR_FAULT crash; exitCode
    // stays null then, and an 'exit' awaited here would never come)
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(sig);
    await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
    if (p.exitCode === null) {
      p.kill('SIGKILL');
      await gone;
    }
  }

  /** Removes every pod through CRI, stops the daemon, kills anything left, deletes the scratch dir. */
  async destroy(): Promise<void> {
    try {
      const { items } = await this.runtime('ListPodSandbox', {}, 10_000);
      for (const sb of items) await this.runtime('RemovePodSandbox', { pod_sandbox_id: sb.id }, 60_000).catch(() => undefined);
    } catch {
      /* daemon already gone */
    }
    await this.stopProcess();
    // its pods' and spares' QEMU (under state), a template build's (under the template dir)
    for (const pid of [...qemuPidsUnder(this.state), ...qemuPidsUnder(this.templateDir)]) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    // what a killed daemon could not take down (no RemovePodSandbox answered): the netns of its
    // pods (their taps and the host ends of their veths end with them), of its warm spares
    // (src/vm/spares.ts names them) and of its template builds (src/vm/templates.ts: pvtpl-<the
    // builder's pid>-), and its pods' own cgroups
    const sparePrefix = `pvsp-${crypto.createHash('sha256').update(path.join(this.state, 'spares')).digest('hex').slice(0, 6)}-`;
    const podNetns = this.podNetns();
    for (const ns of fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []) {
      const builder = /^pvtpl-(\d+)-/.exec(ns)?.[1];
      if (ns.startsWith(sparePrefix) || podNetns.has(ns) || this.pids.includes(Number(builder))) spawnSync('ip', ['netns', 'delete', ns]);
    }
    await this.removePodCgroups();
    // mounts under the scratch dir (a host pod backend's shared state dir, whatever a failed
    // test left): detached, deepest first, so the directory can go
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(this.dir + '/'));
    for (const m of mounts.sort((a, b) => b.length - a.length)) spawnSync('umount', ['-l', m]);
    // PV_KEEP_LOG=<file>: keep the daemon's log of a test run (debugging a failure);
    // PV_KEEP_LOGS_DIR=<dir>: keep every test daemon's log there (a whole-suite run's rare failure)
    const log = path.join(this.dir, 'daemon.log');
    if (process.env.PV_KEEP_LOG) fs.copyFileSync(log, process.env.PV_KEEP_LOG);
    if (process.env.PV_KEEP_LOGS_DIR && fs.existsSync(log)) {
      fs.mkdirSync(process.env.PV_KEEP_LOGS_DIR, { recursive: true });
      // the test file's name when run by jest (bench/ uses this class outside jest)
      const testPath = typeof expect === 'undefined' ? undefined : expect.getState().testPath;
      const testFile = path.basename(testPath ?? 'daemon', '.test.ts');
      fs.copyFileSync(log, path.join(process.env.PV_KEEP_LOGS_DIR, `${testFile}-${path.basename(this.dir)}.log`));
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.rmSync(this.templateDir, { recursive: true, force: true });
  }

  /** The pod records the daemon left in its root (`<root>/sandboxes`, src/store): complete or pending. */
  private podRecords(): Array<{ id: string; config?: { linux?: { cgroup_parent?: string } } }> {
    return jsonFiles(path.join(this.root, 'sandboxes')).filter((r) => typeof r.id === 'string');
  }

  /** Names of the netns its pods have (network/network-driver.ts names them; its CNI cache says so too). */
  private podNetns(): Set<string> {
    const names = new Set(this.podRecords().map((r) => netnsNameFor(r.id)));
    for (const e of jsonFiles(path.join(this.root, 'cni'))) if (typeof e.netnsName === 'string' && e.netnsName && !e.externalNetns) names.add(e.netnsName);
    return names;
  }

  /** Each pod's own cgroup (src/runtime/pod-cgroup.ts), once its VM is gone; kubelet's parents stay. */
  private async removePodCgroups(): Promise<void> {
    for (const r of this.podRecords()) {
      const parent = r.config?.linux?.cgroup_parent;
      if (!parent) continue;
      for (const driver of ['cgroupfs', 'systemd'] as CgroupDriver[]) {
        const dirs = await podCgroupDirs(parent, driver, r.id).catch(() => []); // not this driver's form
        await removeCgroups(dirs.filter((dir) => fs.existsSync(dir))).catch(() => undefined);
      }
    }
  }
}

/** The JSON files of `dir`, parsed (those that are not: left out). */
function jsonFiles(dir: string): any[] {
  let files: string[];
  try {
    files = fs.readdirSync(dir).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
  return files.flatMap((f) => {
    try {
      return [JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'))];
    } catch {
      return [];
    }
  });
}

/**
 * QEMU processes of the daemon's pods under `state`: warm spares that no pod has taken yet (their
 * directory is still in <state>/spares) left out. Taken spares count: they are pods.
 */
export function podQemuPids(state: string): number[] {
  let spares: string[] = [];
  try {
    spares = fs.readdirSync(path.join(state, 'spares'));
  } catch {
    /* none */
  }
  return qemuPidsUnder(state).filter((pid) => {
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      return false; // gone
    }
    const m = /podvisor-(spare-[0-9a-f]+)/.exec(cmdline);
    return !(m && spares.includes(m[1]));
  });
}

/** QEMU processes whose command line mentions `dir` (leak checks and cleanup). */
export function qemuPidsUnder(dir: string): number[] {
  let out = '';
  try {
    out = execFileSync('pgrep', ['-f', `qemu-system.*${dir}`], { encoding: 'utf8' });
  } catch {
    return [];
  }
  return out.split('\n').filter(Boolean).map(Number);
}

/** A minimal, valid sandbox config in the shape kubelet sends. */
export function podConfig(name: string, logDir: string, extra: Record<string, unknown> = {}): any {
  return {
    metadata: { name, namespace: 'e2e', uid: `${name}-uid-${Date.now()}`, attempt: 0 },
    hostname: name,
    log_directory: logDir,
    labels: { app: name, 'io.kubernetes.pod.name': name },
    annotations: { 'e2e/annotation': 'kept' },
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    ...extra,
  };
}

/** Calls `fn` until it resolves, every `everyMs`, failing with its last error after `ms`. */
export async function retry<T>(fn: () => Promise<T>, ms = 30_000, everyMs = 300): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }
}

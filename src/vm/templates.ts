// VM templates: a booted, paused VM whose RAM lives in a file on tmpfs and whose device state is
// saved beside it (Vm.snapshot; QEMU: x-ignore-shared). Built from the Hypervisor interface,
// whatever the driver. Pods then start as private copy-on-write clones of it in ~0.1 s
// and share the template's untouched pages. A template is keyed by everything a clone must
// match; any change means a new template, never a broken clone.
//
// A template is a pod's RAM and device state, restored as root: its directory and every one above
// it must be root's and writable by root alone (src/util/trusted-path.ts), checked when the daemon
// starts (init refuses to go on otherwise) and again for each template before it is used; the
// template key is computable by anyone, so where it lives is what must be trusted.
//
// A build belongs to the process that runs it (daemon or `podvisor template build`): its work
// directory and scratch netns carry that pid, so a daemon starting after a crash reaps what a
// dead builder left (its QEMU, files and netns) and never touches a live one's.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import type { AgentCallObserver, AgentClient } from '../agent/client';
import { hello } from '../agent/hello';
import { deleteNetns, NETNS_DIR } from '../../network/netns';
import { run } from '../util/exec-file';
import { processAlive } from '../util/process-alive';
import type { Logger } from '../util/log';
import { type Hypervisor, type Vm, VM_NAME_FILE, type VmSpec } from './hypervisor';
import { checkTrustedDir, checkTrustedEntry, ensureTrustedDir } from '../util/trusted-path';

/** The MAC every template NIC has; a clone's agent sets the pod's own MAC. */
export const TEMPLATE_MAC = '02:50:56:00:00:01';
/**
 * How long a template's cold boot may take to answer its hello. A build runs beside the pods
 * (they boot cold until it is done), so it may be slow, but not stuck: a VM that dies ends it at
 * once. Generous because a cold TCG boot on a loaded host took over 30 s (issue 17 item 7).
 */
const TEMPLATE_BOOT_TIMEOUT_MS = 120_000;

export interface SizeClass {
  vcpus: number;
  memoryMiB: number;
  nics: number;
}

export interface TemplateMeta extends SizeClass {
  key: string;
  createdAt: string;
  inputs: Record<string, string>;
  buildMs: number;
}

export interface TemplateOptions {
  /** on tmpfs, e.g. /dev/shm/podvisor/templates */
  dir: string;
  /** the driver that boots templates (and whose inputs key them) */
  driver: Hypervisor;
  /** versions of the guest build (sha256 of kernel, initramfs) */
  guestDigest: () => string;
  logger: Logger;
  /** told of the guest API calls of template builds */
  agentCalls?: AgentCallObserver;
  /** how long a template's boot may take to answer its hello (default TEMPLATE_BOOT_TIMEOUT_MS) */
  bootTimeoutMs?: number;
}

/**
 * Taps tap0…tap<n-1> in `netns`, for VMs made before their pod exists (templates, spares); the
 * MACs are placeholders, the agent sets the pod's.
 */
export async function createScratchTaps(netns: string, n: number): Promise<Array<{ tap: string; mac: string }>> {
  const nics = [];
  for (let i = 0; i < n; i++) {
    await run('ip', ['-n', netns, 'tuntap', 'add', 'dev', `tap${i}`, 'mode', 'tap', 'vnet_hdr']);
    nics.push({ tap: `tap${i}`, mac: i === 0 ? TEMPLATE_MAC : TEMPLATE_MAC.replace(/01$/, (i + 1).toString(16).padStart(2, '0')) });
  }
  return nics;
}

export class TemplateManager {
  private readonly builds = new Map<string, Promise<TemplateMeta>>();
  private readonly broken = new Set<string>();

  constructor(private readonly o: TemplateOptions) {}

  /**
   * Creates the template directory or checks it (throws UntrustedPathError when it is not root's
   * alone), then reaps the builds of processes that died mid-way.
   */
  async init(): Promise<void> {
    await ensureTrustedDir(this.o.dir);
    await this.reapDeadBuilds();
  }

  /** A dead builder's work directories (their QEMU killed first) and scratch netns (any template dir's). */
  private async reapDeadBuilds(): Promise<void> {
    for (const name of await fsp.readdir(this.o.dir)) {
      const m = BUILD_DIR.exec(name);
      if (!m || processAlive(Number(m[1]))) continue;
      const dir = path.join(this.o.dir, name);
      const pid = await this.o.driver.reapStray(dir).catch(() => undefined);
      this.o.logger.info({ dir, qemuPid: pid }, 'reaped an interrupted template build');
      await fsp.rm(dir, { recursive: true, force: true });
    }
    let nets: string[] = [];
    try {
      nets = fs.readdirSync(NETNS_DIR);
    } catch {
      /* no netns at all */
    }
    for (const n of nets) {
      const m = BUILD_NETNS.exec(n);
      if (m && !processAlive(Number(m[1]))) await deleteNetns(n).catch(() => undefined);
    }
  }

  /** Whether a template's directory and files are root's alone (and the dirs above them). */
  private trusted(key: string): boolean {
    const p = this.paths(key);
    try {
      checkTrustedDir(p.dir);
      for (const f of [p.meta, p.state, p.mem]) checkTrustedEntry(f, 'file');
      return true;
    } catch (err) {
      if (fs.existsSync(p.dir)) this.o.logger.error({ key, err }, 'template refused: not trusted');
      return false;
    }
  }

  sizeOf(spec: VmSpec): SizeClass {
    return { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, nics: spec.network?.nics.length ?? 0 };
  }

  /** template builds under way */
  get building(): number {
    return this.builds.size;
  }

  /** Usable templates on disk (cheaper than list(): does not ask whether they are in use). */
  count(): number {
    try {
      return fs.readdirSync(this.o.dir).filter((k) => this.read(k)).length;
    } catch {
      return 0;
    }
  }

  /** Everything that must match for a clone to be valid. */
  keyInputs(size: SizeClass): Record<string, string> {
    return {
      ...this.o.driver.templateKeyInputs(),
      guest: this.o.guestDigest(),
      size: `${size.vcpus}x${size.memoryMiB}x${size.nics}`,
    };
  }

  keyOf(size: SizeClass): string {
    return crypto.createHash('sha256').update(JSON.stringify(this.keyInputs(size))).digest('hex').slice(0, 32);
  }

  private paths(key: string) {
    const dir = path.join(this.o.dir, key);
    return { dir, mem: path.join(dir, 'mem'), state: path.join(dir, 'state'), meta: path.join(dir, 'meta.json') };
  }

  /** The template to clone for this VM, built first if needed; undefined = cold boot. */
  async cloneSource(spec: VmSpec): Promise<{ memPath: string; statePath: string } | undefined> {
    const size = this.sizeOf(spec);
    const key = this.keyOf(size);
    if (this.broken.has(key)) return undefined;
    try {
      await this.ensure(size);
    } catch (err) {
      this.o.logger.warn({ key, err }, 'template build failed: pods of this size cold-boot');
      this.broken.add(key);
      setTimeout(() => this.broken.delete(key), 60_000).unref(); // try again later
      return undefined;
    }
    const p = this.paths(key);
    return { memPath: p.mem, statePath: p.state };
  }

  /** A clone failed: its template is suspect, so rebuild it next time. */
  failed(spec: VmSpec): void {
    const key = this.keyOf(this.sizeOf(spec));
    if (!this.inUse(key)) fs.rmSync(this.paths(key).dir, { recursive: true, force: true });
  }

  /** Returns the template for `size`, building it when missing; concurrent callers share one build. */
  ensure(size: SizeClass): Promise<TemplateMeta> {
    const key = this.keyOf(size);
    const existing = this.read(key);
    if (existing) return Promise.resolve(existing);
    let build = this.builds.get(key);
    if (!build) {
      build = this.build(key, size).finally(() => this.builds.delete(key));
      this.builds.set(key, build);
    }
    return build;
  }

  /** The template's metadata when all its files are there (a reboot or wiped tmpfs loses them). */
  read(key: string): TemplateMeta | undefined {
    const p = this.paths(key);
    if (!/^[0-9a-f]{32}$/.test(key) || !this.trusted(key)) return undefined;
    try {
      const meta = JSON.parse(fs.readFileSync(p.meta, 'utf8')) as TemplateMeta;
      if (meta.key !== key || !fs.existsSync(p.state) || fs.statSync(p.mem).size !== meta.memoryMiB * 1024 * 1024) return undefined;
      return meta;
    } catch {
      return undefined;
    }
  }

  list(): Array<TemplateMeta & { inUse: boolean }> {
    let names: string[] = [];
    try {
      names = fs.readdirSync(this.o.dir);
    } catch {
      return [];
    }
    return names.flatMap((k) => {
      const m = this.read(k);
      return m ? [{ ...m, inUse: this.inUse(k) }] : [];
    });
  }

  /** A template is in use while any VM maps its memory file. */
  inUse(key: string): boolean {
    return this.o.driver.memoryFileInUse(this.paths(key).mem);
  }

  /** Deletes a template unless a clone still uses it. */
  async remove(key: string): Promise<boolean> {
    if (this.inUse(key)) return false;
    await fsp.rm(this.paths(key).dir, { recursive: true, force: true });
    return true;
  }

  private async build(key: string, size: SizeClass): Promise<TemplateMeta> {
    const t0 = Date.now();
    const p = this.paths(key);
    const work = `${p.dir}.build-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
    await ensureTrustedDir(this.o.dir);
    await fsp.mkdir(work, { mode: 0o700 });
    await fsp.mkdir(path.join(work, 'share'), { mode: 0o700 });
    const netns = size.nics ? `pvtpl-${process.pid}-${crypto.randomBytes(3).toString('hex')}` : undefined;
    let vm: Vm | undefined;
    let agent: AgentClient | undefined;
    try {
      // reapDeadBuilds finds the build's QEMU by this name (the work dir's is not the VM's)
      await fsp.writeFile(path.join(work, VM_NAME_FILE), `template-${key}`);
      // The template's NICs need a tap backend; a scratch netns holds it until the snapshot.
      if (netns) await run('ip', ['netns', 'add', netns]);
      const nics = netns ? await createScratchTaps(netns, size.nics) : [];
      const spec: VmSpec = {
        id: `template-${key}`,
        dir: work,
        vcpus: size.vcpus,
        memoryMiB: size.memoryMiB,
        sharePath: path.join(work, 'share'),
        network: netns ? { netnsPath: `/run/netns/${netns}`, nics } : undefined,
      };
      const log = this.o.logger.child({ key, size: `${size.vcpus}x${size.memoryMiB}x${size.nics}` });
      const ms = () => Date.now() - t0;
      log.info({ accel: this.o.driver.accelerator }, 'template build: booting the VM');
      vm = await this.o.driver.start(spec, { mode: 'template', memPath: path.join(work, 'mem') });
      log.info({ ms: ms(), pid: vm.info.pid }, 'template build: VM started, waiting for the guest agent');
      agent = await vm.connectAgent(10_000, this.o.agentCalls);
      // The agent connection stays open through the snapshot: the clones then restore a port
      // that never saw its host go away, so no late "host disconnected" in a clone can undo
      // the clone's own hello.
      const died = vm.exited.then(() => { throw new Error('template VM exited during boot'); });
      await hello(agent, { nonce: key, hostname: 'template', timeoutMs: this.o.bootTimeoutMs ?? TEMPLATE_BOOT_TIMEOUT_MS, died });
      log.info({ ms: ms() }, 'template build: guest ready, saving the snapshot');
      await vm.snapshot(path.join(work, 'state'));
      log.info({ ms: ms(), stateBytes: (await fsp.stat(path.join(work, 'state'))).size }, 'template build: snapshot saved');
      await vm.stop(2000);
      vm = undefined;
      const meta: TemplateMeta = { key, ...size, createdAt: new Date().toISOString(), inputs: this.keyInputs(size), buildMs: Date.now() - t0 };
      await writeFileAtomic(path.join(work, 'meta.json'), JSON.stringify(meta), { mode: 0o600 });
      for (const f of ['mem', 'state']) await fsp.chmod(path.join(work, f), 0o600); // root's alone, whatever the umask
      await fsp.rm(path.join(work, 'share'), { recursive: true, force: true });
      for (const f of [...this.o.driver.runtimeFiles, VM_NAME_FILE]) await fsp.rm(path.join(work, f), { force: true });
      // Publish atomically: a half-built template is never visible under its key.
      await fsp.rm(p.dir, { recursive: true, force: true });
      await fsp.rename(work, p.dir);
      this.o.logger.info({ key, ...size, buildMs: meta.buildMs }, 'VM template built');
      return meta;
    } catch (err) {
      // the build dir goes with the failure: keep the end of the guest's console in the log
      const guestConsole = await readTail(path.join(work, 'console.log'), 4096);
      this.o.logger.warn({ key, ...size, err, console: guestConsole }, 'VM template build failed');
      throw err;
    } finally {
      agent?.close();
      if (vm) await vm.stop(0).catch(() => undefined);
      if (netns) await run('ip', ['netns', 'delete', netns]).catch(() => undefined);
      await fsp.rm(work, { recursive: true, force: true });
    }
  }
}

/** A build's work directory (`<key>.build-<pid>-<hex>`) and scratch netns (`pvtpl-<pid>-<hex>`): the builder's pid. */
const BUILD_DIR = /\.build-(\d+)-[0-9a-f]+$/;
const BUILD_NETNS = /^pvtpl-(\d+)-[0-9a-f]+$/;

/** The last `max` bytes of a file as text ('' when it cannot be read). */
async function readTail(file: string, max: number): Promise<string> {
  const fh = await fsp.open(file, 'r').catch(() => undefined);
  if (!fh) return '';
  try {
    const { size } = await fh.stat();
    const buf = Buffer.alloc(Math.min(max, size));
    await fh.read(buf, 0, buf.length, size - buf.length);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    await fh.close();
  }
}

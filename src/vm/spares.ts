// Warm spares: clones of a template that are already restored, running and greeted before any
// pod asks for them. RunPodSandbox then skips QEMU's start-up and the first pass of the guest
// through the agent's code (under TCG, the first run of every code path pays for translation),
// and only gives the spare its identity: hello with the pod's nonce, fresh entropy and clock,
// then the pod's hostname, DNS and network.
//
// A spare belongs to no pod until taken: its files live under <state>/spares/<name> and move to
// the pod's directory when taken; its taps (if its size class has NICs) wait in a netns of its
// own and move into the pod netns once CNI has run. Only the configured size classes get spares
// (the default one and those prebuilt), and only the class in use: taking from one class drops
// the spares of the others (e.g. NICs or nothing as CNI comes and goes). Spares never outlive
// the daemon.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { AgentCallObserver, AgentClient } from '../agent/client';
import { hello } from '../agent/hello';
import type { Logger } from '../util/log';
import { ownNice, setProcessNice } from '../util/priority';
import { createNetns, deleteNetns, netnsPath } from '../../network/netns';
import { type Hypervisor, SHARE_DIR_MODE, type Vm, VM_NAME_FILE, type VmSpec } from './hypervisor';
import { createScratchTaps, SizeClass, TemplateManager } from './templates';

export interface Spare {
  readonly name: string;
  readonly key: string;
  readonly size: SizeClass;
  readonly vm: Vm;
  readonly agent: AgentClient;
  /** holds the spare's taps until a pod's network takes them; absent without NICs */
  readonly netns?: string;
  readonly taps: string[];
}

export interface SparePoolOptions {
  /** the driver spares are cloned with */
  hypervisor: Hypervisor;
  templates: TemplateManager;
  /** <state>/spares: same filesystem as the pods' VM directories (spares are renamed into them) */
  dir: string;
  /** spares kept per size class in use; 0 = none */
  count: number;
  /** the size classes (vCPUs × MiB) worth spares: the default and the prebuilt ones */
  classes: Array<{ vcpus: number; memoryMiB: number }>;
  logger: Logger;
  /** told of every guest API call of the spares (the pod that takes one keeps its connection) */
  agentCalls?: AgentCallObserver;
}

const NETNS_PREFIX = 'pvsp-';
/** in a pod's VM directory: the name its QEMU was started with, when that is not the pod's */
export { VM_NAME_FILE } from './hypervisor';
/** locally administered, never a pod's (CNI bridge MACs come from the kernel or the plugin) */
const SPARE_MAC = '02:50:56:00:00:fe';
/**
 * How much lower than the daemon a spare's QEMU runs while it is made and while it waits: a
 * spare is launched as a pod comes up and would otherwise take CPU from that pod's
 * CreateContainer and first exec (under TCG, seconds of guest work on a busy node). A taken
 * spare runs at the daemon's priority again, as every other pod VM.
 */
const SPARE_NICE = 10;

export class SparePool {
  private readonly ready = new Map<string, Spare[]>();
  private readonly filling = new Map<string, Promise<void>>();
  private closed = false;
  /** spares being made: close() stops their VMs at once rather than waiting for a boot */
  private readonly launching = new Set<{ vm?: Vm; agent?: AgentClient }>();
  /** consecutive failed launches, and the timer of the next try */
  private failures = 0;
  private retry: NodeJS.Timeout | undefined;
  /** per pool (several daemons may share a host, e.g. in tests): reap() only touches its own */
  private readonly netnsPrefix: string;

  constructor(private readonly o: SparePoolOptions) {
    this.netnsPrefix = `${NETNS_PREFIX}${crypto.createHash('sha256').update(o.dir).digest('hex').slice(0, 6)}-`;
  }

  get enabled(): boolean {
    return this.o.count > 0 && !this.closed;
  }

  private eligible(size: SizeClass): boolean {
    return this.enabled && this.o.classes.some((c) => c.vcpus === size.vcpus && c.memoryMiB === size.memoryMiB);
  }

  /**
   * Pops a live spare of this size class (undefined when none is ready). The caller owns what
   * it gets: it adopts the spare or must discard() it; and it calls fill() once its pod's start
   * is answered (not before: on 2 cores a spare booting next to the pod slows the pod down).
   */
  take(size: SizeClass): Spare | undefined {
    if (!this.eligible(size)) return undefined;
    const key = this.o.templates.keyOf(size);
    for (const [k, list] of this.ready) {
      if (k === key) continue;
      this.ready.delete(k);
      for (const s of list) void this.discard(s);
    }
    const list = this.ready.get(key) ?? [];
    let spare: Spare | undefined;
    while ((spare = list.shift())) {
      if (spare.vm.alive() && !spare.agent.closed) break;
      void this.discard(spare);
    }
    if (spare) this.renice(spare.vm, ownNice());
    return spare;
  }

  /** A spare's CPU priority; a failure costs only speed (logged). */
  private renice(vm: Vm, nice: number): void {
    try {
      setProcessNice(vm.info.pid, nice);
    } catch (err) {
      this.o.logger.warn({ pid: vm.info.pid, nice, err }, 'could not set the priority of a spare VM');
    }
  }

  /** Spares ready to be taken, all classes. */
  readyCount(): number {
    let n = 0;
    for (const list of this.ready.values()) n += list.length;
    return n;
  }

  /** Tops the class up to `count` spares (if it gets spares at all); concurrent calls share one fill. */
  fill(size: SizeClass): Promise<void> {
    if (!this.eligible(size)) return Promise.resolve();
    const key = this.o.templates.keyOf(size);
    let f = this.filling.get(key);
    if (!f) {
      f = this.doFill(key, size).finally(() => this.filling.delete(key));
      this.filling.set(key, f);
    }
    return f;
  }

  private async doFill(key: string, size: SizeClass): Promise<void> {
    clearTimeout(this.retry);
    while (this.enabled && (this.ready.get(key)?.length ?? 0) < this.o.count) {
      let spare: Spare;
      try {
        spare = await this.launch(key, size);
        this.failures = 0;
      } catch (err) {
        if (this.closed) return; // stopped by close(): nothing to retry
        // e.g. a guest too slow to answer on a loaded node: try again later, not only when
        // the next pod comes (which would then start without a spare)
        const delayMs = Math.min(60_000, 2_000 * 2 ** this.failures++);
        this.o.logger.warn({ key, err, retryInMs: delayMs }, 'could not make a spare pod VM; pods start as plain clones meanwhile');
        this.retry = setTimeout(() => void this.fill(size), delayMs);
        this.retry.unref();
        return;
      }
      // the class may have changed (or the pool closed) while this one booted
      if (!this.enabled || this.o.templates.keyOf(size) !== key || [...this.ready.keys()].some((k) => k !== key)) {
        await this.discard(spare);
        return;
      }
      const list = this.ready.get(key) ?? [];
      list.push(spare);
      this.ready.set(key, list);
    }
  }

  private async launch(key: string, size: SizeClass): Promise<Spare> {
    const name = `spare-${crypto.randomBytes(6).toString('hex')}`;
    const dir = path.join(this.o.dir, name);
    await fsp.mkdir(path.join(dir, 'shared'), { recursive: true, mode: SHARE_DIR_MODE });
    const netns = size.nics > 0 ? `${this.netnsPrefix}${name.slice('spare-'.length)}` : undefined;
    let vm: Vm | undefined;
    let agent: AgentClient | undefined;
    const inFlight: { vm?: Vm; agent?: AgentClient } = {};
    this.launching.add(inFlight);
    // a close() that came while an await was pending: stop here (its VM was stopped by close)
    const open = () => {
      if (this.closed) throw new Error('spare pool closed');
    };
    try {
      const nics = netns ? (await createNetns(netns), await createScratchTaps(netns, size.nics)) : [];
      const spec: VmSpec = {
        id: name,
        dir,
        vcpus: size.vcpus,
        memoryMiB: size.memoryMiB,
        sharePath: path.join(dir, 'shared'),
        network: netns ? { netnsPath: netnsPath(netns), nics } : undefined,
      };
      const src = await this.o.templates.cloneSource(spec);
      if (!src) throw new Error('no template to clone');
      vm = inFlight.vm = await this.o.hypervisor.start(spec, { mode: 'clone', ...src });
      this.renice(vm, ownNice() + SPARE_NICE);
      open();
      agent = inFlight.agent = await vm.connectAgent(10_000, this.o.agentCalls); // the connection the clone resumed with
      open();
      // A first identity, replaced by the pod's at adoption; this pass also runs (and so
      // translates, under TCG) the code the adoption will run again.
      await hello(agent, { nonce: name, hostname: 'spare', timeoutMs: 10_000 });
      // mounts the share (this spare's own, the pod's once adopted) and the pod /dev/shm
      await agent.call('sandbox.setup', { hostname: 'spare', dns: null, share_tag: vm.shareTag, sysctls: {} }, 10_000);
      // The NIC code path too, with no address and a MAC of its own (the pod's replaces it; the
      // MAC change takes the link down, which drops this MAC's IPv6 link-local address). Its tap
      // is down in the spare's netns: nothing leaves.
      if (nics.length) await agent.call('network.configure', { interfaces: [{ name: 'eth0', mac: SPARE_MAC, mtu: 1500, addresses: [] }], routes: [] }, 10_000);
      open();
      await fsp.writeFile(path.join(dir, 'ready'), ''); // for operators and tests: this one can be taken
      this.o.logger.debug({ spare: name, key, pid: vm.info.pid }, 'spare pod VM ready');
      return { name, key, size, vm, agent, netns, taps: nics.map((n) => n.tap) };
    } catch (err) {
      agent?.close();
      await vm?.stop(0).catch(() => undefined);
      if (netns) await deleteNetns(netns).catch(() => undefined);
      await removeDir(dir);
      throw err;
    } finally {
      this.launching.delete(inFlight);
    }
  }

  /**
   * Moves a taken spare's files to `dir` (the pod's VM directory) and points its VmInfo there.
   * QEMU holds its files open, and its sockets are found by path, so the move is invisible to
   * it; the QEMU process keeps the spare's name (VmInfo.id), by which a restarted daemon
   * recognises it.
   */
  async moveTo(spare: Spare, dir: string): Promise<void> {
    await fsp.rename(path.join(this.o.dir, spare.name), dir);
    // the QEMU process is named after the spare: a restarted daemon that finds this directory
    // without a record must still recognise (and reap) it
    await fsp.writeFile(path.join(dir, VM_NAME_FILE), spare.name);
    const info = spare.vm.info;
    info.dir = dir;
    info.agentSocket = path.join(dir, path.basename(info.agentSocket));
    info.qmpSocket = path.join(dir, path.basename(info.qmpSocket));
  }

  /** Stops a spare and removes everything it had (a taken one too, if its pod did not start). */
  async discard(spare: Spare): Promise<void> {
    spare.agent.close();
    await spare.vm.stop(0).catch(() => undefined);
    if (spare.netns) await deleteNetns(spare.netns).catch(() => undefined);
    await removeDir(path.join(this.o.dir, spare.name));
  }

  /** Daemon start: spares of an earlier daemon are nobody's; kill them and drop their files. */
  async reap(): Promise<void> {
    let names: string[] = [];
    try {
      names = await fsp.readdir(this.o.dir);
    } catch {
      /* none yet */
    }
    for (const name of names) {
      await this.o.hypervisor.reapStray(path.join(this.o.dir, name)).catch(() => undefined);
      await fsp.rm(path.join(this.o.dir, name), { recursive: true, force: true });
    }
    let nets: string[] = [];
    try {
      nets = fs.readdirSync('/run/netns').filter((n) => n.startsWith(this.netnsPrefix));
    } catch {
      /* no netns at all */
    }
    for (const n of nets) await deleteNetns(n).catch(() => undefined);
  }

  /** Daemon stop: spares are not pods, they go with the daemon. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    // A spare still booting is stopped now: its launch fails and removes what it made. Waiting
    // for the boot instead (seconds under TCG on a loaded host) could outlast a service
    // manager's stop timeout, and a killed daemon leaves the spare behind.
    for (const l of this.launching) {
      l.agent?.close();
      void l.vm?.stop(0).catch(() => undefined);
    }
    await Promise.allSettled([...this.filling.values()]);
    const all = [...this.ready.values()].flat();
    this.ready.clear();
    await Promise.all(all.map((s) => this.discard(s)));
  }
}

/** A VM directory QEMU may still be writing to as it exits (its log): retried, not left half-removed. */
function removeDir(dir: string): Promise<void> {
  return fsp.rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

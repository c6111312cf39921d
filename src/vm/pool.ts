// The VM pool above the hypervisor driver: VM templates (pods start as copy-on-write clones of
// a booted, snapshotted VM) and warm spares (clones already running and greeted before a pod
// asks). It is itself a Hypervisor: start() clones when a template of the VM's size class can
// be had and cold-boots otherwise, so the pod backend does not care whether templates are on.
// Built from the Hypervisor/Vm interface only, whatever the driver; the daemon constructs it
// with the driver, nothing is injected afterwards. Templates and spares start their VMs through
// the pool too, so it knows every VM the daemon runs (counts() for the metrics endpoint).
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { AgentCallObserver } from '../agent/client';
import type { Logger } from '../util/log';
import type { Accelerator, Boot, Hypervisor, Vm, VmInfo, VmSpec } from './hypervisor';
import { SparePool } from './spares';
import { SizeClass, TemplateManager } from './templates';

export interface VmPoolOptions {
  driver: Hypervisor;
  logger: Logger;
  /** told of every guest API call of templates and spares being made */
  agentCalls?: AgentCallObserver;
  /** absent: templates off (every VM cold-boots, no spares) */
  templates?: {
    /** on tmpfs, e.g. /dev/shm/podvisor/templates */
    dir: string;
    /** identifies the guest build (kernel, initramfs) */
    guestDigest: () => string;
    /** size classes built at start, in the background */
    prebuild: SizeClass[];
    /** warm spares per size class in use; 0 = none */
    spares: number;
    /** <state>/spares */
    sparesDir: string;
    /** the default pod size (it gets spares, as do the prebuilt classes) */
    defaultSize: { vcpus: number; memoryMiB: number };
  };
}

/** How a running VM came to be: booted as a template, cloned from one, or cold-booted. */
export type VmOrigin = Boot['mode'];

/** What the pool holds right now (the metrics endpoint's gauges). */
export interface PoolCounts {
  /** running VMs by origin: pods', spares' and templates' being built */
  vms: Record<VmOrigin, number>;
  /** usable templates on disk */
  templates: number;
  /** template builds under way */
  templateBuilds: number;
  /** warm spares ready to be taken */
  spares: number;
}

export class VmPool implements Hypervisor {
  readonly templates?: TemplateManager;
  readonly spares?: SparePool;
  /** every VM started or reconnected through the pool and still running */
  private readonly running = new Map<Vm, VmOrigin>();

  constructor(private readonly o: VmPoolOptions) {
    const t = o.templates;
    if (!t) return;
    // both start their VMs through the pool (which hands a boot mode straight to the driver)
    this.templates = new TemplateManager({ dir: t.dir, driver: this, guestDigest: t.guestDigest, logger: o.logger, agentCalls: o.agentCalls });
    this.spares = new SparePool({
      hypervisor: this, templates: this.templates, dir: t.sparesDir, count: t.spares,
      classes: [t.defaultSize, ...t.prebuild], logger: o.logger, agentCalls: o.agentCalls,
    });
  }

  counts(): PoolCounts {
    const vms: Record<VmOrigin, number> = { cold: 0, clone: 0, template: 0, restore: 0 };
    for (const origin of this.running.values()) vms[origin]++;
    return { vms, templates: this.templates?.count() ?? 0, templateBuilds: this.templates?.building ?? 0, spares: this.spares?.readyCount() ?? 0 };
  }

  private track(vm: Vm, origin: VmOrigin): Vm {
    this.running.set(vm, origin);
    void vm.exited.then(() => this.running.delete(vm));
    return vm;
  }

  get accelerator(): Accelerator {
    return this.o.driver.accelerator;
  }

  get runtimeFiles(): readonly string[] {
    return this.o.driver.runtimeFiles;
  }

  readiness(): Promise<string | undefined> {
    return this.o.driver.readiness();
  }

  /** Removes what spares of an earlier daemon left; then builds the prebuilt classes in the background (pods never wait on this). */
  async open(): Promise<void> {
    await this.templates?.init(); // refuses to start on a template dir that is not root's alone
    await this.spares?.reap();
    for (const size of this.o.templates?.prebuild ?? []) {
      this.templates!.ensure(size).catch((err) => this.o.logger.error({ size, err }, 'template prebuild failed'));
    }
  }

  /** With `boot`, exactly that; without, a clone of the size class's template when there is one, else a cold boot. */
  async start(spec: VmSpec, boot?: Boot): Promise<Vm> {
    if (boot) return this.track(await this.o.driver.start(spec, boot), boot.mode);
    const src = await this.templates?.cloneSource(spec).catch(() => undefined);
    if (src) {
      try {
        return this.track(await this.o.driver.start(spec, { mode: 'clone', ...src }), 'clone');
      } catch (err) {
        this.o.logger.warn({ sandbox: spec.id, err }, 'clone from template failed: cold boot instead');
        this.templates!.failed(spec);
        for (const f of this.o.driver.runtimeFiles) await fsp.rm(path.join(spec.dir, f), { force: true });
      }
    }
    return this.track(await this.o.driver.start(spec, { mode: 'cold' }), 'cold');
  }

  async reconnect(info: VmInfo): Promise<Vm | undefined> {
    const vm = await this.o.driver.reconnect(info);
    return vm && this.track(vm, info.bootMode);
  }

  reapStray(dir: string): Promise<number | undefined> {
    return this.o.driver.reapStray(dir);
  }

  templateKeyInputs(): Record<string, string> {
    return this.o.driver.templateKeyInputs();
  }

  checkpointKeyInputs(): Record<string, string> {
    return this.o.driver.checkpointKeyInputs();
  }

  memoryFileInUse(memPath: string): boolean {
    return this.o.driver.memoryFileInUse(memPath);
  }

  /** Daemon stop: spares go with the daemon (pods stay). */
  async close(): Promise<void> {
    await this.spares?.close();
  }
}

// The VM pool above the hypervisor driver: VM templates (pods start as copy-on-write clones of
// a booted, snapshotted VM) and warm spares (clones already running and greeted before a pod
// asks). It is itself a Hypervisor: start() clones when a template of the VM's size class can
// be had and cold-boots otherwise, so the pod backend does not care whether templates are on.
// Built from the Hypervisor/Vm interface only, whatever the driver; the daemon constructs it
// with the driver, nothing is injected afterwards.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../util/log';
import type { Accelerator, Boot, Hypervisor, Vm, VmInfo, VmSpec } from './hypervisor';
import { SparePool } from './spares';
import { SizeClass, TemplateManager } from './templates';

export interface VmPoolOptions {
  driver: Hypervisor;
  logger: Logger;
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

export class VmPool implements Hypervisor {
  readonly templates?: TemplateManager;
  readonly spares?: SparePool;

  constructor(private readonly o: VmPoolOptions) {
    const t = o.templates;
    if (!t) return;
    this.templates = new TemplateManager({ dir: t.dir, driver: o.driver, guestDigest: t.guestDigest, logger: o.logger });
    this.spares = new SparePool({
      hypervisor: o.driver, templates: this.templates, dir: t.sparesDir, count: t.spares,
      classes: [t.defaultSize, ...t.prebuild], logger: o.logger,
    });
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
      this.templates!.ensure(size).catch((err) => this.o.logger.error({ size, err: err.message }, 'template prebuild failed'));
    }
  }

  /** With `boot`, exactly that; without, a clone of the size class's template when there is one, else a cold boot. */
  async start(spec: VmSpec, boot?: Boot): Promise<Vm> {
    if (boot) return this.o.driver.start(spec, boot);
    const src = await this.templates?.cloneSource(spec).catch(() => undefined);
    if (src) {
      try {
        return await this.o.driver.start(spec, { mode: 'clone', ...src });
      } catch (err) {
        this.o.logger.warn({ sandbox: spec.id, err: (err as Error).message }, 'clone from template failed: cold boot instead');
        this.templates!.failed(spec);
        for (const f of this.o.driver.runtimeFiles) await fsp.rm(path.join(spec.dir, f), { force: true });
      }
    }
    return this.o.driver.start(spec, { mode: 'cold' });
  }

  reconnect(info: VmInfo): Promise<Vm | undefined> {
    return this.o.driver.reconnect(info);
  }

  reapStray(dir: string): Promise<number | undefined> {
    return this.o.driver.reapStray(dir);
  }

  templateKeyInputs(): Record<string, string> {
    return this.o.driver.templateKeyInputs();
  }

  memoryFileInUse(memPath: string): boolean {
    return this.o.driver.memoryFileInUse(memPath);
  }

  /** Daemon stop: spares go with the daemon (pods stay). */
  async close(): Promise<void> {
    await this.spares?.close();
  }
}

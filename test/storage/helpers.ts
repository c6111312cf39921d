// Shared set-up for the storage tests: a bare QEMU (microvm, no kernel, paused) that only
// serves QMP, wrapped as a PodVolumeTarget (its block devices through the QEMU driver's SCSI
// hot-plug, src/vm/qemu-scsi.ts) whose agent is a recorder; loop devices that are
// always detached; and the test's own share of the mount table, to prove nothing got mounted on
// the host.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../src/vm/qmp';
import type { GuestDiskMount, GuestNfsMount, PodVolumeTarget } from '../../storage/volume-driver';
import type { BlockAddress, BlockAttachment, BlockSource } from '../../src/util/block-source';
import { ScsiBus, volumeNames } from '../../src/vm/qemu-scsi';

export interface AgentCall {
  method: string;
  params: Record<string, any>;
}

export class BareVm implements PodVolumeTarget {
  /** QEMU's stdout (HMP qemu-io prints there) */
  static stdout = '';
  readonly calls: AgentCall[] = [];
  /** what the fake agent answers; throw to simulate an agent error */
  agentHandler: (c: AgentCall) => any = () => ({});
  private dead = false;
  private readonly bus: ScsiBus;

  private constructor(readonly id: string, readonly dir: string, private readonly proc: ChildProcess, readonly client: QmpClient) {
    this.bus = new ScsiBus(client);
    proc.once('exit', () => { this.dead = true; });
  }

  static async start(): Promise<BareVm> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-qemu-'));
    const sock = path.join(dir, 'qmp.sock');
    const proc = spawn('qemu-system-x86_64', [
      '-M', 'microvm', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-nographic', '-S', '-m', '64M',
      '-device', 'virtio-scsi-device,id=scsi0', '-qmp', `unix:${sock},server=on,wait=off`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (d) => { stderr += d; });
    proc.stdout!.on('data', (d) => { BareVm.stdout += d; });
    try {
      const client = await Promise.race([
        QmpClient.connect(sock, 15_000),
        new Promise<never>((_, rej) => proc.once('exit', () => rej(new Error(`qemu exited: ${stderr}`)))),
      ]);
      return new BareVm(`bare-${crypto.randomBytes(4).toString('hex')}`, dir, proc, client);
    } catch (err) {
      proc.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  alive(): boolean {
    return !this.dead;
  }
  /** for the tests' own inspection of QEMU (never used by storage/) */
  qmp(command: string, args?: Record<string, unknown>): Promise<any> {
    return this.client.execute(command, args);
  }
  // the volume target: block sources through the QEMU driver's one SCSI hot-plug, the guest a recorder
  attachBlock(tag: string, source: BlockSource, o: { readonly: boolean }): Promise<BlockAttachment> {
    return this.bus.plug(volumeNames(tag), source, o.readonly);
  }
  async detachBlock(tag: string, scsiId?: number): Promise<void> {
    if (!this.alive()) {
      if (scsiId !== undefined) this.bus.release(scsiId);
      return;
    }
    await this.bus.unplug(volumeNames(tag), scsiId);
  }
  sweepBlocks(): Promise<void> {
    return this.bus.sweep('pvvol-');
  }
  private async agentCall(method: string, params: object): Promise<any> {
    const c = { method, params: params as Record<string, any> };
    this.calls.push(c);
    return this.agentHandler(c);
  }
  async mountDisk(p: GuestDiskMount): Promise<void> {
    await this.agentCall('disk.mount', p);
  }
  diskDevice(a: BlockAddress): Promise<{ device: string; major: number; minor: number }> {
    return this.agentCall('disk.device', { scsi_id: a.scsiId, lun: a.lun });
  }
  async mountNfs(p: GuestNfsMount): Promise<void> {
    await this.agentCall('nfs.mount', p);
  }
  async unmount(target: string): Promise<void> {
    await this.agentCall('disk.unmount', { target });
  }
  get scsiIdsInUse(): number[] {
    return this.bus.inUse;
  }

  /** node names, scsi devices and pvvol objects currently in QEMU */
  async inventory(): Promise<{ nodes: string[]; devices: string[]; objects: string[]; blocks: string[] }> {
    const nodes = ((await this.qmp('query-named-block-nodes', { flat: true })) as any[]).map((n) => n['node-name']);
    const devices = ((await this.qmp('qom-list', { path: '/machine/peripheral' })) as any[]).filter((p) => p.type.startsWith('child<')).map((p) => p.name);
    const objects = ((await this.qmp('qom-list', { path: '/objects' })) as any[]).map((p) => p.name).filter((n: string) => n.startsWith('pvvol'));
    const blocks = ((await this.qmp('query-block')) as any[]).map((b) => b.qdev ?? b.device);
    return { nodes, devices, objects, blocks };
  }

  async stop(): Promise<void> {
    if (!this.dead) {
      await this.client.execute('quit').catch(() => undefined);
      const t = Date.now();
      while (!this.dead && Date.now() - t < 3000) await new Promise((r) => setTimeout(r, 20));
      if (!this.dead) this.proc.kill('SIGKILL');
      while (!this.dead) await new Promise((r) => setTimeout(r, 20));
    }
    this.client.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Loop devices backed by sparse temp files; detachAll() must run in afterAll. */
export class Loops {
  private readonly devs: string[] = [];
  private readonly files: string[] = [];

  create(sizeMiB = 16): string {
    const file = path.join(os.tmpdir(), `pv-loop-${crypto.randomBytes(4).toString('hex')}.img`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, sizeMiB << 20);
    this.files.push(file);
    const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
    this.devs.push(dev);
    return dev;
  }

  /** the devices attached so far (for ownMounts) */
  get devices(): string[] {
    return [...this.devs];
  }

  detachAll(): void {
    for (const d of this.devs.splice(0)) {
      try { execFileSync('losetup', ['-d', d]); } catch { /* already gone */ }
    }
    for (const f of this.files.splice(0)) fs.rmSync(f, { force: true });
  }
}

/** What a test owns: its scratch dirs, and the sources (devices, `server:` prefixes) it made. */
export interface MountScope {
  dirs?: string[];
  /** a device path (matched exactly) or an NFS server as `address:` (matched as a prefix) */
  sources?: string[];
}

/**
 * The mount table entries a test answers for (to prove it mounted nothing on the host): those
 * at or under one of its dirs, or from one of its sources, as "target (fstype from source)".
 * Not a global before/after compare: two e2e slots run at once, and the other run's pods,
 * kubelets and NFS clients mount and unmount their own things meanwhile.
 */
export function ownMounts(scope: MountScope): string[] {
  const dirs = (scope.dirs ?? []).filter(Boolean).map((d) => path.resolve(d));
  const sources = (scope.sources ?? []).filter(Boolean);
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).flatMap((line) => {
    const [pre, post = ''] = line.split(' - ');
    const target = pre.split(' ')[4].replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    const [fstype, source = ''] = post.split(' ');
    const ours = dirs.some((d) => target === d || target.startsWith(`${d}/`))
      || sources.some((s) => (s.endsWith(':') ? source.startsWith(s) : source === s));
    return ours ? [`${target} (${fstype} from ${source})`] : [];
  }).sort();
}

export function qemuAvailable(): boolean {
  try {
    execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function rbdDriverAvailable(): boolean {
  try {
    return execFileSync('qemu-system-x86_64', ['-blockdev', 'help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).includes('rbd')
      || fs.existsSync('/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so');
  } catch {
    return fs.existsSync('/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so');
  }
}

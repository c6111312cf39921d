// Shared set-up for the storage tests: a bare QEMU (microvm, no kernel, paused) that only
// serves QMP, wrapped as a PodVolumeTarget whose block devices go through the QEMU driver's own
// Vm (QemuVm over that process: the attach, detach and sweep a pod VM uses) and whose agent is a
// recorder; loop devices that are always detached; and the test's own share of the mount table,
// to prove nothing got mounted on the host.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../src/vm/qmp';
import { QemuVm } from '../../src/vm/qemu';
import type { VmInfo } from '../../src/vm/hypervisor';
import type { GuestDiskMount, GuestNfsMount, PodVolumeTarget } from '../../storage/volume-driver';
import type { BlockAddress, BlockAttachment, BlockSource } from '../../src/util/block-source';

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

  private constructor(readonly id: string, readonly dir: string, private readonly proc: ChildProcess, private readonly vm: QemuVm) {}

  static async start(): Promise<BareVm> {
    const id = `bare-${crypto.randomBytes(4).toString('hex')}`;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-qemu-'));
    const sock = path.join(dir, 'qmp.sock');
    const proc = spawn('qemu-system-x86_64', [
      '-M', 'microvm', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-nographic', '-S', '-m', '64M',
      '-device', 'virtio-scsi-device,id=scsi0', '-qmp', `unix:${sock},server=on,wait=off`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    let stderr = '';
    proc.stderr!.on('data', (d) => { stderr += d; });
    proc.stdout!.on('data', (d) => { BareVm.stdout += d; });
    try {
      const client = await Promise.race([
        QmpClient.connect(sock, 15_000),
        exited.then((): never => { throw new Error(`qemu exited: ${stderr}`); }),
      ]);
      const info: VmInfo = {
        id, pid: proc.pid ?? -1, accelerator: 'tcg', bootMode: 'cold', dir,
        agentSocket: path.join(dir, 'agent.sock'), qmpSocket: sock, vcpus: 1, memoryMiB: 64, disks: [],
      };
      // the launcher is only for bindIntoMountNs, which the storage tests never call
      return new BareVm(id, dir, proc, new QemuVm(info, client, exited, 'podvisor-launch'));
    } catch (err) {
      proc.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  alive(): boolean {
    return this.vm.alive();
  }
  /** for the tests' own inspection of QEMU (never used by storage/) */
  qmp(command: string, args?: Record<string, unknown>): Promise<any> {
    return this.vm.qmp.execute(command, args);
  }
  // the volume target: block sources as a pod VM attaches them, the guest a recorder
  attachBlock(tag: string, source: BlockSource, o: { readonly: boolean }): Promise<BlockAttachment> {
    return this.vm.attachBlock(tag, source, o);
  }
  detachBlock(tag: string, scsiId?: number): Promise<void> {
    return this.vm.detachBlock(tag, scsiId);
  }
  sweepBlocks(): Promise<void> {
    return this.vm.sweepBlocks();
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
    return this.vm.scsiIdsInUse;
  }

  /** node names, scsi devices and pvvol objects currently in QEMU */
  async inventory(): Promise<{ nodes: string[]; devices: string[]; objects: string[]; blocks: string[] }> {
    const nodes = ((await this.qmp('query-named-block-nodes', { flat: true })) as any[]).map((n) => n['node-name']);
    const devices = ((await this.qmp('qom-list', { path: '/machine/peripheral' })) as any[]).filter((p) => p.type.startsWith('child<')).map((p) => p.name);
    const objects = ((await this.qmp('qom-list', { path: '/objects' })) as any[]).map((p) => p.name).filter((n: string) => n.startsWith('pvvol'));
    const blocks = ((await this.qmp('query-block')) as any[]).map((b) => b.qdev ?? b.device);
    return { nodes, devices, objects, blocks };
  }

  /** QEMU quits (killed after 3 s), as the driver stops a pod VM; its directory goes. */
  async stop(): Promise<void> {
    await this.vm.stop(3000);
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await this.vm.exited;
    }
    this.vm.qmp.close();
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

// QEMU driver: one `qemu-system-x86_64 -M microvm` process per pod, booting the podvisor guest
// kernel (PVH vmlinux) and initramfs, or restoring a template's clone (templates and spares sit
// above the driver: pool.ts). The VM outlives the daemon (own session, pid file), so a
// restarted daemon finds it again through its QMP and agent sockets.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type net from 'node:net';
import path from 'node:path';
import { AgentClient, type AgentCallObserver } from '../agent/client';
import { DEFAULT_TCG_CODE_MIB, DEFAULT_VM_LOG_CAP_KIB } from '../config/config';
import type { Logger } from '../util/log';
import { Accelerator, Boot, DiskAttachment, Hypervisor, Vm, VM_NAME_FILE, VmInfo, VmSpec } from './hypervisor';
import type { BlockAttachment, BlockSource } from '../util/block-source';
import { diskNames, ScsiBus, volumeNames } from './qemu-scsi';
import { QmpClient } from './qmp';
import { LogSweep } from './log-bound';
import { run } from '../util/exec-file';
import { processAlive } from '../util/process-alive';
import { connectWhenReady } from '../util/unix-socket';

export interface QemuOptions {
  binary: string;
  kernel: string;
  initramfs: string;
  /** extra kernel command line */
  kernelArgs: string;
  accelerator: Accelerator;
  /** TCG's translated-code buffer, MiB (QEMU tb-size); default DEFAULT_TCG_CODE_MIB */
  tcgCodeMiB?: number;
  /** all of QEMU's anonymous memory may be merged by KSM (podvisor-launch --ksm) */
  ksm?: boolean;
  /** the most a VM's console.log and qemu.log may hold (vm/log-bound.ts) */
  logCapBytes?: number;
  logger: Logger;
  /**
   * the podvisor-launch helper (launcher/): opens the pod's taps inside its netns, gives QEMU
   * its own mount namespace, execs QEMU. Default: `podvisor-launch` next to the guest kernel.
   */
  launcher?: string;
}

/** QEMU gets the i-th tap as file descriptor TAP_FD_BASE + i (podvisor-launch puts it there). */
export const TAP_FD_BASE = 3;

export function launcherPath(o: Pick<QemuOptions, 'kernel' | 'launcher'>): string {
  return o.launcher || path.join(path.dirname(o.kernel), 'podvisor-launch');
}

const AGENT_PORT = 'podvisor.agent';
const MIB = 1024 * 1024;
export const SHARE_TAG = 'podshare';

/** Host TSC in kHz: TCG guests can hang calibrating without this hint. */
export function hostTscKhz(): number | undefined {
  try {
    const m = /cpu MHz\s*:\s*([\d.]+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? Math.round(parseFloat(m[1]) * 1000) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The guest kernel's fixed command line (templates are keyed on it). `init_on_alloc=0`: Debian's
 * kernel zeroes every page it allocates (CONFIG_INIT_ON_ALLOC_DEFAULT_ON, hardening against
 * kernel leaks of stale memory), and every guest page written is a template page the host copies
 * privately for that pod: off, an idle pod's guest RAM is 7.1 instead of 8.6 MiB PSS at 50 pods
 * (bench/README, issue 21). What a stale page can hold in a pod VM is the pod's own: its
 * containers', its agent's and kernel's, or the template's (the same in every pod, before any
 * pod's identity); pages never cross pods (each pod is its own VM).
 */
export const GUEST_KERNEL_ARGS = ['console=ttyS0', 'quiet', 'panic=-1', 'nokaslr', 'mitigations=off', 'no_timer_check', 'tsc=reliable', 'reboot=t', 'init_on_alloc=0'];

export function kernelCmdline(extra: string): string {
  const khz = hostTscKhz();
  const parts = [...GUEST_KERNEL_ARGS];
  if (khz) parts.push(`tsc_early_khz=${khz}`);
  if (extra) parts.push(extra);
  return parts.join(' ');
}

// Bump when the device layout below changes: templates are keyed on it.
// 3: NICs are tap file descriptors opened by podvisor-launch (QEMU runs in the host netns).
// 4: a virtio-balloon device (in-place resize: RAM beyond a pod's size is ballooned).
export const DEVICE_LAYOUT_VERSION = 4;

export function qemuArgs(spec: VmSpec, o: Pick<QemuOptions, 'kernel' | 'initramfs' | 'kernelArgs' | 'accelerator' | 'tcgCodeMiB'>, boot: Boot = { mode: 'cold' }): string[] {
  const f = (name: string) => path.join(spec.dir, name);
  const accel = o.accelerator === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', `tcg,tb-size=${o.tcgCodeMiB ?? DEFAULT_TCG_CODE_MIB}`, '-cpu', 'max'];
  // a checkpointed clone's RAM block is named after its backend ("mem"): its restore has one too
  const mem = boot.mode === 'cold' ? [] : boot.mode === 'restore' ? (boot.ramBackend ? ['-object', `memory-backend-ram,id=mem,size=${spec.memoryMiB}M`] : []) : [
    '-object', `memory-backend-file,id=mem,size=${spec.memoryMiB}M,mem-path=${boot.memPath},share=${boot.mode === 'template' ? 'on' : 'off'}`,
  ];
  const args = [
    '-name', `podvisor-${spec.id},process=podvisor-${spec.id.slice(0, 12)}`,
    '-M', `microvm,x-option-roms=off,rtc=on${mem.length ? ',memory-backend=mem' : ''}`,
    ...accel,
    ...mem,
    '-m', `${spec.memoryMiB}M`,
    '-smp', String(spec.vcpus),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-kernel', o.kernel,
    '-initrd', o.initramfs,
    '-append', kernelCmdline(o.kernelArgs),
    '-chardev', `file,id=console,path=${f('console.log')},append=on`, // O_APPEND: log-bound.ts cuts it
    '-serial', 'chardev:console',
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${f('agent.sock')},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent,name=${AGENT_PORT}`,
    '-device', 'virtio-scsi-device,id=scsi0',
    '-object', 'rng-random,id=rng0,filename=/dev/urandom',
    '-device', 'virtio-rng-device,rng=rng0',
    // in-place resize (runtime/resize.ts): RAM beyond the pod's size; no deflate-on-oom, so a
    // pod cannot take back what it was resized down from
    '-device', 'virtio-balloon-device,id=balloon0',
    '-fsdev', `local,id=share,path=${spec.sharePath},security_model=passthrough,multidevs=remap`,
    '-device', `virtio-9p-device,fsdev=share,mount_tag=${SHARE_TAG}`,
    '-qmp', `unix:${f('qmp.sock')},server=on,wait=off`,
    '-pidfile', f('qemu.pid'),
  ];
  spec.network?.nics.forEach((nic, i) => {
    // fd: the tap lives in the pod netns, QEMU in the host's (see launchArgv)
    args.push('-netdev', `tap,id=net${i},fd=${TAP_FD_BASE + i}`);
    args.push('-device', `virtio-net-device,netdev=net${i},mac=${nic.mac}`);
  });
  // profiling aid (bench/profile.ts): a second QMP socket for `info jit` and `log in_asm` while
  // the daemon holds the first; the VM directory is the daemon's alone, as for qmp.sock
  if (process.env.PODVISOR_DEBUG_QMP === '1') args.push('-qmp', `unix:${f('qmp-debug.sock')},server=on,wait=off`);
  if (boot.mode === 'clone' || boot.mode === 'restore') args.push('-incoming', 'defer');
  return args;
}

export class QemuHypervisor implements Hypervisor {
  /** one check of every live VM's console.log and qemu.log (log-bound.ts) */
  private readonly logSweep = new LogSweep();

  constructor(private readonly o: QemuOptions) {}

  /** Bounds the VM's logs in `dir` until the returned stop() (the VM's end). */
  private boundLogs(dir: string): () => void {
    const cap = this.o.logCapBytes ?? DEFAULT_VM_LOG_CAP_KIB * 1024;
    return this.logSweep.watch([path.join(dir, 'console.log'), path.join(dir, 'qemu.log')], cap);
  }

  get accelerator(): Accelerator {
    return this.o.accelerator;
  }

  async readiness(): Promise<string | undefined> {
    for (const [what, p] of [['QEMU binary', this.o.binary], ['guest kernel', this.o.kernel], ['guest initramfs', this.o.initramfs], ['podvisor-launch', launcherPath(this.o)]]) {
      try {
        await fsp.access(p, what === 'QEMU binary' || what === 'podvisor-launch' ? fs.constants.X_OK : fs.constants.R_OK);
      } catch {
        return `${what} not found at ${p}`;
      }
    }
    return undefined;
  }

  templateKeyInputs(): Record<string, string> {
    return {
      qemu: `${this.o.binary}:${fileDigest(this.o.binary)}`,
      kernelArgs: this.o.kernelArgs,
      guestArgs: GUEST_KERNEL_ARGS.join(' '),
      layout: String(DEVICE_LAYOUT_VERSION),
      accel: this.o.accelerator,
      cpu: this.o.accelerator === 'kvm' ? 'host' : 'max',
    };
  }

  checkpointKeyInputs(): Record<string, string> {
    const k = this.templateKeyInputs();
    return { qemu: k.qemu, layout: k.layout, accel: k.accel, cpu: k.cpu };
  }

  memoryFileInUse(memPath: string): boolean {
    for (const pid of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`mem-path=${memPath},`)) return true;
      } catch {
        /* exited meanwhile */
      }
    }
    return false;
  }

  readonly runtimeFiles = ['agent.sock', 'qmp.sock', 'qemu.pid'] as const;

  /** Spawns QEMU and connects QMP; a clone is restored and running when this resolves. */
  async start(spec: VmSpec, boot: Boot = { mode: 'cold' }): Promise<QemuVm> {
    const args = qemuArgs(spec, this.o, boot);
    // The VM's directory (sockets, console and QEMU logs, the share) is root's alone: a guest's
    // console can carry anything the pod prints at boot. QEMU creates console.log with the
    // process umask, so it is made here first.
    fs.chmodSync(spec.dir, 0o700);
    fs.closeSync(fs.openSync(path.join(spec.dir, 'console.log'), 'a', 0o600));
    fs.chmodSync(path.join(spec.dir, 'console.log'), 0o600);
    const out = fs.openSync(path.join(spec.dir, 'qemu.log'), 'a', 0o600);
    fs.fchmodSync(out, 0o600);
    const launcher = launcherPath(this.o);
    if (!fs.existsSync(launcher)) throw new Error(`podvisor-launch not found at ${launcher} (bash guest/build.sh builds it next to the guest kernel)`);
    // Huge pages buy nothing for a clone's RAM (a file mapped privately) nor under TCG (guest
    // memory goes through QEMU's soft TLB), and cost 2 MiB per VM for each small block touched.
    const argv = launchArgv(spec, launcher, this.o.binary, args, {
      noThp: boot.mode === 'clone' || this.o.accelerator === 'tcg',
      ksm: this.o.ksm,
      noPunchHole: ramPrivatelyMapsSharedFile(boot),
    });
    // detached: the VM must survive a daemon restart; its lifetime is managed through QMP.
    const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    child.unref();
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    const info: VmInfo = {
      id: spec.id,
      pid: child.pid ?? -1,
      accelerator: this.o.accelerator,
      bootMode: boot.mode === 'clone' ? 'clone' : boot.mode === 'restore' ? 'restore' : 'cold',
      ramBackend: boot.mode === 'clone' || (boot.mode === 'restore' && boot.ramBackend),
      dir: spec.dir,
      agentSocket: path.join(spec.dir, 'agent.sock'),
      qmpSocket: path.join(spec.dir, 'qmp.sock'),
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      disks: [],
    };
    let qmp: QmpClient;
    try {
      qmp = await Promise.race([QmpClient.connect(info.qmpSocket, 10_000), spawnError, exited.then(() => { throw new Error(`QEMU exited at start: ${tail(path.join(spec.dir, 'qemu.log'))}`); })]);
    } catch (err) {
      try { process.kill(info.pid, 'SIGKILL'); } catch { /* gone */ }
      throw err;
    }
    const vm = new QemuVm(info, qmp, exited, launcher, this.boundLogs(info.dir));
    if (boot.mode === 'clone' || boot.mode === 'restore') {
      try {
        // a checkpointed VM's disks, at their old addresses, before its device state loads
        if (boot.mode === 'restore') await vm.replugDisks(boot.disks);
        vm.keepAgentConnection(await restoreClone(qmp, boot.statePath, info.agentSocket, boot.mode === 'clone'));
      } catch (err) {
        await vm.stop(0);
        throw err;
      }
    }
    this.o.logger.info({ sandbox: spec.id, pid: info.pid, accel: info.accelerator, boot: info.bootMode, vcpus: spec.vcpus, memoryMiB: spec.memoryMiB }, 'VM started');
    return vm;
  }

  async reconnect(info: VmInfo): Promise<Vm | undefined> {
    if (!isOurQemu(info.pid, info.id)) return undefined;
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(info.qmpSocket, 2_000);
    } catch {
      return undefined;
    }
    // Not our child any more: the QMP socket closing is how we learn the process ended.
    const exited = new Promise<void>((resolve) => {
      const check = () => (processAlive(info.pid) ? setTimeout(check, 1000).unref() : resolve());
      qmp.once('close', () => setTimeout(check, 10));
    });
    return new QemuVm(info, qmp, exited, launcherPath(this.o), this.boundLogs(info.dir));
  }

  async reapStray(dir: string): Promise<number | undefined> {
    let pid: number;
    try {
      pid = Number((await fsp.readFile(path.join(dir, 'qemu.pid'), 'utf8')).trim());
    } catch {
      return undefined; // no pid file: nothing running
    }
    // a VM that started as a warm spare is named after the spare
    const name = (await fsp.readFile(path.join(dir, VM_NAME_FILE), 'utf8').catch(() => path.basename(dir))).trim();
    if (!(pid > 0) || !isOurQemu(pid, name)) return undefined;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return undefined;
    }
    return pid;
  }
}

/**
 * QEMU runs in the host network namespace, so its own connections (librbd to the Ceph monitors
 * and OSDs) use the host's network; the pod netns, where tc mirred sends every frame arriving on
 * the CNI interface to the tap, only carries the guest's traffic. podvisor-launch enters the pod
 * netns just to attach the taps (fds TAP_FD_BASE…), comes back, gives QEMU a mount namespace of
 * its own (slave: host mounts still reach it; the binds that feed the 9p share are made inside
 * it, so nothing is ever mounted in the host's namespace and every bind vanishes with the VM)
 * and execs QEMU, keeping the pid.
 */
export function launchArgv(spec: VmSpec, launcher: string, binary: string, qemuArgs: string[], o: { noThp?: boolean; ksm?: boolean; noPunchHole?: boolean } = {}): string[] {
  const argv = [launcher, '--mount-ns'];
  if (o.noThp) argv.push('--no-thp');
  if (o.ksm) argv.push('--ksm');
  if (o.noPunchHole) argv.push('--no-punch-hole');
  if (spec.network) {
    argv.push('--netns', spec.network.netnsPath);
    for (const nic of spec.network.nics) argv.push('--tap', nic.tap);
  }
  return [...argv, '--', binary, ...qemuArgs];
}

/**
 * Whether the VM's RAM is a file it maps privately that others read: a clone's RAM is its
 * template's `mem` file (`memory-backend-file,share=off`, qemuArgs), which every other clone of
 * that template maps too. QEMU 7.2 discards a file-backed RAM page (balloon inflation, i.e. a
 * resize down or a pod started below its ceiling) by punching a hole into the file, private
 * mapping or not: that would zero the template's page under every clone. Such a VM's QEMU runs
 * under podvisor-launch --no-punch-hole (launcher/src/nopunch.rs): the punch fails and 7.2 then
 * skips the discard, so the guest still gives the ballooned pages up but their host memory is
 * not returned. A template VM maps its own file shared (it is the file's writer); a restored
 * checkpoint's RAM is anonymous (memory-backend-ram); a cold boot's is QEMU's own.
 */
export function ramPrivatelyMapsSharedFile(boot: Boot): boolean {
  return boot.mode === 'clone';
}

/** the agent port's chardev (qemuArgs: `-chardev socket,id=agent,…`) */
const AGENT_CHARDEV = 'agent';

/**
 * Loads a template's device state into a clone started with `-incoming defer`, connects to the
 * agent port while the clone is still paused, then runs it. Returns that connection (the
 * caller's Vm.connectAgent hands it over).
 *
 * Why the host connects before the clone runs: the template was saved with its builder
 * connected, and virtio-serial saves each port's "host connected" bit. When a restored VM
 * resumes, QEMU compares the saved bit with the port's chardev at that moment
 * (virtio_serial_post_load_timer_cb, on the first tick of the running VM) and, if nobody is
 * connected yet, tells the guest "host closed" (VIRTIO_CONSOLE_PORT_OPEN 0). That close belongs
 * to no connection the clone ever had, and the guest cannot tell it from a real one: its kernel
 * handles port control messages on a workqueue, unordered with the port's data, so under load
 * the agent could read and answer the new host's hello first and take the close after it, then
 * want a hello again ("sandbox.setup: hello first", issue 17 item 7). Connected before `cont`,
 * the saved and the current bit agree and QEMU sends the guest nothing: from the guest's side
 * the template's connection simply goes on (guest/PROTOCOL.md, "Handshake").
 */
async function restoreClone(qmp: QmpClient, statePath: string, agentSocket: string, ignoreShared: boolean): Promise<net.Socket> {
  // a clone's RAM is the template's file (not in the state); a checkpoint's is in the state
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }] });
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
  // a checkpoint carries the VM's RAM: reading it takes longer than a template's device state
  const deadline = Date.now() + (ignoreShared ? 10_000 : 120_000);
  for (;;) {
    const st = await qmp.execute('query-status');
    if (st.status !== 'inmigrate') break;
    if (Date.now() > deadline) throw new Error(`VM state did not load within ${ignoreShared ? 10 : 120} s`);
    await new Promise((r) => setTimeout(r, 5));
  }
  const mig = await qmp.execute('query-migrate');
  if (mig.status === 'failed') throw new Error(`loading VM state failed: ${mig['error-desc'] ?? 'unknown error'}`);
  // its own 10 s: the load that slowed the restore must not fail the connect (a failed clone
  // boots cold and marks its template failed)
  const connectDeadline = Date.now() + 10_000;
  const agent = await connectWhenReady(agentSocket, 10_000, async (sock) => sock);
  agent.on('error', ignore); // until it is handed over
  try {
    // connect() returns once the kernel queued the connection; the port is the host's once
    // QEMU accepted it (its chardev then drops the "disconnected:" from its name)
    while (!(await chardevConnected(qmp, AGENT_CHARDEV))) {
      if (agent.destroyed) throw new Error('the agent port closed the connection before the clone ran');
      if (Date.now() > connectDeadline) throw new Error('the agent port did not take the connection within 10 s');
      await new Promise((r) => setTimeout(r, 5));
    }
    await qmp.execute('cont');
  } catch (err) {
    agent.destroy();
    throw err;
  }
  return agent;
}

/** Whether a socket chardev has a client (QEMU names an unconnected one "disconnected:…"). */
async function chardevConnected(qmp: QmpClient, label: string): Promise<boolean> {
  const devs: Array<{ label: string; filename: string }> = await qmp.execute('query-chardev');
  const dev = devs.find((d) => d.label === label);
  if (!dev) throw new Error(`QEMU has no chardev "${label}"`);
  return !dev.filename.startsWith('disconnected:');
}

function ignore(): void {
  /* an error on a connection nobody has taken yet: whoever takes it sees it closed */
}

export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export class QemuVm implements Vm {
  private dead = false;
  /** the one virtio-scsi controller: image disks and volumes */
  private readonly bus: ScsiBus;
  /** a clone's agent connection, opened before it resumed (restoreClone), until connectAgent takes it */
  private agentConnection: net.Socket | undefined;

  /** `unboundLogs`: ends the bound on its logs (QemuHypervisor's sweep), called when QEMU exits */
  constructor(readonly info: VmInfo, readonly qmp: QmpClient, readonly exited: Promise<void>, private readonly launcher: string, unboundLogs?: () => void) {
    exited.then(() => {
      unboundLogs?.();
      this.dead = true;
      qmp.close();
    });
    this.bus = new ScsiBus(qmp, info.disks.map((d) => d.scsiId));
  }

  readonly shareTag = SHARE_TAG;

  alive(): boolean {
    return !this.dead && processAlive(this.info.pid);
  }

  /** @internal start(): the connection restoreClone opened */
  keepAgentConnection(sock: net.Socket): void {
    this.agentConnection = sock;
  }

  async connectAgent(timeoutMs: number, observe?: AgentCallObserver): Promise<AgentClient> {
    const sock = this.agentConnection;
    this.agentConnection = undefined;
    if (!sock) {
      const deadline = Date.now() + timeoutMs;
      if (this.info.bootMode === 'cold') await this.firmwareDone(deadline);
      return AgentClient.connect(this.info.agentSocket, Math.max(1, deadline - Date.now()), observe);
    }
    sock.off('error', ignore);
    return AgentClient.over(sock, observe);
  }

  /**
   * A booting VM (cold or template mode: firmware + -kernel) is not connected to before its
   * kernel printed its first console line. QEMU 7.2 hands the firmware the PVH kernel's ELF
   * header (fw_cfg SETUP_DATA) as a pointer into a stack frame of its main thread that returned
   * during machine init; qboot reads it at boot to choose PVH over bzImage. Work on QEMU's main
   * thread before that read (accepting the agent connection: chardev open, virtio-serial port
   * event) can overwrite those bytes; qboot then takes the bzImage path and its fw_cfg read of
   * the absent kernel data zero-fills the kernel (0x1000000, kernel_size bytes): the vCPU jumps
   * into zeros and the VM never boots. Console output means the kernel runs: the header was read.
   * Until the deadline at most; then connect anyway.
   */
  private async firmwareDone(deadline: number): Promise<void> {
    const consoleLog = path.join(this.info.dir, 'console.log');
    while (Date.now() < deadline) {
      try {
        if (fs.statSync(consoleLog).size > 0) return;
      } catch { /* not there yet */ }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  reserveScsiIds(ids: number[]): void {
    this.bus.reserve(ids);
  }

  /** SCSI target ids its disks and volumes hold now (for inspection: tests of release after detach) */
  get scsiIdsInUse(): number[] {
    return this.bus.inUse;
  }

  async attachDisk(file: string, readonly: boolean): Promise<DiskAttachment> {
    const scsiId = this.bus.alloc();
    const nodeName = `disk${scsiId}`;
    const addr = await this.bus.plug(diskNames(nodeName), { kind: 'file', path: file }, readonly, scsiId);
    const d: DiskAttachment = { nodeName, scsiId: addr.scsiId, lun: addr.lun, path: file, readonly };
    this.info.disks.push(d);
    return d;
  }

  /** @internal start(): a restored VM's disks, each at the SCSI address it had when checkpointed */
  async replugDisks(disks: DiskAttachment[]): Promise<void> {
    this.bus.reserve(disks.map((d) => d.scsiId));
    for (const d of disks) {
      const addr = await this.bus.plug(diskNames(d.nodeName), { kind: 'file', path: d.path }, d.readonly, d.scsiId);
      if (addr.scsiId !== d.scsiId || addr.lun !== d.lun) throw new Error(`disk ${d.nodeName} came back at ${addr.scsiId}:${addr.lun}, not ${d.scsiId}:${d.lun}`);
      this.info.disks.push({ ...d });
    }
  }

  async detachDisk(nodeName: string): Promise<void> {
    const idx = this.info.disks.findIndex((d) => d.nodeName === nodeName);
    if (idx < 0) return;
    if (this.alive()) await this.bus.unplug(diskNames(nodeName));
    this.bus.release(this.info.disks[idx].scsiId);
    this.info.disks.splice(idx, 1);
  }

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

  /**
   * Host path `src` (with the mounts under it) appears at `dst` inside QEMU's own mount
   * namespace, never the host's: podvisor-launch clones the tree in the host's namespace, so
   * host mounts made after QEMU started are included whatever the host's propagation.
   * `readonly`: the top mount only (mounts under it keep their mode).
   */
  async bindIntoMountNs(src: string, dst: string, readonly: boolean): Promise<void> {
    await run(this.launcher, ['bind', ...(readonly ? ['--ro'] : []), `/proc/${this.info.pid}/ns/mnt`, src, dst]);
  }

  async setMemory(mib: number, timeoutMs: number): Promise<void> {
    if (!Number.isInteger(mib) || mib < 1 || mib > this.info.memoryMiB) throw new Error(`guest RAM ${mib} MiB is outside 1..${this.info.memoryMiB} MiB`);
    const actual = async () => Number((await this.qmp.execute('query-balloon')).actual) / MIB;
    const before = await actual();
    const reach = async (target: number, until: number): Promise<boolean> => {
      await this.qmp.execute('balloon', { value: target * MIB });
      // the guest moves pages a batch at a time; within a MiB of the target is there
      for (;;) {
        if (Math.abs((await actual()) - target) < 1) return true;
        if (Date.now() > until) return false;
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    if (await reach(mib, Date.now() + timeoutMs)) return;
    const stuck = Math.round(await actual());
    await reach(Math.round(before), Date.now() + timeoutMs).catch(() => false);
    throw new Error(`the guest did not get to ${mib} MiB of RAM within ${timeoutMs} ms (stuck at ${stuck} MiB; asked back ${Math.round(before)} MiB)`);
  }

  /** x-ignore-shared: the RAM (the template's memory file) is not written into the state */
  async snapshot(statePath: string): Promise<void> {
    await this.qmp.execute('stop');
    await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` });
    const deadline = Date.now() + 30_000;
    for (;;) {
      const m = await this.qmp.execute('query-migrate');
      if (m.status === 'completed') break;
      if (m.status === 'failed' || m.status === 'cancelled') throw new Error(`saving template state failed: ${m['error-desc'] ?? m.status}`);
      if (Date.now() > deadline) throw new Error('saving template state timed out');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** query-migrate's blocked-reasons (QEMU 7.2 no longer sets the deprecated `blocked` flag; the reasons are what it has) */
  async checkpointBlockers(): Promise<string[]> {
    const m = await this.qmp.execute('query-migrate');
    const reasons = Array.isArray(m['blocked-reasons']) ? m['blocked-reasons'].map(String) : [];
    return reasons.length || !m.blocked ? reasons : ['the hypervisor refuses to save this VM'];
  }

  /**
   * The whole VM (RAM included: x-ignore-shared off, also for a clone whose RAM maps a
   * template file) written by QEMU's migration stream, paused, so the state is one instant.
   */
  async checkpoint(statePath: string, o: { resume: boolean; timeoutMs: number }): Promise<void> {
    await this.qmp.execute('stop');
    let saved = false;
    try {
      await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: false }] });
      await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` });
      const deadline = Date.now() + o.timeoutMs;
      for (;;) {
        const m = await this.qmp.execute('query-migrate');
        if (m.status === 'completed') break;
        if (m.status === 'failed' || m.status === 'cancelled') throw new Error(`saving the VM state failed: ${m['error-desc'] ?? m.status}`);
        if (Date.now() > deadline) {
          await this.qmp.execute('migrate_cancel').catch(() => undefined);
          throw new Error(`saving the VM state took longer than ${o.timeoutMs} ms`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      saved = true;
    } finally {
      // a failed save leaves the VM running as it was; a successful one resumes it when asked
      if (o.resume || !saved) await this.qmp.execute('cont').catch(() => undefined);
    }
  }

  async stop(graceMs: number): Promise<void> {
    this.agentConnection?.destroy();
    this.agentConnection = undefined;
    if (!this.alive()) return;
    await this.qmp.execute('quit').catch(() => undefined);
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
    if ((await Promise.race([this.exited.then(() => 'exited' as const), timer])) === 'timeout') {
      try { process.kill(this.info.pid, 'SIGKILL'); } catch { /* already gone */ }
      await Promise.race([this.exited, new Promise((r) => setTimeout(r, 2000))]);
    }
    this.dead = true;
  }
}

function fileDigest(file: string): string {
  try {
    const st = fs.statSync(file);
    return `${st.size}:${Math.trunc(st.mtimeMs)}`;
  } catch {
    return 'missing';
  }
}

/** Guards against pid reuse: the process must be QEMU running this sandbox. */
export function isOurQemu(pid: number, id: string): boolean {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes('qemu-system') && cmdline.includes(`podvisor-${id}`);
  } catch {
    return false;
  }
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-2000).trim();
  } catch {
    return '';
  }
}

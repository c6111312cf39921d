// A running host pod behind the Pod interface (runtime/pod-backend.ts): pinned namespaces (or
// the host's), containers each held by a shim (shim-client.ts), which also holds their stdio and
// writes their CRI logs (Pod.containerIo). The daemon keeps one control connection per
// container (requests and the exit event), opened again lazily after a restart; every exec and
// attach gets a connection of its own. Streams are in-process pairs: the caller's end is the
// PodStream, this end is piped to a shim connection (exec), a TCP connection (port-forward in
// the host's network) or a `podvisor-launch connect` child (port-forward into the pod's netns:
// a multi-threaded daemon cannot enter a namespace itself).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Duplex, duplexPair, Readable, Writable } from 'node:stream';
import type { GuestParams, GuestResult } from '../../../agent/api';
import { failedPrecondition, invalidArgument, notFound, unavailable } from '../../../util/errors';
import type { Logger } from '../../../util/log';
import type { AttachIo, Pod, PodContainerIo, PodEvent, PodImageMount, PodStream } from '../../pod-backend';
import { capabilitiesIn, type HostDevice, type HostTarget } from '../../oci-spec';
import type { HostPodState, SandboxRecord } from '../../records';
import { cgroupParentPath, type CgroupDriver } from '../../pod-cgroup';
import { cgroupStats, cgroupV2Only } from './cgroup-stats';
import { updateCgroup, type OciResourceUpdate } from './cgroup-update';
import type { HostContainers } from './host-containers';
import { initAlive, pidNamespaceOf } from './pinned-ns';
import { ShimConnection, spawnShim } from './shim-client';
import { resolveUser } from './users';

/** What every host pod of a daemon shares (the backend makes it). */
export interface HostPodContext {
  containers: HostContainers;
  cgroupDriver: CgroupDriver;
  /** every host device node, for privileged containers */
  hostDevices(): Promise<HostDevice[]>;
  /** the open-files limit containers get (HostTarget.nofile) */
  nofile: number;
  logger: Logger;
}

/** The container's cgroup: under the pod's cgroup_parent (kubelet's pod cgroup) when there is one. */
export function containerCgroup(rec: SandboxRecord, driver: CgroupDriver, containerId: string): string {
  const parent = rec.config.linux?.cgroup_parent;
  return path.posix.join(parent ? cgroupParentPath(parent, driver) : '/podvisor', `podvisor-${containerId}`);
}

/** Copies `src` into `dst` with back-pressure, without ending `dst`; none: `src` is drained. */
function copy(src: Readable, dst: Writable | undefined): void {
  if (!dst) {
    src.resume();
    return;
  }
  src.on('data', (d: Buffer) => {
    if (dst.destroyed) return;
    if (!dst.write(d)) {
      src.pause();
      dst.once('drain', () => src.resume());
    }
  });
}

export class HostPod implements Pod {
  readonly hostView = true as const;
  readonly volumes = undefined;
  readonly containerIo: PodContainerIo;
  readonly exited: Promise<void>;
  private endPod!: () => void;
  private stopped = false;
  private handler: (ev: PodEvent) => void = () => undefined;
  /** this end of each open stream, by the id its PodStream carries */
  private readonly streams = new Map<number, Duplex>();
  private nextStream = 1;
  private readonly controls = new Map<string, Promise<ShimConnection>>();
  private readonly execs = new Map<string, ShimConnection>();

  constructor(private readonly rec: SandboxRecord, private readonly x: HostPodContext) {
    if (!rec.host) throw new Error(`pod sandbox ${rec.id} has no host state`);
    this.exited = new Promise((r) => (this.endPod = r));
    this.containerIo = {
      reopenLog: async (id) => {
        await (await this.control(id)).request('reopen');
      },
      attach: (id, io) => this.attach(id, io),
    };
  }

  get id(): string {
    return this.rec.id;
  }

  private get host(): HostPodState {
    return this.rec.host!;
  }

  alive(): boolean {
    if (this.stopped) return false;
    const init = this.host.ns.init;
    return !init || initAlive(init);
  }

  connected(): boolean {
    return !this.stopped;
  }

  onEvent(handler: (ev: PodEvent) => void): void {
    this.handler = handler;
  }

  private emit(ev: PodEvent): void {
    try {
      this.handler(ev);
    } catch (err) {
      this.x.logger.error({ sandbox: this.id, err: err }, 'host pod event handler failed');
    }
  }

  describe(): Record<string, unknown> {
    const ns = this.host.ns;
    return {
      backend: 'host',
      host: {
        network: ns.net ? 'pod' : 'node',
        ipc: ns.ipc ? 'pod' : 'node',
        uts: ns.uts ? 'pod' : 'node',
        pidInit: ns.init?.pid ?? null,
        alive: this.alive(),
      },
    };
  }

  // ---- streams

  openStream(): PodStream {
    const [outer, inner] = duplexPair();
    const id = this.nextStream++;
    this.streams.set(id, inner);
    const forget = () => this.streams.delete(id);
    inner.once('close', forget);
    outer.once('close', forget);
    return Object.assign(outer, { id }) as PodStream;
  }

  adoptStream(id: number): PodStream {
    throw failedPrecondition(`host pods hold no streams across a restart (stream ${id})`);
  }

  /** This end of stream `id` (0: none), taken: each is used by one process or connection. */
  private take(id: number): Duplex | undefined {
    if (!id) return undefined;
    const s = this.streams.get(id);
    if (!s) throw invalidArgument(`stream ${id} is not open`);
    this.streams.delete(id);
    return s;
  }

  // ---- containers

  async specTarget(containerId: string, privileged: boolean): Promise<HostTarget> {
    const ns = this.host.ns;
    const file = (name: string) => {
      const f = path.join(this.host.dir, name);
      return fs.existsSync(f) ? f : undefined;
    };
    return {
      kind: 'host',
      netns: ns.net,
      ipcns: ns.ipc,
      utsns: ns.uts,
      pidns: pidNamespaceOf(ns),
      shm: ns.shm ?? '/dev/shm',
      etc: { resolvConf: file('resolv.conf'), hostname: file('hostname') },
      cgroupsPath: containerCgroup(this.rec, this.x.cgroupDriver, containerId),
      rootfs: this.x.containers.rootfs.rootfsOf(containerId),
      hostDevices: privileged ? await this.x.hostDevices() : undefined,
      cgroupV2: cgroupV2Only(),
      nofile: this.x.nofile,
      heldCapabilities: heldCapabilities(),
    };
  }

  /** The control connection of a container (made on first use, again after a restart). */
  private control(id: string): Promise<ShimConnection> {
    const have = this.controls.get(id);
    if (have) return have;
    const made = ShimConnection.connect(this.x.containers.socket(id)).then((conn) => {
      conn.on('exit', (v: any) => this.emit({ type: 'exit', container_id: id, exit_code: Number.isInteger(v?.exit_code) ? v.exit_code : 255, oom_killed: !!v?.oom_killed }));
      conn.once('close', () => {
        if (this.controls.get(id) === made) this.controls.delete(id);
      });
      return conn;
    });
    made.catch(() => {
      if (this.controls.get(id) === made) this.controls.delete(id);
    });
    this.controls.set(id, made);
    return made;
  }

  async createContainer(p: GuestParams<'container.create'>, timeoutMs: number, io?: { logPath: string; stdin: boolean }): Promise<void> {
    if (this.stopped) throw failedPrecondition(`pod sandbox ${this.id} is stopped`);
    const cs = this.x.containers;
    const id = p.id;
    const merged = await cs.rootfs.createOverlay(id, p.rootfs.image);
    try {
      await cs.writeOwner({ sandbox: this.id, container: id });
      const spec = p.spec as any;
      spec.root = { path: merged, readonly: p.rootfs.readonly };
      // a user name resolves in the image, as the guest agent does (a uid keeps the gid given)
      await resolveUser(spec, p.username, p.username === null, merged);
      await fsp.writeFile(path.join(cs.dir(id), 'config.json'), JSON.stringify(spec), { mode: 0o600 });
      if (io?.logPath) await fsp.mkdir(path.dirname(io.logPath), { recursive: true });
      await spawnShim({
        launcher: cs.launcher, id: cs.ociId(id), bundle: cs.dir(id), ociRoot: cs.ociRoot, socket: cs.socket(id), exitFile: cs.exitFile(id),
        log: io?.logPath || undefined, tty: p.stdio.tty, stdin: !!io?.stdin, stdinOnce: p.stdio.stdin_once,
        // past the caller's deadline the shim is killed and the create undone (below)
        timeoutMs: Math.max(1000, timeoutMs),
      });
      await this.control(id);
    } catch (err) {
      await cs.destroy(id).catch((e) => this.x.logger.error({ container: id, err: e }, 'cleaning up a failed host container create'));
      throw err;
    }
  }

  async startContainer(id: string): Promise<{ pid: number }> {
    const r = await (await this.control(id)).request('start');
    return { pid: Number(r?.pid ?? 0) };
  }

  async signalContainer(id: string, signal: number, all: boolean): Promise<void> {
    await (await this.control(id)).request('signal', { signal, all });
  }

  async deleteContainer(id: string): Promise<void> {
    const conn = await this.controls.get(id)?.catch(() => undefined);
    this.controls.delete(id);
    await this.x.containers.destroy(id, conn);
  }

  async containerState(id: string): Promise<GuestResult<'container.state'>> {
    try {
      const s = await (await this.control(id)).request('state', {}, 10_000);
      const exit = s?.exit;
      return { status: s?.running ? (s?.started ? 'running' : 'created') : 'stopped', pid: Number(s?.pid ?? 0), exit_code: exit ? Number(exit.exit_code) : null, oom_killed: !!exit?.oom_killed };
    } catch (err) {
      // no shim any more: what it wrote when the process exited
      const text = await fsp.readFile(this.x.containers.exitFile(id), 'utf8').catch(() => undefined);
      if (text === undefined) throw err;
      const e = JSON.parse(text);
      return { status: 'stopped', pid: 0, exit_code: Number(e?.exit_code ?? 255), oom_killed: !!e?.oom_killed };
    }
  }

  /** UpdateContainerResources: the new limits go straight into the container's cgroup (cgroup-update.ts). */
  async updateContainer(id: string, resources: object): Promise<void> {
    const writes = await updateCgroup(containerCgroup(this.rec, this.x.cgroupDriver, id), resources as OciResourceUpdate);
    this.x.logger.debug({ container: id, writes }, 'host container resources updated');
  }

  async exec(p: GuestParams<'exec.start'>): Promise<void> {
    const out = this.take(p.stdout);
    const err = this.take(p.stderr);
    const inp = this.take(p.stdin);
    let conn: ShimConnection;
    try {
      conn = await ShimConnection.connect(this.x.containers.socket(p.container_id));
    } catch (e) {
      for (const s of [out, err, inp]) s?.destroy();
      throw unavailable(`the shim of container ${p.container_id} does not answer: ${(e as Error).message}`);
    }
    let exited = false;
    conn.once('exit', (v: any) => {
      exited = true;
      this.emit({ type: 'exit', container_id: p.container_id, exec_id: p.exec_id, exit_code: Number.isInteger(v?.exit_code) ? v.exit_code : 255 });
    });
    conn.once('close', () => {
      this.execs.delete(p.exec_id);
      out?.end();
      err?.end();
      inp?.destroy();
      // a shim that went away mid-exec: the exec is over
      if (!exited) this.emit({ type: 'exit', container_id: p.container_id, exec_id: p.exec_id, exit_code: 255 });
    });
    try {
      await conn.request('exec', { args: p.args, env: p.env ?? [], cwd: p.cwd, tty: p.tty, stdin: !!inp });
    } catch (e) {
      exited = true;
      conn.close();
      throw e;
    }
    this.execs.set(p.exec_id, conn);
    copy(conn.stdout, out);
    copy(conn.stderr, err);
    if (inp) {
      (async () => {
        for await (const chunk of inp) await conn.writeStdin(chunk as Buffer);
        conn.endStdin();
      })().catch(() => undefined);
    }
  }

  async signalProcess(containerId: string, execId: string | null, signal: number): Promise<void> {
    if (execId) await this.execs.get(execId)?.request('signal', { signal });
    else await (await this.control(containerId)).request('signal', { signal, all: false });
  }

  async resizeProcess(containerId: string, execId: string | null, rows: number, cols: number): Promise<void> {
    if (execId) await this.execs.get(execId)?.request('resize', { rows, cols });
    else await (await this.control(containerId)).request('resize', { rows, cols });
  }

  private async attach(id: string, io: AttachIo): Promise<void> {
    const conn = await ShimConnection.connect(this.x.containers.socket(id));
    try {
      await conn.request('attach', { stdin: !!io.stdin, stdout: !!io.stdout, stderr: !!io.stderr });
    } catch (err) {
      conn.close();
      throw err;
    }
    copy(conn.stdout, io.stdout);
    copy(conn.stderr, io.tty ? io.stdout : io.stderr);
    // the client's stdin ending ends the attach (the shim closes the container's stdin only
    // with stdin_once), as for a VM pod's containers
    let stdinDone: Promise<void> = new Promise(() => undefined);
    if (io.stdin) {
      const stdin = io.stdin;
      stdinDone = (async () => {
        for await (const chunk of stdin) await conn.writeStdin(chunk as Buffer);
        conn.endStdin();
      })().catch(() => undefined);
    }
    if (io.resize) {
      const sizes = io.resize;
      (async () => {
        for await (const s of sizes) await conn.request('resize', { rows: s.height, cols: s.width }).catch(() => undefined);
      })().catch(() => undefined);
    }
    await new Promise<void>((resolve) => {
      conn.once('close', resolve);
      io.stdout?.once('close', resolve);
      io.stderr?.once('close', resolve);
      void stdinDone.then(() => setTimeout(resolve, 100)); // the end of stdin reaches the shim first
    });
    conn.close();
  }

  // ---- port-forward

  async portForward(port: number, stream: PodStream): Promise<void> {
    const end = this.take(stream.id)!;
    let peer: Duplex;
    try {
      peer = this.host.ns.net ? await this.connectInNetns(this.host.ns.net, port) : await connectLocal(port);
    } catch (err) {
      end.destroy();
      throw err;
    }
    end.pipe(peer);
    peer.pipe(end);
    end.on('error', () => peer.destroy());
    peer.on('error', () => end.destroy());
  }

  /** localhost:port in the pod's netns, through `podvisor-launch connect` (its stdio is the connection). */
  private connectInNetns(netns: string, port: number): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.x.containers.launcher, ['connect', '--netns', netns, '--port', String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
      let errText = '';
      let settled = false;
      child.stderr!.on('data', (d) => {
        if (errText.length < 4096) errText += d;
      });
      child.on('error', (e) => {
        if (!settled) {
          settled = true;
          reject(e);
        }
      });
      child.on('exit', () => {
        if (!settled) {
          settled = true;
          reject(failedPrecondition(errText.trim().replace(/^podvisor-launch: /, '') || `cannot connect to port ${port} in the pod`));
        }
      });
      const onFirst = (d: Buffer) => {
        child.stdout!.off('data', onFirst);
        child.stdout!.pause();
        if (d.length > 1) child.stdout!.unshift(d.subarray(1));
        settled = true;
        resolve(Duplex.from({ readable: child.stdout!, writable: child.stdin! }));
      };
      child.stdout!.on('data', onFirst);
    });
  }

  // ---- stats

  async stats(ids: string[]): Promise<GuestResult<'stats'>> {
    const containers = await Promise.all(ids.map(async (id) => ({ id, ...(await cgroupStats(containerCgroup(this.rec, this.x.cgroupDriver, id))) })));
    return { containers };
  }

  async hostPrivateBytes(): Promise<number | undefined> {
    return undefined; // no VM: what the pod costs is its containers' memory
  }

  // ---- images and host paths

  async mountImage(imageId: string, erofsPath: string): Promise<PodImageMount> {
    const target = await this.x.containers.rootfs.mountImage({ id: imageId, erofsPath });
    // the erofs file is the handle: a restarted daemon counts (or mounts) the image again from it
    return { nodeName: erofsPath, target };
  }

  async unmountImage(m: PodImageMount): Promise<void> {
    await this.x.containers.rootfs.unmountImage(path.basename(m.target));
  }

  /** A host pod's containers bind the host path itself. */
  async bindHostPath(src: string): Promise<string> {
    try {
      await fsp.stat(src);
    } catch {
      throw notFound(`host path ${src} does not exist`);
    }
    return src;
  }

  async unbindHostPaths(): Promise<void> {
    /* nothing was bound outside the containers' own mount namespaces */
  }

  /**
   * Ends the pod: its containers are taken down (they were stopped before; what is left is
   * killed) with their shims and root file systems, the pod's images are let go, and the PID
   * namespace's init is stopped. The pinned namespaces stay until the sandbox is removed (its
   * network is torn down in them first).
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    for (const id of await this.x.containers.of(this.id)) {
      const conn = await this.controls.get(id)?.catch(() => undefined);
      this.controls.delete(id);
      await this.x.containers.destroy(id, conn).catch((err) => this.x.logger.error({ container: id, err: err }, 'taking a host container down'));
    }
    for (const m of Object.values(this.rec.images)) await this.unmountImage(m).catch(() => undefined);
    const init = this.host.ns.init;
    if (init && initAlive(init)) {
      try {
        process.kill(init.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.stopped = true;
    this.endPod();
  }
}

/** localhost:port in the host's network (a host-network pod's): IPv4, then IPv6. */
async function connectLocal(port: number): Promise<Duplex> {
  const attempt = (host: string) => new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ port, host });
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', reject);
  });
  try {
    return await attempt('127.0.0.1');
  } catch {
    try {
      return await attempt('::1');
    } catch (err) {
      throw failedPrecondition(`connecting to localhost:${port}: ${(err as Error).message}`);
    }
  }
}

let held: string[] | undefined;
/** The capabilities this daemon can hand on: its bounding set (CapBnd of /proc/self/status). */
function heldCapabilities(): string[] | undefined {
  if (!held) {
    const m = /^CapBnd:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) held = capabilitiesIn(m[1]);
  }
  return held;
}

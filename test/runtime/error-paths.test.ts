// Error paths of SandboxManager, ContainerManager and the VM pod backend without any VM: a fake
// pod backend, a fake hypervisor and a fake network fail at each step (boot, CNI, the agent,
// an image hot-plug, container create) and the tests check the rollback: what the failing call
// answers, and that nothing is left behind (records, runtime directories, network, binds,
// image references). The e2e tests cover the same paths with real VMs where they can be made
// to fail.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { AgentClient } from '../../src/agent/client';
import { AgentError } from '../../src/agent/errors';
import { defaultConfig, type Config } from '../../src/config/config';
import { ContainerManager } from '../../src/runtime/containers';
import { VmPodBackend } from '../../src/runtime/backends/vm/vm-backend';
import { guestDiskWaitMs } from '../../src/runtime/backends/vm/vm-pod';
import { PodBackends, type Pod, type PodBackend, type PodEvent, type PodStream } from '../../src/runtime/pod-backend';
import type { SandboxRecord } from '../../src/runtime/records';
import { SandboxManager } from '../../src/runtime/sandboxes';
import { EXEC_START_TIMEOUT_MS, RuntimeStreamingBackend } from '../../src/streaming/runtime-backend';
import { silentLogger } from '../../src/util/log';
import type { Hypervisor, Vm, VmInfo, VmSpec } from '../../src/vm/hypervisor';
import type { NetworkDriver, PodNetwork } from '../../network/network-driver';
import { VolumeManager } from '../../storage/volume-manager';

let tmp: string;
let cfg: Config;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-errpaths-'));
  cfg = defaultConfig();
  cfg.root = path.join(tmp, 'root');
  cfg.state = path.join(tmp, 'state');
  cfg.vm.bootTimeoutS = 2;
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const podConfig = (name = 'p', extra: Record<string, unknown> = {}) => ({ metadata: { name, namespace: 'ns', uid: `uid-${name}`, attempt: 0 }, ...extra });
const files = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir) : []);

/** A pod whose steps fail on demand, recording what was done to it. */
class FakePod implements Pod {
  readonly calls: string[] = [];
  readonly binds = new Set<string>();
  readonly streams: Array<PassThrough & { id: number }> = [];
  failMountImage?: Error;
  failCreate?: Error;
  /** a create waits for this (a guest that takes its time) */
  holdCreate?: Promise<void>;
  /** an unbind of host paths waits for this */
  holdUnbind?: Promise<void>;
  private nextStream = 1;
  private dead = false;
  private die!: () => void;
  readonly exited = new Promise<void>((r) => (this.die = r));
  constructor(readonly id: string) {}
  alive() { return !this.dead; }
  connected() { return !this.dead; }
  onEvent(_h: (ev: PodEvent) => void) {}
  describe() { return { backend: 'fake' }; }
  openStream(): PodStream {
    const s = Object.assign(new PassThrough(), { id: this.nextStream++ });
    this.streams.push(s);
    return s;
  }
  adoptStream(id: number): PodStream { return Object.assign(new PassThrough(), { id }); }
  /** the pod's events to the runtime (the backend's onEvent) */
  emit: (ev: PodEvent) => void = () => undefined;
  readonly execTimeouts: Array<number | undefined> = [];
  async createContainer(p: { id: string }) {
    this.calls.push(`create ${p.id}`);
    await this.holdCreate;
    if (this.failCreate) throw this.failCreate;
    return {};
  }
  readonly startTimeouts: Array<number | undefined> = [];
  async startContainer(_id: string, timeoutMs?: number) {
    this.startTimeouts.push(timeoutMs);
    return { pid: 1 };
  }
  async signalContainer() {}
  async deleteContainer(id: string) { this.calls.push(`delete ${id}`); }
  async containerState() { return { status: 'stopped' as const, pid: 0, exit_code: 0, oom_killed: false }; }
  async updateContainer() {}
  async exec(p: { container_id: string; exec_id: string; stdout: number; stderr: number }, timeoutMs?: number) {
    this.execTimeouts.push(timeoutMs);
    // the process ran: its output ends, its exit follows
    for (const s of this.streams.filter((x) => x.id === p.stdout || x.id === p.stderr)) s.end();
    setImmediate(() => this.emit({ type: 'exit', container_id: p.container_id, exec_id: p.exec_id, exit_code: 0 }));
  }
  async signalProcess() {}
  async resizeProcess() {}
  async portForward() {}
  async stats() { return {}; }
  async hostPrivateBytes() { return undefined; }
  readonly mountImageTimeouts: Array<number | undefined> = [];
  async mountImage(imageId: string, _erofsPath: string, timeoutMs?: number) {
    this.calls.push(`mountImage ${imageId}`);
    this.mountImageTimeouts.push(timeoutMs);
    if (this.failMountImage) throw this.failMountImage;
    return { nodeName: 'disk1', target: `/images/${imageId}` };
  }
  async unmountImage() {}
  async bindHostPath(src: string, rel: string) {
    this.binds.add(rel);
    return `/shared/${rel}`;
  }
  async unbindHostPaths(rel: string) {
    await this.holdUnbind;
    for (const b of [...this.binds]) if (b === rel || b.startsWith(`${rel}/`)) this.binds.delete(b);
    this.calls.push(`unbind ${rel}`);
  }
  readonly volumes = undefined;
  async stop() {
    this.dead = true;
    this.die();
  }
}

class FakeBackend implements PodBackend {
  constructor(readonly kind = 'vm') {}
  readonly features = { recursiveReadOnlyMounts: true, userNamespaces: false, supplementalGroupsPolicy: false };
  failStart?: Error;
  pods: FakePod[] = [];
  released: string[] = [];
  removed: string[] = [];
  /** sandbox ids whose start was answered (afterStart) */
  answered: string[] = [];
  afterStart(rec: SandboxRecord) { this.answered.push(rec.id); }
  async readiness() { return undefined; }
  admit() {}
  async start(rec: SandboxRecord, onEvent?: (ev: PodEvent) => void) {
    if (this.failStart) throw this.failStart;
    const p = new FakePod(rec.id);
    if (onEvent) p.emit = onEvent;
    this.pods.push(p);
    return p;
  }
  async reconnect() { return undefined; }
  async release(rec: SandboxRecord) { this.released.push(rec.id); }
  async remove(rec: SandboxRecord) { this.removed.push(rec.id); }
  async dropHostPaths() {}
  async reapStrays() {}
}

/** The image catalog as ContainerManager uses it, counting references. */
function fakeImages() {
  const refs = new Map<string, number>();
  const image = { id: 'sha256:' + 'a'.repeat(64), erofsPath: '/nowhere.erofs', repoDigests: [], config: {} };
  return {
    refs,
    resolve: (ref: string) => (ref === 'busybox' || ref === image.id ? image : undefined),
    acquire: (id: string) => refs.set(id, (refs.get(id) ?? 0) + 1),
    release: (id: string) => refs.set(id, (refs.get(id) ?? 0) - 1),
  };
}

async function managers(backend: PodBackend) {
  const volumes = await VolumeManager.create({ stateDir: path.join(tmp, 'storage'), logger: silentLogger });
  const sandboxes = new SandboxManager(cfg, new PodBackends().register(backend), volumes, silentLogger);
  const images = fakeImages();
  const containers = new ContainerManager(cfg.root, sandboxes, images as never, volumes, silentLogger);
  return { sandboxes, containers, images };
}

/** The managers over a fresh fake backend with one pod running on it: what most tests start from. */
async function onePod() {
  const backend = new FakeBackend();
  const m = await managers(backend);
  const id = await m.sandboxes.run(podConfig(), '');
  return { ...m, backend, id, pod: backend.pods[0] };
}

/** A busybox container `c` running `command` (attempt: a later create of the same name). */
const containerConfig = (command: string[], attempt = 0) => ({ metadata: { name: 'c', attempt }, image: { image: 'busybox' }, command });

describe('SandboxManager with a fake pod backend', () => {
  test('a pod that fails to start leaves no sandbox and no record; the answer is UNAVAILABLE with the cause', async () => {
    const backend = new FakeBackend();
    backend.failStart = new Error('boot failed: no kernel');
    const { sandboxes } = await managers(backend);
    await expect(sandboxes.run(podConfig(), '')).rejects.toMatchObject({ code: 'unavailable', message: expect.stringMatching(/boot failed: no kernel/) });
    expect(sandboxes.sandboxes.size).toBe(0);
    expect(files(path.join(cfg.root, 'sandboxes'))).toEqual([]);
  });

  test("the backend's afterStart runs once RunPodSandbox is answered, whether the pod started or not", async () => {
    const backend = new FakeBackend();
    const { sandboxes } = await managers(backend);
    const id = await sandboxes.run(podConfig(), '');
    expect(backend.answered).toEqual([]); // not before the caller has its answer
    await new Promise((r) => setImmediate(r));
    expect(backend.answered).toEqual([id]);
    backend.failStart = new Error('boot failed');
    await expect(sandboxes.run(podConfig('b'), '')).rejects.toMatchObject({ code: 'unavailable' });
    await new Promise((r) => setImmediate(r));
    expect(backend.answered).toHaveLength(2);
    expect(backend.answered[1]).not.toBe(id);
  });

  test('handlers: unknown → NOT_FOUND; a handler whose backend is missing and host namespaces → FAILED_PRECONDITION', async () => {
    const { sandboxes } = await managers(new FakeBackend());
    await expect(sandboxes.run(podConfig(), 'nosuch')).rejects.toMatchObject({ code: 'not_found' });
    await expect(sandboxes.run(podConfig(), 'runc')).rejects.toMatchObject({ code: 'failed_precondition', message: expect.stringMatching(/"host" backend/) });
    const real = new PodBackends().register(new VmPodBackend({ cfg, hypervisor: {} as Hypervisor, network: {} as NetworkDriver, volumes: { scsiIds: async () => [] }, logger: silentLogger }));
    const vmOnly = new SandboxManager(cfg, real, await VolumeManager.create({ stateDir: path.join(tmp, 'st2') }), silentLogger);
    const hostNet = podConfig('h', { linux: { security_context: { namespace_options: { network: 'NODE' } } } });
    await expect(vmOnly.run(hostNet, '')).rejects.toMatchObject({ code: 'failed_precondition', message: expect.stringMatching(/host network/) });
    cfg.runtime.hostNamespaces = 'reject';
    await expect(vmOnly.run(hostNet, 'podvisor')).rejects.toMatchObject({ code: 'failed_precondition' });
    expect(vmOnly.sandboxes.size).toBe(0);
  });

  test('host namespaces go to the host backend when there is one, unless host_namespaces = "reject"', async () => {
    const vm = new FakeBackend('vm');
    const host = new FakeBackend('host');
    const volumes = await VolumeManager.create({ stateDir: path.join(tmp, 'st3') });
    const sandboxes = new SandboxManager(cfg, new PodBackends().register(vm).register(host), volumes, silentLogger);
    const hostPid = podConfig('hp', { linux: { security_context: { namespace_options: { pid: 'NODE' } } } });
    const id = await sandboxes.run(hostPid, '');
    expect(sandboxes.get(id).rec.backend).toBe('host');
    expect(host.pods).toHaveLength(1);
    expect((await sandboxes.run(podConfig('plain'), 'runc')) && host.pods).toHaveLength(2);
    expect(vm.pods).toHaveLength(0);
    cfg.runtime.hostNamespaces = 'reject';
    await expect(sandboxes.run(podConfig('hp2', { linux: { security_context: { namespace_options: { ipc: 'NODE' } } } }), 'runc'))
      .rejects.toMatchObject({ code: 'failed_precondition', message: expect.stringMatching(/host_namespaces = "reject"/) });
    expect(host.pods).toHaveLength(2);
  });

  test('stop and remove hand the pod back to its backend', async () => {
    const backend = new FakeBackend();
    const { sandboxes } = await managers(backend);
    const id = await sandboxes.run(podConfig(), 'kata');
    expect(sandboxes.get(id).rec).toMatchObject({ state: 'SANDBOX_READY', backend: 'vm', runtimeHandler: 'kata' });
    await sandboxes.remove(id);
    expect(backend.pods[0].alive()).toBe(false);
    expect(backend.released).toEqual([id]);
    expect(backend.removed).toEqual([id]);
    expect(files(path.join(cfg.root, 'sandboxes'))).toEqual([]);
  });
});

describe('ContainerManager.create rolls back', () => {
  async function setup() {
    const hostDir = path.join(tmp, 'hostdir');
    fs.mkdirSync(hostDir);
    const config = { ...containerConfig(['true']), mounts: [{ container_path: '/data', host_path: hostDir }] };
    return { ...(await onePod()), config };
  }

  test('an image hot-plug failure: its code kept, no container, no image reference held', async () => {
    const { containers, images, pod, id, config, sandboxes } = await setup();
    pod.failMountImage = new AgentError('timeout', 'disk.mount: no disk 0:0:1:0');
    await expect(containers.create(id, config, undefined)).rejects.toMatchObject({ code: 'deadline_exceeded', message: expect.stringMatching(/^create container c: disk\.mount/) });
    expect(containers.containers.size).toBe(0);
    expect([...images.refs.values()].every((n) => n === 0)).toBe(true);
    expect(sandboxes.get(id).rec.images).toEqual({});
    expect(files(path.join(cfg.root, 'containers'))).toEqual([]);
  });

  test('an agent error at create: streams closed, host paths unbound, image released, nothing recorded', async () => {
    const { containers, images, pod, id, config, sandboxes } = await setup();
    pod.failCreate = new AgentError('internal', 'container.create: crun failed');
    await expect(containers.create(id, config, undefined)).rejects.toMatchObject({ code: 'internal', message: expect.stringMatching(/crun failed/) });
    expect(containers.containers.size).toBe(0);
    expect(pod.binds.size).toBe(0);
    expect(pod.calls.some((c) => c.startsWith('unbind c/'))).toBe(true);
    expect(pod.streams.length).toBeGreaterThan(0);
    expect(pod.streams.every((s) => s.destroyed)).toBe(true);
    expect([...images.refs.values()].every((n) => n === 0)).toBe(true);
    expect(files(path.join(cfg.root, 'containers'))).toEqual([]);
    // the image stays mounted in the pod: that is the sandbox's state, shared by its containers
    expect(Object.keys(sandboxes.get(id).rec.images)).toEqual(['sha256:' + 'a'.repeat(64)]);
    // and the next create works
    pod.failCreate = undefined;
    const cid = await containers.create(id, config, undefined);
    expect(containers.get(cid).rec.state).toBe('CONTAINER_CREATED');
    expect(files(path.join(cfg.root, 'containers'))).toEqual([`${cid}.json`]);
  });
});

describe("ContainerManager.create's image mount", () => {
  test("is given what is left of the caller's deadline (the guest waits that long for the disk), or the pod's own bound without one", async () => {
    const backend = new FakeBackend();
    const { sandboxes, containers } = await managers(backend);
    const config = containerConfig(['sleep']);
    const a = await sandboxes.run(podConfig(), '');
    await containers.create(a, config, undefined, { deadline: Date.now() + 240_000 });
    const b = await sandboxes.run(podConfig('p2'), '');
    await containers.create(b, config, undefined);
    const [withDeadline, without] = backend.pods.map((p) => p.mountImageTimeouts[0]);
    expect(withDeadline).toBeGreaterThan(230_000);
    expect(withDeadline).toBeLessThanOrEqual(240_000);
    expect(without).toBeUndefined();
    const c = await sandboxes.run(podConfig('p3'), '');
    await expect(containers.create(c, config, undefined, { deadline: Date.now() - 1 })).rejects.toMatchObject({ code: 'deadline_exceeded' });
    expect(backend.pods[2].mountImageTimeouts).toEqual([]);
  });
});

describe('guestDiskWaitMs', () => {
  test('the guest waits for a disk until 2 s before the call times out, at least 1 s', () => {
    expect(guestDiskWaitMs(240_000)).toBe(238_000);
    expect(guestDiskWaitMs(30_000)).toBe(28_000);
    expect(guestDiskWaitMs(2_500)).toBe(1000);
  });
});

describe('ContainerManager lists', () => {
  test('a container only once its create returned (kubelet GC must not see a newer CREATED run of the name)', async () => {
    const { containers, id, pod } = await onePod();
    const config = (attempt: number) => containerConfig(['true'], attempt);
    const first = await containers.create(id, config(0), undefined);
    let release!: () => void;
    pod.holdCreate = new Promise((r) => (release = r));
    const second = containers.create(id, config(1), undefined);
    await new Promise((r) => setTimeout(r, 50));
    expect(pod.calls.filter((c) => c.startsWith('create '))).toHaveLength(2);
    // the guest is creating attempt 1: only attempt 0 is listed, for the pod too
    expect(containers.list({}).map((r) => r.id)).toEqual([first]);
    expect(containers.list({ pod_sandbox_id: id }).map((r) => r.id)).toEqual([first]);
    release();
    const secondId = await second;
    expect(containers.list({}).map((r) => r.id).sort()).toEqual([first, secondId].sort());
  });
});

describe('ContainerManager.remove', () => {
  // The crash matrix's 'CreateContainer killed at container.create:created-in-guest': after the
  // restart, the undo of the interrupted create removed the container while its exit's record
  // write (deferred until the log drained) was on its way, and a temp file of the record (or the
  // record itself) was there after the remove.
  test("an exit's record write on its way when the container is removed leaves no record and no temp file", async () => {
    const { containers, id, pod } = await onePod();
    const cid = await containers.create(id, containerConfig(['sleep']), undefined);
    const dir = path.join(cfg.root, 'containers');
    expect(files(dir)).toEqual([`${cid}.json`]);
    // told to delete the container, the guest ends its streams and reports its exit
    pod.deleteContainer = async (c: string) => {
      for (const s of pod.streams) s.end();
      pod.emit({ type: 'exit', container_id: c, exit_code: 137 });
    };
    // the remove goes on only once the exit (its log drained) is being recorded
    let release!: () => void;
    pod.holdUnbind = new Promise((r) => (release = r));
    let exits = 0;
    containers.subscribe((ev) => {
      if (ev.type !== 'CONTAINER_STOPPED_EVENT') return;
      exits++;
      release();
    });
    await containers.remove(cid);
    expect(exits).toBe(1);
    expect(containers.containers.size).toBe(0);
    expect(files(dir)).toEqual([]);
    // and nothing lands later
    await new Promise((r) => setTimeout(r, 200));
    expect(files(dir)).toEqual([]);
  });
});

describe('ContainerManager.start', () => {
  test("gives the pod the caller's deadline, or 120 s without one, not the agent's default 30 s", async () => {
    const { containers, id, pod } = await onePod();
    const config = (attempt: number) => containerConfig(['sleep'], attempt);
    const a = await containers.create(id, config(0), undefined);
    await containers.start(a, { deadline: Date.now() + 240_000 });
    const b = await containers.create(id, config(1), undefined);
    await containers.start(b);
    const [withDeadline, without] = pod.startTimeouts as number[];
    expect(withDeadline).toBeGreaterThan(230_000);
    expect(withDeadline).toBeLessThanOrEqual(240_000);
    expect(without).toBeGreaterThan(110_000);
    expect(without).toBeLessThanOrEqual(120_000);
    const c = await containers.create(id, config(2), undefined);
    await expect(containers.start(c, { deadline: Date.now() - 1 })).rejects.toMatchObject({ code: 'deadline_exceeded' });
  });
});

describe('a streaming exec', () => {
  test("waits for its process to start as long as a hung guest is given, not the agent's default 30 s", async () => {
    const { sandboxes, containers, id, pod } = await onePod();
    const cid = await containers.create(id, containerConfig(['sleep']), undefined);
    await containers.start(cid);
    const streaming = new RuntimeStreamingBackend(containers, sandboxes, silentLogger);
    expect(await streaming.exec(cid, ['true'], { tty: false })).toEqual({ exitCode: 0 });
    expect(EXEC_START_TIMEOUT_MS).toBeGreaterThan(30_000);
    expect(pod.execTimeouts).toEqual([EXEC_START_TIMEOUT_MS]);
  });
});

/** A hypervisor that fails to boot, or boots VMs that die before their agent answers. */
class FakeHypervisor implements Hypervisor {
  readonly accelerator = 'tcg' as const;
  failStart?: Error;
  started: FakeVm[] = [];
  async readiness() { return undefined; }
  async start(spec: VmSpec): Promise<Vm> {
    if (this.failStart) throw this.failStart;
    const vm = new FakeVm(spec);
    this.started.push(vm);
    return vm;
  }
  async reconnect() { return undefined; }
  async reapStray() { return undefined; }
  templateKeyInputs() { return {}; }
  checkpointKeyInputs() { return {}; }
  memoryFileInUse() { return false; }
  readonly runtimeFiles = [];
}

class FakeVm implements Vm {
  readonly info: VmInfo;
  readonly shareTag = 'fake';
  stopped = false;
  // dies at once: the agent never answers
  readonly exited = Promise.resolve();
  constructor(spec: VmSpec) {
    this.info = { id: spec.id, pid: -1, accelerator: 'tcg', bootMode: 'cold', dir: spec.dir, agentSocket: path.join(spec.dir, 'agent.sock'), qmpSocket: '', vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, disks: [] };
  }
  alive() { return false; }
  connectAgent(timeoutMs: number) { return AgentClient.connect(this.info.agentSocket, timeoutMs); }
  async attachDisk(): Promise<never> { throw new Error('no disks'); }
  async detachDisk() {}
  async attachBlock(): Promise<never> { throw new Error('no disks'); }
  async detachBlock() {}
  async sweepBlocks() {}
  reserveScsiIds() {}
  async bindIntoMountNs() {}
  async snapshot() {}
  async checkpointBlockers() { return []; }
  async checkpoint() {}
  async setMemory() {}
  async stop() { this.stopped = true; }
}

class FakeNetwork implements NetworkDriver {
  failSetUp?: Error;
  up = new Set<string>();
  ready() { return { ready: true, reason: '', message: '' }; }
  async setUp(req: { sandboxId: string }): Promise<PodNetwork> {
    if (this.failSetUp) throw this.failSetUp;
    this.up.add(req.sandboxId);
    return { netnsName: 'ns', netnsPath: '/run/netns/ns', nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01' }], interfaces: [], routes: [], ips: ['10.0.0.2'] };
  }
  async tearDown(req: { sandboxId: string }) { this.up.delete(req.sandboxId); }
  close() {}
}

describe('the VM pod backend rolls back a failed start', () => {
  function backend() {
    const hypervisor = new FakeHypervisor();
    const network = new FakeNetwork();
    const b = new VmPodBackend({ cfg, hypervisor, network, volumes: { scsiIds: async () => [] }, logger: silentLogger });
    const rec: SandboxRecord = { id: 'f'.repeat(64), config: podConfig(), runtimeHandler: '', backend: 'vm', createdAt: '0', state: 'SANDBOX_NOTREADY', vm: null, images: {}, agentVersion: '', network: null };
    return { b, hypervisor, network, rec };
  }
  const vmDirs = () => files(path.join(cfg.state, 'vm'));

  test('CNI failure: no VM started, no runtime directory left', async () => {
    const { b, hypervisor, network, rec } = backend();
    network.failSetUp = new Error('CNI ADD: bridge: no IPs left');
    await expect(b.start(rec, () => undefined)).rejects.toThrow(/no IPs left/);
    expect(hypervisor.started).toEqual([]);
    expect(vmDirs()).toEqual([]);
    expect(rec.network).toBeNull();
  });

  test('boot failure: the network is torn down, the directory removed', async () => {
    const { b, hypervisor, network, rec } = backend();
    hypervisor.failStart = new Error('QEMU exited at start');
    await expect(b.start(rec, () => undefined)).rejects.toThrow(/QEMU exited at start/);
    expect(network.up.size).toBe(0);
    expect(rec.network).toBeNull();
    expect(vmDirs()).toEqual([]);
  });

  test('the VM dies before its agent answers: VM stopped, network torn down, directory removed', async () => {
    const { b, hypervisor, network, rec } = backend();
    await expect(b.start(rec, () => undefined)).rejects.toThrow(/exited during boot/);
    expect(hypervisor.started).toHaveLength(1);
    expect(hypervisor.started[0].stopped).toBe(true);
    expect(network.up.size).toBe(0);
    expect(vmDirs()).toEqual([]);
  });
});

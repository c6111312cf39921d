// Storage handed straight into pod VMs, end to end: the real daemon, real QEMU pod VMs on a CNI
// bridge, a real single-node Ceph (QEMU's librbd), a real NFS server (nfs-ganesha, mounted by the
// guest kernel) and a loop device (QEMU host_device). Nothing is ever mounted on the host.
//
// Two daemons:
//   - `d` has a CNI bridge conflist (bridge created here, private /24, host-local IPAM in
//     .10-.200): its pods get the pod network. NFS, raw block and RBD volumes are tested there.
//     NFS: ganesha in its own netns (test/support/nfs.ts) plus one extra veth from that netns
//     into the bridge, address .250: the guest kernel mounts it over the pod network; traffic
//     stays inside the bridge and namespaces made here. RBD: QEMU runs in the host netns (only
//     its taps are in the pod netns, opened by podvisor-launch), so its librbd reaches Ceph
//     through the host's network while the guest keeps the pod network ("RBD in a CNI pod").
//   - `dr` has no CNI config: its pods get loopback only. Most RBD tests run there.
//   - Ceph: mon + OSD bound to the bridge's gateway address (.1) in the host netns, reachable
//     from the host netns (daemon preflight, CSI controller, every pod's QEMU).
// QMP checks: QEMU's QMP socket serves one client at a time and the daemon holds it, so
// qmpInventory() stops the daemon (pod VMs keep running), asks QEMU directly and restarts the
// daemon, which reconnects to its VMs.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { loadCsi } from '../storage/csi/server';
import { DESCRIPTOR_FILE } from '../storage/descriptor';
import { QmpClient } from '../src/vm/qmp';
import { CephCluster, startCeph } from '../test/support/ceph';
import { pushBusybox } from '../test/support/images';
import { NfsServer, startNfs } from '../test/support/nfs';
import { Registry, startRegistry } from '../test/support/registry';
import { Loops, ownMounts } from '../test/storage/helpers';
import { podConfig, retry, TestDaemon } from './support/daemon';

jest.setTimeout(600_000);

const CLI = path.resolve(__dirname, '..', 'dist', 'src', 'cli', 'main.js');
const ID = crypto.randomBytes(2).toString('hex');
const BRIDGE = `pvst${ID}`;
const NFS_VETH = `pvsn${ID}`;
const SUBNET = `10.216.${16 + (parseInt(ID, 16) % 200)}`;
const GATEWAY = `${SUBNET}.1`;
const NFS_IP = `${SUBNET}.250`;
/** an address on the pod subnet where nothing answers */
const NOWHERE = `${SUBNET}.251`;
const MiB = 1 << 20;

let registry: Registry | undefined;
let d: TestDaemon | undefined;
/** the daemon without CNI (RBD pods) */
let dr: TestDaemon | undefined;
let ceph: CephCluster | undefined;
let nfs: NfsServer | undefined;
let csiProc: ChildProcess | undefined;
const loops = new Loops();
// belt and braces: loop devices are detached even if jest dies before afterAll
process.once('exit', () => loops.detachAll());
let image: string;
let loopDev: string;
/** loop devices handed raw to containers */
const rawDevs: string[] = [];
const vol: Record<string, string> = {};
const timings: Record<string, number> = {};

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string, args: string[]) => { try { sh(cmd, args); } catch { /* gone */ } };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function timed<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t = Date.now();
  try {
    return await fn();
  } finally {
    timings[name] = Date.now() - t;
  }
}

/** `podvisor volume add <dir> --root <daemon root> …`: sealed with that daemon's key. */
function volumeAdd(dm: TestDaemon, name: string, args: string[]): string {
  const dir = path.join(dm.dir, 'volumes', name);
  sh(process.execPath, [CLI, 'volume', 'add', dir, '--root', dm.root, ...args]);
  return dir;
}

/**
 * This file's share of the host mount table: under its daemons' dirs and template dirs or its
 * NFS server's dir, from its loop devices, its NFS server or that server's private /run. A
 * global before/after compare also saw the other e2e slot's pods and kubelets come and go.
 */
function ourMounts(): string[] {
  const dirs = [d, dr].flatMap((x) => (x ? [x.dir, x.templateDir] : []));
  return ownMounts({ dirs: nfs ? [...dirs, nfs.dir] : dirs, sources: [...loops.devices, `${NFS_IP}:`, 'pvnfs-run'] });
}

function daemon(): TestDaemon {
  if (!d) throw new Error('daemon not started');
  return d;
}
function rbdDaemon(): TestDaemon {
  if (!dr) throw new Error('daemon not started');
  return dr;
}

interface Pod { d: TestDaemon; id: string; cfg: any }
interface Ctr { d: TestDaemon; id: string }

async function runPod(dm: TestDaemon, name: string): Promise<Pod> {
  const cfg = podConfig(name, path.join(dm.logs, name));
  const id = (await dm.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  return { d: dm, id, cfg };
}

async function removePod(p: Pod | undefined): Promise<void> {
  if (p) await p.d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id }, 120_000);
}

type Mount = { container_path: string; host_path: string; readonly?: boolean };

function ctrConfig(name: string, mounts: Mount[]) {
  return {
    metadata: { name, attempt: 0 },
    image: { image },
    command: ['/bin/sh', '-c', 'trap "exit 0" TERM; while true; do sleep 1; done'],
    mounts,
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

async function createCtr(p: Pod, name: string, mounts: Mount[]): Promise<Ctr> {
  const r = await p.d.runtime('CreateContainer', { pod_sandbox_id: p.id, config: ctrConfig(name, mounts), sandbox_config: p.cfg }, 180_000);
  return { d: p.d, id: r.container_id };
}

async function startCtr(p: Pod, name: string, mounts: Mount[]): Promise<Ctr> {
  const c = await createCtr(p, name, mounts);
  await p.d.runtime('StartContainer', { container_id: c.id });
  return c;
}

async function exec(ctr: Ctr, script: string): Promise<{ out: string; err: string; code: number }> {
  const r = await ctr.d.runtime('ExecSync', { container_id: ctr.id, cmd: ['/bin/sh', '-c', script], timeout: 120 }, 180_000);
  return { out: Buffer.from(r.stdout).toString(), err: Buffer.from(r.stderr).toString(), code: r.exit_code };
}

async function execOk(ctr: Ctr, script: string): Promise<string> {
  const r = await exec(ctr, script);
  if (r.code !== 0) throw new Error(`${script}: exit ${r.code}: ${r.err}${r.out}`);
  return r.out;
}

/** The /proc/mounts line of `dir` inside the container. */
async function mountLine(ctr: Ctr, dir: string): Promise<string> {
  return (await execOk(ctr, `grep " ${dir} " /proc/mounts || true`)).trim();
}

interface Inventory {
  /** qdev ids of the pvvol-* devices in query-block */
  devices: string[];
  /** pvvol-* node names (query-named-block-nodes) */
  nodes: string[];
  /** pvvol-* QOM objects (the RBD secrets) */
  objects: string[];
}

/** Asks the pod's QEMU directly (the daemon is stopped meanwhile and restarted after). */
async function qmpInventory(p: Pod): Promise<Inventory> {
  const sock = path.join(p.d.state, 'vm', p.id.slice(0, 16), 'qmp.sock');
  await p.d.stopProcess();
  try {
    const c = await QmpClient.connect(sock, 15_000);
    try {
      const blocks = (await c.execute('query-block')) as any[];
      const nodes = (await c.execute('query-named-block-nodes', { flat: true })) as any[];
      const objects = (await c.execute('qom-list', { path: '/objects' })) as any[];
      return {
        devices: blocks.map((b) => String(b.qdev ?? b.device ?? '')).filter((n) => n.includes('pvvol')).sort(),
        nodes: nodes.map((n) => n['node-name'] as string).filter((n) => n.startsWith('pvvol')).sort(),
        objects: objects.map((o) => o.name as string).filter((n) => n.startsWith('pvvol')).sort(),
      };
    } finally {
      c.close();
    }
  } finally {
    await p.d.launch();
  }
}

/** The volume manager's persisted attachments of a pod (no secrets in it). */
function podVolumeState(p: Pod): any[] {
  const f = path.join(p.d.root, 'storage', 'pods', `${p.id}.json`);
  return fs.existsSync(f) ? JSON.parse(fs.readFileSync(f, 'utf8')).entries : [];
}

/** Reads a file from an ext4 image or device without mounting it (debugfs, read-only). */
function debugfsCat(devOrFile: string, file: string): string {
  return sh('debugfs', ['-R', `cat ${file}`, devOrFile]);
}


beforeAll(async () => {
  const t0 = Date.now();
  // the bridge first: Ceph binds to its gateway address; the CNI bridge plugin adopts it
  sh('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
  sh('ip', ['addr', 'add', `${GATEWAY}/24`, 'dev', BRIDGE]);
  sh('ip', ['link', 'set', BRIDGE, 'up']);
  const [reg, c, n] = await Promise.all([
    startRegistry(),
    timed('ceph start', () => startCeph({ host: GATEWAY })),
    timed('nfs start', () => startNfs()),
  ]);
  registry = reg;
  ceph = c;
  nfs = n;
  // ganesha's netns joins the pod bridge through one more veth
  sh('ip', ['link', 'add', NFS_VETH, 'type', 'veth', 'peer', 'name', 'podnet', 'netns', nfs.serverNetns]);
  sh('ip', ['link', 'set', NFS_VETH, 'master', BRIDGE]);
  sh('ip', ['link', 'set', NFS_VETH, 'up']);
  sh('ip', ['-n', nfs.serverNetns, 'addr', 'add', `${NFS_IP}/24`, 'dev', 'podnet']);
  sh('ip', ['-n', nfs.serverNetns, 'link', 'set', 'podnet', 'up']);
  fs.writeFileSync(path.join(nfs.exportDir, 'from-server'), 'exported\n');

  await pushBusybox(registry, 'e2e/busybox', 'latest');
  image = `${registry.host}/e2e/busybox:latest`;
  // a loop device holding ext4, made on the host with mkfs (never mounted here)
  loopDev = loops.create(64);
  sh('mkfs.ext4', ['-q', '-F', '-L', 'pve2e', loopDev]);
  await ceph.rbd(['create', '--size', '64', `${ceph.pool}/e2e-data`]);

  [d, dr] = await Promise.all([
    TestDaemon.start({ registries: { [registry.host]: `http://${registry.host}` } }),
    TestDaemon.start({ registries: { [registry.host]: `http://${registry.host}` } }),
  ]);
  fs.writeFileSync(path.join(d.cniConfDir, '10-storage.conflist'), JSON.stringify({
    cniVersion: '1.0.0',
    name: `pvst${ID}`,
    plugins: [{
      type: 'bridge', bridge: BRIDGE, isGateway: true, ipMasq: false,
      ipam: { type: 'host-local', ranges: [[{ subnet: `${SUBNET}.0/24`, rangeStart: `${SUBNET}.10`, rangeEnd: `${SUBNET}.200` }]], dataDir: path.join(d.dir, 'ipam') },
    }],
  }));
  await retry(async () => {
    const s = await daemon().runtime('Status', {});
    if (!s.status.conditions.find((x: any) => x.type === 'NetworkReady')?.status) throw new Error('network not ready yet');
  }, 60_000);
  await Promise.all([d.image('PullImage', { image: { image } }), dr.image('PullImage', { image: { image } })]);

  const rbdArgs = ['--rbd', `${ceph.pool}/e2e-data`, '--monitors', ceph.monitor, '--user', ceph.user, '--key-file', ceph.userKeyFile];
  vol.rbd = volumeAdd(dr, 'rbd', [...rbdArgs, '--format']);
  vol.rbdRo = volumeAdd(dr, 'rbd-ro', [...rbdArgs, '--readonly']);
  vol.rbdCni = volumeAdd(d, 'rbd', [...rbdArgs, '--format']);
  vol.nfs = volumeAdd(d, 'nfs', ['--nfs', `${NFS_IP}:${nfs.pseudo}`]);
  vol.block = volumeAdd(d, 'block', ['--block', loopDev]);
  vol.blockR = volumeAdd(dr, 'block', ['--block', loopDev]);
  timings['setup'] = Date.now() - t0;
});

afterAll(async () => {
  const errors: string[] = [];
  const step = async (what: string, fn: () => unknown) => {
    try { await fn(); } catch (err) { errors.push(`${what}: ${(err as Error).message}`); }
  };
  if (csiProc && csiProc.exitCode === null) {
    csiProc.kill('SIGTERM');
    await Promise.race([new Promise((r) => csiProc!.once('exit', r)), sleep(5000)]);
    if (csiProc.exitCode === null) csiProc.kill('SIGKILL');
  }
  const mountsAtEnd = ourMounts(); // before the daemons, loops and NFS server are gone
  await step('daemon', () => d?.destroy());
  await step('rbd daemon', () => dr?.destroy());
  await step('loop devices', () => loops.detachAll());
  await step('nfs', () => nfs?.stop());
  await step('ceph', () => ceph?.stop());
  await step('registry', () => registry?.stop());
  quiet('ip', ['link', 'del', NFS_VETH]);
  quiet('ip', ['link', 'del', BRIDGE]);
  // eslint-disable-next-line no-console
  console.log(`storage e2e timings (ms): ${JSON.stringify(timings)}`);
  expect(mountsAtEnd).toEqual([]);
  if (errors.length) throw new Error(errors.join('; '));
});

describe('data outlives the pod', () => {
  /** pod A writes a token through the volume; A is deleted; pod B mounts it and reads the token */
  async function roundTrip(dm: TestDaemon, kind: string, dir: string, fsPattern: RegExp): Promise<string> {
    const token = `${kind}-${crypto.randomBytes(6).toString('hex')}`;
    let a: Pod | undefined;
    let b: Pod | undefined;
    try {
      a = await timed(`${kind}: RunPodSandbox`, () => runPod(dm, `${kind}-writer`));
      const w = await timed(`${kind}: CreateContainer with attach`, () => startCtr(a!, 'writer', [{ container_path: '/data', host_path: dir }]));
      expect(await mountLine(w, '/data')).toMatch(fsPattern);
      await execOk(w, `echo ${token} > /data/hello && sync`);
      await timed(`${kind}: RemovePodSandbox with detach`, () => removePod(a));
      a = undefined;
      b = await runPod(dm, `${kind}-reader`);
      const r = await timed(`${kind}: CreateContainer with re-attach`, () => startCtr(b!, 'reader', [{ container_path: '/data', host_path: dir }]));
      expect((await execOk(r, 'cat /data/hello')).trim()).toBe(token);
      return token;
    } finally {
      await removePod(a).catch(() => undefined);
      await removePod(b).catch(() => undefined);
    }
  }

  it('RBD (QEMU librbd, formatted by the agent on first use)', async () => {
    const token = await roundTrip(rbdDaemon(), 'rbd', vol.rbd, /^\/dev\/sd[a-z]+ \/data ext4 rw/);
    // and it really is on the image: export it and read the ext4 without mounting it
    const img = path.join(rbdDaemon().dir, 'rbd-export.img');
    await ceph!.rbd(['export', `${ceph!.pool}/e2e-data`, img]);
    expect(debugfsCat(img, '/hello').trim()).toBe(token);
    fs.rmSync(img, { force: true });
  });

  it('NFS (mounted by the guest kernel over the pod network)', async () => {
    const token = await roundTrip(daemon(), 'nfs', vol.nfs, new RegExp(`^${NFS_IP.replace(/\./g, '\\.')}:/export /data nfs4 rw`));
    expect(fs.readFileSync(path.join(nfs!.exportDir, 'hello'), 'utf8').trim()).toBe(token);
  });

  it('raw block device (loop device with ext4 made on the host)', async () => {
    const token = await roundTrip(daemon(), 'block', vol.block, /^\/dev\/sd[a-z]+ \/data ext4 rw/);
    expect(debugfsCat(loopDev, '/hello').trim()).toBe(token);
  });
});

describe('one attachment per pod and volume', () => {
  let p: Pod | undefined;
  afterAll(() => removePod(p));

  it('two containers share one device each; a read-only CRI mount is enforced on the shared attachment', async () => {
    p = await runPod(rbdDaemon(), 'shared');
    const c1 = await startCtr(p, 'one', [
      { container_path: '/data', host_path: vol.rbd },
      { container_path: '/blk', host_path: vol.blockR, readonly: true },
    ]);
    const disksBefore = (await execOk(c1, 'ls /sys/block')).split(/\s+/).filter((x) => x.startsWith('sd'));
    const c2 = await startCtr(p, 'two', [
      { container_path: '/shared', host_path: vol.rbd },
      { container_path: '/blk', host_path: vol.blockR },
    ]);
    const disksAfter = (await execOk(c2, 'ls /sys/block')).split(/\s+/).filter((x) => x.startsWith('sd'));
    expect(disksAfter).toEqual(disksBefore); // no second disk in the guest
    await execOk(c1, 'echo from-one > /data/shared-file && sync');
    expect((await execOk(c2, 'cat /shared/shared-file')).trim()).toBe('from-one');

    // CRI readonly: container one cannot write the block volume, container two can
    const denied = await exec(c1, 'touch /blk/from-one');
    expect(denied.code).not.toBe(0);
    expect(denied.err).toMatch(/Read-only file system/);
    expect(await mountLine(c1, '/blk')).toMatch(/ ext4 ro[ ,]/);
    await execOk(c2, 'echo from-two > /blk/from-two && sync');
    expect((await execOk(c1, 'cat /blk/from-two')).trim()).toBe('from-two');

    const state = podVolumeState(p);
    expect(state.map((e: any) => [e.handle.kind, e.refs]).sort()).toEqual([['block', 2], ['rbd', 2]]);
    const inv = await qmpInventory(p);
    expect(inv.devices).toEqual(state.map((e: any) => e.handle.device).sort()); // exactly one scsi-hd per volume
    expect(inv.devices).toHaveLength(2);
    expect(inv.nodes).toEqual(state.flatMap((e: any) => e.handle.nodes).sort());
    expect(inv.objects).toEqual(state.filter((e: any) => e.handle.secret).map((e: any) => e.handle.secret)); // one RBD secret
    expect(inv.objects).toHaveLength(1);
    // the restarted daemon reconnected: the containers still work
    expect((await execOk(c2, 'cat /shared/shared-file')).trim()).toBe('from-one');
  });
});

describe('read-only volumes', () => {
  let p: Pod | undefined;
  afterAll(() => removePod(p));

  it('a readOnly descriptor gives a read-only device and mount (EROFS); a rw CRI mount of it is refused without attaching anything', async () => {
    p = await runPod(rbdDaemon(), 'readonly');
    // a read-write CRI mount of a read-only volume is refused before anything is attached
    await expect(createCtr(p, 'rw-of-ro', [{ container_path: '/data', host_path: vol.rbdRo }])).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/read-only/) });
    expect(podVolumeState(p)).toEqual([]);

    const c = await startCtr(p, 'ro', [{ container_path: '/data', host_path: vol.rbdRo, readonly: true }]);
    expect(await mountLine(c, '/data')).toMatch(/ ext4 ro[ ,]/);
    expect((await execOk(c, 'cat /data/shared-file')).trim()).toBe('from-one');
    const w = await exec(c, 'echo x > /data/nope');
    expect(w.code).not.toBe(0);
    expect(w.err).toMatch(/Read-only file system/);
    // the guest cannot flip it either: the block device itself is read-only
    expect((await execOk(c, 'cat /sys/block/$(grep " /data " /proc/mounts | cut -d" " -f1 | cut -d/ -f3)/ro')).trim()).toBe('1');
    // the same image cannot be attached read-write to the same pod meanwhile
    await expect(createCtr(p, 'rw', [{ container_path: '/data', host_path: vol.rbd }])).rejects.toMatchObject({ code: status.FAILED_PRECONDITION });
    expect(podVolumeState(p).map((e: any) => [e.handle.readonly, e.refs])).toEqual([[true, 1]]); // the refusals took no reference
  });
});

describe('failures on CreateContainer', () => {
  interface Case { name: string; dir: string; code: status; details: RegExp }

  /** CreateContainer of each case fails with its code; nothing is left in the pod or in QEMU */
  async function expectFailures(p: Pod, cases: Case[]): Promise<void> {
    const got: Record<string, { code: number; details: string; ms: number }> = {};
    for (const k of cases) {
      const t = Date.now();
      const err = await createCtr(p, k.name.replace(/ /g, '-'), [{ container_path: '/data', host_path: k.dir }]).then(() => undefined, (e) => e);
      got[k.name] = { code: err?.code, details: err?.details, ms: Date.now() - t };
      timings[`error: ${k.name}`] = Date.now() - t;
    }
    // eslint-disable-next-line no-console
    console.log(`CreateContainer errors: ${JSON.stringify(got, null, 1)}`);
    for (const k of cases) {
      expect({ name: k.name, code: got[k.name].code }).toEqual({ name: k.name, code: k.code });
      expect(got[k.name].details).toMatch(k.details);
    }
    expect((await p.d.runtime('ListContainers', { filter: { pod_sandbox_id: p.id } })).containers).toEqual([]);
    expect(podVolumeState(p)).toEqual([]);
    expect(await qmpInventory(p)).toEqual({ devices: [], nodes: [], objects: [] });
  }

  let p: Pod | undefined;
  let q: Pod | undefined;
  afterAll(async () => {
    await removePod(p);
    await removePod(q);
  });

  it('RBD: wrong monitors, bad key, missing image; unsealed descriptor', async () => {
    const c = ceph!;
    const dm = rbdDaemon();
    const badKey = path.join(dm.dir, 'bad.key');
    fs.writeFileSync(badKey, sh('ceph-authtool', ['--gen-print-key']).trim() + '\n', { mode: 0o600 });
    const args = (img: string, mon: string, key: string) => ['--rbd', `${c.pool}/${img}`, '--monitors', mon, '--user', c.user, '--key-file', key, '--format'];
    // an unsealed descriptor dropped into a directory (what a pod with a writable hostPath could do)
    const forged = path.join(dm.dir, 'volumes', 'forged');
    fs.mkdirSync(forged, { recursive: true });
    fs.writeFileSync(path.join(forged, DESCRIPTOR_FILE), JSON.stringify({ version: 1, kind: 'block', block: { device: loopDev } }));
    p = await runPod(dm, 'errors-rbd');
    await expectFailures(p, [
      { name: 'wrong monitors', dir: volumeAdd(dm, 'bad-mon', args('e2e-data', `${NOWHERE}:6789`, c.userKeyFile)), code: status.UNAVAILABLE, details: new RegExp(`${NOWHERE.replace(/\./g, '\\.')}:6789.*timed out`) },
      { name: 'bad key', dir: volumeAdd(dm, 'bad-key', args('e2e-data', c.monitor, badKey)), code: status.PERMISSION_DENIED, details: /wrong key or user/ },
      { name: 'missing image', dir: volumeAdd(dm, 'no-image', args('no-such-image', c.monitor, c.userKeyFile)), code: status.NOT_FOUND, details: /rbd\/no-such-image: not found/ },
      { name: 'unsealed descriptor', dir: forged, code: status.PERMISSION_DENIED, details: /not sealed/ },
    ]);
    // the pod is still usable: a good volume attaches after all that
    const ok = await startCtr(p, 'good', [{ container_path: '/data', host_path: vol.rbd }]);
    expect((await execOk(ok, 'cat /data/shared-file')).trim()).toBe('from-one');
  });

  it('NFS: unreachable server', async () => {
    q = await runPod(daemon(), 'errors-nfs');
    await expectFailures(q, [
      { name: 'unreachable NFS', dir: volumeAdd(daemon(), 'bad-nfs', ['--nfs', `${NOWHERE}:/export`]), code: status.UNAVAILABLE, details: new RegExp(`NFS ${NOWHERE.replace(/\./g, '\\.')}:/export in the guest: .*(did not answer|No route to host)`) },
    ]);
    const ok = await startCtr(q, 'good', [{ container_path: '/data', host_path: vol.nfs }]);
    expect((await execOk(ok, 'cat /data/from-server')).trim()).toBe('exported');
  });
});

describe('RBD in a CNI pod', () => {
  // QEMU's librbd talks to Ceph from the host netns while the guest is on the pod network: data
  // written through the volume outlives the pod, and the pod network works all along.
  let web: http.Server | undefined;
  afterAll(() => new Promise<void>((r) => (web ? web.close(() => r()) : r())));

  it('round trip over an RBD volume in pods on the CNI bridge; the pods still reach the network', async () => {
    const body = `from-the-bridge-${ID}`;
    web = http.createServer((_req, res) => res.end(body));
    await new Promise<void>((r) => web!.listen(0, GATEWAY, () => r()));
    const url = `http://${GATEWAY}:${(web.address() as AddressInfo).port}/`;
    const token = `rbd-cni-${crypto.randomBytes(6).toString('hex')}`;
    let a: Pod | undefined;
    let b: Pod | undefined;
    try {
      a = await timed('rbd-cni: RunPodSandbox', () => runPod(daemon(), 'rbd-cni-writer'));
      const ip = (await a.d.runtime('PodSandboxStatus', { pod_sandbox_id: a.id })).status.network.ip;
      expect(ip).toMatch(new RegExp(`^${SUBNET.replace(/\./g, '\\.')}\\.`));
      const w = await timed('rbd-cni: CreateContainer with attach', () => startCtr(a!, 'writer', [{ container_path: '/data', host_path: vol.rbdCni }]));
      expect(await mountLine(w, '/data')).toMatch(/^\/dev\/sd[a-z]+ \/data ext4 rw/);
      await execOk(w, `echo ${token} > /data/hello && sync`);
      // the guest is on the pod network: it reaches a server on the bridge, and is reached
      expect((await retry(() => execOk(w, `wget -q -O - ${url}`), 30_000)).trim()).toBe(body);
      expect(sh('busybox', ['ping', '-c', '1', '-W', '10', ip])).toMatch(/1 (packets )?received/);
      await removePod(a);
      a = undefined;

      b = await runPod(daemon(), 'rbd-cni-reader');
      const r = await startCtr(b, 'reader', [{ container_path: '/data', host_path: vol.rbdCni }]);
      expect((await execOk(r, 'cat /data/hello')).trim()).toBe(token);
      expect((await retry(() => execOk(r, `wget -q -O - ${url}`), 30_000)).trim()).toBe(body);
    } finally {
      await removePod(a).catch(() => undefined);
      await removePod(b).catch(() => undefined);
    }
    // and it is on the image
    const img = path.join(daemon().dir, 'rbd-cni-export.img');
    await ceph!.rbd(['export', `${ceph!.pool}/e2e-data`, img]);
    expect(debugfsCat(img, '/hello').trim()).toBe(token);
    fs.rmSync(img, { force: true });
  });
});

describe('CSI controller + node through the plugin socket', () => {
  type Client = Record<string, (req: object) => Promise<any>>;
  const closers: Array<() => void> = [];
  function client(csi: any, svc: string, sock: string): Client {
    const raw = new csi[svc](`unix://${sock}`, grpc.credentials.createInsecure());
    closers.push(() => raw.close());
    const c: Client = {};
    for (const m of Object.keys(csi[svc].service)) {
      c[m] = (req) => new Promise((resolve, reject) => raw[m](req, { deadline: Date.now() + 60_000 }, (err: Error | null, res: any) => (err ? reject(err) : resolve(res))));
    }
    return c;
  }
  afterAll(() => closers.forEach((c) => c()));

  it('CreateVolume → NodePublish → attach + write → ControllerExpand → next attach grows disk and filesystem → NodeUnpublish → DeleteVolume', async () => {
    const c = ceph!;
    const dm = rbdDaemon();
    const sock = path.join(dm.dir, 'csi.sock');
    csiProc = spawn(process.execPath, [CLI, 'csi', '--endpoint', `unix://${sock}`, '--root', dm.root, '--mode', 'all', '--node-id', 'e2e-node', '--ceph-timeout', '10',
      // volume ids carry no monitors: Expand/Delete take them from here (or a `monitors` secret)
      '--ceph-monitors', c.monitor],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    let csiErr = '';
    csiProc.stderr!.on('data', (x) => { csiErr += x; });
    const csi = loadCsi();
    const identity = client(csi, 'Identity', sock);
    const ctl = client(csi, 'Controller', sock);
    const node = client(csi, 'Node', sock);
    await retry(() => identity.Probe({}), 20_000).catch((e) => { throw new Error(`CSI plugin not answering: ${e.message} ${csiErr}`); });

    const secrets = { userID: c.user, userKey: c.userKey };
    const cap = { mount: { fs_type: 'ext4', mount_flags: ['noatime'] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    const name = `pvc-e2e-${ID}`;
    const created = await timed('csi: CreateVolume', () => ctl.CreateVolume({
      name, capacity_range: { required_bytes: String(32 * MiB) }, volume_capabilities: [cap],
      parameters: { pool: c.pool, monitors: c.monitor }, secrets,
    }));
    expect(created.volume).toMatchObject({ volume_id: `rbd:${c.pool}//${name}`, capacity_bytes: String(32 * MiB) });
    expect(JSON.parse(await c.rbd(['info', '--format', 'json', `${c.pool}/${name}`])).size).toBe(32 * MiB);

    const target = path.join(dm.dir, 'kubelet', 'pods', 'uid-csi', 'volumes', 'kubernetes.io~csi', name, 'mount');
    await node.NodePublishVolume({ volume_id: created.volume.volume_id, target_path: target, volume_capability: cap, secrets, volume_context: created.volume.volume_context });
    expect(fs.existsSync(path.join(target, DESCRIPTOR_FILE))).toBe(true);

    // the filesystem's size (1K blocks, busybox df)
    const fsSize = async (ctr: Ctr) => Number((await execOk(ctr, 'df -k /data | tail -1')).trim().split(/\s+/)[1]) * 1024;
    const sizeOf = async (ctr: Ctr) => Number((await execOk(ctr, 'cat /sys/block/$(grep " /data " /proc/mounts | cut -d" " -f1 | cut -d/ -f3)/size')).trim()) * 512;
    let p: Pod | undefined;
    try {
      p = await runPod(dm, 'csi-a');
      const w = await startCtr(p, 'w', [{ container_path: '/data', host_path: target }]);
      expect(await mountLine(w, '/data')).toMatch(/ ext4 rw,.*noatime/);
      expect(await sizeOf(w)).toBe(32 * MiB);
      const fsBefore = await fsSize(w);
      expect(fsBefore).toBeLessThanOrEqual(32 * MiB);
      await execOk(w, 'echo csi-data > /data/f && sync');
      await removePod(p);
      p = undefined;

      const grown = await timed('csi: ControllerExpandVolume', () => ctl.ControllerExpandVolume({ volume_id: created.volume.volume_id, capacity_range: { required_bytes: String(64 * MiB) }, secrets }));
      expect(grown).toMatchObject({ capacity_bytes: String(64 * MiB), node_expansion_required: false });
      expect(JSON.parse(await c.rbd(['info', '--format', 'json', `${c.pool}/${name}`])).size).toBe(64 * MiB);

      p = await runPod(dm, 'csi-b');
      const r = await startCtr(p, 'r', [{ container_path: '/data', host_path: target }]);
      expect(await sizeOf(r)).toBe(64 * MiB);
      // NodeExpandVolume's part, done on attach: the filesystem grew with the disk
      const fsAfter = await fsSize(r);
      expect(fsAfter).toBeGreaterThan(fsBefore + 28 * MiB);
      expect(fsAfter).toBeLessThanOrEqual(64 * MiB);
      expect((await execOk(r, 'cat /data/f')).trim()).toBe('csi-data');
      await execOk(r, 'dd if=/dev/zero of=/data/big bs=1M count=40 && sync && rm /data/big'); // the new space is usable
    } finally {
      await removePod(p).catch(() => undefined);
    }

    await node.NodeUnpublishVolume({ volume_id: created.volume.volume_id, target_path: target });
    expect(fs.existsSync(target)).toBe(false);
    await timed('csi: DeleteVolume', () => ctl.DeleteVolume({ volume_id: created.volume.volume_id, secrets }));
    expect((await c.rbd(['ls', c.pool])).split('\n')).not.toContain(name);
  });
});

describe('raw block devices in containers (CRI mounts of a device, LinuxContainerConfig devices)', () => {
  // a blank loop device: the guest sees it as one more SCSI disk, the container as a device node
  let raw: string;
  const pods: Pod[] = [];
  beforeAll(() => {
    raw = loops.create(16);
    rawDevs.push(raw);
  });
  // each test's pods go with it: a failed test must not leave the device attached to the next
  afterEach(async () => {
    for (const p of pods.splice(0)) await removePod(p).catch(() => undefined);
  });

  type Device = { container_path: string; host_path: string; permissions: string };
  async function startWith(p: Pod, name: string, mounts: Mount[], devices: Device[] = []): Promise<Ctr> {
    const config = { ...ctrConfig(name, mounts), devices };
    const r = await p.d.runtime('CreateContainer', { pod_sandbox_id: p.id, config, sandbox_config: p.cfg }, 180_000);
    await p.d.runtime('StartContainer', { container_id: r.container_id });
    return { d: p.d, id: r.container_id };
  }
  const readBlock = (ctr: Ctr, dev: string) => execOk(ctr, `dd if=${dev} bs=4096 skip=1 count=1 2>/dev/null | tr -d '\\0'`);
  function hostBlock(): string {
    // buffered read: QEMU's O_DIRECT writes invalidate the host's page cache of that range
    const fd = fs.openSync(raw, fs.constants.O_RDONLY);
    try {
      const buf = Buffer.alloc(4096);
      fs.readSync(fd, buf, 0, 4096, 4096);
      return buf.toString('utf8').replace(/\0+$/, '');
    } finally {
      fs.closeSync(fd);
    }
  }

  it('a container writes through the device node; a second container shares the one attachment read-only; a new pod reads it back', async () => {
    const token = `raw-${crypto.randomBytes(6).toString('hex')}`;
    const a = await runPod(rbdDaemon(), 'raw-a');
    pods.push(a);
    // a CRI mount whose host_path is a block device, outside /dev: the guest node bound there
    const w = await startWith(a, 'writer', [{ container_path: '/data/disk', host_path: raw }]);
    expect(await execOk(w, 'ls -l /data/disk')).toMatch(/^b/);
    await execOk(w, `printf ${token} | dd of=/data/disk bs=4096 seek=1 conv=fsync 2>&1`);
    expect(hostBlock()).toBe(token); // on the host's device, without the host mounting anything

    // LinuxContainerConfig devices, read-only: a node made under /dev; reads work, writes are
    // refused by the device cgroup although the attachment itself is writable
    const r = await startWith(a, 'reader', [], [{ container_path: '/dev/xvdb', host_path: raw, permissions: 'r' }]);
    expect(await execOk(r, 'ls -l /dev/xvdb')).toMatch(/^b/);
    expect(await readBlock(r, '/dev/xvdb')).toBe(token);
    const denied = await exec(r, 'echo nope | dd of=/dev/xvdb bs=4096 seek=2 conv=fsync');
    expect(denied.code).not.toBe(0);
    expect(denied.err).toMatch(/Operation not permitted/);
    // one SCSI disk for the two containers
    const state = podVolumeState(a);
    expect(state.map((e: any) => [e.handle.kind, e.handle.raw, e.refs, e.handle.readonly])).toEqual([['block', true, 2, false]]);
    // nor can it make a node of its own for the device and write through that: the rule is
    // the cgroup's, not the node's
    const { major, minor } = state[0].handle.guestDevice;
    const sneaky = await exec(r, `mknod /tmp/sd b ${major} ${minor} && echo nope | dd of=/tmp/sd bs=4096 seek=2`);
    expect(sneaky.code).not.toBe(0);
    expect(sneaky.err).toMatch(/can't open '\/tmp\/sd': Operation not permitted/);
    // and the container that may write sees that only it wrote
    expect(await readBlock(w, '/data/disk')).toBe(token);
    await removePod(a);
    pods.pop();

    const b = await runPod(rbdDaemon(), 'raw-b');
    pods.push(b);
    const c = await startWith(b, 'again', [], [{ container_path: '/dev/disk0', host_path: raw, permissions: 'rwm' }]);
    expect(await readBlock(c, '/dev/disk0')).toBe(token);
    await execOk(c, `printf ${token}-b | dd of=/dev/disk0 bs=4096 seek=1 conv=fsync 2>&1`);
    expect(hostBlock()).toBe(`${token}-b`);
    await removePod(b);
    pods.pop();
  });

  it('a read-only mount gives a read-only device; read-write use of it in that pod is refused', async () => {
    const p = await runPod(rbdDaemon(), 'raw-ro');
    pods.push(p);
    const c = await startWith(p, 'ro', [{ container_path: '/dev/ro', host_path: raw, readonly: true }]);
    expect((await readBlock(c, '/dev/ro')).length).toBeGreaterThan(0);
    const w = await exec(c, 'echo nope | dd of=/dev/ro bs=4096 seek=2 conv=fsync');
    expect(w.code).not.toBe(0);
    // the guest's disk itself is read-only (QEMU read-only node), not just the cgroup rule
    const dev = podVolumeState(p)[0].handle.guestPath.replace('/dev/', '');
    expect((await execOk(c, `cat /sys/block/${dev}/ro`)).trim()).toBe('1');
    await expect(startWith(p, 'rw', [{ container_path: '/dev/rw', host_path: raw }])).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/read-only/) });
    await expect(startWith(p, 'rw-dev', [], [{ container_path: '/dev/rw', host_path: raw, permissions: 'rw' }])).rejects.toMatchObject({ code: status.FAILED_PRECONDITION });
    expect(podVolumeState(p).map((e: any) => [e.handle.readonly, e.refs])).toEqual([[true, 1]]);
  });

  it('bad devices and paths give clear errors and attach nothing', async () => {
    const p = await runPod(rbdDaemon(), 'raw-errors');
    pods.push(p);
    const file = path.join(rbdDaemon().dir, 'not-a-device');
    fs.writeFileSync(file, 'x');
    // another pod holds the raw device read-write (QEMU's image lock keeps a second VM out)
    const holder = await runPod(rbdDaemon(), 'raw-holder');
    pods.push(holder);
    await startWith(holder, 'holder', [], [{ container_path: '/dev/held', host_path: raw, permissions: 'rw' }]);
    const cases: Array<[string, Mount[], Device[], status, RegExp]> = [
      ['missing device', [], [{ container_path: '/dev/x', host_path: '/dev/pv-no-such-device', permissions: 'rwm' }], status.NOT_FOUND, /\/dev\/pv-no-such-device does not exist/],
      ['character device', [], [{ container_path: '/dev/x', host_path: '/dev/null', permissions: 'rwm' }], status.FAILED_PRECONDITION, /character device/],
      ['regular file', [], [{ container_path: '/dev/x', host_path: file, permissions: 'rwm' }], status.INVALID_ARGUMENT, /is not a device/],
      ['relative container path', [], [{ container_path: 'dev/x', host_path: raw, permissions: 'rwm' }], status.INVALID_ARGUMENT, /container_path/],
      ['relative host path', [], [{ container_path: '/dev/x', host_path: 'dev/loop0', permissions: 'rwm' }], status.INVALID_ARGUMENT, /host_path/],
      ['bad permissions', [], [{ container_path: '/dev/x', host_path: raw, permissions: 'rwx' }], status.INVALID_ARGUMENT, /permissions/],
      ['one device twice at one path', [], [{ container_path: '/dev/x', host_path: raw, permissions: 'r' }, { container_path: '/dev/x', host_path: raw, permissions: 'r' }], status.INVALID_ARGUMENT, /two devices at \/dev\/x/],
      ['a device another pod uses', [], [{ container_path: '/dev/x', host_path: raw, permissions: 'rw' }], status.FAILED_PRECONDITION, /in use by another pod VM/],
      ['a device that is mounted as a volume in the pod', [{ container_path: '/fs', host_path: vol.blockR }], [{ container_path: '/dev/x', host_path: loopDev, permissions: 'rw' }], status.FAILED_PRECONDITION, /already attached to this pod with a filesystem mounted/],
    ];
    const got: Record<string, string> = {};
    for (const [name, mounts, devices, code, details] of cases) {
      const err = await startWith(p, name.replace(/ /g, '-'), mounts, devices).then(() => undefined, (e) => e);
      got[name] = `${err?.code} ${err?.details}`;
      expect({ name, code: err?.code }).toEqual({ name, code });
      expect(err.details).toMatch(details);
    }
    // eslint-disable-next-line no-console
    console.log(`raw device errors: ${JSON.stringify(got, null, 1)}`);
    expect((await p.d.runtime('ListContainers', { filter: { pod_sandbox_id: p.id } })).containers).toEqual([]);
    expect(podVolumeState(p)).toEqual([]);
    expect(await qmpInventory(p)).toEqual({ devices: [], nodes: [], objects: [] });
  });
});

describe('host hygiene', () => {
  it('mounted nothing on the host and left no attachment state', async () => {
    expect(ourMounts()).toEqual([]);
    const mi = fs.readFileSync('/proc/self/mountinfo', 'utf8');
    for (const dm of [daemon(), rbdDaemon()]) {
      const pods = path.join(dm.root, 'storage', 'pods');
      expect(fs.existsSync(pods) ? fs.readdirSync(pods) : []).toEqual([]);
    }
    // the loop devices are free again (no QEMU holds them): O_EXCL open succeeds
    for (const dev of [loopDev, ...rawDevs]) {
      expect(mi).not.toContain(dev + ' ');
      fs.closeSync(fs.openSync(dev, fs.constants.O_RDONLY | fs.constants.O_EXCL));
    }
  });
});

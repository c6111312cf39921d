// Attach/detach at the QMP level against a real QEMU (bare microvm, no guest kernel: the agent
// is a recorder) — loop devices and RBD images on a real Ceph; rollback on errors.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ErrorCode } from '../../src/util/errors';
import { withRbd } from '../../storage/ceph/rbd';
import { loadSealKey, writeDescriptor } from '../../storage/descriptor';
import { VolumeManager } from '../../storage/volume-manager';
import { CephCluster, cephAvailable, freePort, startCeph } from '../support/ceph';
import { BareVm, Loops, ownMounts, qemuAvailable, rbdDriverAvailable } from './helpers';

jest.setTimeout(180_000);
const haveQemu = qemuAvailable();
const describeQemu = haveQemu ? describe : describe.skip;
const describeRbd = haveQemu && cephAvailable() && rbdDriverAvailable() ? describe : describe.skip;

let tmp: string;
let sealKey: Buffer;
const loops = new Loops();

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-qattach-'));
  sealKey = await loadSealKey(path.join(tmp, 'seal.key'));
});
afterAll(() => {
  // nothing of ours mounted on the host: not under the scratch dir, not from the loop devices
  const mounts = ownMounts({ dirs: [tmp], sources: loops.devices });
  loops.detachAll();
  fs.rmSync(tmp, { recursive: true, force: true });
  expect(mounts).toEqual([]);
});

async function volDir(name: string, desc: object): Promise<string> {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  await writeDescriptor(dir, desc, sealKey);
  return dir;
}

const pvvol = (inv: { nodes: string[]; devices: string[]; objects: string[] }) =>
  [...inv.nodes, ...inv.devices, ...inv.objects].filter((n) => n.startsWith('pvvol'));

describeQemu('raw block volumes on a real QEMU', () => {
  let vm: BareVm;
  let mgr: VolumeManager;
  beforeAll(async () => {
    vm = await BareVm.start();
    mgr = await VolumeManager.create({ stateDir: path.join(tmp, 'state-block'), sealKeyFile: path.join(tmp, 'seal.key') });
  });
  afterAll(async () => {
    await vm?.stop();
  });
  afterEach(async () => {
    await mgr.detachAll(vm);
    expect(pvvol(await vm.inventory())).toEqual([]);
    vm.agentHandler = () => ({});
    vm.calls.length = 0;
  });

  test('a loop device is attached once per pod, mounted by the agent, and fully detached', async () => {
    const dev = loops.create();
    const dir = await volDir('blk1', { version: 1, kind: 'block', block: { device: dev }, fsType: 'ext4', format: true, mountOptions: ['noatime'] });
    const src = await mgr.classify(dir);
    expect(src).toMatchObject({ raw: false, descriptor: { kind: 'block' } });
    const a = await mgr.attach(vm, src!, false);
    expect(a.guestPath).toBe(`/run/podvisor/volumes/${src!.key}`);
    expect(a.readonly).toBe(false);
    const inv = await vm.inventory();
    const tag = src!.key.slice(-12);
    expect(inv.nodes).toEqual(expect.arrayContaining([`pvvol-${tag}-f`, `pvvol-${tag}`]));
    expect(inv.devices).toContain(`pvvol-${tag}-d`);
    const nodes = (await vm.qmp('query-named-block-nodes', { flat: true })) as any[];
    const file = nodes.find((n) => n['node-name'] === `pvvol-${tag}-f`);
    expect(file).toMatchObject({ drv: 'host_device', file: dev, ro: false });
    expect(file.cache.direct).toBe(true);
    expect(vm.calls).toEqual([{ method: 'disk.mount', params: expect.objectContaining({ fstype: 'ext4', format: 'ext4', readonly: false, target: a.guestPath, options: ['noatime'], lun: 0 }) }]);
    expect(vm.scsiIdsInUse).toEqual([vm.calls[0].params.scsi_id]);

    // a second container of the same pod: same attachment, nothing new in QEMU
    const b = await mgr.attach(vm, (await mgr.classify(dir))!, true);
    expect(b).toMatchObject({ guestPath: a.guestPath, key: a.key, bindReadonly: true, readonly: false });
    expect(await vm.inventory()).toEqual(inv);
    expect(await mgr.attachments(vm.id)).toEqual([expect.objectContaining({ refs: 2 })]);
    await mgr.release(vm, a.key);
    expect(pvvol(await vm.inventory()).length).toBe(3);
    await mgr.release(vm, a.key);
    expect(pvvol(await vm.inventory())).toEqual([]);
    expect(vm.calls.map((c) => c.method)).toEqual(['disk.mount', 'disk.unmount']);
    expect(vm.scsiIdsInUse).toEqual([]);
  });

  test('a read-only volume is a read-only node and a ro mount; read-write use is refused', async () => {
    const dev = loops.create();
    const dir = await volDir('blk-ro', { version: 1, kind: 'block', block: { device: dev }, readOnly: true });
    const src = (await mgr.classify(dir))!;
    const a = await mgr.attach(vm, src, true);
    expect(a.readonly).toBe(true);
    const nodes = (await vm.qmp('query-named-block-nodes', { flat: true })) as any[];
    expect(nodes.filter((n) => n['node-name'].startsWith('pvvol')).every((n) => n.ro === true)).toBe(true);
    expect(vm.calls[0].params).toMatchObject({ readonly: true, options: ['ro'] });
    expect(vm.calls[0].params.format).toBeUndefined();
    await expect(mgr.attach(vm, src, false)).rejects.toMatchObject({ code: 'failed_precondition' });
  });

  test('a block device as host path is passed through raw (no mount)', async () => {
    const dev = loops.create();
    const src = (await mgr.classify(dev))!;
    expect(src).toMatchObject({ raw: true, descriptor: { kind: 'block', block: { device: dev } } });
    vm.agentHandler = (c) => (c.method === 'disk.device' ? { device: '/dev/sdb', major: 8, minor: 16 } : {});
    const a = await mgr.attach(vm, src, false);
    expect(a).toMatchObject({ guestPath: '/dev/sdb', raw: true, guestDevice: { major: 8, minor: 16 } });
    expect(vm.calls.map((c) => c.method)).toEqual(['disk.device']);
    await mgr.detachAll(vm);
    expect(vm.calls.map((c) => c.method)).toEqual(['disk.device']); // nothing to unmount
  });

  test('an agent failure rolls the QMP objects back', async () => {
    const dev = loops.create();
    const dir = await volDir('blk-fail', { version: 1, kind: 'block', block: { device: dev } });
    vm.agentHandler = () => { throw Object.assign(new Error('mount: wrong fs type'), { code: 'internal' }); };
    const err = await mgr.attach(vm, (await mgr.classify(dir))!, false).catch((e) => e);
    expect(err.message).toMatch(/mounting .* in the guest: mount: wrong fs type/);
    expect(pvvol(await vm.inventory())).toEqual([]);
    expect(vm.scsiIdsInUse).toEqual([]);
    expect(await mgr.attachments(vm.id)).toEqual([]);
  });

  test('a device missing or mounted on the host is refused before QEMU sees it', async () => {
    const dir = await volDir('blk-missing', { version: 1, kind: 'block', block: { device: '/dev/pv-no-such-dev' } });
    await expect(mgr.classify(dir)).rejects.toMatchObject({ code: 'not_found' });
    const rootDev = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' - ')[1]?.split(' ')[1]).find((s) => s?.startsWith('/dev/'));
    if (rootDev && fs.existsSync(rootDev) && fs.statSync(rootDev).isBlockDevice()) {
      const d2 = await volDir('blk-mounted', { version: 1, kind: 'block', block: { device: rootDev } });
      await expect(mgr.classify(d2)).rejects.toMatchObject({ code: 'failed_precondition' });
    }
  });
});

describeRbd('RBD volumes on a real QEMU + Ceph', () => {
  let vm: BareVm;
  let ceph: CephCluster;
  let mgr: VolumeManager;
  let keyFile: string;
  const rbdDesc = (over: Record<string, unknown> = {}) => ({
    version: 1, kind: 'rbd', fsType: 'ext4', format: true,
    rbd: { monitors: [ceph.monitor], pool: ceph.pool, image: 'vol1', user: ceph.user, secret: { keyFile }, ...over },
  });

  beforeAll(async () => {
    [vm, ceph] = await Promise.all([BareVm.start(), startCeph()]);
    keyFile = path.join(tmp, 'pvtest.key');
    fs.writeFileSync(keyFile, ceph.userKey + '\n', { mode: 0o600 });
    await withRbd({ monitors: [ceph.monitor], user: ceph.user, key: ceph.userKey }, (rbd) => rbd.create({ pool: ceph.pool, image: 'vol1' }, 32 << 20));
    mgr = await VolumeManager.create({ stateDir: path.join(tmp, 'state-rbd'), sealKeyFile: path.join(tmp, 'seal.key'), cephTimeoutSec: 4 });
  });
  afterAll(async () => {
    await vm?.stop();
    await ceph?.stop();
  });
  afterEach(async () => {
    await mgr.detachAll(vm);
    expect(pvvol(await vm.inventory())).toEqual([]);
    vm.calls.length = 0;
  });

  test('attach through a QMP secret, rbd + raw nodes, scsi-hd; detach removes all of it', async () => {
    const dir = await volDir('rbd1', rbdDesc());
    const src = (await mgr.classify(dir))!;
    const a = await mgr.attach(vm, src, false);
    const tag = src.key.slice(-12);
    const inv = await vm.inventory();
    expect(inv.objects).toEqual([`pvvol-${tag}-s`]);
    expect(inv.devices).toContain(`pvvol-${tag}-d`);
    const nodes = (await vm.qmp('query-named-block-nodes', { flat: true })) as any[];
    expect(nodes.find((n) => n['node-name'] === `pvvol-${tag}-f`)).toMatchObject({ drv: 'rbd', ro: false });
    expect(JSON.stringify(nodes)).not.toContain(ceph.userKey); // the key is only in the secret object
    expect(vm.calls[0]).toMatchObject({ method: 'disk.mount', params: { target: a.guestPath, format: 'ext4' } });
    // the QEMU command line never saw the key
    await mgr.detachAll(vm);
    const after = await vm.inventory();
    expect(pvvol(after)).toEqual([]);
    expect(after.objects).toEqual([]);
    expect(vm.calls.map((c) => c.method)).toEqual(['disk.mount', 'disk.unmount']);
  });

  test('guest writes through QEMU land in the RBD image', async () => {
    const src = (await mgr.classify(await volDir('rbd-io', rbdDesc())))!;
    await mgr.attach(vm, src, false);
    const tag = src.key.slice(-12);
    // write through QEMU's block layer (as the guest would) with the HMP qemu-io command
    const w = await vm.qmp('human-monitor-command', { 'command-line': `qemu-io -d pvvol-${tag}-d "write -P 0x5a 0 64k"` });
    expect(w).toBe('');
    expect(BareVm.stdout).toMatch(/wrote 65536\/65536 bytes at offset 0/); // qemu-io prints on QEMU's stdout
    await vm.qmp('human-monitor-command', { 'command-line': `qemu-io -d pvvol-${tag}-d "flush"` });
    await mgr.detachAll(vm);
    const out = path.join(tmp, 'export.img');
    await ceph.rbd(['export', `${ceph.pool}/vol1`, out]);
    const buf = fs.readFileSync(out);
    expect(buf.subarray(0, 65536).every((b) => b === 0x5a)).toBe(true);
  });

  test('missing image, bad key, wrong monitor: clear errors, nothing left in QEMU', async () => {
    const cases: Array<[string, Record<string, unknown>, ErrorCode]> = [
      ['missing', { image: 'no-such-image' }, 'not_found'],
      ['badkey', { secret: { keyFile: path.join(tmp, 'bad.key') } }, 'permission_denied'],
      ['wrongmon', { monitors: [`127.0.0.1:${await freePort()}`] }, 'unavailable'],
    ];
    fs.writeFileSync(path.join(tmp, 'bad.key'), execFileSync('ceph-authtool', ['--gen-print-key'], { encoding: 'utf8' }), { mode: 0o600 });
    for (const [name, over, code] of cases) {
      const t = Date.now();
      const src = (await mgr.classify(await volDir(`rbd-${name}`, rbdDesc(over))))!;
      const err = await mgr.attach(vm, src, false).catch((e) => e);
      expect({ name, code: err.code }).toEqual({ name, code });
      expect(Date.now() - t).toBeLessThan(15_000);
      expect(pvvol(await vm.inventory())).toEqual([]);
    }
    expect(vm.calls).toEqual([]);
  });

  test('without the preflight QEMU fails itself and the secret is rolled back', async () => {
    const raw = await VolumeManager.create({ stateDir: path.join(tmp, 'state-rbd2'), sealKeyFile: path.join(tmp, 'seal.key'), rbdPreflight: false, cephTimeoutSec: 3 });
    for (const over of [{ image: 'no-such-image' }, { secret: { keyFile: path.join(tmp, 'bad.key') } }, { monitors: [`127.0.0.1:${await freePort()}`] }]) {
      const src = (await raw.classify(await volDir(`rbd-np-${Object.keys(over)[0]}`, rbdDesc(over))))!;
      const t = Date.now();
      const err = await raw.attach(vm, src, false).catch((e) => e);
      expect(err.message).toMatch(/QEMU opening RBD image/);
      expect(Date.now() - t).toBeLessThan(20_000);
      const inv = await vm.inventory();
      expect(pvvol(inv)).toEqual([]);
      expect(inv.objects).toEqual([]);
    }
  });

  test('a key file readable by others is refused', async () => {
    const loose = path.join(tmp, 'loose.key');
    fs.writeFileSync(loose, ceph.userKey, { mode: 0o644 });
    fs.chmodSync(loose, 0o644);
    const dir = await volDir('rbd-loose', rbdDesc({ secret: { keyFile: loose } }));
    await expect(mgr.classify(dir)).rejects.toMatchObject({ code: 'permission_denied', message: expect.stringMatching(/chmod 600/) });
  });
});

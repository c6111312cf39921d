// podvisor-csi over a real gRPC unix socket: Identity, Node (descriptor publish/unpublish) and
// Controller (RBD images on a real Ceph).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { withRbd } from '../../storage/ceph/rbd';
import { CsiPlugin, DRIVER_NAME, loadCsi } from '../../storage/csi/server';
import { DESCRIPTOR_FILE } from '../../storage/descriptor';
import { VolumeManager } from '../../storage/volume-manager';
import { CephCluster, cephAvailable, startCeph } from '../support/ceph';
import { ownMounts } from './helpers';

jest.setTimeout(120_000);
const describeCeph = cephAvailable() ? describe : describe.skip;

type Client = Record<string, (req: object) => Promise<any>>;
function client(csi: any, svc: string, sock: string): { c: Client; close: () => void } {
  const raw = new csi[svc](`unix://${sock}`, grpc.credentials.createInsecure());
  const c: Client = {};
  for (const m of Object.keys(csi[svc].service)) {
    c[m] = (req) => new Promise((resolve, reject) => raw[m](req, (err: Error | null, res: any) => (err ? reject(err) : resolve(res))));
  }
  return { c, close: () => raw.close() };
}

const mountCap = (mode = 'SINGLE_NODE_WRITER', fs_type = 'ext4') => ({ mount: { fs_type, mount_flags: ['noatime'] }, access_mode: { mode } });

describe('podvisor-csi', () => {
  let tmp: string;
  let plugin: CsiPlugin;
  let sock: string;
  let ceph: CephCluster | undefined;
  let id: Client, node: Client, ctl: Client;
  const closers: Array<() => void> = [];

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-csi-'));
    if (cephAvailable()) ceph = await startCeph();
    plugin = new CsiPlugin({
      endpoint: `unix://${tmp}/csi.sock`, nodeId: 'node-a', controller: true, node: true,
      secretsDir: path.join(tmp, 'secrets'), sealKeyFile: path.join(tmp, 'seal.key'), cephTimeoutSec: 5,
    });
    sock = await plugin.start();
    const csi = loadCsi();
    for (const [svc, set] of [['Identity', (c: Client) => (id = c)], ['Node', (c: Client) => (node = c)], ['Controller', (c: Client) => (ctl = c)]] as const) {
      const { c, close } = client(csi, svc, sock);
      set(c);
      closers.push(close);
    }
  });
  afterAll(async () => {
    closers.forEach((c) => c());
    await plugin?.stop();
    await ceph?.stop();
    const mounts = ownMounts({ dirs: [tmp] }); // staging and publish paths are all under tmp
    fs.rmSync(tmp, { recursive: true, force: true });
    expect(mounts).toEqual([]);
  });

  test('Identity', async () => {
    expect(await id.GetPluginInfo({})).toMatchObject({ name: DRIVER_NAME, vendor_version: expect.any(String) });
    const caps = await id.GetPluginCapabilities({});
    expect(caps.capabilities).toEqual(expect.arrayContaining([expect.objectContaining({ service: { type: 'CONTROLLER_SERVICE' } })]));
    expect(await id.Probe({})).toEqual({ ready: { value: true } });
  });

  test('Node capabilities: no staging', async () => {
    expect((await node.NodeGetCapabilities({})).capabilities).toEqual([]);
    expect(await node.NodeGetInfo({})).toMatchObject({ node_id: 'node-a' });
  });

  test('NodePublish writes a sealed descriptor that classify() accepts; NodeUnpublish removes it', async () => {
    const target = path.join(tmp, 'pods', 'uid1', 'volumes', 'kubernetes.io~csi', 'pv1', 'mount');
    await node.NodePublishVolume({
      volume_id: 'rbd:rbd//pvc-1', target_path: target, volume_capability: mountCap(), readonly: false,
      secrets: { userID: 'kube', userKey: 'AQBnn1BnAAAAABAAlBRpAZUKmFvb7IZNfX2wXw==' },
      volume_context: { kind: 'rbd', monitors: '10.0.0.1:6789,10.0.0.2', pool: 'rbd', image: 'pvc-1' },
    });
    const text = fs.readFileSync(path.join(target, DESCRIPTOR_FILE), 'utf8');
    expect(text).not.toContain('AQBnn1Bn'); // never the key inline
    const desc = JSON.parse(text);
    expect(desc).toMatchObject({ version: 1, kind: 'rbd', fsType: 'ext4', format: true, mountOptions: ['noatime'], rbd: { monitors: ['10.0.0.1:6789', '10.0.0.2:6789'], pool: 'rbd', image: 'pvc-1', user: 'kube' } });
    const keyFile = desc.rbd.secret.keyFile;
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600);
    const mgr = await VolumeManager.create({ stateDir: path.join(tmp, 'state'), sealKeyFile: path.join(tmp, 'seal.key') });
    const src = await mgr.classify(target);
    expect(src).toMatchObject({ raw: false, descriptor: { kind: 'rbd' }, key: expect.stringMatching(/^rbd-[0-9a-f]{16}$/) });
    // idempotent
    await node.NodePublishVolume({
      volume_id: 'rbd:rbd//pvc-1', target_path: target, volume_capability: mountCap(), readonly: false,
      secrets: { userID: 'kube', userKey: 'AQBnn1BnAAAAABAAlBRpAZUKmFvb7IZNfX2wXw==' }, volume_context: { kind: 'rbd', monitors: '10.0.0.1' },
    });
    // a descriptor sealed with another key is refused
    const other = await VolumeManager.create({ stateDir: path.join(tmp, 'state2'), sealKeyFile: path.join(tmp, 'other.key') });
    await expect(other.classify(target)).rejects.toMatchObject({ code: 'permission_denied' });

    await node.NodeUnpublishVolume({ volume_id: 'rbd:rbd//pvc-1', target_path: target });
    expect(fs.existsSync(target)).toBe(false);
    expect(fs.existsSync(keyFile)).toBe(false);
    await node.NodeUnpublishVolume({ volume_id: 'rbd:rbd//pvc-1', target_path: target }); // idempotent
  });

  test('NodePublish of NFS and read-only; bad requests are INVALID_ARGUMENT', async () => {
    const target = path.join(tmp, 'nfs-target');
    await node.NodePublishVolume({
      volume_id: 'nfs-vol-1', target_path: target, volume_capability: mountCap('MULTI_NODE_READER_ONLY', ''),
      volume_context: { kind: 'nfs', server: '10.1.2.3', share: '/exports/a', version: '3' },
    });
    const desc = JSON.parse(fs.readFileSync(path.join(target, DESCRIPTOR_FILE), 'utf8'));
    expect(desc).toMatchObject({ kind: 'nfs', readOnly: true, nfs: { server: '10.1.2.3', export: '/exports/a', version: '3' } });
    await node.NodeUnpublishVolume({ volume_id: 'nfs-vol-1', target_path: target });
    const bad = [
      { volume_id: 'x', target_path: path.join(tmp, 'b1'), volume_capability: { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, volume_context: { kind: 'nfs' } },
      { volume_id: 'x', target_path: path.join(tmp, 'b2'), volume_capability: mountCap(), volume_context: { kind: 'nfs', server: 'bad server', share: '/x' } },
      { volume_id: 'x', target_path: path.join(tmp, 'b3'), volume_capability: mountCap(), volume_context: { kind: 'weird' } },
      { volume_id: '', target_path: path.join(tmp, 'b4'), volume_capability: mountCap() },
    ];
    for (const req of bad) await expect(node.NodePublishVolume(req)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  describeCeph('Controller on a real Ceph', () => {
    const secrets = () => ({ userID: ceph!.user, userKey: ceph!.userKey });
    test('CreateVolume → image exists with the size; Expand → bigger; Delete → gone', async () => {
      const req = {
        name: 'pvc-0b1d2c3e', capacity_range: { required_bytes: String(50 << 20) }, volume_capabilities: [mountCap()],
        parameters: { pool: ceph!.pool, monitors: ceph!.monitor, fsType: 'ext4' }, secrets: secrets(),
      };
      const res = await ctl.CreateVolume(req);
      expect(res.volume).toMatchObject({ volume_id: `rbd:${ceph!.pool}//pvc-0b1d2c3e`, capacity_bytes: String(52 << 20), volume_context: { kind: 'rbd', pool: ceph!.pool, image: 'pvc-0b1d2c3e', monitors: ceph!.monitor } });
      const info = () => withRbd({ monitors: [ceph!.monitor], user: ceph!.user, key: ceph!.userKey }, (rbd) => rbd.info({ pool: ceph!.pool, image: 'pvc-0b1d2c3e' }));
      expect((await info()).size).toBe(52 << 20);
      expect((await ctl.CreateVolume(req)).volume.volume_id).toBe(res.volume.volume_id); // idempotent
      await expect(ctl.CreateVolume({ ...req, capacity_range: { required_bytes: String(1 << 30) } })).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });

      const caps = await ctl.ControllerGetCapabilities({});
      expect(caps.capabilities.map((c: any) => c.rpc.type).sort()).toEqual(['CREATE_DELETE_VOLUME', 'EXPAND_VOLUME']);
      const ex = await ctl.ControllerExpandVolume({ volume_id: res.volume.volume_id, capacity_range: { required_bytes: String(100 << 20) }, secrets: { ...secrets(), monitors: ceph!.monitor } });
      expect(ex).toMatchObject({ capacity_bytes: String(100 << 20), node_expansion_required: false });
      expect((await info()).size).toBe(100 << 20);

      await ctl.DeleteVolume({ volume_id: res.volume.volume_id, secrets: { ...secrets(), monitors: ceph!.monitor } });
      expect(await ceph!.rbd(['ls', ceph!.pool])).not.toContain('pvc-0b1d2c3e');
      await ctl.DeleteVolume({ volume_id: res.volume.volume_id, secrets: { ...secrets(), monitors: ceph!.monitor } }); // idempotent
    });

    test('controller errors: bad key, missing image, missing params', async () => {
      const base = { name: 'pvc-err', volume_capabilities: [mountCap()], parameters: { pool: ceph!.pool, monitors: ceph!.monitor } };
      await expect(ctl.CreateVolume({ ...base, secrets: { userID: ceph!.user, userKey: 'AQBnn1BnAAAAABAAlBRpAZUKmFvb7IZNfX2wXw==' } })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      await expect(ctl.CreateVolume({ ...base, secrets: {} })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
      await expect(ctl.CreateVolume({ ...base, parameters: { monitors: ceph!.monitor }, secrets: secrets() })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
      await expect(ctl.ControllerExpandVolume({ volume_id: `rbd:${ceph!.pool}//nope`, capacity_range: { required_bytes: String(1 << 20) }, secrets: { ...secrets(), monitors: ceph!.monitor } }))
        .rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    });
  });
});

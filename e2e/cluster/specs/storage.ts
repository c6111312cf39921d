// Persistent storage through the cluster with podvisor's CSI node plugin (deploy/csi's
// CSIDriver, the plugin and its kubelet registration run by the harness on the host): static
// PersistentVolumes of raw block (a loop device, formatted ext4 on first use, attached to the VM
// by QEMU) and NFS (the test NFS server, mounted by the guest kernel over the pod network), each
// bound by a PVC, mounted by a pod; what one pod wrote is there for the next after the first is
// deleted. Nothing is mounted on the host.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import { startNfs, type NfsServer } from '../../../test/support/nfs';
import { Loops } from '../../../test/storage/helpers';
import { BRIDGE, CSI_DRIVER, IMAGES, POD_SUBNET } from '../support/cluster';
import { mountsUnder } from '../support/host';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const ns = 'e2e-storage';
const NFS_IP = `${POD_SUBNET}.250`;
const NFS_VETH = 'pvk8snfs';
const token = crypto.randomBytes(6).toString('hex');
const loops = new Loops();
process.once('exit', () => loops.detachAll());
let nfs: NfsServer | undefined;

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

function pv(name: string, accessMode: string, attrs: Record<string, string>, fsType?: string): k8s.V1PersistentVolume {
  return {
    metadata: { name },
    spec: {
      capacity: { storage: '64Mi' }, accessModes: [accessMode], persistentVolumeReclaimPolicy: 'Retain', storageClassName: '',
      csi: { driver: CSI_DRIVER, volumeHandle: name, fsType, volumeAttributes: attrs },
    },
  };
}

function pvc(name: string, volumeName: string, accessMode: string): k8s.V1PersistentVolumeClaim {
  return { metadata: { name }, spec: { accessModes: [accessMode], storageClassName: '', volumeName, resources: { requests: { storage: '64Mi' } } } };
}

function podWith(name: string, claim: string, script: string): k8s.V1Pod {
  return {
    metadata: { name },
    spec: {
      terminationGracePeriodSeconds: 1,
      containers: [{ name: 'main', image: IMAGES.busybox, command: ['sh', '-c', script], volumeMounts: [{ name: 'data', mountPath: '/data' }] }],
      volumes: [{ name: 'data', persistentVolumeClaim: { claimName: claim } }],
    },
  };
}

export const storage: SpecGroup = {
  title: 'persistent volumes (podvisor CSI)',
  namespace: ns,
  async setup({ kube }) {
    const dev = loops.create(64);
    nfs = await startNfs();
    // the NFS server's netns joins the pod bridge (the cluster made it) through one more veth
    sh('ip', ['link', 'add', NFS_VETH, 'type', 'veth', 'peer', 'name', 'podnet', 'netns', nfs.serverNetns]);
    sh('ip', ['link', 'set', NFS_VETH, 'master', BRIDGE]);
    sh('ip', ['link', 'set', NFS_VETH, 'up']);
    sh('ip', ['-n', nfs.serverNetns, 'addr', 'add', `${NFS_IP}/24`, 'dev', 'podnet']);
    sh('ip', ['-n', nfs.serverNetns, 'link', 'set', 'podnet', 'up']);
    await kube.core.createPersistentVolume({ body: pv('e2e-block', 'ReadWriteOnce', { kind: 'block', device: dev, format: 'true' }, 'ext4') });
    await kube.core.createPersistentVolume({ body: pv('e2e-nfs', 'ReadWriteMany', { kind: 'nfs', server: NFS_IP, share: nfs.pseudo, version: '4.1' }) });
    await kube.core.createNamespacedPersistentVolumeClaim({ namespace: ns, body: pvc('block', 'e2e-block', 'ReadWriteOnce') });
    await kube.core.createNamespacedPersistentVolumeClaim({ namespace: ns, body: pvc('nfs', 'e2e-nfs', 'ReadWriteMany') });
    const write = `echo ${token} > /data/token; sync; echo written; exec sleep 7200`;
    await Promise.all([kube.createPod(ns, podWith('block-writer', 'block', write)), kube.createPod(ns, podWith('nfs-writer', 'nfs', write))]);
  },
  specs,
};

function specs(ctx: Ctx): void {
  afterAll(async () => {
    const { kube } = ctx();
    // the claims go with the namespace; the PVs (Retain) and the servers are ours to remove
    await kube.deleteNamespace(ns);
    for (const name of ['e2e-block', 'e2e-nfs']) await kube.core.deletePersistentVolume({ name }).catch(() => undefined);
    loops.detachAll();
    await nfs?.stop();
    try { sh('ip', ['link', 'del', NFS_VETH]); } catch { /* went with the netns */ }
  });

  const keeps = (kind: 'block' | 'nfs') => async () => {
    const { kube, cluster } = ctx();
    const claim = await until(`PVC ${kind} Bound`, async () => {
      const c = await kube.core.readNamespacedPersistentVolumeClaim({ name: kind, namespace: ns });
      if (c.status?.phase !== 'Bound') throw new Error(`phase ${c.status?.phase}`);
      return c;
    }, 60_000, 1000);
    expect(claim.spec!.volumeName).toBe(`e2e-${kind}`);
    const writer = await kube.waitRunning(ns, `${kind}-writer`);
    expect(await kube.run(ns, `${kind}-writer`, ['cat', '/data/token'])).toBe(`${token}\n`);
    const mounts = await kube.run(ns, `${kind}-writer`, ['cat', '/proc/mounts']);
    expect(mounts).toMatch(kind === 'nfs' ? new RegExp(`^${NFS_IP.replace(/\./g, '\\.')}:/export /data nfs4 `, 'm') : /^\/dev\/\S+ \/data ext4 /m);
    // the CSI target dir holds podvisor's descriptor, and nothing is mounted on the host
    const podDir = path.join(cluster.kubeletDir, 'pods', writer.metadata!.uid!);
    expect(mountsUnder(path.join(podDir, 'volumes', 'kubernetes.io~csi'))).toEqual([]);
    if (kind === 'nfs') expect(fs.readFileSync(path.join(nfs!.exportDir, 'token'), 'utf8')).toBe(`${token}\n`);

    await kube.core.deleteNamespacedPod({ name: `${kind}-writer`, namespace: ns });
    await until('writer gone', async () => {
      const left = (await kube.core.listNamespacedPod({ namespace: ns })).items.filter((p) => p.metadata!.name === `${kind}-writer`);
      if (left.length) throw new Error('still there');
    }, 120_000, 1000);
    await kube.createPod(ns, podWith(`${kind}-reader`, kind, 'cat /data/token; exec sleep 7200'));
    await kube.waitRunning(ns, `${kind}-reader`);
    await until('reader saw the data', async () => expect(await kube.core.readNamespacedPodLog({ name: `${kind}-reader`, namespace: ns })).toBe(`${token}\n`), 60_000, 1000);
  };

  it('raw block from a loop device: PVC bound, ext4 in the pod, the data kept across pod deletion', keeps('block'));
  it('NFS from the test server: PVC bound, mounted by the guest, the data kept across pod deletion', keeps('nfs'));
}

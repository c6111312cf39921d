// What kubelet's CRI stats provider does with podvisor's container stats: for every container's
// writable layer it stats the host directory fs_id names (cadvisor GetDirFsInfo) and fails the
// whole /stats/summary when that path does not exist. The layer itself lives in guest memory, so
// the name must be a host directory that exists: the container filesystem ImageFsInfo reports
// (containerd names its snapshotter root in both places).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { imageHandlers } from '../../src/cri/image';
import { StatsCollector } from '../../src/runtime/stats';
import { silentLogger } from '../../src/util/log';

let tmp: string;
beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-stats-'))));
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const rec = (id: string, state: string) => ({ id, sandboxId: 'pod1', state, config: { metadata: { name: id }, labels: {}, annotations: {} } });

function collector(containerFsDir: string) {
  const recs = [rec('c-running', 'CONTAINER_RUNNING'), rec('c-exited', 'CONTAINER_EXITED')];
  const pod = { stats: async (ids: string[]) => ({ containers: ids.map((id) => ({ id, cpu_usage_ns: 5e9, memory_working_set: 1 << 20, memory_rss: 1 << 19, memory_usage: 2 << 20, pids: 1 })), memory_available: 100 << 20 }), hostPrivateBytes: async () => 30 << 20 };
  const sandbox = { rec: { id: 'pod1', state: 'SANDBOX_READY', config: { metadata: { name: 'p', namespace: 'n', uid: 'u', attempt: 0 } } }, pod };
  const sandboxes = { find: (id: string) => (id === 'pod1' ? sandbox : undefined), sandboxes: new Map([['pod1', sandbox]]) };
  const containers = { containers: new Map(recs.map((r) => [r.id, { rec: r }])), list: () => recs };
  return new StatsCollector(sandboxes as never, containers as never, silentLogger, containerFsDir);
}

describe('container stats: the writable layer', () => {
  test('names a host directory that exists, the container filesystem ImageFsInfo reports', async () => {
    const containerFsDir = path.join(tmp, 'state');
    fs.mkdirSync(containerFsDir);
    const stats = collector(containerFsDir);
    const images = { fsInfo: async () => ({ mountpoint: tmp, usedBytes: 1, inodesUsed: 1, timestamp: Date.now() }) };
    const fsInfo = await imageHandlers(images as never, { containerFsDir }).ImageFsInfo();

    const listed = await stats.listContainerStats({});
    const fromPod = (await stats.listPodStats({}))[0].linux!.containers!;
    expect(listed.map((c) => c.attributes!.id)).toEqual(['c-running', 'c-exited']);
    for (const c of [...listed, ...fromPod]) {
      const mountpoint = c.writable_layer!.fs_id!.mountpoint!;
      expect(mountpoint).toBe(fsInfo.container_filesystems![0].fs_id!.mountpoint);
      // what cadvisor does first: stat the directory (ENOENT made kubelet answer 500)
      expect(fs.statSync(mountpoint).isDirectory()).toBe(true);
    }
  });
});

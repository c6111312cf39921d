// Pod checkpoint files on the host side: what CheckpointPod writes is read back whole, and a
// damaged, edited, foreign-format or oddly named checkpoint is refused with its code before
// anything would be restored (e2e/checkpoint.test.ts checkpoints and restores real pod VMs).
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkpointArchive, MANIFEST, MANIFEST_DIGEST, outputDir, readCheckpoint, sha256File, writeCheckpoint, type PodCheckpoint } from '../../src/runtime/checkpoint-format';
import { hostPathBinds } from '../../src/runtime/mount-plan';
import { vmState } from '../../src/runtime/backends/vm/vm-checkpoint';
import { hasCode } from '../../src/util/errors';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-cpf-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const base: Omit<PodCheckpoint, 'files'> = {
  format: 'podvisor.dev/pod-checkpoint',
  version: 1,
  createdAt: '2026-12-07T00:00:00.000Z',
  backend: 'vm',
  host: { 'hypervisor.qemu': 'q:1:2', 'guest.kernel': 'k' },
  sandbox: { id: 'a'.repeat(64), config: { metadata: { name: 'p', namespace: 'n', uid: 'u' } }, runtimeHandler: '', images: {}, network: null, agentVersion: '0.1.0', state: { vcpus: 1 } },
  containers: [],
};

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    return hasCode(e) ? e.code : `other: ${(e as Error).message}`;
  }
  return undefined;
}

function rewrite(edit: (m: any) => void): void {
  const m = JSON.parse(fs.readFileSync(path.join(dir, MANIFEST), 'utf8'));
  edit(m);
  const text = JSON.stringify(m);
  fs.writeFileSync(path.join(dir, MANIFEST), text);
  fs.writeFileSync(path.join(dir, MANIFEST_DIGEST), crypto.createHash('sha256').update(text).digest('hex'));
}

describe('pod checkpoint files', () => {
  it('reads back what was written, every file digested', async () => {
    fs.writeFileSync(path.join(dir, 'vm.state'), 'state bytes');
    fs.mkdirSync(path.join(dir, 'logs'));
    fs.writeFileSync(path.join(dir, 'logs', '0.log'), 'log');
    const w = await writeCheckpoint(dir, base, ['vm.state', 'logs/0.log']);
    expect(w.files['vm.state']).toEqual({ size: 11, sha256: crypto.createHash('sha256').update('state bytes').digest('hex') });
    expect(await readCheckpoint(dir)).toEqual(w);
  });

  it('digests files across its read buffer\'s boundaries (empty, 1 MiB + 1, 3.5 MiB) as sha256 does', async () => {
    for (const size of [0, (1 << 20) + 1, 3.5 * (1 << 20)]) {
      const data = crypto.randomBytes(size);
      fs.writeFileSync(path.join(dir, 'f'), data);
      expect(await sha256File(path.join(dir, 'f'))).toBe(crypto.createHash('sha256').update(data).digest('hex'));
    }
  });

  it('refuses a damaged file, an edited manifest, another format or version, odd names (DATA_LOSS / FAILED_PRECONDITION)', async () => {
    fs.writeFileSync(path.join(dir, 'vm.state'), 'state bytes');
    await writeCheckpoint(dir, base, ['vm.state']);
    fs.writeFileSync(path.join(dir, 'vm.state'), 'state bytez');
    expect(await codeOf(readCheckpoint(dir))).toBe('data_loss');
    fs.writeFileSync(path.join(dir, 'vm.state'), 'state bytes!');
    expect(await codeOf(readCheckpoint(dir))).toBe('data_loss'); // size
    fs.writeFileSync(path.join(dir, 'vm.state'), 'state bytes');
    expect(await codeOf(readCheckpoint(dir))).toBeUndefined();
    fs.appendFileSync(path.join(dir, MANIFEST), '\n');
    expect(await codeOf(readCheckpoint(dir))).toBe('data_loss');
    rewrite((m) => { m.version = 2; });
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
    rewrite((m) => { m.version = 1; m.format = 'other'; });
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
    rewrite((m) => { m.format = 'podvisor.dev/pod-checkpoint'; m.files['../escape'] = m.files['vm.state']; });
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
    rewrite((m) => { delete m.files['../escape']; m.containers = [{ podId: 'x' }]; });
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
    fs.rmSync(path.join(dir, MANIFEST_DIGEST));
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
  });

  it('output directories: absolute, new or empty', async () => {
    expect(await codeOf(outputDir('relative'))).toBe('failed_precondition');
    expect(await codeOf(outputDir(undefined))).toBe('failed_precondition');
    const fresh = path.join(dir, 'new');
    expect(await outputDir(fresh)).toBe(fresh);
    expect(fs.statSync(fresh).mode & 0o777).toBe(0o700);
    expect(await outputDir(fresh)).toBe(fresh); // empty: fine
    fs.writeFileSync(path.join(fresh, 'x'), '');
    expect(await codeOf(outputDir(fresh))).toBe('failed_precondition');
  });

  it('a VM state is checked before a VM is started from it', () => {
    const ok = { vcpus: 2, memoryMiB: 512, size: { vcpus: 1, memoryMiB: 256 }, nics: 1, ramBackend: true, disks: [{ nodeName: 'disk1', scsiId: 1, lun: 0, readonly: true }] };
    expect(vmState(ok)).toEqual(ok);
    for (const bad of [
      { ...ok, vcpus: 0 }, { ...ok, size: { vcpus: 3, memoryMiB: 256 } }, { ...ok, nics: 99 },
      { ...ok, disks: [{ nodeName: 'disk1;rm', scsiId: 1, lun: 0 }] }, { ...ok, disks: 'x' }, { ...ok, memoryMiB: 1.5 },
    ]) {
      expect(() => vmState(bad as any)).toThrow(expect.objectContaining({ code: 'failed_precondition' }));
    }
  });

  it('a container\'s share directory and host-path mounts are read back; malformed ones refused', async () => {
    const c = {
      podId: 'b'.repeat(64), id: 'b'.repeat(64), config: { metadata: { name: 'c' } }, imageId: 'sha256:' + 'c'.repeat(64), imageSpec: {}, imageRef: '',
      createdAt: '', startedAt: '', finishedAt: '', state: 'CONTAINER_RUNNING', exitCode: 0, reason: '', message: '', pid: 1, stopSignal: 15,
      streams: {}, imageVolumes: [], deviceRules: [], log: null, shareDir: `c/${'b'.repeat(64)}`, shareMounts: ['/etc/hosts', '/dev/termination-log'],
    };
    fs.writeFileSync(path.join(dir, 'vm.state'), 'state bytes');
    const w = await writeCheckpoint(dir, { ...base, containers: [c as any] }, ['vm.state']);
    expect((await readCheckpoint(dir)).containers[0]).toEqual(w.containers[0]);
    rewrite((m) => { m.containers[0].shareDir = 'c/../../etc'; });
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
    rewrite((m) => { m.containers[0].shareDir = c.shareDir; m.containers[0].shareMounts = [1]; });
    expect(await codeOf(readCheckpoint(dir))).toBe('failed_precondition');
  });

  it('a CreateContainer image that is a checkpoint archive is told apart from a missing image', async () => {
    fs.writeFileSync(path.join(dir, 'container.json'), '{}');
    fs.mkdirSync(path.join(dir, 'pod'));
    execFileSync('tar', ['-c', '-f', path.join(dir, 'ours.tar'), '-C', dir, 'container.json', 'pod']);
    execFileSync('tar', ['-c', '-f', path.join(dir, 'other.tar'), '-C', dir, 'pod', 'container.json']);
    fs.writeFileSync(path.join(dir, 'plain'), 'x'.repeat(2000));
    expect(await checkpointArchive(path.join(dir, 'ours.tar'))).toBe('podvisor');
    expect(await checkpointArchive(path.join(dir, 'other.tar'))).toBe('tar');
    expect(await checkpointArchive(path.join(dir, 'plain'))).toBeUndefined();
    expect(await checkpointArchive(dir)).toBeUndefined();
    expect(await checkpointArchive(path.join(dir, 'missing.tar'))).toBeUndefined();
    expect(await checkpointArchive('busybox:latest')).toBeUndefined();
  });

  it('the host paths a VM pod binds into its share, in planMounts\' order (a restored pod binds its own there)', async () => {
    const classify = async (p: string) => (p === '/dev/vol' ? ({} as any) : null);
    const config = {
      mounts: [
        { container_path: '/etc/hosts', host_path: path.join(dir, 'hosts'), readonly: false },
        { container_path: '/img', image: { image: 'sha256:' + 'c'.repeat(64) }, readonly: true },
        { container_path: '/cfg', host_path: path.join(dir, 'cfg'), readonly: true },
      ],
    };
    expect(await hostPathBinds(config as any, '', { classify })).toEqual([
      { containerPath: '/etc/hosts', hostPath: path.join(dir, 'hosts'), readonly: false },
      { containerPath: '/cfg', hostPath: path.join(dir, 'cfg'), readonly: true },
    ]);
    const withVolume = { mounts: [...config.mounts, { container_path: '/v', host_path: '/dev/vol' }] };
    expect(await codeOf(hostPathBinds(withVolume as any, '', { classify }))).toBe('failed_precondition');
  });
});

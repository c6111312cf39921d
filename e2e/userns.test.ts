// User namespaces (hostUsers: false pods) and SupplementalGroupsPolicy end to end: the real
// daemon, real pod VMs, images from a real registry.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { busyboxEntries, makeLayer, pushBusybox, pushImage } from '../test/support/images';
import { readCriLog } from '../test/support/cri-log';
import { Registry, startRegistry } from '../test/support/registry';
import { startContainer, waitContainerState } from './support/containers';
import { podConfig, podQemuPids, TestDaemon } from './support/daemon';

jest.setTimeout(240_000);

let registry: Registry;
let d: TestDaemon;
let busybox: string;
let grouped: string;

// the critest predefined-group image: default-user (1000) is a member of group 50000
const PASSWD = 'root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home/default-user:/bin/sh\n';
const GROUP = 'root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n';

beforeAll(async () => {
  registry = await startRegistry();
  await pushBusybox(registry, 'e2e/busybox', 'latest');
  busybox = `${registry.host}/e2e/busybox:latest`;
  const entries = busyboxEntries().map((e) => (e.name === 'etc/passwd' ? { ...e, content: PASSWD } : e.name === 'etc/group' ? { ...e, content: GROUP } : e));
  await pushImage(registry, 'e2e/grouped', 'latest', { layers: [await makeLayer(entries)], config: { User: '1000' } });
  grouped = `${registry.host}/e2e/grouped:latest`;
  d = await TestDaemon.start({ registries: { [registry.host]: `http://${registry.host}` } });
  for (const image of [busybox, grouped]) await d.image('PullImage', { image: { image } });
});

afterAll(async () => {
  await d?.destroy();
  await registry?.stop();
});

async function exec(id: string, cmd: string): Promise<string> {
  const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 60 });
  expect({ cmd, exit: r.exit_code, stderr: Buffer.from(r.stderr).toString() }).toEqual({ cmd, exit: 0, stderr: '' });
  return Buffer.from(r.stdout).toString();
}

async function logOf(file: string, want: RegExp, ms = 30_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = fs.existsSync(file) ? readCriLog(fs.readFileSync(file), 'stdout') : '';
    if (want.test(text) || Date.now() > deadline) return text;
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('SupplementalGroupsPolicy', () => {
  it('is reported as a runtime feature, user namespaces per handler', async () => {
    const s = await d.runtime('Status', {});
    expect(s.features.supplemental_groups_policy).toBe(true);
    expect(s.runtime_handlers.find((h: any) => h.name === '').features.user_namespaces).toBe(true);
  });

  it.each([
    ['Merge', 'Merge', ['1000', '1234', '50000']],
    ['Strict', 'Strict', ['1000', '1234']],
  ])('%s: the process groups, those of an exec and ContainerStatus.user agree', async (name, policy, groups) => {
    const cfg = podConfig(`sgp-${name.toLowerCase()}`, path.join(d.logs, `sgp-${name}`));
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const id = await startContainer(d, pod, cfg, {
      metadata: { name: 'groups' },
      image: { image: grouped },
      command: ['sh', '-c', 'id -G; sleep 3600'],
      log_path: 'groups.log',
      linux: { security_context: { run_as_user: { value: '1000' }, supplemental_groups: ['1234'], supplemental_groups_policy: policy } },
    });
    const st = await waitContainerState(d, id, 'CONTAINER_RUNNING');
    expect(st.user.linux.uid).toBe('1000');
    expect(st.user.linux.gid).toBe('1000');
    expect([...st.user.linux.supplemental_groups].sort()).toEqual(groups);
    expect((await logOf(path.join(cfg.log_directory, 'groups.log'), /\d/)).trim()).toBe(groups.join(' '));
    expect((await exec(id, 'id -G')).trim()).toBe(groups.join(' '));
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });
});

describe('user namespaces (hostUsers: false)', () => {
  const mapping = { uids: [{ container_id: 0, host_id: 65536, length: 65536 }], gids: [{ container_id: 0, host_id: 65536, length: 65536 }] };
  const nsOptions = (extra: object = {}) => ({ network: 'POD', pid: 'POD', ipc: 'POD', userns_options: { mode: 'POD', ...mapping }, ...extra });

  it('root in the container is uid 65536 of the guest: idmapped image, its own writes, and a host path', async () => {
    const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-userns-'));
    fs.chmodSync(shared, 0o777); // as kubelet's emptyDir: writable for the pod's users
    try {
      const cfg = podConfig('userns', path.join(d.logs, 'userns'), { linux: { security_context: { namespace_options: nsOptions() } } });
      const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
      const id = await startContainer(d, pod, cfg, {
        metadata: { name: 'root' },
        image: { image: busybox },
        command: ['sh', '-c', 'cat /proc/self/uid_map; sleep 3600'],
        log_path: 'root.log',
        mounts: [{ container_path: '/data', host_path: shared }],
        linux: { security_context: { namespace_options: nsOptions() } },
      });
      await waitContainerState(d, id, 'CONTAINER_RUNNING');
      expect(await logOf(path.join(cfg.log_directory, 'root.log'), /65536/)).toMatch(/^\s*0\s+65536\s+65536\s*$/m);
      // inside: root, owning its image (idmapped) and what it writes; an exec joins its namespace
      expect((await exec(id, 'id -u')).trim()).toBe('0');
      expect((await exec(id, 'cat /proc/self/uid_map')).trim().split(/\s+/)).toEqual(['0', '65536', '65536']);
      expect((await exec(id, '/bin/busybox stat -c %u:%g /bin/busybox /etc/passwd /')).trim().split('\n')).toEqual(['0:0', '0:0', '0:0']);
      expect((await exec(id, 'echo changed >> /etc/passwd && touch /etc/new && /bin/busybox stat -c %u /etc/passwd /etc/new')).trim().split('\n')).toEqual(['0', '0']);
      // outside: what it made on a host path belongs to uid 65536, not root
      await exec(id, 'echo hi > /data/made-by-root');
      const st = fs.statSync(path.join(shared, 'made-by-root'));
      expect({ uid: st.uid, gid: st.gid }).toEqual({ uid: 65536, gid: 65536 });
      // and it is not the guest's root: making a device node (CAP_MKNOD of the initial user
      // namespace, which a plain pod's root has) is refused
      const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/busybox', 'mknod', '/tmp/null2', 'c', '1', '3'], timeout: 60 });
      expect({ exit: r.exit_code, err: Buffer.from(r.stderr).toString() }).toMatchObject({ exit: 1, err: expect.stringMatching(/Operation not permitted/) });
      // a non-root container of the pod: its exec'd processes are that user, without capabilities
      const user = await startContainer(d, pod, cfg, {
        metadata: { name: 'user' }, image: { image: busybox }, command: ['sleep', '3600'], linux: { security_context: { run_as_user: { value: '1000' }, namespace_options: nsOptions() } },
      });
      await waitContainerState(d, user, 'CONTAINER_RUNNING');
      expect((await exec(user, 'id -u; id -g; grep -E "^Cap(Eff|Prm):" /proc/self/status')).trim().split('\n')).toEqual(['1000', '0', 'CapPrm:\t0000000000000000', 'CapEff:\t0000000000000000']);
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    } finally {
      fs.rmSync(shared, { recursive: true, force: true });
    }
  });

  it('NODE mode: the host users (the guest\'s full range)', async () => {
    const cfg = podConfig('userns-node', path.join(d.logs, 'userns-node'), { linux: { security_context: { namespace_options: { network: 'POD', pid: 'POD', ipc: 'POD', userns_options: { mode: 'NODE' } } } } });
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const id = await startContainer(d, pod, cfg, { metadata: { name: 'c' }, image: { image: busybox }, command: ['sleep', '3600'] });
    await waitContainerState(d, id, 'CONTAINER_RUNNING');
    expect((await exec(id, 'cat /proc/self/uid_map')).trim().split(/\s+/)).toEqual(['0', '0', '4294967295']);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });

  it.each([
    ['two ranges', { mode: 'POD', uids: [mapping.uids[0], { container_id: 0, host_id: 200000, length: 10 }], gids: mapping.gids }],
    ['root unmapped', { mode: 'POD', uids: [{ container_id: 1, host_id: 65536, length: 65536 }], gids: [{ container_id: 1, host_id: 65536, length: 65536 }] }],
    ['CONTAINER', { mode: 'CONTAINER' }],
    ['TARGET', { mode: 'TARGET' }],
  ])('refuses %s before a VM is made', async (name, userns_options) => {
    const before = podQemuPids(d.state).length;
    const cfg = podConfig(`userns-bad-${name.replace(/\W/g, '')}`.toLowerCase(), d.logs, { linux: { security_context: { namespace_options: { userns_options } } } });
    await expect(d.runtime('RunPodSandbox', { config: cfg })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(podQemuPids(d.state).length).toBe(before);
  });
});

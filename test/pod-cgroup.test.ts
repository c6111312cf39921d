// The pod VM's host cgroup (src/runtime/pod-cgroup.ts): cgroup_parent as kubelet writes it for
// each driver, the hierarchies found in a mountinfo, and a real process moved into a cgroup of
// this host's cgroup filesystem and the cgroup removed after it exits.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cgroupParentPath, enterPodCgroup, podHierarchies, removeCgroups, sandboxCgroupName } from '../src/runtime/pod-cgroup';

describe('cgroup_parent', () => {
  it('is a path for cgroupfs and a nested slice for systemd', () => {
    expect(cgroupParentPath('/kubepods/burstable/pod1234', 'cgroupfs')).toBe('/kubepods/burstable/pod1234');
    expect(cgroupParentPath('/kubepods//besteffort/', 'cgroupfs')).toBe('/kubepods/besteffort/');
    expect(cgroupParentPath('kubepods-burstable-pod12_34.slice', 'systemd')).toBe('/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice');
    expect(cgroupParentPath('kubepods.slice', 'systemd')).toBe('/kubepods.slice');
    expect(cgroupParentPath('-.slice', 'systemd')).toBe('/');
    expect(sandboxCgroupName('abc', 'systemd')).toBe('podvisor-abc.scope');
    expect(sandboxCgroupName('abc', 'cgroupfs')).toBe('podvisor-abc');
  });

  it('is refused with INVALID_ARGUMENT when the driver would not write it so', () => {
    for (const [p, d] of [['kubepods/burstable', 'cgroupfs'], ['/kubepods/../etc', 'cgroupfs'], ['/a/./b', 'cgroupfs'], ['/a\0b', 'cgroupfs'], ['/kubepods', 'systemd'], ['kubepods', 'systemd'], ['a--b.slice', 'systemd'], ['-a.slice', 'systemd'], ['a/b.slice', 'systemd']] as const) {
      expect(() => cgroupParentPath(p, d)).toThrow(expect.objectContaining({ code: 'invalid_argument' }));
    }
  });
});

describe('hierarchies', () => {
  let dir: string;
  beforeAll(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-mountinfo-'))));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const write = (text: string) => {
    const f = path.join(dir, `mountinfo-${n++}`);
    fs.writeFileSync(f, text);
    return f;
  };

  it('are the resource controllers of v1 (not devices or freezer), its named systemd one and a cgroup2', async () => {
    const f = write(
      [
        '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
        '32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
        '34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset',
        '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
        '36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices',
        '37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer',
        '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd',
        '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw',
        '',
      ].join('\n'),
    );
    expect(await podHierarchies(f)).toEqual([
      { mount: '/sys/fs/cgroup/cpu,cpuacct', cpuset: false },
      { mount: '/sys/fs/cgroup/cpuset', cpuset: true },
      { mount: '/sys/fs/cgroup/memory', cpuset: false },
      { mount: '/sys/fs/cgroup/systemd', cpuset: false },
      { mount: '/sys/fs/cgroup/unified', cpuset: false },
    ]);
    expect(await podHierarchies(write('29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n'))).toEqual([{ mount: '/sys/fs/cgroup', cpuset: false }]);
  });
});

describe('a process in a pod cgroup of this host', () => {
  it('is moved with its threads, and the cgroups it got (and the parent made for it) go after it exits', async () => {
    const hs = await podHierarchies();
    expect(hs.length).toBeGreaterThan(0);
    const parent = `/podvisor-test-${process.pid}/pod-${Date.now()}`;
    const child = spawn('sleep', ['60'], { stdio: 'ignore' });
    const pid = child.pid!;
    const exited = new Promise((r) => child.once('exit', r));
    let made: string[] = [];
    try {
      made = await enterPodCgroup(parent, 'cgroupfs', 'sb1', pid, hs);
      const want = `${parent}/podvisor-sb1`;
      for (const h of hs) {
        expect(made).toContain(path.join(h.mount, want));
        expect(fs.readFileSync(path.join(h.mount, want, 'cgroup.procs'), 'utf8').trim().split('\n')).toEqual([String(pid)]);
        if (h.cpuset) expect(fs.readFileSync(path.join(h.mount, want, 'cpuset.cpus'), 'utf8').trim()).not.toBe('');
      }
      // /proc/<pid>/cgroup names the new cgroup in each hierarchy it is in
      const lines = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      expect(lines).toContain(`:${want}\n`);
      // still in use: removal waits, then says what is left
      await expect(removeCgroups(made, 100)).rejects.toThrow(/busy/);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    await removeCgroups(made);
    for (const h of hs) expect(fs.existsSync(path.join(h.mount, `/podvisor-test-${process.pid}`))).toBe(false);
  });

  it('nests a systemd slice as systemd does and names the VM a scope', async () => {
    const hs = await podHierarchies();
    const slice = `podvisortest${process.pid}-burstable-pod7.slice`;
    const child = spawn('sleep', ['60'], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    let made: string[] = [];
    try {
      made = await enterPodCgroup(slice, 'systemd', 'sb3', child.pid!, hs);
      const want = `/podvisortest${process.pid}.slice/podvisortest${process.pid}-burstable.slice/${slice}/podvisor-sb3.scope`;
      expect(fs.readFileSync(`/proc/${child.pid}/cgroup`, 'utf8')).toContain(`:${want}\n`);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    await removeCgroups(made);
    for (const h of hs) expect(fs.existsSync(path.join(h.mount, `podvisortest${process.pid}.slice`))).toBe(false);
  });

  it('keeps a parent that existed before, and removes nothing when it cannot join', async () => {
    const [h] = await podHierarchies();
    const parent = path.join(h.mount, `podvisor-keep-${process.pid}`);
    fs.mkdirSync(parent);
    try {
      await expect(enterPodCgroup(`/podvisor-keep-${process.pid}`, 'cgroupfs', 'sb2', 2 ** 22 + 1, [h])).rejects.toThrow(/cannot put the pod VM into cgroup/);
      expect(fs.readdirSync(parent).filter((n) => n.startsWith('podvisor-'))).toEqual([]);
      expect(fs.existsSync(parent)).toBe(true);
    } finally {
      fs.rmdirSync(parent);
    }
  });
});

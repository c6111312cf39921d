// What the pod's own kernel gives its containers: modules loaded on demand for privileged
// containers only (guest/agent/src/modprobe.rs), and memory-backed emptyDir volumes as a tmpfs
// of the pod in guest memory (src/runtime/memory-volume.ts, guest/agent/src/tmpfs.rs). The real
// daemon, real QEMU pod VMs, busybox.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { execSync, POD_NAMESPACES, startContainer } from './support/containers';
import { podConfig, type TestDaemon } from './support/daemon';

jest.setTimeout(240_000);

let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let image: string;

beforeAll(async () => {
  setup = await startBusyboxDaemon();
  ({ d, image } = setup);
});

afterAll(() => setup?.close());

const NS = { namespace_options: POD_NAMESPACES };

async function pod(name: string, privileged: boolean): Promise<{ id: string; cfg: any }> {
  const cfg = podConfig(name, path.join(d.logs, name), { linux: { security_context: { ...NS, privileged } } });
  return { id: (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id, cfg };
}

/** A running `sleep` container; `privileged` as kubelet sends it for securityContext.privileged. */
async function sleeper(p: { id: string; cfg: any }, name: string, privileged: boolean, mounts: object[] = []): Promise<string> {
  const config = {
    metadata: { name, attempt: 0 },
    image: { image },
    command: ['/bin/sleep', '3600'],
    mounts,
    linux: { security_context: { ...NS, privileged } },
  };
  return startContainer(d, p.id, p.cfg, config);
}

const sh = (id: string, cmd: string) => execSync(d, id, ['/bin/sh', '-c', cmd]);

/** Module names from /proc/modules as the container sees it. */
async function modules(id: string): Promise<string[]> {
  const r = await sh(id, 'cat /proc/modules');
  expect(r.code).toBe(0);
  return r.out.split('\n').filter(Boolean).map((l) => l.split(' ')[0]).sort();
}

// A container without privileges can still make the kernel ask for a module: in a user
// namespace of its own it holds CAP_NET_ADMIN over a new netns, and `ip link add … type dummy`
// then reaches request_module("rtnl-link-dummy"). The helper must refuse it.
const UNPRIVILEGED_REQUEST = 'busybox unshare -r -n busybox ip link add dummy1 type dummy';

describe('kernel modules on demand', () => {
  it('are loaded for a privileged container (dummy, a veth pair, a bridge), never for an unprivileged one in the same pod', async () => {
    const p = await pod('modpriv', true);
    const plain = await sleeper(p, 'plain', false);
    const priv = await sleeper(p, 'priv', true);
    const before = await modules(plain);
    expect(before).not.toContain('dummy');
    expect(before).not.toContain('veth');
    expect(before).not.toContain('bridge');

    // the unprivileged container first: refused, nothing loaded
    const denied = await sh(plain, UNPRIVILEGED_REQUEST);
    expect(denied.code).not.toBe(0);
    expect(denied.err).toMatch(/Operation not supported/);
    expect(await modules(plain)).toEqual(before);
    const log = await sh(priv, 'busybox dmesg | busybox grep podvisor-modprobe');
    expect(log.out).toMatch(/refused dummy \(for rtnl-link-dummy\) requested by pid \d+ \(busybox\): not privileged/);
    expect(log.out).not.toMatch(/loaded/);

    // the privileged one: the kernel finds what it asks for
    const made = await sh(priv, [
      'busybox ip link add dummy1 type dummy',
      'busybox ip link add v0 type veth peer name v1',
      'busybox ip link add br0 type bridge',
      'busybox ip link set v0 master br0',
      'busybox ip -o link',
    ].join(' && '));
    expect(made).toMatchObject({ code: 0, err: '' });
    expect(made.out).toMatch(/: dummy1: /);
    expect(made.out).toMatch(/: v0@\S+: .* master br0/);
    expect(made.out).toMatch(/: br0: /);
    const after = await modules(priv);
    for (const m of ['dummy', 'veth', 'bridge', 'stp', 'llc']) expect(after).toContain(m);
    expect((await sh(priv, 'busybox dmesg | busybox grep podvisor-modprobe')).out).toMatch(/loaded dummy \(for rtnl-link-dummy\) requested by pid \d+ \(busybox\)/);
    await d.runtime('StopPodSandbox', { pod_sandbox_id: p.id });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id });
  });

  it('are never loaded on behalf of a pod without privileged containers', async () => {
    const p = await pod('modplain', false);
    const plain = await sleeper(p, 'plain', false);
    const before = await modules(plain);
    // without a user namespace the kernel refuses before it asks for anything
    const direct = await sh(plain, 'busybox ip link add dummy1 type dummy');
    expect(direct.code).not.toBe(0);
    expect(direct.err).toMatch(/Operation not permitted/);
    const denied = await sh(plain, UNPRIVILEGED_REQUEST);
    expect(denied.code).not.toBe(0);
    expect(denied.err).toMatch(/Operation not supported/);
    const after = await modules(plain);
    expect(after).toEqual(before);
    expect(after).not.toContain('dummy');
    await d.runtime('StopPodSandbox', { pod_sandbox_id: p.id });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id });
  });
});

describe('a memory-backed emptyDir', () => {
  it("is a tmpfs in the guest of the volume's size, in the pod VM's memory, shared by the pod's containers", async () => {
    const uid = `memvol-uid-${Date.now()}`;
    // what kubelet makes for `emptyDir: {medium: Memory, sizeLimit: 10Mi}`: a tmpfs of that size
    // at <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>
    const vol = path.join(d.dir, 'kubelet', 'pods', uid, 'volumes', 'kubernetes.io~empty-dir', 'cache');
    fs.mkdirSync(vol, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=10485760', 'tmpfs', vol]);
    fs.chmodSync(vol, 0o777);
    let podId: string | undefined;
    try {
      const cfg = podConfig('memvol', path.join(d.logs, 'memvol'), {
        metadata: { name: 'memvol', namespace: 'e2e', uid, attempt: 0 },
      });
      podId = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
      const p = { id: podId!, cfg };
      const mounts = [{ container_path: '/cache', host_path: vol }];
      const a = await sleeper(p, 'writer', false, mounts);
      const b = await sleeper(p, 'reader', false, mounts);

      // the size kubelet asked for, exactly, and a tmpfs of the guest (not the 9p share)
      const df = await sh(a, 'busybox df -k /cache | busybox tail -1');
      expect(df.out.trim().split(/\s+/)[1]).toBe('10240');
      expect((await sh(a, 'busybox grep " /cache " /proc/mounts')).out).toMatch(/^\S+ \/cache tmpfs /);
      expect((await sh(a, 'busybox stat -c %a /cache')).out.trim()).toBe('777');

      // 8 MiB written by one container: the guest's shared memory grows by it (the VM's pages),
      // charged to the writing container (its working set in CRI stats, what kubelet reads), the
      // other container reads it, and nothing reaches the host's tmpfs
      const shmem = async () => Number(/^Shmem:\s+(\d+) kB/m.exec((await sh(a, 'cat /proc/meminfo')).out)![1]);
      const workingSet = async () => Number((await d.runtime('ContainerStats', { container_id: a })).stats.memory.working_set_bytes.value);
      const before = await shmem();
      const wsBefore = await workingSet();
      expect(await sh(a, 'busybox dd if=/dev/zero of=/cache/blob bs=1M count=8 2>/dev/null && echo ok')).toMatchObject({ code: 0, out: 'ok\n' });
      expect((await shmem()) - before).toBeGreaterThanOrEqual(8 * 1024 - 256); // other shared pages may come and go meanwhile
      expect((await workingSet()) - wsBefore).toBeGreaterThanOrEqual((8 << 20) - (1 << 20));
      expect((await sh(b, 'busybox wc -c < /cache/blob')).out.trim()).toBe(String(8 << 20));
      expect((await sh(b, 'echo from-b > /cache/note')).code).toBe(0);
      expect((await sh(a, 'cat /cache/note')).out).toBe('from-b\n');
      expect(fs.readdirSync(vol)).toEqual([]);

      // full at the size limit, as on a node
      const full = await sh(a, 'busybox dd if=/dev/zero of=/cache/more bs=1M count=4');
      expect(full.code).not.toBe(0);
      expect(full.err).toMatch(/No space left on device/);
      expect((await sh(b, 'rm /cache/more && echo x > /cache/after-full')).code).toBe(0);

      // a sub path (kubelet's subPath: a bind of a directory inside the volume) is the same volume
      const subHost = path.join(d.dir, 'kubelet', 'pods', uid, 'volume-subpaths', 'cache', 'sub', '0');
      fs.mkdirSync(path.join(vol, 'dir'));
      fs.mkdirSync(subHost, { recursive: true });
      execFileSync('mount', ['--bind', path.join(vol, 'dir'), subHost]);
      try {
        const c = await sleeper(p, 'sub', false, [{ container_path: '/sub', host_path: subHost }]);
        const r = await sh(c, 'echo in-sub > /sub/file && busybox grep " /sub " /proc/mounts');
        expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: '' });
        expect(r.out).toMatch(/ \/sub tmpfs /);
        expect((await sh(a, 'cat /cache/dir/file')).out).toBe('in-sub\n');
      } finally {
        execFileSync('umount', [subHost]);
      }
    } finally {
      if (podId) {
        await d.runtime('StopPodSandbox', { pod_sandbox_id: podId });
        await d.runtime('RemovePodSandbox', { pod_sandbox_id: podId });
      }
      execFileSync('umount', [vol]);
    }
  });
});

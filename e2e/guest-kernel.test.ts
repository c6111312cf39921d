// What the pod's own kernel gives its containers: modules loaded on demand for privileged
// containers only (guest/agent/src/modprobe.rs). The real daemon, real QEMU pod VMs, busybox.
import path from 'node:path';
import { pushBusybox } from '../test/support/images';
import { Registry, startRegistry } from '../test/support/registry';
import { podConfig, TestDaemon } from './support/daemon';

jest.setTimeout(240_000);

let registry: Registry;
let d: TestDaemon;
let image: string;

beforeAll(async () => {
  registry = await startRegistry();
  await pushBusybox(registry, 'e2e/busybox', 'latest');
  image = `${registry.host}/e2e/busybox:latest`;
  d = await TestDaemon.start({ registries: { [registry.host]: `http://${registry.host}` } });
  await d.image('PullImage', { image: { image } });
});

afterAll(async () => {
  await d?.destroy();
  await registry?.stop();
});

const NS = { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } };

async function pod(name: string, privileged: boolean): Promise<{ id: string; cfg: any }> {
  const cfg = podConfig(name, path.join(d.logs, name), { linux: { security_context: { ...NS, privileged } } });
  return { id: (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id, cfg };
}

/** A running `sleep` container; `privileged` as kubelet sends it for securityContext.privileged. */
async function sleeper(p: { id: string; cfg: any }, name: string, privileged: boolean): Promise<string> {
  const config = {
    metadata: { name, attempt: 0 },
    image: { image },
    command: ['/bin/sleep', '3600'],
    linux: { security_context: { ...NS, privileged } },
  };
  const { container_id } = await d.runtime('CreateContainer', { pod_sandbox_id: p.id, config, sandbox_config: p.cfg });
  await d.runtime('StartContainer', { container_id });
  return container_id;
}

async function sh(id: string, cmd: string): Promise<{ out: string; err: string; code: number }> {
  const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 60 });
  return { out: Buffer.from(r.stdout).toString(), err: Buffer.from(r.stderr).toString(), code: r.exit_code };
}

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

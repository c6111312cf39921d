// The test support leaves nothing behind, even when its daemon was killed: every e2e file ends
// with TestDaemon.destroy(), and a daemon killed mid-test (a crash test, a failed test between a
// kill and a relaunch) answers no RemovePodSandbox. destroy() then takes down from what the
// daemon left on disk: its pods' QEMU, netns (with their taps and the host ends of their veths),
// cgroups and mounts. Real daemon, real pod VM on a real CNI bridge, SIGKILLed.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { netnsNameFor } from '../network/network-driver';
import { podCgroupDirs } from '../src/runtime/pod-cgroup';
import { useBridgeNetwork } from './support/cni';
import { podConfig, qemuPidsUnder, TestDaemon } from './support/daemon';
import { claimRunNetwork, type RunNetwork } from './support/netpool';

jest.setTimeout(300_000);

let net: RunNetwork | undefined;
afterAll(async () => {
  if (net) execFileSync('ip', ['link', 'del', net.bridge], { stdio: 'ignore' });
  await net?.release();
});

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' });

test('destroy() after a SIGKILLed daemon: no QEMU, netns, veth, cgroup, mount or loop device of its pod is left', async () => {
  net = await claimRunNetwork('pvclean');
  const d = await TestDaemon.start({ templates: false });
  let destroyed = false;
  try {
    await useBridgeNetwork(d, { name: 'clean', bridge: net.bridge, subnet: net.subnet });
    const parent = `/pvclean-${path.basename(d.dir)}`;
    const cfg = podConfig('clean', path.join(d.logs, 'clean'), { linux: { cgroup_parent: parent, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } } });
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const cgroups = await podCgroupDirs(parent, 'cgroupfs', pod);
    const ports = () => sh('ip', ['-o', 'link', 'show', 'master', net!.bridge]).trim();
    // what the pod holds while it runs (else the checks below prove nothing)
    expect(sh('ip', ['netns', 'list'])).toContain(netnsNameFor(pod));
    expect(qemuPidsUnder(d.state)).toHaveLength(1);
    expect(ports()).not.toBe('');
    expect(cgroups.filter((c) => fs.existsSync(c)).length).toBeGreaterThan(0);

    await d.killProcess();
    const { dir } = d;
    await d.destroy();
    destroyed = true;
    await new Promise((r) => setTimeout(r, 500)); // a SIGKILLed QEMU's exit
    expect({
      netns: sh('ip', ['netns', 'list']).includes(netnsNameFor(pod)),
      qemu: qemuPidsUnder(dir),
      bridgePorts: ports(),
      cgroups: cgroups.filter((c) => fs.existsSync(c)),
      mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir)),
      loops: sh('losetup', ['-a']).split('\n').filter((l) => l.includes(dir)),
      scratch: fs.existsSync(dir),
    }).toEqual({ netns: false, qemu: [], bridgePorts: '', cgroups: [], mounts: [], loops: [], scratch: false });
    for (const c of cgroups) fs.rmdirSync(path.dirname(c)); // the parent this test named (kubelet's, in a cluster)
  } finally {
    if (!destroyed) await d.destroy();
  }
});

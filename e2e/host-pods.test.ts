// Host pods end to end (issue 16): pods in the host's network, PID or IPC namespace run on the
// host backend (pinned namespaces, a shim per container, no VM), through the real gRPC API of
// the real daemon, with a real registry. Needs root; run under /work/tools/e2e-slot.
import { status } from '@grpc/grpc-js';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { readCriLog } from '../test/support/cri-log';
import { freePort } from '../test/support/registry';
import { spdyAttachEcho, spdyConnect, spdyExec, spdyHttpGet } from '../test/streaming/support/spdy-client';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { useBridgeNetwork } from './support/cni';
import { claimRunNetwork, type RunNetwork } from './support/netpool';
import { containerConfig, execSync, POD_NAMESPACES, startContainer, until, waitContainerState } from './support/containers';
import { netnsNameFor } from '../network/network-driver';
import { podConfig, podQemuPids, type TestDaemon } from './support/daemon';

jest.setTimeout(240_000);

let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let image: string;

beforeAll(async () => {
  setup = await startBusyboxDaemon({ templates: false });
  ({ d, image } = setup);
});

afterAll(() => setup?.close());

type Ns = { network?: string; pid?: string; ipc?: string };

function hostPodConfig(name: string, ns: Ns): any {
  const cfg = podConfig(name, path.join(d.logs, name));
  cfg.linux.security_context.namespace_options = { ...POD_NAMESPACES, ...ns };
  return cfg;
}

const waitState = (id: string, state: string) => waitContainerState(d, id, state, 30_000);
const exec = (id: string, cmd: string[]) => execSync(d, id, cmd, 20);

/** A pod with one running container; returns ids and the pod config. */
async function run(name: string, ns: Ns, command: string[], extra: Record<string, unknown> = {}): Promise<{ pod: string; id: string; cfg: any }> {
  const cfg = hostPodConfig(name, ns);
  const { pod_sandbox_id: pod } = await d.runtime('RunPodSandbox', { config: cfg, runtime_handler: '' });
  const id = await startContainer(d, pod, cfg, containerConfig(image, 'main', command, { linux: { security_context: { namespace_options: { ...POD_NAMESPACES, ...ns } } }, ...extra }));
  await waitState(id, 'CONTAINER_RUNNING');
  return { pod, id, cfg };
}

async function logOf(cfg: any, name = 'main'): Promise<string> {
  const file = path.join(cfg.log_directory, `${name}.log`);
  return fs.existsSync(file) ? readCriLog(fs.readFileSync(file)) : '';
}

async function waitLog(cfg: any, text: string, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const log = await logOf(cfg);
    if (log.includes(text)) return log;
    if (Date.now() > deadline) throw new Error(`log does not show ${JSON.stringify(text)}: ${JSON.stringify(log)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function get(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/' }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

/** Mount points under the daemon's state dir (host pods mount there only). */
function mountsUnderState(): string[] {
  // <state>/host itself is a shared bind mount of itself while the daemon runs (see the last test)
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(d.state + '/') && m !== path.join(d.state, 'host'));
}

/** Processes whose command line names the daemon's state dir (shims, PID namespace inits). */
function processesUnderState(): string[] {
  const out: string[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(d.state + '/') && !cmd.includes(' serve ')) out.push(`${p} ${cmd}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

async function removePod(pod: string): Promise<void> {
  await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
  await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
}

describe('a host-network pod', () => {
  it('runs on the host backend, sees the host\'s interfaces, serves on a host port, logs, execs, stops and leaves nothing', async () => {
    const port = await freePort();
    const { pod, id, cfg } = await run('hostnet', { network: 'NODE' }, ['sh', '-c', `trap 'exit 0' TERM; echo started; mkdir -p /www; echo served-from-host-pod > /www/index.html; httpd -f -p 127.0.0.1:${port} -h /www & wait`]);
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    expect(st.status.state).toBe('SANDBOX_READY');
    expect(JSON.parse(st.info.info)).toMatchObject({ backend: 'host' });
    expect(st.status.linux.namespaces.options.network).toBe('NODE');

    // the host's interfaces and hostname
    const hostLinks = execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' }).trim().split('\n').map((l) => l.split(': ')[1].split('@')[0]).sort();
    const links = (await exec(id, ['sh', '-c', 'ip -o link'])).out.trim().split('\n').map((l) => l.split(': ')[1].split('@')[0]).sort();
    expect(links).toEqual(hostLinks);
    expect((await exec(id, ['hostname'])).out.trim()).toBe(os.hostname());
    // serving on the host's loopback
    expect(await get(port)).toBe('served-from-host-pod\n');
    expect(await waitLog(cfg, 'started\n')).toBe('started\n');
    expect(await exec(id, ['sh', '-c', 'echo to-out; echo to-err >&2; exit 7'])).toEqual({ out: 'to-out\n', err: 'to-err\n', code: 7 });
    // its own mount namespace and root: the image's, not the host's
    expect((await exec(id, ['cat', '/www/index.html'])).out).toBe('served-from-host-pod\n');
    expect(fs.existsSync('/www/index.html')).toBe(false);

    await d.runtime('StopContainer', { container_id: id, timeout: 10 });
    const exited = await waitState(id, 'CONTAINER_EXITED');
    expect(exited.exit_code).toBe(0); // the shell's trap: StopContainer's SIGTERM reached it
    await d.runtime('RemoveContainer', { container_id: id });
    await removePod(pod);
    expect((await d.runtime('ListPodSandbox', {})).items.filter((s: any) => s.id === pod)).toEqual([]);
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

describe('what host pods do not have (issue 20)', () => {
  it('a hostUsers: false host pod is refused before anything is made; UpdatePodSandboxResources answers UNIMPLEMENTED (kubelet\'s best effort) and the pod runs on', async () => {
    const handlers = (await d.runtime('Status', {})).runtime_handlers;
    expect(handlers.find((h: any) => h.name === 'runc').features.user_namespaces).toBe(false);
    expect(handlers.find((h: any) => h.name === '').features.user_namespaces).toBe(true);

    const userns = hostPodConfig('userns-host', { network: 'NODE' });
    userns.linux.security_context.namespace_options.userns_options = { mode: 'POD', uids: [{ container_id: 0, host_id: 100000, length: 65536 }], gids: [{ container_id: 0, host_id: 100000, length: 65536 }] };
    await expect(d.runtime('RunPodSandbox', { config: userns, runtime_handler: '' }))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/"host" backend, which has no user namespaces/) });
    expect((await d.runtime('ListPodSandbox', {})).items.filter((s: any) => s.metadata.name === 'userns-host')).toEqual([]);

    const { pod, id } = await run('resize-host', { network: 'NODE' }, ['sleep', '3600']);
    await expect(d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: pod, resources: { cpu_quota: 200000, cpu_period: 100000, memory_limit_in_bytes: 512 * 1024 * 1024 } }))
      .rejects.toMatchObject({ code: status.UNIMPLEMENTED, details: expect.stringMatching(/"host" backend are not resized as a whole/) });
    expect((await exec(id, ['true'])).code).toBe(0);
    await d.runtime('StopContainer', { container_id: id, timeout: 2 });
    await d.runtime('RemoveContainer', { container_id: id });
    await removePod(pod);
  });
});



describe('port-forward into host pods', () => {
  it('reaches the host\'s loopback for a host-network pod and the pod\'s netns otherwise', async () => {
    const port = await freePort();
    const host = await run('pf-host', { network: 'NODE' }, ['sh', '-c', `mkdir -p /www; echo through-port-forward > /www/index.html; exec httpd -f -p 127.0.0.1:${port} -h /www`]);
    const inPod = await run('pf-pod', { ipc: 'NODE' }, ['sh', '-c', 'mkdir -p /www; echo inside-the-pod-netns > /www/index.html; exec httpd -f -p 8080 -h /www']);
    try {
      for (const [pod, p, body] of [[host.pod, port, 'through-port-forward\n'], [inPod.pod, 8080, 'inside-the-pod-netns\n']] as const) {
        const c = await spdyConnect((await d.runtime('PortForward', { pod_sandbox_id: pod, port: [p] })).url, ['portforward.k8s.io']);
        try {
          const r = await until('httpd to answer', async () => {
            const x = await spdyHttpGet(c, `${Date.now()}`, p);
            return x.response.startsWith('HTTP/1.') ? x : false;
          }, 20_000);
          expect(r.response).toMatch(new RegExp(`\r\n\r\n${body}$`));
        } finally {
          c.close();
        }
      }
    } finally {
      await removePod(host.pod);
      await removePod(inPod.pod);
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

describe('host PID and IPC', () => {
  it('a hostPID pod sees the host\'s processes; a hostIPC pod shares the host\'s IPC namespace and /dev/shm', async () => {
    const { pod, id } = await run('hostpid', { pid: 'NODE' }, ['sleep', '3600']);
    try {
      // this test's own process, seen from inside
      const r = await exec(id, ['sh', '-c', `cat /proc/${process.pid}/cmdline | tr '\\0' ' '`]);
      expect(r.out).toContain(fs.readFileSync(`/proc/${process.pid}/cmdline`, 'utf8').split('\0')[0]);
      expect((await exec(id, ['/bin/busybox', 'readlink', '/proc/self/ns/pid'])).out.trim()).toBe(fs.readlinkSync('/proc/self/ns/pid'));
      // the pod's own IPC namespace
      expect((await exec(id, ['/bin/busybox', 'readlink', '/proc/self/ns/ipc'])).out.trim()).not.toBe(fs.readlinkSync('/proc/self/ns/ipc'));
    } finally {
      await removePod(pod);
    }
    const shmFile = `/dev/shm/pv-hostipc-${process.pid}`;
    fs.writeFileSync(shmFile, 'from the host');
    const ipc = await run('hostipc', { ipc: 'NODE' }, ['sleep', '3600']);
    try {
      expect((await exec(ipc.id, ['/bin/busybox', 'readlink', '/proc/self/ns/ipc'])).out.trim()).toBe(fs.readlinkSync('/proc/self/ns/ipc'));
      expect((await exec(ipc.id, ['cat', shmFile])).out).toBe('from the host');
      // still a PID namespace of its own, and a network namespace of the pod's (loopback only here)
      expect((await exec(ipc.id, ['sh', '-c', 'echo $$'])).out.trim()).not.toBe('');
      expect((await exec(ipc.id, ['/bin/busybox', 'readlink', '/proc/self/ns/net'])).out.trim()).not.toBe(fs.readlinkSync('/proc/self/ns/net'));
    } finally {
      fs.rmSync(shmFile, { force: true });
      await removePod(ipc.pod);
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

describe('streaming into host pods', () => {
  it('exec with and without a tty, attach to a container\'s stdin and stdout', async () => {
    const host = await run('stream-host', { network: 'NODE' }, ['cat'], { stdin: true });
    try {
      const tty = await spdyExec((await d.runtime('Exec', { container_id: host.id, cmd: ['/bin/busybox', 'tty'], stdout: true, tty: true })).url, { tty: true });
      expect(tty.stdout).toMatch(/^\/dev\/pts\/\d+\r\n$/);
      const plain = await spdyExec((await d.runtime('Exec', { container_id: host.id, cmd: ['sh', '-c', 'echo o; echo e >&2'], stdout: true, stderr: true })).url, { stderr: true });
      expect(plain).toMatchObject({ stdout: 'o\n', stderr: 'e\n' });
      // attach to cat: a line written comes back
      const attached = await d.runtime('Attach', { container_id: host.id, stdin: true, stdout: true, stderr: true });
      expect(await spdyAttachEcho(attached.url, 'hello over attach\n')).toBe(JSON.stringify({ metadata: {}, status: 'Success' }));
      // leaving without stdin_once keeps it running
      expect((await d.runtime('ContainerStatus', { container_id: host.id })).status.state).toBe('CONTAINER_RUNNING');
    } finally {
      await removePod(host.pod);
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

describe('daemon restart', () => {
  it('a host container keeps running and logging while the daemon is killed; the restarted daemon finds it and sees its kill -9', async () => {
    const { pod, id, cfg } = await run('restart', { network: 'NODE' }, ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done']);
    await waitLog(cfg, 'tick-2\n');
    await d.killProcess();
    const before = (await logOf(cfg)).split('\n').length;
    await new Promise((r) => setTimeout(r, 1500));
    // the shim logged while nobody else was there
    expect((await logOf(cfg)).split('\n').length).toBeGreaterThan(before + 3);
    await d.launch();
    const st = await waitState(id, 'CONTAINER_RUNNING');
    expect(st.state).toBe('CONTAINER_RUNNING');
    expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.state).toBe('SANDBOX_READY');
    expect((await exec(id, ['echo', 'after-restart'])).out).toBe('after-restart\n');
    const pid = JSON.parse((await d.runtime('ContainerStatus', { container_id: id, verbose: true })).info.info).pid;
    expect(pid).toBeGreaterThan(1);
    process.kill(pid, 'SIGKILL');
    const exited = await waitState(id, 'CONTAINER_EXITED');
    expect(exited.exit_code).toBe(137);
    await removePod(pod);
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

/** Cgroup directories under `parent` in every hierarchy (v1 controllers, a v2 or hybrid root). */
function cgroupsUnder(parent: string): string[] {
  const out: string[] = [];
  const roots = fs.existsSync('/sys/fs/cgroup/cgroup.controllers') ? ['/sys/fs/cgroup'] : fs.readdirSync('/sys/fs/cgroup').map((h) => path.join('/sys/fs/cgroup', h)).filter((h) => fs.lstatSync(h).isDirectory());
  for (const root of roots) {
    const dir = path.join(root, parent);
    if (!fs.existsSync(dir)) continue;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) out.push(path.join(dir, e.name));
  }
  return out;
}

/** Whether `pid` runs (exists and is not a zombie). */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2));
  } catch {
    return false;
  }
}

describe('a daemon killed with a host pod and a VM pod running', () => {
  it('finds both again: state, logs and exec of each; removing them leaves no mount, netns file, cgroup, shim or VM', async () => {
    // both pods under one cgroup_parent of this test's, as kubelet's pod cgroups are
    const parent = `/pv-e2e-mixed-${process.pid}`;
    const ticker = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done'];
    const hostNs = { ipc: 'NODE' }; // a pinned network and UTS namespace of its own, the host's IPC
    const hostCfg = hostPodConfig('mixed-host', hostNs);
    hostCfg.linux.cgroup_parent = parent;
    const vmCfg = hostPodConfig('mixed-vm', {});
    vmCfg.linux.cgroup_parent = parent;
    const pods: string[] = [];
    try {
      const host = (await d.runtime('RunPodSandbox', { config: hostCfg, runtime_handler: '' })).pod_sandbox_id;
      pods.push(host);
      const vm = (await d.runtime('RunPodSandbox', { config: vmCfg, runtime_handler: '' })).pod_sandbox_id;
      pods.push(vm);
      const backendOf = async (pod: string) => JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true })).info.info);
      expect((await backendOf(host)).backend).toBe('host');
      const vmInfo = await backendOf(vm);
      expect(vmInfo.backend).toBe('vm');
      const hostC = await startContainer(d, host, hostCfg, cc('main', ticker, hostNs));
      const vmC = await startContainer(d, vm, vmCfg, containerConfig(image, 'main', ticker));
      await waitContainerState(d, vmC, 'CONTAINER_RUNNING', 120_000);
      await waitState(hostC, 'CONTAINER_RUNNING');
      await waitLog(hostCfg, 'tick-2\n');
      const vmLog = () => logOf(vmCfg);
      await until('the VM container to log', async () => (await vmLog()).includes('tick-2\n'), 60_000);
      const pidOf = async (id: string) => JSON.parse((await d.runtime('ContainerStatus', { container_id: id, verbose: true })).info.info).pid;
      const hostPid = await pidOf(hostC);
      const lines = async (cfg: any) => (await logOf(cfg)).split('\n').length;

      await d.killProcess();
      const hostLines = await lines(hostCfg);
      await new Promise((r) => setTimeout(r, 1500));
      // the host container's shim logged on while no daemon was there
      expect(await lines(hostCfg)).toBeGreaterThan(hostLines + 3);
      await d.launch();

      // both pods and containers as they were: the same VM, the same container process
      for (const pod of [host, vm]) expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.state).toBe('SANDBOX_READY');
      expect((await backendOf(vm)).vm.pid).toBe(vmInfo.vm.pid);
      expect(await pidOf(hostC)).toBe(hostPid);
      for (const id of [hostC, vmC]) expect((await waitContainerState(d, id, 'CONTAINER_RUNNING', 120_000)).state).toBe('CONTAINER_RUNNING');
      const listed = (await d.runtime('ListContainers', { filter: { state: { state: 'CONTAINER_RUNNING' } } })).containers.map((c: any) => c.id);
      expect(listed).toEqual(expect.arrayContaining([hostC, vmC]));
      expect((await exec(hostC, ['echo', 'host-after-restart'])).out).toBe('host-after-restart\n');
      expect((await execSync(d, vmC, ['echo', 'vm-after-restart'], 60)).out).toBe('vm-after-restart\n');
      // logs flow on for both
      const before = [await lines(hostCfg), await lines(vmCfg)];
      await until('both logs to grow', async () => (await lines(hostCfg)) > before[0] + 3 && (await lines(vmCfg)) > before[1] + 3, 60_000);

      for (const pod of [host, vm]) await removePod(pod);
      pods.length = 0;
      expect((await d.runtime('ListPodSandbox', {})).items.filter((p: any) => [host, vm].includes(p.id))).toEqual([]);
      expect(mountsUnderState()).toEqual([]);
      expect(processesUnderState()).toEqual([]);
      expect(podQemuPids(d.state)).toEqual([]);
      // (a process the killed daemon left is reaped by init: a zombie for a moment counts as gone)
      expect(running(vmInfo.vm.pid)).toBe(false);
      expect(running(hostPid)).toBe(false);
      for (const pod of [host, vm]) {
        expect(fs.existsSync(path.join('/run/netns', netnsNameFor(pod)))).toBe(false);
        expect(fs.existsSync(path.join(d.state, 'host', 'pods', pod.slice(0, 16)))).toBe(false);
      }
      expect(cgroupsUnder(parent)).toEqual([]);
    } finally {
      for (const pod of pods) await removePod(pod).catch(() => undefined);
      // the test's own cgroup_parent (kubelet's to make and remove), also after a failure
      for (const dir of [...cgroupsUnder(parent), ...fs.readdirSync('/sys/fs/cgroup').map((h) => path.join('/sys/fs/cgroup', h, parent)), path.join('/sys/fs/cgroup', parent)]) {
        try { fs.rmdirSync(dir); } catch { /* not there, or still in use */ }
      }
    }
  });
});

/** Every mount point at or under the daemon's state dir, <state>/host itself included. */
function allMountsUnderState(): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m === d.state || m.startsWith(d.state + '/')));
}

describe('the host state dir\'s mount', () => {
  it('a stopped daemon keeps only what running host pods need, and nothing once they are gone; a restarted daemon re-uses or removes it', async () => {
    const stateMount = path.join(d.state, 'host');
    // stopped with a host pod running: its pinned namespaces and root stay, under the shared state dir
    const { pod, id } = await run('keep-mounts', { network: 'NODE' }, ['sleep', '3600']);
    await d.stopProcess();
    const kept = allMountsUnderState();
    expect(kept).toContain(stateMount);
    expect(kept.some((m) => m.startsWith(stateMount + '/pods/'))).toBe(true);
    await d.launch();
    expect((await waitState(id, 'CONTAINER_RUNNING')).state).toBe('CONTAINER_RUNNING');
    expect((await exec(id, ['echo', 'still-here'])).out).toBe('still-here\n');
    // the same shared mount, not a second one stacked on it
    expect(allMountsUnderState().filter((m) => m === stateMount)).toHaveLength(1);
    await removePod(pod);
    await d.stopProcess();
    expect(allMountsUnderState()).toEqual([]);

    // killed (no cleanup) after its last host pod went: the restarted daemon takes the mount away
    await d.launch();
    const again = await run('killed-idle', { network: 'NODE' }, ['sleep', '3600']);
    await removePod(again.pod);
    await d.killProcess();
    expect(allMountsUnderState()).toEqual([stateMount]);
    await d.launch();
    expect(allMountsUnderState()).toEqual([]);
    // and it makes it again for the next host pod
    const next = await run('after-release', { network: 'NODE' }, ['sleep', '3600']);
    expect((await exec(next.id, ['echo', 'ok'])).out).toBe('ok\n');
    await removePod(next.pod);
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

/** The container process's cgroup path in a v1 controller's hierarchy (from /proc/<pid>/cgroup). */
function cgroupOf(pid: number, controller: string): string {
  const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]?.split(',').includes(controller));
  if (!line) throw new Error(`no ${controller} cgroup for ${pid}`);
  return line.split(':').slice(2).join(':');
}

describe('UpdateContainerResources for a host container', () => {
  it('writes the new limits into the container\'s own cgroup and refuses bad ones', async () => {
    if (!fs.existsSync('/sys/fs/cgroup/cpu/cpu.shares')) throw new Error('this test reads cgroup v1 files (cpu, cpuset, memory hierarchies)');
    const { pod, id } = await run('update', { network: 'NODE' }, ['sleep', '3600'], { linux: { resources: { cpu_shares: 256, memory_limit_in_bytes: 128 << 20 }, security_context: { namespace_options: { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } } } });
    try {
      const pid = JSON.parse((await d.runtime('ContainerStatus', { container_id: id, verbose: true })).info.info).pid;
      const file = (ctrl: string, name: string) => fs.readFileSync(path.join('/sys/fs/cgroup', ctrl, cgroupOf(pid, ctrl), name), 'utf8').trim();
      expect(cgroupOf(pid, 'cpu')).toMatch(new RegExp(`/podvisor-${id}$`));
      // what the create set
      expect(file('cpu', 'cpu.shares')).toBe('256');
      expect(file('memory', 'memory.limit_in_bytes')).toBe(String(128 << 20));
      await d.runtime('UpdateContainerResources', { container_id: id, linux: { cpu_shares: 512, cpu_period: 100000, cpu_quota: 50000, memory_limit_in_bytes: 96 << 20, cpuset_cpus: '0' } });
      expect(file('cpu', 'cpu.shares')).toBe('512');
      expect(file('cpu', 'cpu.cfs_period_us')).toBe('100000');
      expect(file('cpu', 'cpu.cfs_quota_us')).toBe('50000');
      expect(file('memory', 'memory.limit_in_bytes')).toBe(String(96 << 20));
      expect(file('cpuset', 'cpuset.cpus')).toBe('0');
      // the process itself is limited: its own view of its CPUs
      expect((await exec(id, ['sh', '-c', 'grep Cpus_allowed_list /proc/self/status'])).out).toMatch(/Cpus_allowed_list:\s+0\n/);
      expect((await d.runtime('ContainerStatus', { container_id: id })).status.resources.linux).toMatchObject({ cpu_shares: '512', cpu_quota: '50000', memory_limit_in_bytes: String(96 << 20), cpuset_cpus: '0' });
      // a bad value is refused and changes nothing
      await expect(d.runtime('UpdateContainerResources', { container_id: id, linux: { cpu_shares: 1024, cpuset_cpus: '0\n1' } })).rejects.toMatchObject({ code: 3 });
      expect(file('cpu', 'cpu.shares')).toBe('512');
    } finally {
      await removePod(pod);
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

/** A container config for a pod with namespaces `ns` (as run() makes). */
const cc = (name: string, command: string[], ns: Ns) => containerConfig(image, name, command, { linux: { security_context: { namespace_options: { ...POD_NAMESPACES, ...ns } } } });

describe('a privileged host pod', () => {
  it('gets the host\'s devices and every capability; a sibling gets only the capabilities it adds', async () => {
    const ns = { network: 'NODE' };
    const cfg = hostPodConfig('privileged', ns);
    cfg.linux.security_context.privileged = true;
    const { pod_sandbox_id: pod } = await d.runtime('RunPodSandbox', { config: cfg, runtime_handler: '' });
    const made = async (name: string, sc: Record<string, unknown>) => {
      const c = cc(name, ['sleep', '3600'], ns);
      c.linux.security_context = { ...c.linux.security_context, ...sc } as any;
      const { container_id: id } = await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: c, sandbox_config: cfg });
      await d.runtime('StartContainer', { container_id: id });
      await waitState(id, 'CONTAINER_RUNNING');
      return id;
    };
    try {
      const priv = await made('priv', { privileged: true });
      const plain = await made('plain', { capabilities: { add_capabilities: ['NET_ADMIN'] } });
      const capEff = async (id: string) => BigInt('0x' + /CapEff:\s+([0-9a-f]+)/.exec((await exec(id, ['cat', '/proc/self/status'])).out)![1]);
      const hostBnd = BigInt('0x' + /CapBnd:\s+([0-9a-f]+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]);
      expect(await capEff(priv)).toBe(hostBnd);
      const NET_ADMIN = 1n << 12n;
      const SYS_ADMIN = 1n << 21n;
      const plainCaps = await capEff(plain);
      expect(plainCaps & NET_ADMIN).toBe(NET_ADMIN);
      expect(plainCaps & SYS_ADMIN).toBe(0n);
      // the host's device nodes: a block device of the host and /dev/kmsg, absent from the sibling's /dev
      const hostBlock = fs.readdirSync('/dev').find((n) => /^(loop\d+|sd[a-z]|vd[a-z]|nvme\d+n\d+)$/.test(n));
      expect(hostBlock).toBeDefined();
      const ls = async (id: string) => (await exec(id, ['ls', '/dev'])).out.split(/\s+/).filter(Boolean);
      expect(await ls(priv)).toEqual(expect.arrayContaining([hostBlock, 'kmsg']));
      expect(await ls(plain)).not.toContain(hostBlock);
      // a privileged container may do what only CAP_SYS_ADMIN does: mount a tmpfs
      expect(await exec(priv, ['sh', '-c', 'mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted'])).toMatchObject({ out: 'mounted\n', code: 0 });
      expect((await exec(plain, ['sh', '-c', 'mkdir -p /mnt/t && mount -t tmpfs none /mnt/t'])).code).not.toBe(0);
    } finally {
      await removePod(pod);
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

/** Host mount points at or under `dir`, deepest first. */
function hostMountsUnder(dir: string): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m === dir || m.startsWith(dir + '/')))
    .sort((a, b) => b.split('/').length - a.split('/').length);
}

describe('mounts of a host container', () => {
  it('recursive read-only reaches submounts (non-recursive does not); rshared, rslave and rprivate propagate as CRI says, also side by side in one container', async () => {
    const handlers = (await d.runtime('Status', {})).runtime_handlers;
    expect(handlers.find((h: any) => h.name === 'runc').features.recursive_read_only_mounts).toBe(true);
    const top = fs.mkdtempSync(path.join(d.dir, 'mounts-'));
    const dir = (name: string) => {
      const p = path.join(top, name);
      fs.mkdirSync(p, { recursive: true });
      return p;
    };
    // a host path with a tmpfs under it, for the read-only binds
    const ro = dir('ro');
    fs.mkdirSync(path.join(ro, 'sub'));
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(ro, 'sub')]);
    // three shared host paths (as kubelet's are on a systemd host), one per propagation mode
    const shared = (name: string) => {
      const p = dir(name);
      execFileSync('mount', ['--bind', p, p]);
      execFileSync('mount', ['--make-rshared', p]);
      fs.mkdirSync(path.join(p, 'from-host'));
      fs.mkdirSync(path.join(p, 'from-container'));
      return p;
    };
    const bi = shared('bi');
    const slave = shared('slave');
    const priv = shared('private');
    const ns = { network: 'NODE' };
    const cfg = hostPodConfig('mounts', ns);
    cfg.linux.security_context.privileged = true;
    const { pod_sandbox_id: pod } = await d.runtime('RunPodSandbox', { config: cfg, runtime_handler: '' });
    try {
      const c = cc('mounts', ['sleep', '3600'], ns);
      c.linux.security_context.privileged = true;
      c.mounts = [
        { container_path: '/rro', host_path: ro, readonly: true, recursive_read_only: true },
        { container_path: '/ro', host_path: ro, readonly: true },
        { container_path: '/bi', host_path: bi, propagation: 'PROPAGATION_BIDIRECTIONAL' },
        { container_path: '/slave', host_path: slave, propagation: 'PROPAGATION_HOST_TO_CONTAINER' },
        { container_path: '/private', host_path: priv, propagation: 'PROPAGATION_PRIVATE' },
      ];
      const id = await startContainer(d, pod, cfg, c);
      await waitState(id, 'CONTAINER_RUNNING');

      // read-only: the bind itself both times; its tmpfs only when recursive
      const touch = async (f: string) => (await exec(id, ['sh', '-c', `touch ${f} 2>&1`]));
      expect((await touch('/rro/x')).out).toMatch(/Read-only file system/);
      expect((await touch('/rro/sub/x')).out).toMatch(/Read-only file system/);
      expect((await touch('/ro/x')).out).toMatch(/Read-only file system/);
      expect(await touch('/ro/sub/y')).toMatchObject({ code: 0 });
      expect(fs.existsSync(path.join(ro, 'sub', 'y'))).toBe(true);

      // host → container: a tmpfs mounted on the host after the container started
      for (const p of [bi, slave, priv]) {
        execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(p, 'from-host')]);
        fs.writeFileSync(path.join(p, 'from-host', 'flag'), 'x');
      }
      const ls = async (p: string) => (await exec(id, ['ls', '-A', p])).out.trim();
      expect(await ls('/bi/from-host')).toBe('flag');
      expect(await ls('/slave/from-host')).toBe('flag');
      expect(await ls('/private/from-host')).toBe('');
      // container → host: only the bidirectional mount's
      for (const p of ['/bi', '/slave', '/private']) {
        expect(await exec(id, ['sh', '-c', `mount --bind /etc ${p}/from-container && echo ok`])).toMatchObject({ out: 'ok\n', code: 0 });
      }
      const etc = (await ls('/etc')).split(/\s+/).sort();
      expect(etc.length).toBeGreaterThan(0);
      expect(fs.readdirSync(path.join(bi, 'from-container')).sort()).toEqual(etc);
      expect(fs.readdirSync(path.join(slave, 'from-container'))).toEqual([]);
      expect(fs.readdirSync(path.join(priv, 'from-container'))).toEqual([]);
    } finally {
      await removePod(pod);
      for (const m of hostMountsUnder(top)) execFileSync('umount', ['-l', m]);
      fs.rmSync(top, { recursive: true, force: true });
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

describe('a pod of the runc handler on a CNI network', () => {
  // this run's own bridge and /24 (another e2e slot may run this file at the same time)
  let net: RunNetwork | undefined;
  let BRIDGE: string;
  let SUBNET: string;

  beforeAll(async () => {
    net = await claimRunNetwork('pvhostp');
    ({ bridge: BRIDGE, subnet: SUBNET } = net);
  });

  afterAll(async () => {
    try { if (BRIDGE) execFileSync('ip', ['link', 'del', BRIDGE], { stdio: 'ignore' }); } catch { /* already gone */ }
    await net?.release();
  });

  it('gets a CNI address reachable from the host; two containers share IPC and UTS; no pause process holds the pod', async () => {
    await useBridgeNetwork(d, { name: 'hostpods', bridge: BRIDGE, subnet: SUBNET, routed: true });
    const ns = { network: 'POD', pid: 'CONTAINER', ipc: 'POD' };
    const cfg = hostPodConfig('runc-cni', ns);
    const { pod_sandbox_id: pod } = await d.runtime('RunPodSandbox', { config: cfg, runtime_handler: 'runc' });
    try {
      const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
      expect(JSON.parse(st.info.info)).toMatchObject({ backend: 'host' });
      const ip: string = st.status.network.ip;
      expect(ip.startsWith(`${SUBNET}.`)).toBe(true);
      const start = async (name: string, cmd: string[]) => {
        const { container_id: id } = await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: cc(name, cmd, ns), sandbox_config: cfg });
        await d.runtime('StartContainer', { container_id: id });
        await waitState(id, 'CONTAINER_RUNNING');
        return id;
      };
      const web = await start('web', ['sh', '-c', 'mkdir -p /www; echo from-the-runc-pod > /www/index.html; exec httpd -f -p 8080 -h /www']);
      const side = await start('side', ['sleep', '3600']);
      // the pod's address, from the host's network namespace
      const body = await until('httpd on the pod address', () => new Promise<string | false>((resolve) => {
        http.get({ host: ip, port: 8080, path: '/', timeout: 3000 }, (res) => {
          let b = '';
          res.on('data', (c) => (b += c));
          res.on('end', () => resolve(b));
        }).on('error', () => resolve(false));
      }));
      expect(body).toBe('from-the-runc-pod\n');
      // one IPC and one UTS namespace for both, not the host's; a /dev/shm file crosses over
      const nsOf = async (id: string, kind: string) => (await exec(id, ['/bin/busybox', 'readlink', `/proc/self/ns/${kind}`])).out.trim();
      for (const kind of ['ipc', 'uts', 'net']) {
        expect(await nsOf(web, kind)).toBe(await nsOf(side, kind));
        expect(await nsOf(web, kind)).not.toBe(fs.readlinkSync(`/proc/self/ns/${kind}`));
      }
      expect((await exec(web, ['hostname'])).out.trim()).toBe(cfg.hostname);
      expect((await exec(side, ['hostname'])).out.trim()).toBe(cfg.hostname);
      expect((await exec(web, ['sh', '-c', 'echo shared > /dev/shm/x'])).code).toBe(0);
      expect((await exec(side, ['cat', '/dev/shm/x'])).out).toBe('shared\n');
      // no pause process: every host process in the pod's network namespace is one of its containers'
      const netns = (pid: string) => { try { return fs.readlinkSync(`/proc/${pid}/ns/net`); } catch { return ''; } };
      const pidOf = async (id: string) => String(JSON.parse((await d.runtime('ContainerStatus', { container_id: id, verbose: true })).info.info).pid);
      const podNet = netns(await pidOf(web));
      const inPod = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && netns(p) === podNet).map((p) => fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim()).sort();
      expect(inPod).toEqual(['httpd', 'sleep']);
    } finally {
      await removePod(pod);
      fs.rmSync(path.join(d.cniConfDir, '10-hostpods.conflist'), { force: true });
    }
    expect(mountsUnderState()).toEqual([]);
    expect(processesUnderState()).toEqual([]);
  });
});

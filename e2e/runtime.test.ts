// The core runtime end to end: the real daemon, real QEMU pod VMs, a real registry.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { credentials, status } from '@grpc/grpc-js';
import { loadCri } from '../cri-api';
import { podHierarchies } from '../src/runtime/pod-cgroup';
import { readCriLog } from '../test/support/cri-log';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { containerConfig as kubeletContainerConfig, startContainer, waitContainerState } from './support/containers';
import { podConfig, podQemuPids, retry, type TestDaemon } from './support/daemon';

jest.setTimeout(240_000);

let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let image: string;

beforeAll(async () => {
  setup = await startBusyboxDaemon();
  ({ d, image } = setup);
});

afterAll(() => setup?.close());

/** kubelet's container config, labelled with its `role` (ListContainers filters by it). */
function containerConfig(name: string, command: string[], extra: Record<string, unknown> = {}) {
  const cfg = kubeletContainerConfig(image, name, command);
  return { ...cfg, labels: { ...cfg.labels, role: name }, ...extra };
}

const waitState = (id: string, state: string, ms?: number) => waitContainerState(d, id, state, ms);
const runContainer = (pod: string, podCfg: any, cfg: any) => startContainer(d, pod, podCfg, cfg);

/** A pod named `name` (logs under d.logs/name) with one container running `command`. */
async function podWithRunningContainer(name: string, container: string, command: string[]): Promise<{ cfg: any; pod: string; id: string }> {
  const cfg = podConfig(name, path.join(d.logs, name));
  const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  const id = await runContainer(pod, cfg, containerConfig(container, command));
  await waitState(id, 'CONTAINER_RUNNING');
  return { cfg, pod, id };
}

describe('runtime info', () => {
  it('answers Version as kubelet requires', async () => {
    const v = await d.runtime('Version', { version: 'v1' });
    expect(v).toMatchObject({ version: '0.1.0', runtime_name: 'podvisor', runtime_api_version: 'v1' });
    expect(v.runtime_version).toBeTruthy();
  });

  it('reports RuntimeReady and NetworkReady conditions', async () => {
    const s = await d.runtime('Status', {});
    const cond = Object.fromEntries(s.status.conditions.map((c: any) => [c.type, c]));
    expect(cond.RuntimeReady.status).toBe(true);
    expect(cond.NetworkReady).toBeDefined();
  });

  it('serves every unary RPC of the CRI proto: an empty request gets an answer or a clear error, never UNIMPLEMENTED', async () => {
    const proto = fs.readFileSync(path.join(__dirname, '..', 'cri-api', 'api.proto'), 'utf8');
    const services = [...proto.matchAll(/service (\w+) \{([\s\S]*?)\n\}/g)];
    const unary = services.flatMap(([, service, body]) =>
      [...body.matchAll(/rpc (\w+)\(\w+\) returns \((stream )?\w+\)/g)].filter((m) => !m[2]).map((m) => ({ service, method: m[1] })));
    expect(unary.length).toBeGreaterThanOrEqual(35);
    const unimplemented: string[] = [];
    for (const { service, method } of unary) {
      const call = service === 'ImageService' ? d.image(method, {}, 30_000) : d.runtime(method, {}, 30_000);
      await call.then(
        () => undefined,
        (err: { code?: number; details?: string }) => {
          if (err.code === status.UNIMPLEMENTED) unimplemented.push(method);
          else expect(err.details).toBeTruthy(); // a clear error says what was wrong
        },
      );
    }
    expect(unimplemented).toEqual([]);
  });
});

describe('a pod VM with busybox containers', () => {
  let pod: string;
  let cfg: any;
  let logDir: string;

  beforeAll(async () => {
    logDir = path.join(d.logs, 'pod1');
    cfg = podConfig('pod1', logDir);
    pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  });

  it('is a real QEMU VM reported READY with its config echoed', async () => {
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    expect(st.status.state).toBe('SANDBOX_READY');
    expect(st.status.metadata).toMatchObject({ name: 'pod1', namespace: 'e2e', attempt: 0 });
    expect(st.status.labels).toEqual(cfg.labels);
    expect(st.status.annotations).toEqual(cfg.annotations);
    expect(st.status.linux.namespaces.options).toMatchObject({ network: 'POD', pid: 'CONTAINER', ipc: 'POD' });
    const info = JSON.parse(st.info.info);
    expect(info.vm.accelerator).toBe('tcg');
    expect(info.vm.boot).toBe(process.env.PODVISOR_TEMPLATES === '0' ? 'cold' : 'clone');
    expect(info.vm.vcpus).toBe(1);
    expect(info.vm.memoryMiB).toBe(256);
    expect(fs.readFileSync(`/proc/${info.vm.pid}/cmdline`, 'utf8')).toContain('qemu-system-x86_64');
    const list = await d.runtime('ListPodSandbox', { filter: { label_selector: { app: 'pod1' } } });
    expect(list.items.map((i: any) => i.id)).toEqual([pod]);
    const none = await d.runtime('ListPodSandbox', { filter: { label_selector: { app: 'nope' } } });
    expect(none.items).toEqual([]);
  });

  it('runs a container to completion with its exit code and CRI-format logs', async () => {
    const id = await runContainer(pod, cfg, containerConfig('exit3', ['/bin/sh', '-c', 'echo hello-out; echo hello-err >&2; exit 3']));
    const st = await waitState(id, 'CONTAINER_EXITED');
    expect(st.exit_code).toBe(3);
    expect(st.reason).toBe('Error');
    expect(Number(st.finished_at)).toBeGreaterThanOrEqual(Number(st.started_at));
    expect(st.labels).toEqual(containerConfig('exit3', []).labels);
    expect(st.annotations).toEqual(containerConfig('exit3', []).annotations);
    expect(st.image_ref).toContain('sha256:');
    expect(st.log_path).toBe(path.join(logDir, 'exit3.log'));
    await new Promise((r) => setTimeout(r, 300));
    const lines = fs.readFileSync(st.log_path, 'utf8').trim().split('\n');
    expect(lines).toEqual(expect.arrayContaining([
      expect.stringMatching(/^\S+Z stdout F hello-out$/),
      expect.stringMatching(/^\S+Z stderr F hello-err$/),
    ]));
    const ok = await runContainer(pod, cfg, containerConfig('exit0', ['/bin/true']));
    expect((await waitState(ok, 'CONTAINER_EXITED')).reason).toBe('Completed');
  });

  it('tags an unterminated last line P, so the log reads back byte-exact (kubelet, crictl logs)', async () => {
    const id = await runContainer(pod, cfg, containerConfig('partial', ['/bin/sh', '-c', 'printf DONE; false']));
    const st = await waitState(id, 'CONTAINER_EXITED');
    expect(st.exit_code).toBe(1);
    const log = fs.readFileSync(st.log_path);
    expect(log.toString()).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout P DONE\n$/);
    // what kubelet's log reader returns (FallbackToLogsOnError's message, kubectl/crictl logs)
    expect(readCriLog(log)).toBe('DONE');
  });

  it('execs synchronously with output, exit code and timeout', async () => {
    const id = await runContainer(pod, cfg, containerConfig('sleeper', ['/bin/sh', '-c', 'trap "exit 42" TERM; while true; do sleep 0.1; done']));
    await waitState(id, 'CONTAINER_RUNNING');
    const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', 'echo out; echo err >&2; exit 7'], timeout: 30 });
    expect(Buffer.from(r.stdout).toString()).toBe('out\n');
    expect(Buffer.from(r.stderr).toString()).toBe('err\n');
    expect(r.exit_code).toBe(7);
    const t0 = Date.now();
    await expect(d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sleep', '60'], timeout: 1 })).rejects.toMatchObject({ code: status.DEADLINE_EXCEEDED });
    expect(Date.now() - t0).toBeLessThan(15_000);
    const list = await d.runtime('ListContainers', { filter: { state: { state: 'CONTAINER_RUNNING' }, pod_sandbox_id: pod } });
    expect(list.containers.map((c: any) => c.id)).toContain(id);
    const t1 = Date.now();
    await d.runtime('StopContainer', { container_id: id, timeout: 20 });
    expect((await waitState(id, 'CONTAINER_EXITED')).exit_code).toBe(42); // the stop signal reached its handler
    expect(Date.now() - t1).toBeLessThan(10_000);
  });

  it("gives exec'd processes the identity of the container's process; its one exec helper has no more and is not in the container's metrics", async () => {
    const base = containerConfig('ident', ['/bin/sleep', '3600']);
    const sc = { ...base.linux.security_context, run_as_user: { value: 1000 }, run_as_group: { value: 1000 }, supplemental_groups: [2000], capabilities: { add_capabilities: ['NET_RAW', 'SYS_TIME'], drop_capabilities: ['CHOWN'] } };
    const id = await runContainer(pod, cfg, { ...base, linux: { ...base.linux, security_context: sc } });
    await waitState(id, 'CONTAINER_RUNNING');
    const exec = async (cmd: string[]) => {
      const r = await d.runtime('ExecSync', { container_id: id, cmd, timeout: 30 });
      expect({ cmd, code: r.exit_code, stderr: Buffer.from(r.stderr).toString() }).toEqual({ cmd, code: 0, stderr: '' });
      return Buffer.from(r.stdout).toString();
    };
    const KEYS = ['Umask', 'Uid', 'Gid', 'Groups', 'SigBlk', 'SigIgn', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp'];
    const fields = (status: string) => Object.fromEntries(status.split('\n').map((l) => l.split(/:\s*/)).filter(([k]) => KEYS.includes(k)));
    // the container's process (pid 1 of its PID namespace) and an exec'd one, each read by itself
    const init = fields(await exec(['/bin/cat', '/proc/1/status']));
    expect(Object.keys(init).sort()).toEqual([...KEYS].sort());
    expect(init.Uid).toBe('1000\t1000\t1000\t1000');
    for (let i = 0; i < 3; i++) expect(fields(await exec(['/bin/cat', '/proc/self/status']))).toEqual(init);
    // all limits but memlock, which libcontainer raises (128 MiB, for the device cgroup's BPF
    // program) in the process that creates the container only: exec'd processes had the guest's
    // 8 MiB before the exec helper too
    const limits = async (pid: string) => (await exec(['/bin/cat', `/proc/${pid}/limits`])).split('\n').filter((l) => !l.startsWith('Max locked memory'));
    expect(await limits('self')).toEqual(await limits('1'));
    expect(await exec(['/bin/cat', '/proc/self/cgroup'])).toBe(await exec(['/bin/cat', '/proc/1/cgroup']));
    expect(await exec(['sh', '-c', 'pwd'])).toBe('/\n'); // PATH lookup; the container's cwd
    const ns = await exec(['/bin/sh', '-c', 'for n in cgroup ipc mnt net pid uts; do echo $n $(readlink /proc/$$/ns/$n) $(readlink /proc/1/ns/$n); done']);
    for (const line of ns.trim().split('\n')) {
      const [, mine, theirs] = line.split(' ');
      expect(mine).toBe(theirs);
    }
    // a file it cannot execute is run by /bin/sh, as execvp does; a missing one is an error
    await exec(['/bin/sh', '-c', 'printf "echo script ran" > /tmp/s; chmod +x /tmp/s']);
    expect(await exec(['/tmp/s'])).toBe('script ran\n');
    await expect(d.runtime('ExecSync', { container_id: id, cmd: ['/no/such/binary'], timeout: 30 })).rejects.toThrow(/no\/such\/binary/);
    // the exec helper: one per container, named, nothing beyond the container's own identity
    const helpers = (await exec(['/bin/ps', '-o', 'pid,comm'])).split('\n').filter((l) => / podvisor-exec$/.test(l)).map((l) => l.trim().split(/\s+/)[0]);
    expect(helpers).toHaveLength(1);
    expect(fields(await exec(['/bin/cat', `/proc/${helpers[0]}/status`]))).toEqual(init);
    const { pod_metrics } = await d.runtime('ListPodSandboxMetrics', {});
    const cm = pod_metrics.find((x: any) => x.pod_sandbox_id === pod).container_metrics.find((x: any) => x.container_id === id);
    expect(Number(cm.metrics.find((m: any) => m.name === 'container_processes')?.value.value)).toBe(1);
    await d.runtime('StopContainer', { container_id: id, timeout: 0 });
    await waitState(id, 'CONTAINER_EXITED');
    await d.runtime('RemoveContainer', { container_id: id });
  });

  it('escalates to SIGKILL when the stop signal is ignored', async () => {
    const id = await runContainer(pod, cfg, containerConfig('stubborn', ['/bin/sh', '-c', 'trap "" TERM; while true; do sleep 1; done']));
    await waitState(id, 'CONTAINER_RUNNING');
    await new Promise((r) => setTimeout(r, 500)); // let the shell install its trap
    const t0 = Date.now();
    await d.runtime('StopContainer', { container_id: id, timeout: 2 });
    const st = await waitState(id, 'CONTAINER_EXITED');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900);
    expect(st.exit_code).toBe(137);
  });

  it('shares the pod network and IPC namespaces between containers', async () => {
    const a = await runContainer(pod, cfg, containerConfig('ns-a', ['/bin/sleep', '3600']));
    const b = await runContainer(pod, cfg, containerConfig('ns-b', ['/bin/sleep', '3600']));
    await waitState(a, 'CONTAINER_RUNNING');
    await waitState(b, 'CONTAINER_RUNNING');
    const ns = async (id: string, kind: string) =>
      Buffer.from((await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/busybox', 'readlink', `/proc/self/ns/${kind}`], timeout: 30 })).stdout).toString().trim();
    expect(await ns(a, 'net')).toBe(await ns(b, 'net'));
    expect(await ns(a, 'ipc')).toBe(await ns(b, 'ipc'));
    expect(await ns(a, 'pid')).not.toBe(await ns(b, 'pid')); // pid: CONTAINER
    expect(await ns(a, 'mnt')).not.toBe(await ns(b, 'mnt'));
    const host = Buffer.from((await d.runtime('ExecSync', { container_id: a, cmd: ['/bin/hostname'], timeout: 30 })).stdout).toString().trim();
    expect(host).toBe('pod1');
  });

  it('shares kubelet host files and directories through 9p, updates included, read-only enforced', async () => {
    const vol = path.join(d.dir, 'configmap');
    fs.mkdirSync(path.join(vol, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(vol, 'sub', 'key'), 'v1');
    const hosts = path.join(d.dir, 'etc-hosts');
    fs.writeFileSync(hosts, '127.0.0.1 localhost\n10.9.9.9 e2e-host\n');
    const id = await runContainer(pod, cfg, containerConfig('mounts', ['/bin/sleep', '3600'], {
      mounts: [
        { container_path: '/etc/hosts', host_path: hosts, readonly: false },
        { container_path: '/config', host_path: vol, readonly: true },
      ],
    }));
    await waitState(id, 'CONTAINER_RUNNING');
    const sh = async (cmd: string) => {
      const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 30 });
      return { out: Buffer.from(r.stdout).toString(), code: r.exit_code };
    };
    expect((await sh('cat /etc/hosts')).out).toContain('e2e-host');
    expect((await sh('cat /config/sub/key')).out).toBe('v1');
    fs.writeFileSync(path.join(vol, 'sub', 'key'), 'v2');
    fs.writeFileSync(path.join(vol, 'new'), 'fresh');
    expect((await sh('cat /config/sub/key')).out).toBe('v2');
    expect((await sh('cat /config/new')).out).toBe('fresh');
    expect((await sh('echo x > /config/written')).code).not.toBe(0);
    expect(fs.existsSync(path.join(vol, 'written'))).toBe(false);
    // nothing of this is mounted in the host's mount namespace
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(d.dir);
  });

  it('takes the mounts under a host path made after the pod started; read-only is the top mount\'s only', async () => {
    // as kubelet does for a projected or emptyDir medium=Memory volume: a tmpfs under the path
    const vol = path.join(d.dir, 'with-submount');
    fs.mkdirSync(path.join(vol, 'mem'), { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', path.join(vol, 'mem')]);
    try {
      const id = await runContainer(pod, cfg, containerConfig('submount', ['/bin/sleep', '3600'], {
        mounts: [{ container_path: '/data', host_path: vol, readonly: true }],
      }));
      await waitState(id, 'CONTAINER_RUNNING');
      const sh = async (cmd: string) => {
        const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 30 });
        return { out: Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString(), code: r.exit_code };
      };
      const top = await sh('echo x > /data/top');
      expect(top.code).not.toBe(0);
      expect(top.out).toMatch(/Read-only file system/);
      expect((await sh('echo inside > /data/mem/written')).code).toBe(0);
      expect(fs.readFileSync(path.join(vol, 'mem', 'written'), 'utf8')).toBe('inside\n'); // the host's tmpfs
      await d.runtime('StopContainer', { container_id: id, timeout: 0 });
      await d.runtime('RemoveContainer', { container_id: id });
    } finally {
      execFileSync('umount', [path.join(vol, 'mem')]);
    }
    // the bind lives in QEMU's mount namespace only
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(d.dir);
  });

  it('confines the container and every process exec\'d into it with its seccomp profile', async () => {
    const status = async (id: string, pid: string) => {
      const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', `grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/${pid}/status`], timeout: 30 });
      return Object.fromEntries(Buffer.from(r.stdout).toString().trim().split('\n').map((l) => l.split(/:\s+/)));
    };
    const base = containerConfig('seccomp', ['/bin/sleep', '3600']);
    const confined = await runContainer(pod, cfg, { ...base, linux: { security_context: { ...base.linux.security_context, seccomp: { profile_type: 'RuntimeDefault' } } } });
    await waitState(confined, 'CONTAINER_RUNNING');
    const init = await status(confined, '1'); // pid: CONTAINER, so the sleep is pid 1
    const exec = await status(confined, 'self');
    expect(init.Seccomp).toBe('2');
    expect(exec.Seccomp).toBe('2');
    // the exec'd process keeps the container's capabilities: none gained to load the filter
    expect(exec.CapEff).toBe(init.CapEff);
    expect(BigInt(`0x${exec.CapEff}`) & (1n << 21n)).toBe(0n); // CAP_SYS_ADMIN
    expect(exec.NoNewPrivs).toBe('0');
    // the profile bites: swapoff is refused (EPERM) even to a process holding CAP_SYS_ADMIN,
    // which without the filter gets as far as looking for the file (ENOENT)
    const swapoff = async (id: string) => {
      const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/busybox', 'swapoff', '/no-such-swap'], timeout: 30 });
      expect(r.exit_code).not.toBe(0);
      return Buffer.from(r.stderr).toString() + Buffer.from(r.stdout).toString();
    };
    const admin = { add_capabilities: ['SYS_ADMIN'] };
    const withAdmin = await runContainer(pod, cfg, {
      ...containerConfig('seccomp-admin', ['/bin/sleep', '3600']),
      linux: { security_context: { ...base.linux.security_context, seccomp: { profile_type: 'RuntimeDefault' }, capabilities: admin } },
    });
    await waitState(withAdmin, 'CONTAINER_RUNNING');
    expect(await swapoff(withAdmin)).toMatch(/Operation not permitted/);
    // Unconfined: no filter for either
    const free = await runContainer(pod, cfg, {
      ...containerConfig('unconfined', ['/bin/sleep', '3600']),
      linux: { security_context: { ...base.linux.security_context, seccomp: { profile_type: 'Unconfined' }, capabilities: admin } },
    });
    await waitState(free, 'CONTAINER_RUNNING');
    expect((await status(free, '1')).Seccomp).toBe('0');
    expect((await status(free, 'self')).Seccomp).toBe('0');
    expect(await swapoff(free)).toMatch(/No such file or directory/);
  });

  it('mounts image volumes read-only, whole or a sub path, and names the image in ContainerStatus', async () => {
    const { image: img } = await d.image('ImageStatus', { image: { image } });
    const base = containerConfig('imgvol', ['/bin/sleep', '3600']);
    const id = await runContainer(pod, cfg, {
      ...base,
      mounts: [
        { container_path: '/mnt/whole', readonly: true, image: { image } },
        { container_path: '/mnt/bin', readonly: true, image: { image }, image_sub_path: 'bin' },
      ],
    });
    await waitState(id, 'CONTAINER_RUNNING');
    const run = async (cmd: string[]) => {
      const r = await d.runtime('ExecSync', { container_id: id, cmd, timeout: 30 });
      return { code: r.exit_code, out: Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString() };
    };
    // the image's own busybox runs from the volume (not noexec); the sub path is the image's bin/
    expect(await run(['/mnt/whole/bin/busybox', 'echo', 'from the volume'])).toEqual({ code: 0, out: 'from the volume\n' });
    expect((await run(['/bin/ls', '/mnt/bin/busybox'])).code).toBe(0);
    const write = await run(['/bin/touch', '/mnt/whole/new']);
    expect(write.code).not.toBe(0);
    expect(write.out).toMatch(/Read-only file system/);
    const { status: st } = await d.runtime('ContainerStatus', { container_id: id });
    const whole = st.mounts.find((m: any) => m.container_path === '/mnt/whole');
    expect(whole.image.image_ref).toBe(img.id);
    await d.runtime('StopContainer', { container_id: id, timeout: 0 });
    await d.runtime('RemoveContainer', { container_id: id });

    const bad = async (mount: any) => d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { ...containerConfig(`imgvol-bad-${Math.random()}`, ['/bin/true']), mounts: [mount] }, sandbox_config: cfg });
    await expect(bad({ container_path: '/mnt/x', readonly: false, image: { image } })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    await expect(bad({ container_path: '/mnt/x', readonly: true, image: { image }, image_sub_path: '../etc' })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    await expect(bad({ container_path: '/mnt/x', readonly: true, image: { image: `${setup!.registry.host}/e2e/never-pulled:1` } })).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(bad({ container_path: '/mnt/x', readonly: true, image: { image }, image_sub_path: 'no/such/dir' })).rejects.toMatchObject({ code: status.NOT_FOUND });
    // bin/sh is a symlink in the image: a sub path never goes through one
    await expect(bad({ container_path: '/mnt/x', readonly: true, image: { image }, image_sub_path: 'bin/sh' })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
  });

  it('applies per-container cgroup limits in the guest and reports OOMKilled', async () => {
    const limit = 48 * 1024 * 1024;
    const resources = { memory_limit_in_bytes: String(limit), cpu_period: '100000', cpu_quota: '50000' };
    const base = containerConfig('limited', ['/bin/sleep', '3600']);
    const id = await runContainer(pod, cfg, { ...base, linux: { ...base.linux, resources } });
    await waitState(id, 'CONTAINER_RUNNING');
    const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/cat', '/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/cpu.max'], timeout: 30 });
    expect(Buffer.from(r.stdout).toString().split('\n').slice(0, 2)).toEqual([String(limit), '50000 100000']);
    // a process that outgrows the limit is killed by the guest kernel's OOM killer
    const hogCfg = containerConfig('hog', ['/bin/sh', '-c', 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived']);
    const hog = await runContainer(pod, cfg, { ...hogCfg, linux: { ...hogCfg.linux, resources } });
    const st = await waitState(hog, 'CONTAINER_EXITED', 120_000);
    expect(st.reason).toBe('OOMKilled');
    expect(st.exit_code).toBe(137);
  });

  it("bounds CreateContainer by the caller's gRPC deadline; a create the guest completes after it is deleted there, and the retry runs", async () => {
    const daemonLog = () => fs.readFileSync(path.join(d.dir, 'daemon.log'), 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    const outcome = (msg: RegExp, since: number) => daemonLog().slice(since).find((l) => msg.test(l.msg ?? ''));
    // how long a create takes here with the image mounted: mostly the guest's part
    const t0 = Date.now();
    const probe = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: containerConfig('late-probe', ['/bin/true']), sandbox_config: cfg })).container_id;
    const took = Date.now() - t0;
    await d.runtime('RemoveContainer', { container_id: probe });
    // a deadline that passes while the guest creates: a share of that time (tried until one does)
    let abandoned: any;
    for (const share of [0.5, 0.3, 0.7, 0.15, 0.85]) {
      const since = daemonLog().length;
      const ms = Math.max(20, Math.round(took * share));
      const res = await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: containerConfig('late', ['/bin/sleep', '3600']), sandbox_config: cfg }, ms).catch((e) => e);
      if (res.container_id) {
        await d.runtime('RemoveContainer', { container_id: res.container_id });
        continue;
      }
      expect(res.code).toBe(status.DEADLINE_EXCEEDED);
      // the host gave up; the guest either completes the create (then it is deleted there) or
      // was never asked (the deadline passed on the host side first): try another share then
      abandoned = await retry(async () => {
        const l = outcome(/create the host gave up on|deadline passed before the guest/, since);
        if (!l) throw new Error(`no outcome yet of the create abandoned after ${ms} ms`);
        return l;
      }, 30_000 + 3 * took).catch(() => undefined);
      console.log(`create with a ${ms} ms deadline (a create takes ${took} ms): ${abandoned?.msg ?? 'no outcome logged'}`);
      if (abandoned && /completed in the guest: deleted there/.test(abandoned.msg)) break;
      abandoned = undefined;
    }
    expect(abandoned).toBeDefined();
    // no host record names it, the guest did create it (its console), and deleted it when asked
    expect((await d.runtime('ListContainers', { filter: { pod_sandbox_id: pod } })).containers.filter((c: any) => c.metadata.name === 'late')).toEqual([]);
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    const qemuArgs = fs.readFileSync(`/proc/${JSON.parse(st.info.info).vm.pid}/cmdline`, 'utf8').split('\0');
    // file,id=console,path=<path>,append=on
    const consolePath = qemuArgs.find((a) => a.startsWith('file,id=console,path='))!.slice('file,id=console,path='.length).replace(/,append=on$/, '');
    expect(fs.readFileSync(consolePath, 'utf8')).toContain(`container ${abandoned.container} created`);
    // kubelet's retry: the same name and attempt, a fresh id, created and run
    const id = await runContainer(pod, cfg, containerConfig('late', ['/bin/sleep', '3600']));
    expect(id).not.toBe(abandoned.container);
    await waitState(id, 'CONTAINER_RUNNING');
    await d.runtime('StopContainer', { container_id: id, timeout: 1 });
    await d.runtime('RemoveContainer', { container_id: id });
  });

  it('removes containers, then stops and removes the pod with nothing left behind', async () => {
    const all = await d.runtime('ListContainers', { filter: { pod_sandbox_id: pod } });
    expect(all.containers.length).toBeGreaterThan(0);
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    const pid = JSON.parse(st.info.info).vm.pid;
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod }); // idempotent
    expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.state).toBe('SANDBOX_NOTREADY');
    expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    const after = await d.runtime('ListContainers', { filter: { pod_sandbox_id: pod } });
    expect(after.containers.every((c: any) => c.state === 'CONTAINER_EXITED')).toBe(true);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod }); // idempotent
    await expect(d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).rejects.toMatchObject({ code: status.NOT_FOUND });
    expect((await d.runtime('ListContainers', { filter: { pod_sandbox_id: pod } })).containers).toEqual([]);
    expect(fs.readdirSync(path.join(d.state, 'vm'))).toEqual([]);
    expect(podQemuPids(d.state)).toEqual([]);
  });
});

function within<T>(p: Promise<T>, ms: number): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`not within ${ms} ms`)), ms).unref())]);
}

/** Reads a server stream to its end (or until `until` says stop, then cancels it). */
function readStream(call: any, until?: (msgs: any[]) => boolean): Promise<any[]> {
  return new Promise((resolve, reject) => {
    const msgs: any[] = [];
    call.on('data', (m: any) => {
      msgs.push(m);
      if (until?.(msgs)) {
        call.cancel();
        resolve(msgs);
      }
    });
    call.on('end', () => resolve(msgs));
    call.on('error', (e: any) => (e.code === status.CANCELLED ? resolve(msgs) : reject(e)));
  });
}

describe('container events and the Stream* lists', () => {
  it('streams created, started, stopped and deleted with the pod and container statuses of the moment', async () => {
    const client = d.newRuntimeClient() as any;
    try {
      const cfg = podConfig('events', path.join(d.logs, 'events'));
      const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
      const stream = client.GetContainerEvents({});
      let id = '';
      const done = readStream(stream, (msgs) => msgs.some((m) => m.container_id === id && m.container_event_type === 'CONTAINER_DELETED_EVENT'));
      await new Promise((r) => setTimeout(r, 200)); // the subscription is made when the call arrives
      const t0 = BigInt(Date.now()) * 1_000_000n;
      id = await runContainer(pod, cfg, containerConfig('brief', ['/bin/sh', '-c', 'sleep 0.5; exit 3']));
      await waitState(id, 'CONTAINER_EXITED');
      await d.runtime('RemoveContainer', { container_id: id });
      const mine = (await within(done, 30_000)).filter((m) => m.container_id === id);
      expect(mine.map((m) => m.container_event_type)).toEqual(['CONTAINER_CREATED_EVENT', 'CONTAINER_STARTED_EVENT', 'CONTAINER_STOPPED_EVENT', 'CONTAINER_DELETED_EVENT']);
      for (const m of mine) {
        expect(BigInt(m.created_at)).toBeGreaterThanOrEqual(t0);
        expect(m.pod_sandbox_status).toMatchObject({ id: pod, state: 'SANDBOX_READY', metadata: { name: cfg.metadata.name } });
      }
      const own = (m: any) => m.containers_statuses.find((c: any) => c.id === id);
      expect(own(mine[0])).toMatchObject({ state: 'CONTAINER_CREATED', metadata: { name: 'brief' } });
      expect(own(mine[1]).state).toBe('CONTAINER_RUNNING');
      expect(own(mine[2])).toMatchObject({ state: 'CONTAINER_EXITED', exit_code: 3, reason: 'Error' });
      expect(own(mine[3])).toBeUndefined();
      await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    } finally {
      client.close();
    }
  });

  it('streams the same items as the List calls, filters included', async () => {
    const { pod, id } = await podWithRunningContainer('lists', 'lister', ['/bin/sleep', '3600']);
    const client = d.newRuntimeClient() as any;
    const { ImageServiceClient } = loadCri();
    const images = new ImageServiceClient(`unix://${d.socket}`, credentials.createInsecure()) as any;
    try {
      const flat = async (call: any, field: string) => (await readStream(call)).flatMap((m) => m[field]);
      const ids = (xs: any[]) => xs.map((x) => x.id ?? x.attributes?.id).sort();
      const cases: Array<[string, string, any, string, any, string]> = [
        ['StreamPodSandboxes', 'pod_sandboxes', {}, 'ListPodSandbox', {}, 'items'],
        ['StreamPodSandboxes', 'pod_sandboxes', { filter: { id: pod } }, 'ListPodSandbox', { filter: { id: pod } }, 'items'],
        ['StreamContainers', 'containers', { filter: { pod_sandbox_id: pod } }, 'ListContainers', { filter: { pod_sandbox_id: pod } }, 'containers'],
        ['StreamContainers', 'containers', { filter: { label_selector: { role: 'nobody' } } }, 'ListContainers', { filter: { label_selector: { role: 'nobody' } } }, 'containers'],
        ['StreamContainerStats', 'container_stats', { filter: { id } }, 'ListContainerStats', { filter: { id } }, 'stats'],
        ['StreamPodSandboxStats', 'pod_sandbox_stats', { filter: { id: pod } }, 'ListPodSandboxStats', { filter: { id: pod } }, 'stats'],
      ];
      for (const [stream, field, req, list, listReq, listField] of cases) {
        const got = await flat(client[stream](req), field);
        const want = (await d.runtime(list, listReq))[listField];
        expect({ stream, ids: ids(got) }).toEqual({ stream, ids: ids(want) });
      }
      expect(ids(await flat(client.StreamContainers({ filter: { pod_sandbox_id: pod } }), 'containers'))).toEqual([id]);
      expect(await flat(client.StreamContainers({ filter: { label_selector: { role: 'nobody' } } }), 'containers')).toEqual([]);
      const got = await flat(images.StreamImages({}), 'images');
      expect(got.map((x: any) => x.id).sort()).toEqual((await d.image('ListImages', {})).images.map((x: any) => x.id).sort());
      expect(got.some((x: any) => x.repo_tags.includes(image))).toBe(true);
      const streamed = await flat(client.StreamPodSandboxMetrics({}), 'pod_sandbox_metrics');
      expect(streamed.map((x: any) => x.pod_sandbox_id)).toContain(pod);
    } finally {
      client.close();
      images.close();
    }
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });
});

describe('cAdvisor metrics', () => {
  it('describes and serves every series for a running container, with its real figures', async () => {
    const { pod, id } = await podWithRunningContainer('metrics', 'busy', ['/bin/sh', '-c', 'mkdir -p /data; for i in 1 2 3 4 5; do echo hi > /data/f$i; done; while true; do :; done']);
    try {
      await new Promise((r) => setTimeout(r, 2500)); // CPU time to show as whole seconds
      const { descriptors } = await d.runtime('ListMetricDescriptors', {});
      const keys = Object.fromEntries(descriptors.map((x: any) => [x.name, x.label_keys]));
      for (const x of descriptors) expect(x.help).toBeTruthy();
      const { pod_metrics } = await d.runtime('ListPodSandboxMetrics', {});
      const pm = pod_metrics.find((x: any) => x.pod_sandbox_id === pod);
      const series = [...pm.metrics, ...pm.container_metrics.flatMap((c: any) => c.metrics)];
      for (const m of series) expect({ name: m.name, labels: m.label_values.length }).toEqual({ name: m.name, labels: keys[m.name].length });
      // no CNI network here (loopback only), and no block device I/O (the writable layer is in
      // guest memory): those are the only series missing
      const missing = Object.keys(keys).filter((k) => !series.some((m: any) => m.name === k));
      expect(missing.filter((k) => !k.startsWith('container_network_') && k !== 'container_blkio_device_usage_total')).toEqual([]);
      const c = pm.container_metrics.find((x: any) => x.container_id === id);
      const v = (name: string) => Number(c.metrics.find((m: any) => m.name === name)?.value.value);
      const podMeta = (await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.metadata;
      expect(c.metrics[0].label_values).toEqual([id, `k8s_busy_${podMeta.name}_${podMeta.namespace}_${podMeta.uid}_0`, image]);
      expect(v('container_cpu_usage_seconds_total')).toBeGreaterThanOrEqual(1);
      expect(v('container_processes')).toBe(1);
      expect(v('container_file_descriptors')).toBeGreaterThanOrEqual(3); // sh's stdio
      expect(v('container_fs_usage_bytes')).toBeGreaterThan(0); // /data and its five files in the writable layer
      expect(v('container_memory_working_set_bytes')).toBeGreaterThan(0);
      expect(Math.abs(v('container_start_time_seconds') - Date.now() / 1000)).toBeLessThan(120);
      const podSeries = Object.fromEntries(pm.metrics.map((m: any) => [m.name, m]));
      expect(podSeries.container_memory_working_set_bytes.label_values).toEqual([pod, 'POD', '']);
      expect(Number(podSeries.container_memory_working_set_bytes.value.value)).toBeGreaterThan(1 << 20); // the VM's private memory
    } finally {
      await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    }
  });
});

describe("the pod's host cgroup", () => {
  it("holds the pod VM under kubelet's cgroup_parent (driver CGROUPFS in RuntimeConfig) and goes with the pod", async () => {
    expect((await d.runtime('RuntimeConfig', {})).linux.cgroup_driver).toBe('CGROUPFS');
    const top = `/podvisor-e2e-${process.pid}`;
    const parent = `${top}/kubepods/burstable/pod-cg`;
    const cfg = podConfig('cg', path.join(d.logs, 'cg'));
    cfg.linux.cgroup_parent = parent;
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const hs = await podHierarchies();
    const own = `${parent}/podvisor-${pod}`;
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    const pid = JSON.parse(st.info.info).vm.pid;
    const lines = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n');
    expect(lines.filter((l) => l.endsWith(`:${own}`)).length).toBe(hs.length);
    await runContainer(pod, cfg, containerConfig('cg-c', ['/bin/sleep', '3600']));
    // what the VM allocates from now on is charged to the pod (a moved process's old pages stay where they were)
    const usage = hs.map((h) => ['memory.usage_in_bytes', 'memory.current'].map((f) => path.join(h.mount, own, f)).find((f) => fs.existsSync(f))).find(Boolean);
    expect(usage).toBeDefined();
    expect(Number(fs.readFileSync(usage!, 'utf8'))).toBeGreaterThan(0);
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    expect(fs.existsSync(path.join(hs[0].mount, own))).toBe(true); // kept until the pod is removed
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    for (const h of hs) expect(fs.existsSync(path.join(h.mount, top))).toBe(false);
  });

  it('refuses a cgroup_parent its driver would not write, before any VM starts', async () => {
    const before = podQemuPids(d.state).length;
    const cfg = podConfig('cg-bad', path.join(d.logs, 'cg-bad'));
    cfg.linux.cgroup_parent = 'kubepods-burstable.slice';
    await expect(d.runtime('RunPodSandbox', { config: cfg })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT, details: expect.stringContaining('cgroupfs') });
    expect(podQemuPids(d.state).length).toBe(before);
    expect((await d.runtime('ListPodSandbox', {})).items.filter((p: any) => p.metadata.name === 'cg-bad')).toEqual([]);
  });
});

describe('a daemon restart', () => {
  it('finds running pods and containers again', async () => {
    const { pod, id } = await podWithRunningContainer('restart', 'survivor', ['/bin/sh', '-c', 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done']);
    const before = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    await d.stopProcess();
    await d.launch();
    const after = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    expect(after.status.state).toBe('SANDBOX_READY');
    expect(JSON.parse(after.info.info).vm.pid).toBe(JSON.parse(before.info.info).vm.pid);
    expect((await d.runtime('ContainerStatus', { container_id: id })).status.state).toBe('CONTAINER_RUNNING');
    const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/echo', 'still here'], timeout: 30 });
    expect(Buffer.from(r.stdout).toString()).toBe('still here\n');
    const logFile = path.join(d.logs, 'restart', 'survivor.log');
    const size = fs.statSync(logFile).size;
    await new Promise((r2) => setTimeout(r2, 1500));
    expect(fs.statSync(logFile).size).toBeGreaterThan(size); // logs keep flowing after the restart
    await d.runtime('StopContainer', { container_id: id, timeout: 0 });
    expect((await waitState(id, 'CONTAINER_EXITED')).exit_code).toBe(137);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });
});

describe('a daemon stop', () => {
  it('does not wait for calls that are still running (a long exec probe): they are cut after a grace time', async () => {
    const { pod, id } = await podWithRunningContainer('stop-grace', 'prober', ['/bin/sleep', '3600']);
    const other = d.newRuntimeClient() as any;
    const probe = new Promise((resolve) => other.ExecSync({ container_id: id, cmd: ['/bin/sleep', '120'], timeout: 120 }, (err: any, res: any) => resolve(err ?? res)));
    await new Promise((r) => setTimeout(r, 1500)); // the exec is running in the guest
    const t0 = Date.now();
    await d.stopProcess();
    expect(d.exitCode).toBe(0); // it exited by itself, not by the harness's SIGKILL after 10 s
    expect(Date.now() - t0).toBeLessThan(9_000);
    expect(await probe).toMatchObject({ code: expect.any(Number) }); // the call was cut, not answered
    other.close();
    await d.launch();
    expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.state).toBe('SANDBOX_READY');
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });

  it('ends container event streams at once, so that only running calls hold it', async () => {
    const other = d.newRuntimeClient() as any;
    const stream = other.GetContainerEvents({});
    const ended = new Promise<any>((resolve) => { stream.on('data', () => undefined); stream.on('error', resolve); });
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    await d.stopProcess();
    expect(d.exitCode).toBe(0);
    expect(Date.now() - t0).toBeLessThan(4_000); // well under the 5 s grace for running calls
    expect(await ended).toMatchObject({ code: status.UNAVAILABLE });
    other.close();
    await d.launch();
  });
});

describe('a pod VM that dies underneath', () => {
  it('is reported NOTREADY with its containers exited, and still stops and removes cleanly', async () => {
    const { pod, id } = await podWithRunningContainer('doomed', 'victim', ['/bin/sleep', '3600']);
    const pid = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true })).info.info).vm.pid;
    process.kill(pid, 'SIGKILL');
    const st = await waitState(id, 'CONTAINER_EXITED');
    expect(st.exit_code).toBe(137);
    expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.state).toBe('SANDBOX_NOTREADY');
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    expect(fs.existsSync(path.join(d.state, 'vm', pod.slice(0, 16)))).toBe(false);
  });
});

describe('the daemon socket', () => {
  it('is refused to a second daemon while the first one serves it', async () => {
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js'), 'serve', '--config', d.configFile, '--socket', d.socket, '--root', path.join(d.dir, 'root2'), '--state', path.join(d.dir, 'state2')], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).not.toBe(0);
    expect(r.stdout + r.stderr).toContain('already listening');
    expect(fs.statSync(d.socket).mode & 0o777).toBe(0o660);
    expect((await d.runtime('Version', {})).runtime_name).toBe('podvisor'); // the first one still serves
  });
});

describe('bad requests', () => {
  it('get clear gRPC errors', async () => {
    await expect(d.runtime('PodSandboxStatus', { pod_sandbox_id: 'nope' })).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('ContainerStatus', { container_id: 'nope' })).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('StartContainer', { container_id: 'nope' })).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('ExecSync', { container_id: 'nope', cmd: ['true'] })).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('PodSandboxStatus', {})).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    await expect(d.runtime('RunPodSandbox', { config: { metadata: { name: 'x' } } })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    // (host-network pods are host pods now: e2e/host-pods.test.ts; host_namespaces = "reject": test/runtime/error-paths)
    await expect(d.runtime('RunPodSandbox', { config: podConfig('nohandler', d.logs), runtime_handler: 'no-such-handler' }))
      .rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('CreateContainer', { pod_sandbox_id: 'nope', config: containerConfig('x', ['true']) })).rejects.toMatchObject({ code: status.NOT_FOUND });
    // removing what is not there is fine (kubelet retries removals)
    await d.runtime('RemoveContainer', { container_id: 'nope' });
    await d.runtime('StopPodSandbox', { pod_sandbox_id: 'nope' });
  });

  it('refuses log paths that escape the pod log directory, and unknown images', async () => {
    const cfg = podConfig('bad', path.join(d.logs, 'bad'));
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    await expect(d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { ...containerConfig('esc', ['true']), log_path: '../../../etc/evil.log' }, sandbox_config: cfg }))
      .rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    await expect(d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { ...containerConfig('noimg', ['true']), image: { image: 'sha256:' + '0'.repeat(64) } }, sandbox_config: cfg }))
      .rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { ...containerConfig('', ['true']), metadata: {} }, sandbox_config: cfg }))
      .rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(fs.existsSync('/etc/evil.log')).toBe(false);
    expect((await d.runtime('ListContainers', { filter: { pod_sandbox_id: pod } })).containers).toEqual([]);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });
});

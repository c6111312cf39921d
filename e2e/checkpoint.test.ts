// Pod checkpoints end to end (issue 20): CheckpointPod of a running pod VM with two containers
// that hold state in their processes' memory and on their writable layers, RestorePod of it as
// a new pod (on the same daemon while the original runs on, and again after a daemon restart),
// where that state and the running processes go on; a pod with host-share mounts (directory and
// file binds through the 9p share, as kubelet makes for every pod), whose mounts come back in
// the original and point at the restored pod's own host paths in the copy, and the refusal of a
// file held open on the share; CheckpointContainer's archive (and CreateContainer of it refused,
// naming RestorePod); and the refusals: damaged or foreign checkpoints, bad output paths and
// options. Real daemon, real QEMU guests, real registry.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { pushBusybox } from '../test/support/images';
import { Registry, startRegistry } from '../test/support/registry';
import { podConfig, retry, TestDaemon } from './support/daemon';

jest.setTimeout(600_000);

let registry: Registry;
let d: TestDaemon;
let busybox: string;

beforeAll(async () => {
  registry = await startRegistry();
  await pushBusybox(registry, 'e2e/busybox', 'latest');
  busybox = `${registry.host}/e2e/busybox:latest`;
  d = await TestDaemon.start({ registries: { [registry.host]: `http://${registry.host}` } });
  await d.image('PullImage', { image: { image: busybox } });
});

// the networked test's own bridge and subnet (network.test.ts uses pve2e0 / 10.213.0.0/24)
const BRIDGE = `pvcp${crypto.randomBytes(2).toString('hex')}`;
const SUBNET = `10.214.${crypto.randomInt(0, 255)}`;

afterAll(async () => {
  await d?.destroy();
  await registry?.stop();
  try { execFileSync('ip', ['link', 'del', BRIDGE]); } catch { /* never made, or gone */ }
});

async function sh(id: string, cmd: string): Promise<string> {
  const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 120 });
  if (r.exit_code !== 0) throw new Error(`${cmd}: exit ${r.exit_code}: ${Buffer.from(r.stderr).toString()}`);
  return Buffer.from(r.stdout).toString().trim();
}

// A: a counter in a shell variable (process memory), mirrored to its writable layer each second,
//    and a file written once at start. B: a random value drawn once and held in memory only,
//    rewritten to its layer each second.
const COUNTER = 'echo layer-a > /made-a; n=0; while true; do n=$((n+1)); echo $n > /tmp/count; sleep 1; done';
const MEMORY = 'x=$(cat /proc/sys/kernel/random/uuid); echo started; while true; do echo $x > /tmp/mem; sleep 1; done';

/** start time of the container's first process (field 22 of /proc/1/stat) */
const STARTED = "cut -d' ' -f22 /proc/1/stat";

function containerConfig(name: string, script: string) {
  return { metadata: { name, attempt: 0 }, image: { image: busybox }, command: ['/bin/sh', '-c', script], log_path: `${name}.log`, labels: { 'io.kubernetes.container.name': name } };
}

async function sourcePod(): Promise<{ pod: string; a: string; b: string; cfg: any }> {
  const cfg = podConfig('cp-src', path.join(d.logs, 'cp-src'));
  const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  const ids: string[] = [];
  for (const [name, script] of [['counter', COUNTER], ['memory', MEMORY]]) {
    const id = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: containerConfig(name, script), sandbox_config: cfg })).container_id;
    await d.runtime('StartContainer', { container_id: id });
    ids.push(id);
  }
  await retry(async () => {
    if (Number(await sh(ids[0], 'cat /tmp/count')) < 2) throw new Error('counter not going yet');
    await sh(ids[1], 'cat /tmp/mem');
  }, 120_000, 500);
  return { pod, a: ids[0], b: ids[1], cfg };
}

async function restore(dir: string, name: string): Promise<{ pod: string; a: string; b: string }> {
  const cfg = podConfig(name, path.join(d.logs, name));
  const r = await d.runtime('RestorePod', { checkpoint_path: dir, config: cfg }, 300_000);
  const byName = Object.fromEntries(r.restored_containers.map((c: any) => [c.name, c.container_id]));
  expect(Object.keys(byName).sort()).toEqual(['counter', 'memory']);
  return { pod: r.pod_sandbox_id, a: byName.counter, b: byName.memory };
}

async function removePod(pod: string): Promise<void> {
  await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
  await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
}

/** The restored pod's containers carry on from the checkpoint: same processes, memory, layers. */
async function expectCarriedOn(r: { pod: string; a: string; b: string }, at: { count: number; mem: string; started: string }): Promise<void> {
  for (const id of [r.a, r.b]) expect((await d.runtime('ContainerStatus', { container_id: id })).status.state).toBe('CONTAINER_RUNNING');
  expect(await sh(r.a, 'cat /made-a')).toBe('layer-a');
  // the counter goes on from where it was (a fresh start would count from 1 again)
  const first = Number(await sh(r.a, 'cat /tmp/count'));
  expect(first).toBeGreaterThanOrEqual(at.count);
  await retry(async () => {
    if (Number(await sh(r.a, 'cat /tmp/count')) <= first) throw new Error('counter stopped');
  }, 60_000, 500);
  // the value drawn once, held only in the shell's memory, is still written
  expect(await sh(r.b, 'cat /tmp/mem')).toBe(at.mem);
  // the same process: its start time (clock ticks since the guest booted) is the original's
  expect(await sh(r.a, STARTED)).toBe(at.started);
  const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: r.pod, verbose: true });
  expect(st.status.state).toBe('SANDBOX_READY');
  expect(JSON.parse(st.info.info).vm.boot).toBe('restore');
}

describe('pod checkpoints', () => {
  it('checkpoint a running pod; restore it as a new pod beside it and again after a daemon restart; damaged and foreign checkpoints are refused', async () => {
    const src = await sourcePod();
    const dir = path.join(d.dir, 'cp1');
    // what the pod holds just before the checkpoint is the floor of what the copy holds
    const at = { count: Number(await sh(src.a, 'cat /tmp/count')), mem: await sh(src.b, 'cat /tmp/mem'), started: await sh(src.a, STARTED) };
    await d.runtime('CheckpointPod', { pod_sandbox_id: src.pod, output_path: dir }, 300_000);
    const files = fs.readdirSync(dir).sort();
    expect(files).toEqual(['checkpoint.json', 'checkpoint.json.sha256', 'logs', 'vm.state']);
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'checkpoint.json'), 'utf8'));
    expect(manifest).toMatchObject({ format: 'podvisor.dev/pod-checkpoint', version: 1, backend: 'vm' });
    expect(manifest.containers.map((c: any) => c.config.metadata.name).sort()).toEqual(['counter', 'memory']);
    expect(fs.readFileSync(path.join(dir, manifest.containers.find((c: any) => c.config.metadata.name === 'memory').log), 'utf8')).toContain('started');

    const r1 = await restore(dir, 'cp-copy');
    expect(r1.pod).not.toBe(src.pod);
    expect([r1.a, r1.b]).not.toContain(src.a);
    await expectCarriedOn(r1, at);
    // two pods from then on: what one writes the other does not see
    await sh(r1.a, 'echo only-in-copy > /copy-file');
    await expect(sh(src.a, 'cat /copy-file')).rejects.toThrow();
    expect(Number(await sh(src.a, 'cat /tmp/count'))).toBeGreaterThan(at.count);
    // the copy's log goes on from the checkpointed one, in the new pod's log directory
    expect(fs.readFileSync(path.join(d.logs, 'cp-copy', 'memory.log'), 'utf8')).toContain('started');
    await removePod(r1.pod);
    await removePod(src.pod);

    // a daemon restart between checkpoint and restore
    await d.stopProcess();
    await d.launch();
    const r2 = await restore(dir, 'cp-after-restart');
    await expectCarriedOn(r2, at);
    await removePod(r2.pod);

    // foreign: a checkpoint for another QEMU (its manifest's digest made to match)
    const foreign = path.join(d.dir, 'cp-foreign');
    fs.mkdirSync(foreign);
    const m = { ...manifest, host: { ...manifest.host, 'hypervisor.qemu': 'qemu-system-x86_64:1:1' } };
    const text = JSON.stringify(m, null, 2);
    fs.writeFileSync(path.join(foreign, 'checkpoint.json'), text);
    fs.writeFileSync(path.join(foreign, 'checkpoint.json.sha256'), crypto.createHash('sha256').update(text).digest('hex'));
    fs.cpSync(path.join(dir, 'logs'), path.join(foreign, 'logs'), { recursive: true });
    fs.linkSync(path.join(dir, 'vm.state'), path.join(foreign, 'vm.state'));
    await expect(d.runtime('RestorePod', { checkpoint_path: foreign, config: podConfig('cp-foreign', d.logs) }))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/hypervisor\.qemu/) });
    // damaged: one byte of the VM state changed; then the manifest edited
    const fd = fs.openSync(path.join(dir, 'vm.state'), 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 4096);
    fs.writeSync(fd, Buffer.from([b[0] ^ 0xff]), 0, 1, 4096);
    fs.closeSync(fd);
    await expect(d.runtime('RestorePod', { checkpoint_path: dir, config: podConfig('cp-damaged', d.logs) }))
      .rejects.toMatchObject({ code: status.DATA_LOSS, details: expect.stringMatching(/vm\.state does not match its sha256/) });
    fs.appendFileSync(path.join(dir, 'checkpoint.json'), ' ');
    await expect(d.runtime('RestorePod', { checkpoint_path: dir, config: podConfig('cp-damaged', d.logs) }))
      .rejects.toMatchObject({ code: status.DATA_LOSS, details: expect.stringMatching(/does not match its digest/) });
    // nothing was left of the refused restores
    const names = (await d.runtime('ListPodSandbox', {})).items.map((s: any) => s.metadata.name);
    expect(names.filter((n: string) => n.startsWith('cp-'))).toEqual([]);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(foreign, { recursive: true, force: true });
  });

  it('a networked pod: its restored copy gets an address of its own, the checkpointed one is gone from its NIC, and it serves there', async () => {
    fs.writeFileSync(path.join(d.cniConfDir, '10-e2e.conflist'), JSON.stringify({
      cniVersion: '1.0.0',
      name: 'e2e-cp',
      plugins: [{ type: 'bridge', bridge: BRIDGE, isGateway: true, ipMasq: false, ipam: { type: 'host-local', ranges: [[{ subnet: `${SUBNET}.0/24` }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: path.join(d.dir, 'ipam') } }],
    }));
    await retry(async () => {
      const s = await d.runtime('Status', {});
      if (!s.status.conditions.find((c: any) => c.type === 'NetworkReady')?.status) throw new Error('network not ready yet');
    });
    const cfg = podConfig('cp-net', path.join(d.logs, 'cp-net'));
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const ip = (await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.network.ip;
    expect(ip).toMatch(new RegExp(`^${SUBNET.replace(/\./g, '\\.')}\\.`));
    const web = { ...containerConfig('web', 'mkdir -p /www; hostname > /www/index.html; httpd -f -p 8080 -h /www'), linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } } };
    const ctr = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: web, sandbox_config: cfg })).container_id;
    await d.runtime('StartContainer', { container_id: ctr });
    const get = (addr: string) => execFileSync('wget', ['-q', '-T', '10', '-O', '-', `http://${addr}:8080/`], { encoding: 'utf8' });
    await retry(async () => get(ip), 60_000, 500);
    const dir = path.join(d.dir, 'cp-net');
    await d.runtime('CheckpointPod', { pod_sandbox_id: pod, output_path: dir }, 300_000);
    const copyCfg = podConfig('cp-net-copy', path.join(d.logs, 'cp-net-copy'));
    const r = await d.runtime('RestorePod', { checkpoint_path: dir, config: copyCfg }, 300_000);
    const copy = r.pod_sandbox_id;
    const copyIp = (await d.runtime('PodSandboxStatus', { pod_sandbox_id: copy })).status.network.ip;
    expect(copyIp).not.toBe(ip);
    const copyCtr = r.restored_containers[0].container_id;
    // the guest's local addresses (the kernel's table: busybox has no ip applet here)
    const addrs = Buffer.from((await d.runtime('ExecSync', { container_id: copyCtr, cmd: ['cat', '/proc/net/fib_trie'], timeout: 60 })).stdout).toString();
    const local = [...addrs.matchAll(/\|-- (\S+)\n\s+\/32 host LOCAL/g)].map((m) => m[1]);
    expect(local).toContain(copyIp);
    expect(local).not.toContain(ip);
    // the same httpd process, reached at the copy's address; the original still at its own
    await retry(async () => get(copyIp), 60_000, 500);
    expect(get(ip)).toBe(get(copyIp));
    await removePod(copy);
    await removePod(pod);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a pod with host-share mounts (a read-only directory like a ConfigMap, a file like a termination log): checkpointed while it runs on with its mounts, restored as a new pod whose mounts are its own; a file held open on the share is refused, the pod untouched', async () => {
    // the host side of a pod's share mounts, as kubelet keeps them per pod
    const hostSide = (name: string) => {
      const root = path.join(d.dir, `share-${name}`);
      fs.mkdirSync(path.join(root, 'config'), { recursive: true });
      fs.writeFileSync(path.join(root, 'config', 'key'), `value-of-${name}\n`);
      fs.writeFileSync(path.join(root, 'termination-log'), '');
      const mounts = [
        { container_path: '/etc/config', host_path: path.join(root, 'config'), readonly: true },
        { container_path: '/dev/termination-log', host_path: path.join(root, 'termination-log') },
      ];
      return { root, mounts };
    };
    // B also ticks (guest uptime, and whether its config file is there) every 20 ms
    const TICKER = 'x=$(cat /proc/sys/kernel/random/uuid); echo started; while true; do echo $x > /tmp/mem; read up rest < /proc/uptime; ' +
      'if [ -s /etc/config/key ]; then s=1; else s=0; fi; echo "$up $s" >> /tmp/ticks; usleep 20000; done';
    const configs = (mounts: unknown[]) => [{ ...containerConfig('counter', COUNTER), mounts }, { ...containerConfig('memory', TICKER), mounts }];
    const src = hostSide('src');
    const cfg = podConfig('cp-share', path.join(d.logs, 'cp-share'));
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const [a, b] = await Promise.all(configs(src.mounts).map(async (c) => {
      const id = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: c, sandbox_config: cfg })).container_id;
      await d.runtime('StartContainer', { container_id: id });
      return id as string;
    }));
    await retry(async () => {
      if (Number(await sh(a, 'cat /tmp/count')) < 2) throw new Error('counter not going yet');
      await sh(b, 'cat /tmp/mem');
    }, 120_000, 500);
    expect(await sh(a, 'cat /etc/config/key')).toBe('value-of-src');
    const works = async (id: string, host: { root: string }, word: string) => {
      // the share is live both ways: a file the host adds is seen, what the container writes reaches the host
      fs.writeFileSync(path.join(host.root, 'config', 'added'), word);
      expect(await sh(id, 'cat /etc/config/added')).toBe(word);
      await sh(id, `echo ${word} > /dev/termination-log`);
      expect(fs.readFileSync(path.join(host.root, 'termination-log'), 'utf8').trim()).toBe(word);
      // still read-only where it was
      await expect(sh(id, 'touch /etc/config/new')).rejects.toThrow(/exit 1/);
    };
    await works(a, src, 'before');

    const dir = path.join(d.dir, 'cp-share');
    const at = { count: Number(await sh(a, 'cat /tmp/count')), mem: await sh(b, 'cat /tmp/mem'), started: await sh(a, STARTED) };
    const t0 = Date.now();
    await d.runtime('CheckpointPod', { pod_sandbox_id: pod, output_path: dir }, 300_000);
    const checkpointMs = Date.now() - t0;
    // QEMU's migration blocker was there (the 9p export attached) and went once the guest let the share go
    const saved = d.logLines().filter((l) => l.msg === 'pod VM saved; its host-share mounts were away meanwhile' && l.sandbox === pod);
    expect(saved).toHaveLength(1);
    expect((saved[0].blockedBefore as string[]).join(' ')).toMatch(/VirtFS export path/);
    expect(saved[0].blockedAfter).toEqual([]);
    expect(saved[0].mounts).toBe(4);

    // the original runs on, its mounts back and live
    for (const id of [a, b]) await works(id, src, `after-${id.slice(0, 6)}`);
    // it counts on (a tick a second of guest time, which stood still while the VM was saved:
    // the checks above can take less than one tick since execs got faster)
    await retry(async () => {
      if (Number(await sh(a, 'cat /tmp/count')) <= at.count) throw new Error('counter stopped');
    }, 60_000, 500);
    // what a running container saw (guest time, which stands still while the VM is paused for the save)
    const ticks = (await sh(b, 'cat /tmp/ticks')).split('\n').map((l) => l.split(' ').map(Number));
    const gone = ticks.filter(([, s]) => s === 0);
    let maxGap = 0;
    for (let i = 1; i < ticks.length; i++) maxGap = Math.max(maxGap, ticks[i][0] - ticks[i - 1][0]);
    const goneSpan = gone.length ? gone[gone.length - 1][0] - gone[0][0] : 0;
    console.log(`share-mount checkpoint: CheckpointPod ${checkpointMs} ms (host), share away ${saved[0].releasedMs} ms of which VM saved ${saved[0].savedMs} ms (host); ` +
      `in the guest: ${gone.length} ticks without the config file spanning ${goneSpan.toFixed(2)} s, longest gap between 20 ms ticks ${maxGap.toFixed(2)} s`);

    // restored as a new pod with its own host paths
    const copy = hostSide('copy');
    const copyCfg = podConfig('cp-share-copy', path.join(d.logs, 'cp-share-copy'));
    const r = await d.runtime('RestorePod', { checkpoint_path: dir, config: copyCfg, container_configs: configs(copy.mounts) }, 300_000);
    const byName = Object.fromEntries(r.restored_containers.map((c: any) => [c.name, c.container_id]));
    const restored = { pod: r.pod_sandbox_id, a: byName.counter, b: byName.memory };
    await expectCarriedOn(restored, at);
    expect(await sh(restored.a, 'cat /etc/config/key')).toBe('value-of-copy');
    for (const id of [restored.a, restored.b]) await works(id, copy, `copy-${id.slice(0, 6)}`);
    // the original's files are not the copy's
    expect(fs.readFileSync(path.join(src.root, 'termination-log'), 'utf8')).not.toMatch(/copy-/);
    // a restore whose containers' mounts are not the checkpointed ones is refused before a VM starts
    await expect(d.runtime('RestorePod', { checkpoint_path: dir, config: podConfig('cp-share-bad', d.logs), container_configs: configs(copy.mounts.slice(0, 1)) }))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/host-path mounts/) });
    await removePod(restored.pod);

    // a process holding a file on the share: refused, naming the container and the file; nothing changes
    await sh(a, 'sleep 1000 < /etc/config/key > /dev/null 2>&1 &');
    const held = path.join(d.dir, 'cp-share-held');
    await expect(d.runtime('CheckpointPod', { pod_sandbox_id: pod, output_path: held }, 300_000))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/container counter \(pid \d+\) holds \/etc\/config\/key/) });
    expect(fs.existsSync(held)).toBe(false);
    for (const id of [a, b]) await works(id, src, `held-${id.slice(0, 6)}`);
    const n = Number(await sh(a, 'cat /tmp/count'));
    await retry(async () => {
      if (Number(await sh(a, 'cat /tmp/count')) <= n) throw new Error('counter stopped');
    }, 60_000, 500);
    await removePod(pod);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('CheckpointContainer writes an archive of the container and its pod; bad requests get clear errors', async () => {
    const cfg = podConfig('cp-archive', path.join(d.logs, 'cp-archive'));
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const id = (await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: containerConfig('memory', MEMORY), sandbox_config: cfg })).container_id;
    await d.runtime('StartContainer', { container_id: id });
    await retry(() => sh(id, 'cat /tmp/mem'), 120_000, 500);

    const location = path.join(d.dir, 'checkpoint-memory.tar');
    await d.runtime('CheckpointContainer', { container_id: id, location }, 300_000);
    const listing = execFileSync('tar', ['-t', '-f', location], { encoding: 'utf8' }).trim().split('\n').sort();
    expect(listing).toEqual(expect.arrayContaining(['container.json', 'pod/checkpoint.json', 'pod/checkpoint.json.sha256', 'pod/vm.state']));
    const info = JSON.parse(execFileSync('tar', ['-x', '-O', '-f', location, 'container.json'], { encoding: 'utf8' }));
    expect(info).toMatchObject({ format: 'podvisor.dev/container-checkpoint', id, name: 'memory', sandboxId: pod });
    expect((await d.runtime('ContainerStatus', { container_id: id })).status.state).toBe('CONTAINER_RUNNING');
    await expect(d.runtime('CheckpointContainer', { container_id: id, location })).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/exists/) });
    // kubelet's restore of one container (CreateContainer of the archive as its image): refused, naming RestorePod
    await expect(d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { ...containerConfig('restored', MEMORY), metadata: { name: 'restored', attempt: 0 }, image: { image: location } }, sandbox_config: cfg }))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/container checkpoint.*RestorePod/) });
    fs.rmSync(location);

    await expect(d.runtime('CheckpointPod', { pod_sandbox_id: pod, output_path: 'relative/dir' })).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/absolute/) });
    const full = path.join(d.dir, 'not-empty');
    fs.mkdirSync(full);
    fs.writeFileSync(path.join(full, 'x'), 'x');
    await expect(d.runtime('CheckpointPod', { pod_sandbox_id: pod, output_path: full })).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/not empty/) });
    await expect(d.runtime('CheckpointPod', { pod_sandbox_id: pod, output_path: path.join(d.dir, 'cp-opt'), options: { bogus: '1' } })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    await expect(d.runtime('CheckpointPod', { pod_sandbox_id: 'nope', output_path: path.join(d.dir, 'cp-none') })).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(d.runtime('RestorePod', { checkpoint_path: full, config: podConfig('cp-x', d.logs) })).rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/no podvisor pod checkpoint/) });
    expect(fs.existsSync(path.join(d.dir, 'cp-opt'))).toBe(false);
    await removePod(pod);
  });
});

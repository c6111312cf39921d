// Crash matrix (issue 17 item 5 and "beyond the list"): the daemon is killed (SIGKILL, through
// the PODVISOR_FAULT hook, src/util/fault.ts) at each step of RunPodSandbox on a CNI bridge with
// a pod cgroup; after a restart the pod is either complete (READY) or fully gone: no record, no
// netns, no QEMU, no VM directory, no cgroup, no IP lease, no veth on the bridge.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { netnsNameFor } from '../network/network-driver';
import { podCgroupDirs } from '../src/runtime/pod-cgroup';
import { pushBusybox } from '../test/support/images';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { useBridgeNetwork } from './support/cni';
import { claimRunNetwork, type RunNetwork } from './support/netpool';
import { podConfig, qemuPidsUnder, retry, type TestDaemon } from './support/daemon';

jest.setTimeout(900_000);

// this run's own bridge and /24 (another slot may run this file at the same time)
let net: RunNetwork | undefined;
let BRIDGE: string;
const STEPS = ['sandbox.run:pending-saved', 'sandbox.run:network-up', 'sandbox.run:vm-started', 'sandbox.run:cgroup-entered', 'sandbox.run:booted', 'sandbox.run:ready-saved'];

let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let ipamDir: string;
let registry: BusyboxDaemon['registry'];
let image: string;
beforeAll(async () => {
  setup = await startBusyboxDaemon({ templates: false }, { pull: false });
  ({ d, image, registry } = setup);
  net = await claimRunNetwork('pvcrash');
  BRIDGE = net.bridge;
  ipamDir = await useBridgeNetwork(d, { name: 'crash', bridge: BRIDGE, subnet: net.subnet });
});
afterAll(async () => {
  await setup?.close();
  try {
    if (BRIDGE) execFileSync('ip', ['link', 'del', BRIDGE], { stdio: 'ignore' });
  } catch {
    /* never made */
  }
  await net?.release();
});

const netnsList = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
const leases = () => (fs.existsSync(path.join(ipamDir, 'crash')) ? fs.readdirSync(path.join(ipamDir, 'crash')).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip')) : []);
const bridgePorts = () => {
  try {
    return execFileSync('ip', ['-o', 'link', 'show', 'master', BRIDGE], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
};

async function leftovers(id: string, parent: string): Promise<string[]> {
  const found: string[] = [];
  if (netnsList().includes(netnsNameFor(id))) found.push(`netns ${netnsNameFor(id)}`);
  for (const pid of qemuPidsUnder(d.state)) found.push(`qemu ${pid}`);
  if (fs.existsSync(path.join(d.state, 'vm', id.slice(0, 16)))) found.push('vm dir');
  for (const dir of await podCgroupDirs(parent, 'cgroupfs', id)) if (fs.existsSync(dir)) found.push(`cgroup ${dir}`);
  found.push(...leases().map((l) => `lease ${l}`));
  if (bridgePorts()) found.push(`bridge ports: ${bridgePorts()}`);
  if (fs.existsSync(path.join(d.root, 'cni'))) for (const f of fs.readdirSync(path.join(d.root, 'cni'), { recursive: true }) as string[]) if (String(f).includes(id)) found.push(`cni cache ${f}`);
  return found;
}

test.each(STEPS)('killed at %s: after a restart the pod is complete or fully gone', async (step) => {
  const n = STEPS.indexOf(step);
  const parent = `/pvcrash${n}`;
  await d.stopProcess();
  await d.launch({ PODVISOR_FAULT: step });
  const cfg = podConfig(`crash-${n}`, path.join(d.logs, `crash-${n}`), { linux: { cgroup_parent: parent, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } } });
  await expect(d.runtime('RunPodSandbox', { config: cfg }, 120_000)).rejects.toBeTruthy();
  await retry(async () => {
    if (d.alive) throw new Error('daemon still running');
  }, 30_000);
  const records = fs.readdirSync(path.join(d.root, 'sandboxes')).filter((f) => f.endsWith('.json'));
  const recs = records.map((f) => JSON.parse(fs.readFileSync(path.join(d.root, 'sandboxes', f), 'utf8')));
  const rec = recs.find((r) => r.config.metadata.name === `crash-${n}`);
  expect(rec).toBeDefined(); // the pending record is there before any side effect
  await d.launch();
  const pods = (await d.runtime('ListPodSandbox', {})).items;
  if (step === 'sandbox.run:ready-saved') {
    // complete: the pod was ready and recorded; it survives the crash as a running pod
    expect(pods.map((p: any) => [p.id, p.state])).toEqual([[rec.id, 'SANDBOX_READY']]);
    await d.runtime('StopPodSandbox', { pod_sandbox_id: rec.id });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: rec.id });
  } else {
    expect(pods).toEqual([]);
    expect(fs.existsSync(path.join(d.root, 'sandboxes', `${rec.id}.json`))).toBe(false);
  }
  const left = await leftovers(rec.id, parent);
  console.log(`killed at ${step}: restart found ${rec.pending ? 'a pending record' : 'a complete record'}; left after recovery: ${left.length ? left.join(', ') : 'nothing'}`);
  expect(left).toEqual([]);
});

async function killedRun(step: string, fn: () => Promise<unknown>): Promise<void> {
  await d.stopProcess();
  await d.launch({ PODVISOR_FAULT: step });
  await expect(fn()).rejects.toBeTruthy();
  await retry(async () => {
    if (d.alive) throw new Error('daemon still running');
  }, 30_000);
  await d.launch();
}

describe('CreateContainer', () => {
  let pod: string;
  let podCfg: any;
  beforeAll(async () => {
    await d.image('PullImage', { image: { image } });
    podCfg = podConfig('crash-ctr', path.join(d.logs, 'crash-ctr'));
    pod = (await d.runtime('RunPodSandbox', { config: podCfg })).pod_sandbox_id;
  });
  afterAll(async () => {
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod }).catch(() => undefined);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod }).catch(() => undefined);
  });

  test.each(['container.create:pending-saved', 'container.create:created-in-guest', 'container.create:saved'])('killed at %s: the container is complete or fully gone, the pod lives', async (step) => {
    const name = step.split(':')[1];
    const config = { metadata: { name, attempt: 0 }, image: { image }, command: ['/bin/sleep', '3600'], log_path: `${name}.log`, linux: {} };
    const shareDirs = () => {
      const c = path.join(d.state, 'vm', pod.slice(0, 16), 'shared', 'c');
      return fs.existsSync(c) ? fs.readdirSync(c).length : 0;
    };
    const shareBefore = shareDirs();
    await killedRun(step, () => d.runtime('CreateContainer', { pod_sandbox_id: pod, config, sandbox_config: podCfg }));
    expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.state).toBe('SANDBOX_READY');
    const ctrs = (await d.runtime('ListContainers', {})).containers.filter((c: any) => c.metadata.name === name);
    const records = fs.readdirSync(path.join(d.root, 'containers')).map((f) => JSON.parse(fs.readFileSync(path.join(d.root, 'containers', f), 'utf8')));
    const shareAfter = shareDirs();
    console.log(`killed at ${step}: after restart ${ctrs.length} container(s) named ${name}, ${records.filter((r) => r.pending).length} pending record(s)`);
    const pendingLeft = records.filter((r) => r.pending);
    if (pendingLeft.length) {
      const files = fs.readdirSync(path.join(d.root, 'containers'));
      const log = fs.readFileSync(path.join(d.dir, 'daemon.log'), 'utf8').split('\n').filter((l) => pendingLeft.some((r) => l.includes(r.id)));
      console.log(`pending records left: ${pendingLeft.map((r) => r.id).join(', ')}; files: ${files.join(', ')}; daemon log about them:\n${log.slice(-20).join('\n')}`);
    }
    expect(pendingLeft.map((r) => r.id)).toEqual([]);
    if (step === 'container.create:saved') {
      expect(ctrs.map((c: any) => c.state)).toEqual(['CONTAINER_CREATED']);
      await d.runtime('StartContainer', { container_id: ctrs[0].id }); // complete: it runs
      await d.runtime('RemoveContainer', { container_id: ctrs[0].id });
    } else {
      expect(ctrs).toEqual([]);
      expect(shareAfter).toBe(shareBefore); // no bind directory left in the pod's share
    }
    // the guest holds no container by that name: a new one with the same name can be made
    const again = await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: { ...config, metadata: { name, attempt: 1 } }, sandbox_config: podCfg });
    await d.runtime('RemoveContainer', { container_id: again.container_id });
  });
});

describe('StartContainer', () => {
  test('killed at container.start:started-in-guest: after a restart the container is RUNNING (complete)', async () => {
    const podCfg = podConfig('crash-start', path.join(d.logs, 'crash-start'));
    const pod = (await d.runtime('RunPodSandbox', { config: podCfg })).pod_sandbox_id;
    const config = { metadata: { name: 'starter', attempt: 0 }, image: { image }, command: ['/bin/sleep', '3600'], log_path: 'starter.log', linux: {} };
    const { container_id } = await d.runtime('CreateContainer', { pod_sandbox_id: pod, config, sandbox_config: podCfg });
    await killedRun('container.start:started-in-guest', () => d.runtime('StartContainer', { container_id }));
    const st = (await d.runtime('ContainerStatus', { container_id })).status;
    console.log(`killed at container.start:started-in-guest: after restart ${st.state}`);
    expect(st.state).toBe('CONTAINER_RUNNING');
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  });
});

describe.each([
  ['StopPodSandbox', 'sandbox.stop:vm-stopped'],
  ['StopPodSandbox', 'sandbox.stop:network-down'],
  ['RemovePodSandbox', 'sandbox.remove:cgroup-left'],
  ['RemovePodSandbox', 'sandbox.remove:record-deleted'],
])('%s', (rpc, step) => {
  test(`killed at ${step}: kubelet's retry after a restart finishes it and nothing is left`, async () => {
    const n = 10 + ['sandbox.stop:vm-stopped', 'sandbox.stop:network-down', 'sandbox.remove:cgroup-left', 'sandbox.remove:record-deleted'].indexOf(step);
    const parent = `/pvcrash${n}`;
    const cfg = podConfig(`crash-${n}`, path.join(d.logs, `crash-${n}`), { linux: { cgroup_parent: parent, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } } });
    const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    await killedRun(step, () => d.runtime(rpc, { pod_sandbox_id: pod }));
    const listed = (await d.runtime('ListPodSandbox', {})).items.filter((p: any) => p.id === pod);
    // kubelet retries until the pod is gone
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    expect((await d.runtime('ListPodSandbox', {})).items.filter((p: any) => p.id === pod)).toEqual([]);
    const left = await leftovers(pod, parent);
    console.log(`killed at ${step}: after restart the pod was ${listed.length ? listed[0].state : 'gone'}; left after the retry: ${left.length ? left.join(', ') : 'nothing'}`);
    expect(left).toEqual([]);
  });
});

describe('PullImage', () => {
  test.each(['image.pull:resolved', 'image.pull:built', 'image.pull:saved'])('killed at %s: after a restart the image is complete or gone, no temp or unreferenced file', async (step) => {
    const ref = `${registry.host}/e2e/pull-${step.split(':')[1]}:latest`;
    await pushBusybox(registry, `e2e/pull-${step.split(':')[1]}`, 'latest', { extra: [{ name: 'marker', content: step }] });
    await killedRun(step, () => d.image('PullImage', { image: { image: ref } }));
    const images = (await d.image('ListImages', {})).images;
    const have = images.find((i: any) => i.repo_tags.includes(ref));
    const imagesDir = path.join(d.root, 'images');
    const tmp = fs.existsSync(path.join(imagesDir, 'tmp')) ? fs.readdirSync(path.join(imagesDir, 'tmp')) : [];
    const erofs = fs.readdirSync(path.join(imagesDir, 'erofs'));
    const referenced = new Set(images.map((i: any) => i.id.replace(/^sha256:/, '')));
    const stray = erofs.filter((f) => f.startsWith('.tmp-') || !referenced.has(f.replace(/\.erofs$/, '')));
    console.log(`killed at ${step}: after restart the image is ${have ? 'there' : 'gone'}; temp files ${tmp.length}, stray image files ${stray.length}`);
    if (step === 'image.pull:saved') expect(have).toBeDefined();
    expect(tmp).toEqual([]);
    expect(stray).toEqual([]);
    // and the pull completes now
    expect((await d.image('PullImage', { image: { image: ref } })).image_ref).toMatch(/^sha256:/);
  });
});

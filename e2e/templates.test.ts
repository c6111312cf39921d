// VM templates end to end: pods start as clones, take their own identity, never write into the
// template, and fall back to a cold boot when the template is unusable.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { execSync, startContainer } from './support/containers';
import { podConfig, podQemuPids, retry, TestDaemon } from './support/daemon';

jest.setTimeout(300_000);

let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let image: string;

beforeAll(async () => {
  setup = await startBusyboxDaemon({ templates: true });
  ({ d, image } = setup);
});

afterAll(() => setup?.close());

async function runPod(name: string): Promise<{ id: string; info: any }> {
  const cfg = podConfig(name, path.join(d.logs, name));
  const id = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
  return { id, info: JSON.parse(st.info.info) };
}

async function sh(pod: string, name: string, script: string): Promise<string> {
  const cfg = podConfig(name, path.join(d.logs, name));
  const config = { metadata: { name }, image: { image }, command: ['/bin/sleep', '3600'], linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } } };
  const r = await execSync(d, await startContainer(d, pod, cfg, config), ['/bin/sh', '-c', script]);
  if (r.code !== 0) throw new Error(`${script}: exit ${r.code}: ${r.err}`);
  return r.out;
}

function templateMem(): string {
  const keys = fs.readdirSync(d.templateDir).filter((k) => !k.includes('.build-'));
  expect(keys).toHaveLength(1);
  return path.join(d.templateDir, keys[0], 'mem');
}

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

describe('pods cloned from a template', () => {
  let a: { id: string; info: any };
  let b: { id: string; info: any };

  beforeAll(async () => {
    a = await runPod('clone-a');
    b = await runPod('clone-b');
  });

  it('start as clones of one template', () => {
    expect(a.info.vm.boot).toBe('clone');
    expect(b.info.vm.boot).toBe('clone');
    expect(fs.readFileSync(`/proc/${a.info.vm.pid}/cmdline`, 'utf8')).toContain(`mem-path=${templateMem()},share=off`);
    // no transparent huge pages for a clone's QEMU (a 2 MiB page for each small block it touches)
    expect(fs.readFileSync(`/proc/${a.info.vm.pid}/status`, 'utf8')).toMatch(/^THP_enabled:\s+0$/m);
  });

  it('have their own entropy, clock and hostname', async () => {
    // the guest's clock is read somewhere between these two host readings (under load the exec
    // takes seconds: the bracket measures the clock, not the exec's latency)
    const before = Date.now() / 1000;
    const ra = await sh(a.id, 'rng-a', 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s; hostname');
    const after = Date.now() / 1000;
    const rb = await sh(b.id, 'rng-b', 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s; hostname');
    const [bytesA, timeA, hostA] = ra.trim().split('\n');
    const [bytesB, , hostB] = rb.trim().split('\n');
    expect(bytesA).toMatch(/^[0-9a-f]{64}$/);
    expect(bytesA).not.toBe(bytesB);
    expect(Number(timeA)).toBeGreaterThanOrEqual(Math.floor(before) - 1);
    expect(Number(timeA)).toBeLessThanOrEqual(Math.ceil(after) + 1);
    expect([hostA, hostB]).toEqual(['clone-a', 'clone-b']);
  });

  it('keep the guest clock within a second of the host', async () => {
    // busybox date has whole seconds: the guest's reading must fall within a second of the
    // host's clock over the exec round trip
    const created = await sh(a.id, 'clock', 'true');
    expect(created).toBe('');
    const c = (await d.runtime('ListContainers', { filter: { pod_sandbox_id: a.id, label_selector: {} } })).containers.find((x: any) => x.metadata.name === 'clock');
    const t0 = Date.now() / 1000;
    const r = await d.runtime('ExecSync', { container_id: c.id, cmd: ['/bin/busybox', 'date', '+%s'], timeout: 30 });
    const t1 = Date.now() / 1000;
    const guest = Number(Buffer.from(r.stdout).toString().trim());
    expect(guest).toBeGreaterThanOrEqual(Math.floor(t0) - 1);
    expect(guest).toBeLessThanOrEqual(Math.ceil(t1) + 1);
  });

  it('never write into the template memory file, even when the guest writes all its memory', async () => {
    const mem = templateMem();
    const before = sha(mem);
    // fill most of the 256 MiB guest: tmpfs pages are guest RAM
    await sh(a.id, 'fill', 'dd if=/dev/urandom of=/dev/shm/fill bs=1M count=150 2>/dev/null; sync; echo ok');
    expect(sha(mem)).toBe(before);
  });

  it('leave no template or clone files behind once removed (the template stays for the next pod)', async () => {
    for (const p of [a, b]) await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id });
    expect(podQemuPids(d.state)).toEqual([]);
    expect(fs.readdirSync(path.join(d.state, 'vm'))).toEqual([]);
    expect(fs.readdirSync(d.templateDir).filter((k) => k.includes('.build-'))).toEqual([]);
  });
});

/** nice value of each thread of `pid` (/proc/<pid>/task/<tid>/stat, field 19) */
function threadNices(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
}

describe('warm spares', () => {
  const sparesDir = () => path.join(d.state, 'spares');
  const spares = () => (fs.existsSync(sparesDir()) ? fs.readdirSync(sparesDir()) : []);
  const oneSpare = () => retry(async () => {
    expect(spares()).toHaveLength(1);
    const s = spares()[0];
    expect(fs.existsSync(path.join(sparesDir(), s, 'ready'))).toBe(true);
    return s;
  }, 60_000);

  it("are made ahead of pods and handed over with the pod's own identity", async () => {
    const s1 = await oneSpare(); // made after the default-size pods above
    // a waiting spare runs below the daemon's CPU priority (every QEMU thread), a pod's VM at it
    const daemonNice = threadNices(d.pid!)[0];
    const spareNices = threadNices(Number(fs.readFileSync(path.join(sparesDir(), s1, 'qemu.pid'), 'utf8').trim()));
    expect(spareNices.length).toBeGreaterThan(1);
    expect(new Set(spareNices)).toEqual(new Set([Math.min(19, daemonNice + 10)]));
    const p = await runPod('from-spare-1');
    expect(p.info.vm).toMatchObject({ boot: 'clone', spare: true });
    expect(new Set(threadNices(p.info.vm.pid))).toEqual(new Set([daemonNice]));
    expect(fs.readFileSync(`/proc/${p.info.vm.pid}/cmdline`, 'utf8')).toContain(`podvisor-${s1},`);
    // the spare's files moved into the pod's directory
    expect(fs.existsSync(path.join(d.state, 'vm', p.id.slice(0, 16), 'qmp.sock'))).toBe(true);
    expect(spares()).not.toContain(s1);
    const s2 = await oneSpare(); // the next one
    expect(s2).not.toBe(s1);
    const q = await runPod('from-spare-2');
    expect(q.info.vm.spare).toBe(true);
    const script = 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s; hostname';
    const before = Date.now() / 1000;
    const [bytesP, timeP, hostP] = (await sh(p.id, 'id-p', script)).trim().split('\n');
    const after = Date.now() / 1000;
    const [bytesQ, , hostQ] = (await sh(q.id, 'id-q', script)).trim().split('\n');
    expect(bytesP).toMatch(/^[0-9a-f]{64}$/);
    expect(bytesP).not.toBe(bytesQ);
    expect(Number(timeP)).toBeGreaterThanOrEqual(Math.floor(before) - 1);
    expect(Number(timeP)).toBeLessThanOrEqual(Math.ceil(after) + 1);
    expect([hostP, hostQ]).toEqual(['from-spare-1', 'from-spare-2']);
    for (const x of [p, q]) await d.runtime('RemovePodSandbox', { pod_sandbox_id: x.id });
    expect(podQemuPids(d.state)).toEqual([]);
    expect(fs.readdirSync(path.join(d.state, 'vm'))).toEqual([]);
  });

  it('go with the daemon; a restarted daemon reaps the spares of one that was killed', async () => {
    const alive = (pid: number) => fs.existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    const pidOf = (s: string) => Number(fs.readFileSync(path.join(sparesDir(), s, 'qemu.pid'), 'utf8').trim());
    const s1 = await oneSpare();
    const pid1 = pidOf(s1);
    await d.stopProcess(); // SIGTERM
    expect(d.lastExit).toEqual({ code: 0, signal: null });
    expect(d.logLines().filter((l) => l.msg === 'stopped')).toHaveLength(1); // the whole stop ran, not cut short
    expect(alive(pid1)).toBe(false);
    expect(spares()).toEqual([]);
    await d.launch();
    const p = await runPod('refill'); // a pod of the default size: the pool fills again
    expect(p.info.vm.spare).toBe(false);
    const s2 = await oneSpare();
    const pid2 = pidOf(s2);
    await d.killProcess(); // SIGKILL: no chance to clean up
    expect(alive(pid2)).toBe(true);
    await d.launch();
    expect(alive(pid2)).toBe(false);
    expect(spares()).not.toContain(s2);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id });
    expect(podQemuPids(d.state)).toEqual([]);
  });

  it('a pod VM that was a spare is still reaped when its record is gone', async () => {
    const primer = await runPod('primer'); // spares are made once a pod of the class has started
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: primer.id });
    await oneSpare();
    const p = await runPod('recordless');
    expect(p.info.vm.spare).toBe(true);
    await d.stopProcess();
    fs.rmSync(path.join(d.root, 'sandboxes', `${p.id}.json`)); // e.g. lost between two steps of a removal
    expect(fs.existsSync(`/proc/${p.info.vm.pid}`)).toBe(true);
    await d.launch();
    await retry(async () => expect(fs.existsSync(`/proc/${p.info.vm.pid}`) && !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${p.info.vm.pid}/status`, 'utf8'))).toBe(false), 10_000);
    expect(fs.existsSync(path.join(d.state, 'vm', p.id.slice(0, 16)))).toBe(false);
  });
});

describe('template lifecycle', () => {
  it('falls back to a cold boot when the template files were deleted, then rebuilds', async () => {
    const dir = path.dirname(templateMem());
    fs.rmSync(dir, { recursive: true, force: true });
    const p = await runPod('after-wipe');
    expect(['clone', 'cold']).toContain(p.info.vm.boot); // rebuilt on demand, or cold if the rebuild failed
    expect(await sh(p.id, 'works', 'echo alive')).toBe('alive\n');
    await retry(async () => expect(fs.existsSync(templateMem())).toBe(true), 60_000);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id });
  });

  it('does not clone a template whose state is broken: the pod cold-boots and works', async () => {
    const state = path.join(path.dirname(templateMem()), 'state');
    await retry(async () => expect(fs.readdirSync(path.join(d.state, 'spares')).filter((s) => fs.existsSync(path.join(d.state, 'spares', s, 'ready')))).toHaveLength(1), 60_000);
    fs.writeFileSync(state, 'not a migration stream');
    // the spare was restored before the state broke: the next pod takes it; no new one can be made
    const first = await runPod('before-broken-state');
    expect(first.info.vm).toMatchObject({ boot: 'clone', spare: true });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: first.id });
    const p = await runPod('broken-state');
    expect(p.info.vm.boot).toBe('cold');
    expect(await sh(p.id, 'works', 'echo alive')).toBe('alive\n');
    // the failed clone is logged with the error itself: its type, message and stack
    const fell = fs.readFileSync(path.join(d.dir, 'daemon.log'), 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
      .find((l) => l.msg === 'clone from template failed: cold boot instead' && l.sandbox);
    expect(fell.err).toMatchObject({ type: expect.any(String), message: expect.any(String) });
    expect(fell.err.stack).toMatch(/\n\s+at /);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.id });
  });

  it('is managed by `podvisor template build|ls|rm`, which never deletes a template in use', async () => {
    const { spawnSync } = await import('node:child_process');
    const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js'), 'template', ...args, '--config', d.configFile, '--root', d.root], { encoding: 'utf8', timeout: 120_000 });
    const built = cli('build', '--vcpus', '1', '--memory', '320', '--nics', '0');
    expect(built.status).toBe(0);
    expect(built.stdout.trim().split('\n')).toHaveLength(1); // the result alone
    const key = built.stdout.split(' ')[0];
    expect(key).toMatch(/^[0-9a-f]{32}$/);
    // the build's progress on stderr, step by step in order, as readable lines naming the key
    const steps = ['template build: booting the VM', 'template build: VM started, waiting for the guest agent', 'template build: guest ready, saving the snapshot', 'template build: snapshot saved', 'VM template built'];
    const lines = built.stderr.split('\n');
    const at = steps.map((step) => lines.findIndex((l) => l.includes(`INFO: ${step} {`) && l.includes(`"key":"${key}"`)));
    expect(at.every((i) => i >= 0)).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(lines[at[3]]).toMatch(/"ms":\d+,"stateBytes":[1-9]\d*/);
    const cfg = podConfig('cli', path.join(d.logs, 'cli'), { linux: { resources: { memory_limit_in_bytes: String(320 * 1024 * 1024) } } });
    const id = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const info = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: id, verbose: true })).info.info);
    expect(info.vm.boot).toBe('clone'); // cloned from the template the CLI built
    expect(cli('ls').stdout).toMatch(new RegExp(`${key}\\s+1x320x0\\s+\\S+\\s+yes`));
    const refused = cli('rm', key);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain('in use');
    expect(fs.existsSync(path.join(d.templateDir, key, 'mem'))).toBe(true);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: id });
    expect(cli('rm', key).status).toBe(0);
    expect(fs.existsSync(path.join(d.templateDir, key))).toBe(false);
  });

  it('builds a new template when its inputs change (size class)', async () => {
    const cfg = podConfig('big', path.join(d.logs, 'big'), {
      linux: { resources: { memory_limit_in_bytes: String(384 * 1024 * 1024) }, security_context: { namespace_options: { pid: 'CONTAINER' } } },
    });
    const before = new Set(fs.readdirSync(d.templateDir));
    const id = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    const info = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: id, verbose: true })).info.info);
    expect(info.vm.memoryMiB).toBe(384);
    expect(info.vm.boot).toBe('clone');
    const added = fs.readdirSync(d.templateDir).filter((k) => !before.has(k));
    expect(added).toHaveLength(1);
    const meta = JSON.parse(fs.readFileSync(path.join(d.templateDir, added[0], 'meta.json'), 'utf8'));
    expect(meta.memoryMiB).toBe(384);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: id });
  });
});

describe('[vm] ksm', () => {
  const mergeAny = (pid: number) => /^ksm_merge_any: (\w+)$/m.exec(fs.readFileSync(`/proc/${pid}/ksm_stat`, 'utf8'))?.[1];

  it('lets KSM merge all of each pod VM\'s memory when on (clones and spares alike), and is off by default', async () => {
    const off = await runPod('ksm-off');
    expect(mergeAny(off.info.vm.pid)).toBe('no');
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: off.id });
    const k = await TestDaemon.start({ registries: { [setup!.registry.host]: `http://${setup!.registry.host}` }, templates: true, vmToml: 'ksm = true\n' });
    try {
      const cfg = podConfig('ksm-on', path.join(k.logs, 'ksm-on'));
      const pod = (await k.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
      const info = JSON.parse((await k.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true })).info.info);
      expect(mergeAny(info.vm.pid)).toBe('yes');
      // the spare made behind it too: every QEMU of this daemon
      const qemus = await retry(async () => {
        const found = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
          try {
            const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
            return cmd.split('\0')[0].endsWith('qemu-system-x86_64') && cmd.includes(k.state);
          } catch {
            return false;
          }
        });
        if (found.length < 2) throw new Error(`${found.length} QEMU processes, waiting for the spare`);
        return found;
      });
      for (const p of qemus) expect({ p, merge: mergeAny(Number(p)) }).toEqual({ p, merge: 'yes' });
      await k.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    } finally {
      await k.destroy();
    }
  });
});

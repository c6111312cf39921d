// A clone's balloon never touches its template's RAM file. A clone maps the template's `mem`
// file privately (memory-backend-file,share=off) and QEMU 7.2 discards a ballooned page of a
// file-backed RAM block by punching a hole into the file, private mapping or not: every
// in-place resize down (or a pod started below its ceiling) would zero template pages that
// other clones, and every later clone, still read. podvisor-launch --no-punch-hole
// (launcher/src/nopunch.rs) refuses that punch. Real daemon, real clones, the real resize path
// (UpdatePodSandboxResources down, and a pod booted below its ceiling); the template file's
// allocated blocks and content are compared before and after.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { execSync, startContainer } from './support/containers';
import { podConfig, type TestDaemon } from './support/daemon';

jest.setTimeout(300_000);

const MiB = 1024 * 1024;
let setup: BusyboxDaemon;
let d: TestDaemon;

beforeAll(async () => {
  // pods boot at 512 MiB (the ceiling) and run at 256 by default: 256 MiB ballooned each (a
  // smaller guest OOM-kills its container: the initramfs root lives in its RAM)
  setup = await startBusyboxDaemon({ templates: true, vmToml: 'resize_memory_mib = 512\ndefault_memory_mib = 256\n' });
  d = setup.d;
});

afterAll(async () => {
  await setup?.close();
});

const resources = (mib: number) => ({ cpu_period: 100_000, cpu_quota: 100_000, memory_limit_in_bytes: mib * MiB });

async function vmOf(pod: string): Promise<{ pid: number; boot: string; memoryMiB: number; ceiling: { memoryMiB: number } }> {
  const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
  return JSON.parse(st.info.info).vm;
}

async function memTotalMiB(id: string): Promise<number> {
  const r = await execSync(d, id, ['cat', '/proc/meminfo']);
  return Math.round(Number(/MemTotal:\s+(\d+) kB/.exec(r.out)![1]) / 1024);
}

/** The RAM file a clone maps privately, from its QEMU command line. */
function ramFileOf(pid: number): string {
  const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  const backend = argv.find((a) => a.startsWith('memory-backend-file,'));
  const m = /mem-path=([^,]+),share=off/.exec(backend ?? '');
  if (!m) throw new Error(`no privately mapped RAM file in QEMU's argv: ${backend}`);
  return m[1];
}

/** What a punched hole would change: the file's allocated 512-byte blocks and its content. */
function fileState(file: string): { blocks: number; sha256: string } {
  return { blocks: fs.statSync(file).blocks, sha256: crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') };
}

/**
 * The template file is as it was: the same content, and no block freed. Its block count may
 * grow: a clone's fault on a hole of the (tmpfs) file, even a write fault of its private
 * mapping, first puts a zero page into the file (shmem_fault), so a guest that zeroes the pages
 * it balloons adds them; without the fix, those and the template's own pages are punched again.
 */
function expectIntact(file: string, before: { blocks: number; sha256: string }): void {
  const now = fileState(file);
  expect(now.sha256).toBe(before.sha256);
  expect(now.blocks).toBeGreaterThanOrEqual(before.blocks);
}

describe('balloon inflation of a clone', () => {
  const pods: string[] = [];
  afterAll(async () => {
    for (const p of pods) await d.runtime('RemovePodSandbox', { pod_sandbox_id: p }).catch(() => undefined);
  });

  async function pod(name: string, memMiB?: number): Promise<{ pod: string; id: string }> {
    const cfg = podConfig(name, path.join(d.logs, name));
    if (memMiB) cfg.linux = { ...cfg.linux, resources: resources(memMiB) };
    const p = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    pods.push(p);
    const id = await startContainer(d, p, cfg, { metadata: { name: 'c' }, image: { image: setup.image }, command: ['sleep', '3600'] });
    return { pod: p, id };
  }

  it('leaves the template RAM file as it was; the guests lose the memory, a later clone runs', async () => {
    // A runs at its ceiling: no balloon yet
    const a = await pod('balloon-a', 512);
    const va = await vmOf(a.pod);
    expect(va).toMatchObject({ boot: 'clone', memoryMiB: 512, ceiling: { memoryMiB: 512 } });
    const mem = ramFileOf(va.pid);
    expect(path.basename(mem)).toBe('mem');
    expect(mem.startsWith(d.templateDir)).toBe(true);
    const before = fileState(mem);
    expect(before.blocks).toBeGreaterThan(0);
    expect(await memTotalMiB(a.id)).toBeGreaterThan(400);

    // resized down through CRI: 256 MiB ballooned in A
    await d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: a.pod, resources: resources(256) });
    expect(await vmOf(a.pod)).toMatchObject({ memoryMiB: 256 });
    expect(await memTotalMiB(a.id)).toBeLessThanOrEqual(256);
    expectIntact(mem, before);

    // B: another clone of the same template, booted at 512 and ballooned to 256 at start
    const b = await pod('balloon-b');
    const vb = await vmOf(b.pod);
    expect(vb).toMatchObject({ boot: 'clone', memoryMiB: 256, ceiling: { memoryMiB: 512 } });
    expect(ramFileOf(vb.pid)).toBe(mem);
    expect(await memTotalMiB(b.id)).toBeLessThanOrEqual(256);
    // its guest works: a computation over 32 MiB of its memory gives the known answer
    const r = await execSync(d, b.id, ['sh', '-c', 'head -c 33554432 /dev/zero | sha256sum']);
    expect(r.out.trim().split(/\s+/)[0]).toBe(crypto.createHash('sha256').update(Buffer.alloc(32 * MiB)).digest('hex'));
    expectIntact(mem, before);

    // and A, still running on the template's pages, grows back and works
    await d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: a.pod, resources: resources(512) });
    expect(await memTotalMiB(a.id)).toBeGreaterThan(400);
    expect((await execSync(d, a.id, ['echo', 'ok'])).out.trim()).toBe('ok');
    expectIntact(mem, before);
  });
});

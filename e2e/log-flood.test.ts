// A guest that floods its logs fills no disk: a VM's console.log (the guest kernel's console) and
// qemu.log (QEMU's stderr) are kept under [vm] log_cap_kib (src/vm/log-bound.ts, one sweep over
// every live VM's logs). Real daemon, real pod VM: a privileged container writes kernel messages
// at emergency level through /dev/kmsg without end (each one printed on the serial console), and
// the pod, a clone booted at 512 MiB and resized between 512 and 256, makes QEMU 7.2 write one
// "Failed to fallocate" line per refused 4 KiB balloon page (the clone's no-punch-hole filter)
// to qemu.log, ~5.9 MB per 256 MiB. Both files are watched while the flood runs: each is cut
// back under the test's small cap again and again while the pod keeps answering execs, and ends
// under it once the flood stops; the VM's directory, logs and all, goes with RemovePodSandbox.
import fs from 'node:fs';
import path from 'node:path';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { containerConfig, execSync, startContainer } from './support/containers';
import { podConfig, type TestDaemon } from './support/daemon';

jest.setTimeout(600_000);

const KiB = 1024;
const MiB = 1024 * KiB;
const CAP_KIB = 64;
/** the sweep's interval (src/vm/log-bound.ts) */
const SWEEP_MS = 5000;
const NOTE = new RegExp(`^\\[podvisor [^\\]]*: (\\d+) bytes cut: this log is bounded to ${CAP_KIB * KiB} bytes\\]\\n`);

let setup: BusyboxDaemon;
let d: TestDaemon;

beforeAll(async () => {
  // pods boot at 512 MiB (the ceiling) and run at 256 by default: 256 MiB ballooned at start
  setup = await startBusyboxDaemon({ templates: true, vmToml: `log_cap_kib = ${CAP_KIB}\nresize_memory_mib = 512\ndefault_memory_mib = 256\n` });
  d = setup.d;
});

afterAll(async () => {
  await setup?.close();
});

const resources = (mib: number) => ({ cpu_period: 100_000, cpu_quota: 100_000, memory_limit_in_bytes: mib * MiB });

/** What one look at a log saw: its size, its cut note (if it starts with one) and the bytes it names. */
function look(file: string): { size: number; note?: string; cut: number } {
  const size = fs.statSync(file).size;
  const head = Buffer.alloc(200);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  const m = NOTE.exec(head.toString('latin1'));
  return { size, note: m?.[0], cut: m ? Number(m[1]) : 0 };
}

interface Seen {
  max: number;
  cuts: number[];
  drops: number;
}

/** Watches `files` every 200 ms until stop(): the largest size seen, and every distinct cut seen. */
function watch(files: string[]): { seen: Record<string, Seen>; stop: () => Promise<Record<string, Seen>> } {
  const seen: Record<string, Seen> = Object.fromEntries(files.map((f) => [path.basename(f), { max: 0, cuts: [], drops: 0 }]));
  const last: Record<string, string | undefined> = {};
  const lastSize: Record<string, number> = {};
  let running = true;
  const done = (async () => {
    while (running) {
      for (const f of files) {
        const s = seen[path.basename(f)];
        const { size, note, cut } = look(f);
        s.max = Math.max(s.max, size);
        if (size < (lastSize[f] ?? 0)) s.drops++; // shrunk since the last look: cut (noted or not)
        lastSize[f] = size;
        if (note && note !== last[f]) s.cuts.push(cut); // a new note (its time stamp): a new cut
        last[f] = note;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return { seen, stop: async () => { running = false; await done; return seen; } };
}

test('a guest flooding its console and QEMU log: both stay bounded, the pod works, the files go with the pod', async () => {
  const cfg = podConfig('flood', path.join(d.logs, 'flood'), { linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' }, privileged: true } } });
  const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  const vmDir = path.join(d.state, 'vm', pod.slice(0, 16));
  const consoleLog = path.join(vmDir, 'console.log');
  const qemuLog = path.join(vmDir, 'qemu.log');
  const st = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true })).info.info).vm;
  expect(st).toMatchObject({ boot: 'clone', memoryMiB: 256, ceiling: { memoryMiB: 512 } }); // a clone, ballooned

  // the flooder: ~1 KB kernel messages at level 0 (printed on the console whatever the loglevel);
  // each echo opens /dev/kmsg anew (its rate limit is per open file)
  const flood = 'mknod /dev/pvkmsg c 1 11 && line=$(head -c 900 /dev/zero | tr "\\0" x) && while :; do echo "<0>flood $line" > /dev/pvkmsg; done';
  const id = await startContainer(d, pod, cfg, containerConfig(setup.image, 'flooder', ['sh', '-c', flood], {
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' }, privileged: true } },
  }));

  const watcher = watch([consoleLog, qemuLog]);
  let seen: Record<string, Seen>;
  const execs: number[] = [];
  try {
    // the balloon flood: shrink 512 → 256 three times (each refuses 65536 pages: a line each)
    for (let i = 0; i < 3; i++) {
      await d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: pod, resources: resources(512) });
      await d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: pod, resources: resources(256) });
      // the pod works through the flood: an exec answers
      const t0 = Date.now();
      expect((await execSync(d, id, ['echo', 'alive'])).out).toBe('alive\n');
      execs.push(Date.now() - t0);
    }
    // the console flood goes on for a few sweeps more: until each file was cut twice (a slow
    // flood under load takes longer), a minute at most
    const until = Date.now() + 60_000;
    const cutTwice = () => Object.values(watcher.seen).every((s) => s.cuts.length >= 2);
    for (let n = 0; Date.now() < until && (n < 3 * SWEEP_MS / 1000 || !cutTwice()); n++) {
      const t0 = Date.now();
      expect((await execSync(d, id, ['echo', 'alive'])).out).toBe('alive\n');
      execs.push(Date.now() - t0);
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    seen = await watcher.stop();
  }
  // the flood stops; one sweep later each file is under the cap
  await d.runtime('StopContainer', { container_id: id, timeout: 5 });
  await new Promise((r) => setTimeout(r, SWEEP_MS + 1000));
  const end = { console: look(consoleLog), qemu: look(qemuLog) };
  console.log(`log flood (cap ${CAP_KIB} KiB): console.log max ${seen['console.log'].max} B, ${seen['console.log'].drops} drops, ${seen['console.log'].cuts.length} cuts (${seen['console.log'].cuts.join(', ')}), end ${end.console.size} B; ` +
    `qemu.log max ${seen['qemu.log'].max} B, ${seen['qemu.log'].drops} drops, ${seen['qemu.log'].cuts.length} cuts (${seen['qemu.log'].cuts.join(', ')}), end ${end.qemu.size} B; exec ms ${execs.join(', ')}`);

  for (const [name, s] of Object.entries(seen)) {
    expect({
      name,
      // the guest wrote far more than the cap (else this test proves nothing) ...
      flooded: s.cuts.reduce((a, b) => a + b, 0) + s.max > 4 * CAP_KIB * KiB,
      // ... and the file was cut back again and again, each time only once over the cap
      cutAgain: s.cuts.length >= 2,
      cutsOverCap: s.cuts.every((c) => c > CAP_KIB * KiB),
    }).toEqual({ name, flooded: true, cutAgain: true, cutsOverCap: true });
  }
  // once the flood stopped, both are under the cap
  expect(end.console.size).toBeLessThanOrEqual(CAP_KIB * KiB);
  expect(end.qemu.size).toBeLessThanOrEqual(CAP_KIB * KiB);

  await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
  await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  expect(fs.existsSync(consoleLog)).toBe(false);
  expect(fs.existsSync(qemuLog)).toBe(false);
  expect(fs.existsSync(vmDir)).toBe(false);
});

// A daemon killed in the middle of a template build: the build's QEMU (detached, it outlives the
// daemon), its work directory on tmpfs and its scratch netns (with the template's taps) would
// stay forever. The next daemon reaps a dead builder's leftovers when it starts
// (TemplateManager.init). Real daemon on a real CNI bridge (so the template has a NIC and a
// netns), SIGKILLed while the template VM boots.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { useBridgeNetwork } from './support/cni';
import { podConfig, retry, TestDaemon } from './support/daemon';
import { claimRunNetwork, type RunNetwork } from './support/netpool';

jest.setTimeout(300_000);

let net: RunNetwork | undefined;
let d: TestDaemon | undefined;
afterAll(async () => {
  await d?.destroy();
  if (net) execFileSync('ip', ['link', 'del', net.bridge], { stdio: 'ignore' });
  await net?.release();
});

/** Running (a zombie nobody reaped yet is not) */
const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};
const netnsNames = () => (fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []);

test("a daemon killed during a template build: the next one reaps the build's QEMU, directory and netns", async () => {
  net = await claimRunNetwork('pvtplk');
  d = await TestDaemon.start({ templates: true });
  await useBridgeNetwork(d, { name: 'tplcrash', bridge: net.bridge, subnet: net.subnet });
  const daemonPid = d.pid!;
  const cfg = podConfig('tplcrash', path.join(d.logs, 'tplcrash'));
  const run = d.runtime('RunPodSandbox', { config: cfg }).catch(() => undefined); // dies with the daemon

  // the build under way: its work dir with QEMU's pid file, and its netns
  const build = await retry(async () => {
    const dir = fs.readdirSync(d!.templateDir).find((n) => n.includes(`.build-${daemonPid}-`));
    const ns = netnsNames().find((n) => n.startsWith(`pvtpl-${daemonPid}-`));
    const pidFile = dir && path.join(d!.templateDir, dir, 'qemu.pid');
    if (!dir || !ns || !pidFile || !fs.existsSync(pidFile)) throw new Error('no template build under way yet');
    return { dir: path.join(d!.templateDir, dir), ns, qemu: Number(fs.readFileSync(pidFile, 'utf8').trim()) };
  }, 120_000, 100);
  await d.killProcess();
  await run;
  expect(alive(build.qemu)).toBe(true); // outlives the daemon (else the check below proves nothing)
  expect(netnsNames()).toContain(build.ns);

  await d.launch();
  await retry(async () => {
    if (alive(build.qemu)) throw new Error(`template QEMU ${build.qemu} still running`);
  }, 10_000, 100);
  expect({ dir: fs.existsSync(build.dir), netns: netnsNames().includes(build.ns) }).toEqual({ dir: false, netns: false });
  expect(d.logLines().some((l) => l.msg === 'reaped an interrupted template build' && l.dir === build.dir && l.qemuPid === build.qemu)).toBe(true);
});

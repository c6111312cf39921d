// `podvisor check` on this machine, as an operator runs it: the real KVM probe (a guest booted
// under /dev/kvm, which crashes on this PVM host), QEMU's own machine and device lists, the
// host's cgroups, devices and CNI config. This machine has no working KVM (shared/machine-facts),
// so the report must say TCG and why; a config pointing at a QEMU that is not there must make
// the check fail with exit code 1.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CLI = path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js');

describe('podvisor check', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-check-'));
    fs.mkdirSync(path.join(dir, 'cni'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const check = (toml: string, ...args: string[]) => {
    const config = path.join(dir, `config-${Math.random().toString(16).slice(2)}.toml`);
    fs.writeFileSync(config, `socket = "${dir}/none/cri.sock"\n${toml}`);
    return spawnSync(process.execPath, [CLI, 'check', '--config', config, ...args], { encoding: 'utf8', timeout: 120_000 });
  };

  test('--json on this machine: TCG with the reason, the host can run pods', () => {
    const r = check(`[cni]\nconf_dir = "${dir}/cni"\n`, '--json');
    const report = JSON.parse(r.stdout);
    expect(report.accelerator.accel).toBe('tcg');
    expect(report.accelerator.reason).toMatch(/\/dev\/kvm/);
    const by = Object.fromEntries(report.checks.map((c: { name: string }) => [c.name, c]));
    expect(by.accelerator).toMatchObject({ level: 'warn', blocking: false });
    expect(by.accelerator.detail).toMatch(/^TCG .*\/dev\/kvm/);
    expect(by.qemu).toMatchObject({ level: 'ok' });
    expect(by.qemu.detail).toMatch(/^QEMU emulator version \d+\.\d+/);
    expect(by['qemu devices']).toMatchObject({ level: 'ok' });
    expect(by['qemu machine microvm']).toMatchObject({ level: 'ok' });
    expect(by.tun).toMatchObject({ level: 'ok' });
    expect(by.cgroup.detail).toMatch(fs.existsSync('/sys/fs/cgroup/cgroup.controllers') ? /^v2/ : /^v1/);
    expect(by['cni config']).toMatchObject({ level: 'warn' });
    expect(by['cni config'].detail).toContain(`${dir}/cni`);
    expect(by['template dir'].detail).toMatch(/tmpfs/);
    expect(by.memory.detail).toMatch(/^\d+ MiB available/);
    expect(by.socket).toMatchObject({ level: 'info' });
    expect(report.ok).toBe(true);
    expect(r.status).toBe(0);
  }, 150_000);

  test('a missing QEMU is blocking: exit 1, the KVM probe not run; human output says so', () => {
    const r = check(`[vm]\nqemu = "${dir}/no-such-qemu"\n`);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^FAIL {2}qemu .*no-such-qemu/m);
    expect(r.stdout).toMatch(/KVM not probed/);
    expect(r.stdout).toMatch(/this host cannot run pods/);
    const j = JSON.parse(check(`[vm]\nqemu = "${dir}/no-such-qemu"\n`, '--json').stdout);
    expect(j.ok).toBe(false);
  }, 60_000);
});

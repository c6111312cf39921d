// Named netns helpers against the real kernel: renaming without a process (what taking a spare
// VM does to its netns) and several `ip` reads in one process.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createNetns, deleteNetns, ipJsonBatch, netnsExists, netnsPath, renameNetns } from '../../network/netns';

const name = (tag: string) => `pvt-${tag}-${crypto.randomBytes(3).toString('hex')}`;
const made: string[] = [];
const ns = async (tag: string) => {
  const n = name(tag);
  made.push(n);
  await createNetns(n);
  return n;
};

afterEach(async () => {
  for (const n of made.splice(0)) await deleteNetns(n);
});

test('renameNetns: the same namespace under the new name, links and all; the old name is gone', async () => {
  const a = await ns('a');
  execFileSync('ip', ['-n', a, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr']);
  const inode = fs.statSync(netnsPath(a)).ino;
  const b = name('b');
  made.push(b);
  await renameNetns(a, b);
  expect(netnsExists(a)).toBe(false);
  expect(fs.existsSync(netnsPath(a))).toBe(false);
  expect(netnsExists(b)).toBe(true);
  expect(fs.statSync(netnsPath(b)).ino).toBe(inode); // nsfs inode = the namespace itself
  expect(execFileSync('ip', ['-n', b, '-o', 'link', 'show', 'tap0'], { encoding: 'utf8' })).toMatch(/tap0/);
  expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(` ${netnsPath(a)} `);
});

test('renameNetns refuses a missing source and an existing target, and changes nothing', async () => {
  const missing = name('gone');
  await expect(renameNetns(missing, name('x'))).rejects.toThrow(/does not exist/);
  const a = await ns('a');
  const b = await ns('b');
  await expect(renameNetns(a, b)).rejects.toThrow(/EEXIST/);
  expect(netnsExists(a)).toBe(true);
  expect(netnsExists(b)).toBe(true);
  expect(fs.statSync(netnsPath(a)).ino).not.toBe(fs.statSync(netnsPath(b)).ino);
});

test('ipJsonBatch: one array per command, in order; a failing command fails the batch', async () => {
  const a = await ns('a');
  const [lo, routes] = await ipJsonBatch(a, ['addr show dev lo', 'route show table all']);
  expect(lo[0].ifname).toBe('lo');
  expect(Array.isArray(routes)).toBe(true);
  await expect(ipJsonBatch(a, ['addr show dev lo', 'addr show dev nosuch0'])).rejects.toThrow(/nosuch0/);
});

test('deleteNetns: no process, the namespace ends and its links with it; a missing one is fine', async () => {
  const a = await ns('d');
  const host = `pvt${crypto.randomBytes(4).toString('hex')}`;
  try {
    // a veth whose host end shows when the namespace (holding the other end) is really gone,
    // and a tap with an ingress qdisc as a pod netns has them
    execFileSync('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', a]);
    execFileSync('ip', ['-n', a, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr']);
    execFileSync('tc', ['-n', a, 'qdisc', 'add', 'dev', 'tap0', 'ingress']);
    await deleteNetns(a);
    expect(fs.existsSync(netnsPath(a))).toBe(false);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(` ${netnsPath(a)} `);
    // the kernel dismantles the namespace in the background
    const hostEnd = () => { try { execFileSync('ip', ['link', 'show', host], { stdio: 'ignore' }); return true; } catch { return false; } };
    for (let i = 0; i < 100 && hostEnd(); i++) await new Promise((r) => setTimeout(r, 50));
    expect(hostEnd()).toBe(false);
    await deleteNetns(a);
  } finally {
    try { execFileSync('ip', ['link', 'del', host], { stdio: 'ignore' }); } catch { /* gone with the namespace */ }
  }
});

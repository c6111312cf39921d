// Descriptor parsing/validation (each bad field), sealing, secrets, classify() of descriptor
// dirs / block devices / plain dirs, and the `podvisor volume` CLI.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { registerVolumeCommands } from '../../src/cli/volume';
import {
  DESCRIPTOR_FILE, loadSealKey, parseDescriptor, readDescriptor, readRbdKey, validateDescriptor, writeDescriptor,
} from '../../storage/descriptor';
import { VolumeManager } from '../../storage/volume-manager';
import { Loops, ownMounts } from './helpers';

const KEY = 'AQBnn1BnAAAAABAAlBRpAZUKmFvb7IZNfX2wXw==';
let tmp: string;
const loops = new Loops();

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-desc-'));
});
afterAll(() => {
  // nothing of ours mounted on the host: not under the scratch dir, not from the loop devices
  const mounts = ownMounts({ dirs: [tmp], sources: loops.devices });
  loops.detachAll();
  fs.rmSync(tmp, { recursive: true, force: true });
  expect(mounts).toEqual([]);
});

const rbd = (over: Record<string, unknown> = {}, top: Record<string, unknown> = {}) => ({
  version: 1, kind: 'rbd', ...top,
  rbd: { monitors: ['10.0.0.1:6789', 'mon-b.example.com', '[fd00::1]:3300'.replace('3300', '6789')], pool: 'rbd', image: 'img', user: 'kube', secret: { keyFile: '/etc/ceph/kube.key' }, ...over },
});

describe('descriptor validation', () => {
  test('valid descriptors get defaults', () => {
    expect(validateDescriptor(rbd())).toEqual({
      version: 1, kind: 'rbd', fsType: 'ext4', mountOptions: [], readOnly: false, format: false, metadata: {},
      rbd: { monitors: ['10.0.0.1:6789', 'mon-b.example.com:6789', '[fd00::1]:6789'], pool: 'rbd', image: 'img', user: 'kube', secret: { keyFile: '/etc/ceph/kube.key' } },
    });
    expect(validateDescriptor({ version: 1, kind: 'nfs', nfs: { server: 'nfs.example.com', export: '/srv/x' } }))
      .toMatchObject({ fsType: 'nfs', nfs: { version: '4.1', server: 'nfs.example.com', export: '/srv/x' } });
    expect((validateDescriptor({ version: 1, kind: 'nfs', nfs: { server: '[fd00::2]', export: '/', version: '3' } }) as any).nfs).toEqual({ server: 'fd00::2', export: '/', version: '3' });
    expect(validateDescriptor({ version: 1, kind: 'block', block: { device: '/dev/disk/by-id/x' }, mountOptions: ['ro'] })).toMatchObject({ readOnly: true });
    expect((validateDescriptor(rbd({ user: 'client.kube' })) as any).rbd.user).toBe('kube');
  });

  test.each([
    ['not an object', [], /\(root\)/],
    ['version missing', { kind: 'nfs' }, /version: unsupported descriptor version undefined/],
    ['version 2', { version: 2, kind: 'nfs' }, /version: unsupported descriptor version 2/],
    ['version as string', { version: '1', kind: 'nfs' }, /version/],
    ['kind', { version: 1, kind: 'iscsi' }, /kind: must be/],
    ['unknown field', { ...rbd(), color: 'red' }, /color: unknown field/],
    ['inline key (top)', { ...rbd(), key: KEY }, /key: keys and secrets must never be inline/],
    ['inline key (rbd)', rbd({ key: KEY }), /rbd\.key: keys and secrets must never be inline/],
    ['inline key (secret)', rbd({ secret: { key: KEY } }), /rbd\.secret\.key: keys and secrets must never be inline/],
    ['kind object missing', { version: 1, kind: 'rbd' }, /rbd: kind "rbd" needs/],
    ['readOnly type', { ...rbd(), readOnly: 'yes' }, /readOnly: must be a boolean/],
    ['format type', { ...rbd(), format: 1 }, /format: must be a boolean/],
    ['format + readOnly', { ...rbd(), format: true, readOnly: true }, /format: a read-only volume cannot be formatted/],
    ['format squashfs', { ...rbd(), format: true, fsType: 'squashfs' }, /format: cannot format as "squashfs"/],
    ['fsType', { ...rbd(), fsType: 'ntfs' }, /fsType: must be one of/],
    ['mountOptions type', { ...rbd(), mountOptions: 'noatime' }, /mountOptions: must be an array/],
    ['mount option with comma', { ...rbd(), mountOptions: ['noatime,nodev'] }, /mountOptions\[0\]/],
    ['mount option with space', { ...rbd(), mountOptions: ['a b'] }, /mountOptions\[0\]/],
    ['rw with readOnly', { ...rbd(), readOnly: true, mountOptions: ['rw'] }, /"rw" contradicts readOnly/],
    ['metadata value', { ...rbd(), metadata: { a: 1 } }, /metadata\.a: must be a string/],
    ['monitors empty', rbd({ monitors: [] }), /rbd\.monitors: must be a non-empty array/],
    ['monitors string', rbd({ monitors: '10.0.0.1' }), /rbd\.monitors/],
    ['monitor bad host', rbd({ monitors: ['bad host'] }), /rbd\.monitors\[0\]: invalid monitor host/],
    ['monitor bad ip', rbd({ monitors: ['10.0.0.300'] }), /rbd\.monitors\[0\]: invalid monitor host/],
    ['monitor bad port', rbd({ monitors: ['10.0.0.1:99999'] }), /rbd\.monitors\[0\]: invalid port/],
    ['monitor v2', rbd({ monitors: ['v2:10.0.0.1:3300'] }), /msgr v2/],
    ['pool', rbd({ pool: 'a/b' }), /rbd\.pool: invalid value/],
    ['image', rbd({ image: 'img@snap' }), /rbd\.image: invalid value/],
    ['image empty', rbd({ image: '' }), /rbd\.image: must be 1\.\.255/],
    ['user', rbd({ user: 'a b' }), /rbd\.user/],
    ['secret missing', rbd({ secret: undefined }), /rbd\.secret: must be/],
    ['secret empty', rbd({ secret: {} }), /rbd\.secret: must be/],
    ['secret relative path', rbd({ secret: { keyFile: 'kube.key' } }), /rbd\.secret\.keyFile: invalid value/],
    ['secret path with ..', rbd({ secret: { keyFile: '/etc/../root/k' } }), /rbd\.secret\.keyFile: path .* is not normalised/],
    ['block device not under /dev', { version: 1, kind: 'block', block: { device: '/tmp/x' } }, /block\.device: must be a device path under \/dev\//],
    ['block device relative', { version: 1, kind: 'block', block: { device: 'sda' } }, /block\.device/],
    ['block extra field', { version: 1, kind: 'block', block: { device: '/dev/sda', cache: 'none' } }, /block\.cache: unknown field/],
    ['nfs server with space', { version: 1, kind: 'nfs', nfs: { server: 'a b', export: '/x' } }, /nfs\.server/],
    ['nfs server injection', { version: 1, kind: 'nfs', nfs: { server: 'a,vers=2', export: '/x' } }, /nfs\.server/],
    ['nfs server bad ip', { version: 1, kind: 'nfs', nfs: { server: '1.2.3.999', export: '/x' } }, /nfs\.server: invalid server/],
    ['nfs export relative', { version: 1, kind: 'nfs', nfs: { server: 'h', export: 'x' } }, /nfs\.export/],
    ['nfs export comma', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x,y' } }, /nfs\.export/],
    ['nfs export space', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x y' } }, /nfs\.export: must not contain white space/],
    ['nfs version number', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x', version: 4.1 } }, /nfs\.version: must be one of/],
    ['nfs version 2', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x', version: '2' } }, /nfs\.version/],
    ['nfs vers= option', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x' }, mountOptions: ['vers=3'] }, /set by podvisor/],
    ['nfs format', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x' }, format: true }, /format: an NFS export cannot be formatted/],
    ['nfs fsType', { version: 1, kind: 'nfs', nfs: { server: 'h', export: '/x' }, fsType: 'ext4' }, /fsType: an NFS volume has no fsType/],
  ])('%s', (_name, raw, re) => {
    let err: any;
    try {
      validateDescriptor(raw);
    } catch (e) {
      err = e;
    }
    expect(err?.code).toBe('invalid_argument');
    expect(err.message).toMatch(re);
  });

  test('bad JSON', () => {
    expect(() => parseDescriptor('{"version": 1,')).toThrow(/not valid JSON/);
  });
});

describe('descriptor files, sealing and secrets', () => {
  test('write/read round trip, seal bound to key and directory', async () => {
    const key = await loadSealKey(path.join(tmp, 'seal.key'));
    expect(fs.statSync(path.join(tmp, 'seal.key')).mode & 0o777).toBe(0o600);
    const d1 = path.join(tmp, 'v1');
    const d2 = path.join(tmp, 'v2');
    fs.mkdirSync(d1);
    fs.mkdirSync(d2);
    await writeDescriptor(d1, rbd(), key);
    expect(fs.statSync(path.join(d1, DESCRIPTOR_FILE)).mode & 0o777).toBe(0o644);
    expect(await readDescriptor(d1, { sealKey: key })).toMatchObject({ kind: 'rbd' });
    // copied elsewhere (e.g. by a pod into a writable dir): refused
    fs.copyFileSync(path.join(d1, DESCRIPTOR_FILE), path.join(d2, DESCRIPTOR_FILE));
    await expect(readDescriptor(d2, { sealKey: key })).rejects.toMatchObject({ code: 'permission_denied' });
    // hand-written (unsealed): refused when sealing is on, accepted when off
    fs.writeFileSync(path.join(d2, DESCRIPTOR_FILE), JSON.stringify(rbd()));
    await expect(readDescriptor(d2, { sealKey: key })).rejects.toMatchObject({ message: expect.stringMatching(/not sealed/) });
    expect(await readDescriptor(d2)).toMatchObject({ kind: 'rbd' });
    // tampered after sealing
    const j = JSON.parse(fs.readFileSync(path.join(d1, DESCRIPTOR_FILE), 'utf8'));
    j.rbd.image = 'other';
    fs.writeFileSync(path.join(d1, DESCRIPTOR_FILE), JSON.stringify(j));
    await expect(readDescriptor(d1, { sealKey: key })).rejects.toMatchObject({ code: 'permission_denied' });
    // a symlinked descriptor is refused; no descriptor → undefined
    const d3 = path.join(tmp, 'v3');
    fs.mkdirSync(d3);
    fs.symlinkSync(path.join(d2, DESCRIPTOR_FILE), path.join(d3, DESCRIPTOR_FILE));
    await expect(readDescriptor(d3)).rejects.toMatchObject({ message: expect.stringMatching(/symlink/) });
    expect(await readDescriptor(tmp)).toBeUndefined();
  });

  test('rbd keys: bare key, keyring, K8s secret file; loose modes refused', async () => {
    const f = (name: string, text: string, mode = 0o600) => {
      const p = path.join(tmp, name);
      fs.writeFileSync(p, text, { mode });
      fs.chmodSync(p, mode);
      return p;
    };
    expect(await readRbdKey({ keyFile: f('bare.key', `${KEY}\n`) }, 'kube')).toBe(KEY);
    expect(await readRbdKey({ keyFile: f('ring', `[client.admin]\n\tkey = AAAA${KEY.slice(4)}\n[client.kube]\n\tkey = ${KEY}\n`) }, 'kube')).toBe(KEY);
    const secret = { apiVersion: 'v1', kind: 'Secret', data: { userKey: Buffer.from(KEY).toString('base64') } };
    expect(await readRbdKey({ secretFile: f('secret.json', JSON.stringify(secret)) }, 'kube')).toBe(KEY);
    expect(await readRbdKey({ secretFile: f('secret2.json', JSON.stringify({ stringData: { k: KEY } })), field: 'k' }, 'kube')).toBe(KEY);
    await expect(readRbdKey({ keyFile: f('loose.key', KEY, 0o644) }, 'kube')).rejects.toMatchObject({ code: 'permission_denied' });
    await expect(readRbdKey({ keyFile: path.join(tmp, 'none.key') }, 'kube')).rejects.toMatchObject({ code: 'not_found' });
    await expect(readRbdKey({ keyFile: f('junk.key', 'hello world') }, 'kube')).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(readRbdKey({ secretFile: f('nofield.json', '{"data":{}}') }, 'kube')).rejects.toMatchObject({ message: expect.stringMatching(/no "userKey"/) });
  });
});

describe('classify()', () => {
  let mgr: VolumeManager;
  let key: Buffer;
  beforeAll(async () => {
    mgr = await VolumeManager.create({ stateDir: path.join(tmp, 'state'), sealKeyFile: path.join(tmp, 'cls-seal.key') });
    key = await loadSealKey(path.join(tmp, 'cls-seal.key'));
  });

  test('plain dirs, files and missing paths stay on the 9p path', async () => {
    const plain = path.join(tmp, 'plain');
    fs.mkdirSync(plain);
    fs.writeFileSync(path.join(plain, 'data'), 'x');
    expect(await mgr.classify(plain)).toBeNull();
    expect(await mgr.classify(path.join(plain, 'data'))).toBeNull();
    expect(await mgr.classify(path.join(tmp, 'missing'))).toBeNull();
    expect(await mgr.classify('/dev/null')).toBeNull(); // a char device is not a volume
  });

  test('descriptor dirs become volumes with a stable key per volume', async () => {
    const dev = loops.create(4);
    const a = path.join(tmp, 'blk-a');
    const b = path.join(tmp, 'blk-b');
    fs.mkdirSync(a);
    fs.mkdirSync(b);
    await writeDescriptor(a, { version: 1, kind: 'block', block: { device: dev } }, key);
    await writeDescriptor(b, { version: 1, kind: 'block', block: { device: dev }, mountOptions: ['noatime'] }, key);
    const sa = await mgr.classify(a);
    const sb = await mgr.classify(b);
    expect(sa).toMatchObject({ hostPath: a, raw: false, descriptor: { kind: 'block', block: { device: dev } } });
    expect(sa!.key).toMatch(/^block-[0-9a-f]{16}$/);
    expect(sb!.key).toBe(sa!.key); // same device, same attachment

    const nfsDir = path.join(tmp, 'nfs');
    fs.mkdirSync(nfsDir);
    await writeDescriptor(nfsDir, { version: 1, kind: 'nfs', nfs: { server: '10.0.0.9', export: '/srv' } }, key);
    expect(await mgr.classify(nfsDir)).toMatchObject({ descriptor: { kind: 'nfs' }, key: expect.stringMatching(/^nfs-/) });
  });

  test('a block device host path is a raw passthrough', async () => {
    const dev = loops.create(4);
    expect(await mgr.classify(dev)).toMatchObject({ raw: true, descriptor: { kind: 'block', block: { device: dev } } });
  });

  test('bad descriptors fail loudly instead of falling back to 9p', async () => {
    const d = path.join(tmp, 'bad');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, DESCRIPTOR_FILE), '{"version": 1, "kind": "block", "block": {"device": "/dev/sda"}}');
    await expect(mgr.classify(d)).rejects.toMatchObject({ code: 'permission_denied' }); // unsealed
    fs.writeFileSync(path.join(d, DESCRIPTOR_FILE), '{"version": 3}');
    await expect(mgr.classify(d)).rejects.toMatchObject({ code: 'invalid_argument' });
  });
});

describe('podvisor volume CLI', () => {
  const run = async (...args: string[]) => {
    const out: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation((s: any) => { out.push(String(s)); return true; });
    try {
      const p = new Command('podvisor').exitOverride();
      registerVolumeCommands(p);
      await p.parseAsync(['node', 'podvisor', ...args]);
    } finally {
      spy.mockRestore();
    }
    return out.join('');
  };

  test('add, ls, rm', async () => {
    const root = path.join(tmp, 'cli-root');
    const dev = loops.create(4);
    const d1 = path.join(tmp, 'cli-blk');
    const d2 = path.join(tmp, 'cli-nfs');
    expect(await run('volume', 'add', d1, '--root', root, '--block', dev, '--fs-type', 'xfs', '--format', '--mount-option', 'noatime')).toMatch(/block volume/);
    await run('volume', 'add', d2, '--root', root, '--nfs', 'nfs.example.com:/exports/a', '--nfs-version', '3', '--readonly');
    const rows = JSON.parse(await run('volume', 'ls', '--root', root, '--json'));
    expect(rows).toEqual(expect.arrayContaining([
      expect.objectContaining({ dir: d1, status: 'ok', kind: 'block', source: dev, fsType: 'xfs' }),
      expect.objectContaining({ dir: d2, status: 'ok', kind: 'nfs', source: 'nfs.example.com:/exports/a', readOnly: true }),
    ]));
    // what the CLI wrote is what the daemon accepts (same seal key under --root)
    const mgr = await VolumeManager.create({ stateDir: path.join(root, 'storage') });
    expect(await mgr.classify(d1)).toMatchObject({ descriptor: { kind: 'block', fsType: 'xfs', format: true, mountOptions: ['noatime'] } });
    await run('volume', 'rm', d1, '--root', root);
    expect(fs.existsSync(path.join(d1, DESCRIPTOR_FILE))).toBe(false);
    expect(JSON.parse(await run('volume', 'ls', '--root', root, '--json')).map((r: any) => r.dir)).toEqual([d2]);
  });
});

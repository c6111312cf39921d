// The NFS test server itself (guest-side mounts need a booted pod VM: e2e): ganesha answers
// NFSv4 and v3 over the private veth, its export is the temp dir, and everything is cleaned up.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { nfsAvailable, NfsServer, startNfs } from '../support/nfs';
import { ownMounts } from './helpers';

jest.setTimeout(60_000);
const describeNfs = nfsAvailable() ? describe : describe.skip;

describeNfs('test NFS server (ganesha + rpcbind in private netns)', () => {
  let nfs: NfsServer;
  const netns = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]);
  /** what this server could leak into the host's mount table: under its dir, from its address, its private /run */
  const mounts = () => ownMounts({ dirs: [nfs.dir], sources: [`${nfs.address}:`, 'pvnfs-run'] });
  beforeAll(async () => {
    nfs = await startNfs();
  });
  afterAll(async () => {
    if (!nfs) return;
    const during = mounts();
    await nfs.stop();
    // its two namespaces are gone (others' namespaces come and go meanwhile: not ours to judge)
    expect(netns().filter((n) => n === nfs.serverNetns || n === nfs.clientNetns)).toEqual([]);
    expect(fs.existsSync(nfs.dir)).toBe(false);
    expect(during).toEqual([]);
    expect(mounts()).toEqual([]);
  });

  test('answers NFS v4 and v3 from the client namespace only', () => {
    const rpc = (...a: string[]) => execFileSync('ip', ['netns', 'exec', nfs.clientNetns, 'rpcinfo', ...a], { encoding: 'utf8' });
    expect(rpc('-t', nfs.address, 'nfs', '4')).toMatch(/version 4 ready and waiting/);
    expect(rpc('-t', nfs.address, 'nfs', '3')).toMatch(/version 3 ready and waiting/);
    expect(rpc('-t', nfs.address, 'mountd', '3')).toMatch(/ready and waiting/);
    // not reachable from the host's namespace
    expect(() => execFileSync('rpcinfo', ['-t', nfs.address, 'nfs', '4'], { stdio: 'ignore', timeout: 5000 })).toThrow();
    expect(netns()).toEqual(expect.arrayContaining([nfs.serverNetns, nfs.clientNetns])); // the check below can fail
    expect(mounts()).toEqual([]);
  });
});

// The NFS test server itself (guest-side mounts need a booted pod VM: e2e): ganesha answers
// NFSv4 and v3 over the private veth, its export is the temp dir, and everything is cleaned up.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { nfsAvailable, NfsServer, startNfs } from '../support/nfs';
import { mountPoints } from './helpers';

jest.setTimeout(60_000);
const describeNfs = nfsAvailable() ? describe : describe.skip;

describeNfs('test NFS server (ganesha + rpcbind in private netns)', () => {
  let nfs: NfsServer;
  const mountsBefore = mountPoints();
  const netnsBefore = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  beforeAll(async () => {
    nfs = await startNfs();
  });
  afterAll(async () => {
    await nfs?.stop();
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).toBe(netnsBefore);
    expect(fs.existsSync(nfs.dir)).toBe(false);
    expect(mountPoints()).toEqual(mountsBefore);
  });

  test('answers NFS v4 and v3 from the client namespace only', () => {
    const rpc = (...a: string[]) => execFileSync('ip', ['netns', 'exec', nfs.clientNetns, 'rpcinfo', ...a], { encoding: 'utf8' });
    expect(rpc('-t', nfs.address, 'nfs', '4')).toMatch(/version 4 ready and waiting/);
    expect(rpc('-t', nfs.address, 'nfs', '3')).toMatch(/version 3 ready and waiting/);
    expect(rpc('-t', nfs.address, 'mountd', '3')).toMatch(/ready and waiting/);
    // not reachable from the host's namespace
    expect(() => execFileSync('rpcinfo', ['-t', nfs.address, 'nfs', '4'], { stdio: 'ignore', timeout: 5000 })).toThrow();
    expect(mountPoints()).toEqual(mountsBefore);
  });
});

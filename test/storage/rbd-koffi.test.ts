// librados/librbd through koffi against a real single-node Ceph: image lifecycle and errors.
import { execFileSync } from 'node:child_process';
import { withRbd } from '../../storage/ceph/rbd';
import { RadosCluster } from '../../storage/ceph/rados';
import { StorageError } from '../../storage/errors';
import { CephCluster, cephAvailable, freePort, startCeph } from '../support/ceph';

const describeCeph = cephAvailable() ? describe : describe.skip;
jest.setTimeout(120_000);

describeCeph('RBD image management through koffi', () => {
  let ceph: CephCluster;
  const opts = () => ({ monitors: [ceph.monitor], user: ceph.user, key: ceph.userKey, timeoutSec: 5 });

  beforeAll(async () => {
    ceph = await startCeph();
  });
  afterAll(async () => {
    await ceph?.stop();
  });

  test('create, info, list, resize, remove', async () => {
    const ref = { pool: ceph.pool, image: 'koffi-img' };
    await withRbd(opts(), async (rbd) => {
      await rbd.create(ref, 64 << 20);
      const info = await rbd.info(ref);
      expect(info.size).toBe(64 << 20);
      expect(info.order).toBe(22);
      expect(info.features & 1n).toBe(1n);
      expect(await rbd.list(ceph.pool)).toContain('koffi-img');
      await rbd.resize(ref, 128 << 20);
      expect((await rbd.info(ref)).size).toBe(128 << 20);
      await expect(rbd.resize(ref, 32 << 20)).rejects.toMatchObject({ code: 'invalid_argument' });
      await rbd.remove(ref);
      expect(await rbd.list(ceph.pool)).not.toContain('koffi-img');
    });
    // the CLI agrees: gone
    expect(await ceph.rbd(['ls', ceph.pool])).not.toContain('koffi-img');
  });

  test('errors map to gRPC codes', async () => {
    await withRbd(opts(), async (rbd) => {
      const missing = { pool: ceph.pool, image: 'does-not-exist' };
      await expect(rbd.info(missing)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rbd.remove(missing)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rbd.resize(missing, 1 << 20)).rejects.toMatchObject({ code: 'not_found' });
      await rbd.create({ pool: ceph.pool, image: 'dup' }, 4 << 20);
      const dup = await rbd.create({ pool: ceph.pool, image: 'dup' }, 4 << 20).catch((e) => e);
      expect(dup).toBeInstanceOf(StorageError);
      expect(dup.code).toBe('already_exists');
      expect(dup.message).toMatch(/dup.*already exists/);
      await rbd.remove({ pool: ceph.pool, image: 'dup' });
      await expect(rbd.list('no-such-pool')).rejects.toMatchObject({ code: 'not_found' });
      await expect(rbd.create({ pool: ceph.pool, image: 'bad/name' }, 1 << 20)).rejects.toMatchObject({ code: 'invalid_argument' });
    });
  });

  test('a bad key fails fast with PERMISSION_DENIED', async () => {
    const bad = execFileSync('ceph-authtool', ['--gen-print-key'], { encoding: 'utf8' }).trim(); // well-formed, wrong
    const t = Date.now();
    const err = await RadosCluster.connect({ ...opts(), key: bad }).catch((e) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.code).toBe('permission_denied');
    expect(Date.now() - t).toBeLessThan(8000);
    // a malformed key is refused before any network traffic
    const garbage = await RadosCluster.connect({ ...opts(), key: Buffer.alloc(28, 7).toString('base64') }).catch((e) => e);
    expect(garbage.code).toBe('invalid_argument');
    expect(garbage.message).toMatch(/cephx key/);
  });

  test('a wrong monitor fails within the timeout with UNAVAILABLE', async () => {
    const port = await freePort(); // nothing listens there
    const t = Date.now();
    const err = await RadosCluster.connect({ ...opts(), monitors: [`127.0.0.1:${port}`], timeoutSec: 3 }).catch((e) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect(err.code).toBe('unavailable');
    expect(err.message).toMatch(/timed out|monitors/);
    expect(Date.now() - t).toBeLessThan(10_000);
  });

  test('a user without caps on the pool gets PERMISSION_DENIED', async () => {
    const key = (await ceph.ceph(['auth', 'get-or-create-key', 'client.nocaps', 'mon', 'allow r'])).trim();
    await withRbd({ ...opts(), user: 'nocaps', key }, async (rbd) => {
      await expect(rbd.create({ pool: ceph.pool, image: 'x' }, 1 << 20)).rejects.toMatchObject({ code: 'permission_denied' });
    });
  });
});

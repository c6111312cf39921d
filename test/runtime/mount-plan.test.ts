// checkMounts refuses what CRI calls invalid before any side effect: here, the recursive
// read-only mounts critest's "should reject a recursive readonly mount" specs send.
import { checkMounts } from '../../src/runtime/mount-plan';
import { hasCode } from '../../src/util/errors';

const none = () => undefined;
const mount = (extra: Record<string, unknown>) => ({ mounts: [{ container_path: '/data', host_path: '/tmp', ...extra }] });

describe('checkMounts', () => {
  test.each([
    ['readonly false', { recursive_read_only: true, readonly: false }, /needs readonly/],
    ['host-to-container propagation', { recursive_read_only: true, readonly: true, propagation: 'PROPAGATION_HOST_TO_CONTAINER' }, /needs PROPAGATION_PRIVATE/],
    ['bidirectional propagation', { recursive_read_only: true, readonly: true, propagation: 'PROPAGATION_BIDIRECTIONAL' }, /needs PROPAGATION_PRIVATE/],
  ])('refuses a recursive read-only mount with %s', (_what, extra, message) => {
    let err: unknown;
    try {
      checkMounts(mount(extra) as never, none);
    } catch (e) {
      err = e;
    }
    expect(hasCode(err, 'invalid_argument')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  test('accepts a recursive read-only mount that is read-only and private', () => {
    expect(checkMounts(mount({ recursive_read_only: true, readonly: true, propagation: 'PROPAGATION_PRIVATE' }) as never, none).imageVolumes).toEqual([]);
    expect(checkMounts(mount({ recursive_read_only: true, readonly: true }) as never, none).imageVolumes).toEqual([]);
  });
});

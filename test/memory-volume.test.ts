// Recognising kubelet's memory-backed emptyDir volumes from the host's mount table (no VM).
import { findMemoryVolume, guestName, parseMountinfo } from '../src/runtime/memory-volume';

const UID = '0b6f-uid';
const K = '/var/lib/kubelet/pods';
const mountinfo = [
  '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
  `300 22 0:91 / ${K}/${UID}/volumes/kubernetes.io~empty-dir/cache rw,relatime shared:150 - tmpfs tmpfs rw,size=10240k`,
  `301 22 0:92 / ${K}/${UID}/volumes/kubernetes.io~secret/token rw,relatime - tmpfs tmpfs rw,size=4096k`,
  `302 22 0:91 /sub/dir ${K}/${UID}/volume-subpaths/cache/app/0 rw,relatime - tmpfs tmpfs rw,size=10240k`,
  `303 22 0:93 / ${K}/other-uid/volumes/kubernetes.io~empty-dir/cache rw,relatime - tmpfs tmpfs rw,size=1024k`,
  `304 22 0:94 / ${K}/${UID}/volumes/kubernetes.io~empty-dir/disk\\040backed rw,relatime - ext4 /dev/vdb rw`,
].join('\n');
const mounts = parseMountinfo(mountinfo);

describe('memory-backed emptyDir recognition', () => {
  it('parses mountinfo, escapes included', () => {
    expect(mounts).toHaveLength(6);
    expect(mounts[1]).toEqual({ dev: '0:91', root: '/', mountPoint: `${K}/${UID}/volumes/kubernetes.io~empty-dir/cache`, fstype: 'tmpfs' });
    expect(mounts[5].mountPoint).toBe(`${K}/${UID}/volumes/kubernetes.io~empty-dir/disk backed`);
  });

  it("finds the pod's own emptyDir tmpfs, whole or through a subPath bind", () => {
    const root = `${K}/${UID}/volumes/kubernetes.io~empty-dir/cache`;
    expect(findMemoryVolume(root, UID, mounts)).toEqual({ hostRoot: root, subPath: '' });
    expect(findMemoryVolume(`${K}/${UID}/volume-subpaths/cache/app/0`, UID, mounts)).toEqual({ hostRoot: root, subPath: 'sub/dir' });
    expect(findMemoryVolume(`${root}/inner`, UID, mounts)).toEqual({ hostRoot: root, subPath: 'inner' });
  });

  it('leaves everything else to the 9p share', () => {
    // a secret volume is a tmpfs too, but kubelet writes its contents on the host
    expect(findMemoryVolume(`${K}/${UID}/volumes/kubernetes.io~secret/token`, UID, mounts)).toBeUndefined();
    // another pod's emptyDir, named by this pod's container
    expect(findMemoryVolume(`${K}/other-uid/volumes/kubernetes.io~empty-dir/cache`, UID, mounts)).toBeUndefined();
    // a disk-backed emptyDir, and a plain host directory
    expect(findMemoryVolume(`${K}/${UID}/volumes/kubernetes.io~empty-dir/disk backed`, UID, mounts)).toBeUndefined();
    expect(findMemoryVolume('/srv/data', UID, mounts)).toBeUndefined();
    expect(findMemoryVolume(`${K}/${UID}/volumes/kubernetes.io~empty-dir/cache`, '', mounts)).toBeUndefined();
  });

  it('gives each volume a stable guest name the agent accepts', () => {
    const a = guestName(`${K}/${UID}/volumes/kubernetes.io~empty-dir/cache`);
    expect(a).toBe(guestName(`${K}/${UID}/volumes/kubernetes.io~empty-dir/cache`));
    expect(a).not.toBe(guestName(`${K}/other/volumes/kubernetes.io~empty-dir/cache`));
    expect(a).toMatch(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/);
    expect(a).toMatch(/cache$/);
  });
});

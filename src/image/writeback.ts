// Early writeback: a file that will be fsynced once complete (the erofs image) has its
// dirty pages sent to the disk while it is still being written, so that the fsync that makes
// it durable before it is published has little left to wait for. The fsync stays: this is
// only a hint to the kernel.
const SYNC_FILE_RANGE_WRITE = 2;
let syncFileRange: ((fd: number, off: number, n: number, flags: number, cb: (err: unknown, r: number) => void) => void) | null | undefined;

/**
 * Starts writing the file's dirty pages back to disk without waiting for it
 * (sync_file_range(SYNC_FILE_RANGE_WRITE) on the whole file, through koffi on a libuv
 * thread). Errors are ignored (the fsync reports real ones); a no-op where koffi or the call
 * is unavailable. Resolves when the call returned (the writeback goes on). Unlike fdatasync,
 * it does not wait for pages already under writeback, so writers are not held up.
 */
export function startWriteback(fd: number): Promise<void> {
  if (syncFileRange === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const koffi = require('koffi');
      syncFileRange = koffi.load('libc.so.6').func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)').async;
    } catch {
      syncFileRange = null;
    }
  }
  const f = syncFileRange;
  if (!f) return Promise.resolve();
  return new Promise((resolve) => f(fd, 0, 0, SYNC_FILE_RANGE_WRITE, () => resolve()));
}

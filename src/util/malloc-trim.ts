// Hands the C heap's free memory back to the kernel (glibc malloc_trim(0) through koffi).
// Node's native allocations (zlib streams, Buffers, worker isolates, the image build's
// structures) go through glibc malloc, which keeps freed memory in its arenas, one per thread
// that allocated: after the start-up warm-up of the image build path and after a pull, ~35 MB
// of freed memory stayed in the daemon's resident set until the next allocation reused it
// (bench/README, issue 15). Trimming walks every arena and madvises its free pages away; it
// costs a few ms of this thread (3–15 ms measured after the warm-up), so it is called only when
// a burst of work has ended, never per request. Not glibc (musl) or no koffi: a no-op.

// Bound when this module is loaded, not at the first trim: that one runs from a timer, which in
// a test process can fire after the test's module registry is gone.
const trim: ((pad: number) => number) | null = (() => {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi');
    return koffi.load('libc.so.6').func('int malloc_trim(size_t pad)') as (pad: number) => number;
  } catch {
    return null;
  }
})();

/** malloc_trim(0); true when it ran. Errors are swallowed: this only ever saves memory. */
export function releaseFreedMemory(): boolean {
  if (!trim) return false;
  try {
    trim(0);
    return true;
  } catch {
    return false;
  }
}

// A counting semaphore for async code: at most `limit` holders at once, the rest wait in FIFO
// order. Written here (a dozen lines) rather than taken from a package: nothing more is needed.

/** Returns `acquire`: resolves with a `release` function (safe to call twice) once a slot is free. */
export function semaphore(limit: number): () => Promise<() => void> {
  let active = 0;
  const waiting: (() => void)[] = [];
  const release = () => {
    active--;
    waiting.shift()?.();
  };
  return async () => {
    while (active >= limit) await new Promise<void>((r) => waiting.push(r));
    active++;
    let done = false;
    return () => {
      if (!done) {
        done = true;
        release();
      }
    };
  };
}

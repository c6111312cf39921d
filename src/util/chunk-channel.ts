// A bounded byte channel between one producer and one consumer (a download feeding a layer
// reader): back pressure by queued bytes, batching of small network chunks, and early close by
// the consumer. Node streams would do the same with more machinery per chunk; this is the part
// the image pull needs, measured (bench/pull.sh).
/**
 * A bounded queue of chunks from one producer (a download) to one consumer (a layer
 * reader): push() waits while more than `max` bytes are queued, and drops chunks once the
 * consumer has stopped; the consumer sees end() as the end of the stream and fail(e) as an
 * error.
 */
export class ChunkChannel implements AsyncIterable<Buffer> {
  private q: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private error: unknown = undefined;
  private closed = false;
  private wakeReader: (() => void) | undefined;
  private wakeWriter: (() => void) | undefined;

  constructor(
    private readonly max: number,
    private readonly batch = 1 << 20,
    /** Join queued chunks into pieces of at least `batch` bytes (else: hand them out as they are). */
    private readonly join = true,
  ) {}

  async push(c: Buffer): Promise<void> {
    if (this.closed) return;
    this.q.push(c);
    this.bytes += c.length;
    if (this.bytes >= this.batch) this.wake('reader');
    while (this.bytes > this.max && !this.closed) await new Promise<void>((r) => (this.wakeWriter = r));
  }

  end(): void {
    this.ended = true;
    this.wake('reader');
  }

  /** The consumer is gone: pending and later push() calls return at once, dropping the chunk. */
  close(): void {
    this.closed = true;
    this.q = [];
    this.wake('writer');
  }

  fail(e: unknown): void {
    this.error = e ?? new Error('download failed');
    this.wake('reader');
  }

  private wake(who: 'reader' | 'writer'): void {
    const w = who === 'reader' ? this.wakeReader : this.wakeWriter;
    if (who === 'reader') this.wakeReader = undefined;
    else this.wakeWriter = undefined;
    w?.();
  }

  /**
   * Yields the queued chunks joined into pieces of at least `batch` bytes (except the last):
   * consumers such as zlib pay per call, and network chunks are small. Without `join`, the
   * chunks themselves, one by one.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        if (!this.join && this.q.length > 0) {
          const c = this.q.shift()!;
          this.bytes -= c.length;
          this.wake('writer');
          yield c;
          continue;
        }
        if (this.q.length > 0 && (this.bytes >= this.batch || this.ended || this.error !== undefined)) {
          const parts = this.q;
          this.q = [];
          const piece = Buffer.concat(parts, this.bytes);
          this.bytes = 0;
          this.wake('writer');
          yield piece;
          continue;
        }
        if (this.error !== undefined) throw this.error;
        if (this.ended) return;
        await new Promise<void>((r) => (this.wakeReader = r));
      }
    } finally {
      this.closed = true;
      this.q = [];
      this.wake('writer');
    }
  }
}

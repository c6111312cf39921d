// A VM's console and QEMU logs are files a guest can make grow without end: its kernel's console
// (a compromised guest prints forever) and QEMU's own stderr (QEMU 7.2 writes a line for every
// 4 KiB page of a balloon discard that a clone's no-punch-hole filter refuses, and the guest
// drives its balloon). Both are written with O_APPEND (console.log through `append=on`, qemu.log
// through the descriptor the daemon opens), so cutting a file to zero keeps later writes at its
// start, not at a hole past its old end. The bound is checked every few seconds by one sweep over
// every live VM's logs (one timer for the daemon, none while no VM runs, rather than one per
// VM): what a guest can fill is the cap plus what it writes in one interval, never the disk.
// What was cut is noted in the file itself.
import * as fs from 'node:fs';

const CHECK_INTERVAL_MS = 5000;

/** Cuts `file` to a one-line note when it is larger than `capBytes`; true when it did. */
export function boundLog(file: string, capBytes: number): boolean {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return false; // not there (yet, or any more)
  }
  if (size <= capBytes) return false;
  // the note goes at byte 0 through a descriptor of our own (not appended): a writer as fast as
  // QEMU's balloon refusals appends lines between the cut and the note (tens of KB when this
  // thread is preempted under load), and the note must still be the log's first line; it
  // overwrites the start of what came in between, which the note accounts for as cut
  const fd = fs.openSync(file, 'r+');
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `[podvisor ${new Date().toISOString()}: ${size} bytes cut: this log is bounded to ${capBytes} bytes]\n`, 0);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

interface Watched {
  files: string[];
  capBytes: number;
}

/** One periodic check of the logs of every VM that is watched; its timer runs while any is. */
export class LogSweep {
  private readonly watched = new Set<Watched>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly intervalMs = CHECK_INTERVAL_MS) {}

  /** Keeps each of `files` within `capBytes` on every sweep until the returned stop() is called. */
  watch(files: string[], capBytes: number): () => void {
    const w: Watched = { files, capBytes };
    this.watched.add(w);
    if (!this.timer) {
      this.timer = setInterval(() => this.sweep(), this.intervalMs);
      this.timer.unref();
    }
    return () => {
      this.watched.delete(w);
      if (this.watched.size === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    };
  }

  /** How many VMs' logs it watches now. */
  get size(): number {
    return this.watched.size;
  }

  private sweep(): void {
    for (const { files, capBytes } of this.watched) {
      for (const f of files) {
        try {
          boundLog(f, capBytes);
        } catch {
          /* the VM's directory went with it */
        }
      }
    }
  }
}

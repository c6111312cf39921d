// CPU priority (nice value) of a whole process. Linux keeps a nice value per thread, and
// setpriority(PRIO_PROCESS, pid) changes only the thread whose id is `pid`: a QEMU already
// running has its vCPU, RCU and I/O threads besides, so each thread under /proc/<pid>/task is
// set. Threads made later inherit from the thread that makes them (QEMU's main thread, set
// here too). No process is started (os.setPriority is one syscall per thread).
import fs from 'node:fs';
import os from 'node:os';

/**
 * Sets every thread of `pid` to `nice` (clamped to -20..19). Threads that exit meanwhile are
 * skipped; any other failure (e.g. EACCES: raising priority needs CAP_SYS_NICE) is thrown.
 */
export function setProcessNice(pid: number, nice: number): void {
  const value = Math.max(-20, Math.min(19, Math.round(nice)));
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return; // the process is gone
  }
  for (const tid of tids) {
    try {
      os.setPriority(Number(tid), value);
    } catch (err) {
      if ((err as { info?: { code?: string } }).info?.code === 'ESRCH' || !fs.existsSync(`/proc/${pid}/task/${tid}`)) continue;
      throw err;
    }
  }
}

/** The nice value of this process (the one its children start with). */
export function ownNice(): number {
  return os.getPriority();
}

// Whether a process still runs, by pid: the one check the VM driver (is QEMU still there?) and
// the template manager (did a build's process die mid-way?) both make.
import fs from 'node:fs';

/** Whether `pid` runs: kill(0) answers (EPERM: someone else's, it runs) and it is not a zombie. */
export function processAlive(pid: number): boolean {
  if (pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // a zombie still answers kill(0); it is dead for our purposes
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

// Chooses KVM or TCG. /dev/kvm existing proves nothing (nested PVM hosts crash stock guests),
// so KVM is used only after a real guest booted under it and answered the agent handshake.
// The verdict is cached per QEMU binary, guest kernel and host kernel.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { hello } from '../agent/hello';
import type { Logger } from '../util/log';
import type { Accelerator } from './hypervisor';
import { QemuHypervisor, QemuOptions } from './qemu';

function probeKey(o: Pick<QemuOptions, 'binary' | 'kernel' | 'initramfs'>): string {
  const parts = [os.release()];
  for (const f of [o.binary, o.kernel, o.initramfs]) {
    const st = fs.statSync(f);
    parts.push(`${f}:${st.size}:${st.mtimeMs}`);
  }
  return crypto.createHash('sha256').update(parts.join('\n')).digest('hex');
}

async function kvmBoots(o: Omit<QemuOptions, 'accelerator'>, scratch: string): Promise<boolean> {
  const dir = await fsp.mkdtemp(path.join(scratch, 'kvm-probe-'));
  const share = path.join(dir, 'share');
  await fsp.mkdir(share);
  const hv = new QemuHypervisor({ ...o, accelerator: 'kvm' });
  let vm;
  try {
    vm = await hv.start({ id: `kvmprobe${process.pid}`, dir, vcpus: 1, memoryMiB: 256, sharePath: share });
    const agent = await vm.connectAgent(5000);
    const died = vm.exited.then(() => false);
    const greeted = hello(agent, { nonce: 'probe', hostname: 'probe', timeoutMs: 20_000 }).then(() => true, () => false);
    const ok = await Promise.race([greeted, died]);
    agent.close();
    return ok;
  } catch {
    return false;
  } finally {
    await vm?.stop(1000).catch(() => undefined);
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

export async function chooseAccelerator(
  wanted: 'auto' | 'kvm' | 'tcg',
  o: Omit<QemuOptions, 'accelerator'>,
  root: string,
  scratch: string,
  logger: Logger,
): Promise<Accelerator> {
  if (wanted !== 'auto') return wanted;
  try {
    await fsp.access('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    logger.info('no usable /dev/kvm: using TCG');
    return 'tcg';
  }
  const cacheFile = path.join(root, 'accel.json');
  let key: string;
  try {
    key = probeKey(o);
  } catch {
    return 'tcg'; // guest files missing: Status reports it; nothing to probe with
  }
  try {
    const cached = JSON.parse(await fsp.readFile(cacheFile, 'utf8'));
    if (cached.key === key && (cached.accel === 'kvm' || cached.accel === 'tcg')) {
      logger.info({ accel: cached.accel }, 'accelerator verdict from cache');
      return cached.accel;
    }
  } catch {
    /* no cache yet */
  }
  const t0 = Date.now();
  const accel: Accelerator = (await kvmBoots(o, scratch)) ? 'kvm' : 'tcg';
  logger.info({ accel, probeMs: Date.now() - t0 }, accel === 'kvm' ? 'KVM boots guests: using KVM' : 'KVM did not boot a guest: using TCG');
  await fsp.mkdir(root, { recursive: true });
  await writeFileAtomic(cacheFile, JSON.stringify({ key, accel, at: new Date().toISOString() }), { fsync: true });
  return accel;
}

/**
 * The probe itself, uncached, with the reason when KVM is not usable (`podvisor check`): /dev/kvm
 * missing or not read-write, or a guest that did not boot under it (exited or never answered
 * the agent's hello within 20 s).
 */
export async function probeKvm(o: Omit<QemuOptions, 'accelerator'>, scratch: string): Promise<{ kvm: boolean; reason: string; probeMs: number }> {
  const t0 = Date.now();
  try {
    await fsp.access('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch (err) {
    return { kvm: false, reason: `/dev/kvm not usable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, probeMs: 0 };
  }
  await fsp.mkdir(scratch, { recursive: true });
  const kvm = await kvmBoots(o, scratch);
  const probeMs = Date.now() - t0;
  return kvm
    ? { kvm, reason: `a guest booted under KVM and answered in ${probeMs} ms`, probeMs }
    : { kvm, reason: `/dev/kvm is there, but a guest did not boot under KVM (exited or no agent hello within 20 s; nested or paravirtualized KVM such as PVM does this)`, probeMs };
}

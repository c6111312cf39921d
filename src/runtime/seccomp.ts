// Seccomp for containers: the CRI SecurityProfile (or the deprecated seccomp_profile_path)
// becomes an OCI linux.seccomp section. The agent's libcontainer loads it.
//
// RuntimeDefault here is a deny list on top of "allow": the guest kernel belongs to this pod
// alone (the VM is the isolation boundary), so the profile only closes the syscalls that reach
// kernel-global state or are classic container escape tools, which a workload never needs.
// A host pod's container shares the host's kernel, so its RuntimeDefault closes more, as
// Docker's and containerd's default profiles do: new namespaces through clone (clone3 answers
// ENOSYS so libc falls back to clone, whose flags a filter can read), io_uring (a syscall path
// that seccomp cannot see into), the kernel log and vhangup without their capabilities.
import type { LinuxContainerSecurityContext } from '../../cri-api/messages';
import fs from 'node:fs';
import { invalidArgument } from '../util/errors';

// Syscalls closed unless the container holds the capability that makes them legitimate (as
// Docker's profile does); the rest of the list is closed for everyone.
const DENIED_UNLESS: Record<string, string[]> = {
  CAP_SYS_ADMIN: [
    'bpf', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'lookup_dcookie', 'mount', 'mount_setattr', 'move_mount',
    'name_to_handle_at', 'open_tree', 'perf_event_open', 'pivot_root', 'quotactl', 'setdomainname', 'sethostname',
    'setns', 'umount', 'umount2', 'unshare',
  ],
  CAP_SYS_PTRACE: ['kcmp', 'process_vm_readv', 'process_vm_writev', 'ptrace'],
  CAP_SYS_TIME: ['clock_adjtime', 'clock_settime', 'settimeofday', 'stime'],
  CAP_SYS_MODULE: ['delete_module', 'finit_module', 'init_module'],
  CAP_SYS_BOOT: ['reboot'],
  CAP_SYS_PACCT: ['acct'],
  CAP_SYS_NICE: ['get_mempolicy', 'mbind', 'move_pages', 'set_mempolicy'],
  CAP_DAC_READ_SEARCH: ['open_by_handle_at'],
  CAP_SYS_RAWIO: ['ioperm', 'iopl'],
};
const DENIED_ALWAYS = [
  'add_key', 'create_module', 'get_kernel_syms', 'kexec_file_load', 'kexec_load', 'keyctl', 'nfsservctl',
  'query_module', 'request_key', 'swapoff', 'swapon', 'sysfs', '_sysctl', 'uselib', 'userfaultfd', 'ustat',
  'vm86', 'vm86old',
];

// more for host containers
const HOST_DENIED_UNLESS: Record<string, string[]> = { CAP_SYSLOG: ['syslog'], CAP_SYS_TTY_CONFIG: ['vhangup'] };
const HOST_DENIED_ALWAYS = ['io_uring_enter', 'io_uring_register', 'io_uring_setup'];
// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
const CLONE_NS_FLAGS = [0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000];
const EPERM = 1;
const ENOSYS = 38;

/** `host`: the stricter profile of a host container (see the header). */
export function runtimeDefault(caps: string[], host = false): any {
  const denied = [...DENIED_ALWAYS, ...(host ? HOST_DENIED_ALWAYS : [])];
  const unless = host ? { ...DENIED_UNLESS, ...HOST_DENIED_UNLESS } : DENIED_UNLESS;
  for (const [cap, names] of Object.entries(unless)) if (!caps.includes(cap)) denied.push(...names);
  const syscalls: any[] = [{ names: denied.sort(), action: 'SCMP_ACT_ERRNO', errnoRet: EPERM }];
  if (host && !caps.includes('CAP_SYS_ADMIN')) {
    // one rule per flag: rules of a syscall are ORed, the args of one rule ANDed
    for (const flag of CLONE_NS_FLAGS) syscalls.push({ names: ['clone'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM, args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }] });
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  }
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
    syscalls,
  };
}

/** Largest Localhost profile read (Docker's default profile is ~20 KiB). */
const MAX_PROFILE_BYTES = 1 << 20;

/**
 * Reads a profile file: a regular file (not a FIFO, a device or /dev/zero) of at most
 * MAX_PROFILE_BYTES. Errors name the file and the reason, never its content.
 */
function readProfile(file: string): string {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (err) {
    throw invalidArgument(`seccomp profile ${file}: cannot open (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw invalidArgument(`seccomp profile ${file}: not a regular file`);
    if (st.size > MAX_PROFILE_BYTES) throw invalidArgument(`seccomp profile ${file}: larger than ${MAX_PROFILE_BYTES} bytes`);
    const buf = Buffer.alloc(st.size);
    const n = fs.readSync(fd, buf, 0, st.size, 0);
    return buf.toString('utf8', 0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/** A Docker/OCI-style profile file (as kubelet's Localhost profiles are) → OCI linux.seccomp. */
export function loadLocalhostProfile(file: string, caps: string[]): any {
  let doc: any;
  try {
    doc = JSON.parse(readProfile(file));
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    // JSON.parse's message quotes the text: a caller must not learn a file's content this way
    throw invalidArgument(`seccomp profile ${file}: not valid JSON`);
  }
  if (typeof doc?.defaultAction !== 'string') throw invalidArgument(`seccomp profile ${file}: defaultAction missing`);
  const arches: string[] = doc.architectures ?? (doc.archMap ?? []).flatMap((a: any) => [a.architecture, ...(a.subArchitectures ?? [])]);
  const has = (c: string[]) => c.every((x) => caps.includes(x.toUpperCase().startsWith('CAP_') ? x.toUpperCase() : `CAP_${x.toUpperCase()}`));
  const syscalls = (doc.syscalls ?? [])
    .filter((s: any) => !s.includes?.caps || has(s.includes.caps))
    .filter((s: any) => !s.excludes?.caps || !has(s.excludes.caps))
    .filter((s: any) => !s.includes?.arches || s.includes.arches.includes('amd64'))
    .map((s: any) => {
      const names = s.names ?? (s.name ? [s.name] : []);
      if (!Array.isArray(names) || !names.length || typeof s.action !== 'string') throw invalidArgument(`seccomp profile ${file}: a syscall rule needs names and action`);
      const rule: any = { names, action: s.action };
      if (s.args?.length) rule.args = s.args;
      if (s.errnoRet !== undefined) rule.errnoRet = s.errnoRet;
      return rule;
    });
  const out: any = { defaultAction: doc.defaultAction, architectures: arches.length ? arches : ['SCMP_ARCH_X86_64'], syscalls };
  if (doc.defaultErrnoRet !== undefined) out.defaultErrnoRet = doc.defaultErrnoRet;
  return out;
}

/** The OCI seccomp section for a container (`host`: a host pod's), or undefined for unconfined. */
export function seccompFor(sc: LinuxContainerSecurityContext | null | undefined, caps: string[], host = false): any {
  if (sc?.privileged) return undefined;
  const profile = sc?.seccomp;
  if (profile) {
    switch (profile.profile_type) {
      case 'Unconfined':
        return undefined;
      case 'Localhost':
        if (!profile.localhost_ref) throw invalidArgument('seccomp Localhost profile needs localhost_ref');
        return loadLocalhostProfile(profile.localhost_ref, caps);
      default:
        return runtimeDefault(caps, host);
    }
  }
  const p: string = sc?.seccomp_profile_path ?? '';
  if (!p || p === 'unconfined') return undefined;
  if (p === 'runtime/default' || p === 'docker/default') return runtimeDefault(caps, host);
  if (p.startsWith('localhost/')) return loadLocalhostProfile(p.slice('localhost/'.length), caps);
  throw invalidArgument(`unknown seccomp profile ${JSON.stringify(p)}`);
}

// `podvisor --version`: what runs here, for bug reports and upgrades: podvisor and its commit
// (release.json of a release, git in a checkout), the Node runtime, the guest agent and kernel
// (the guest build's manifest.json), QEMU (asked). Reads the config only for the paths.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Config, defaultConfig, loadConfig, packageRoot } from '../config/config';
import { VERSION } from '../daemon';

function commit(): string {
  const root = packageRoot();
  try {
    return JSON.parse(fs.readFileSync(path.join(root, 'release.json'), 'utf8')).commit;
  } catch {
    /* a checkout */
  }
  try {
    const head = execFileSync('git', ['-C', root, 'rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
    const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
    return dirty ? `${head}-dirty` : head;
  } catch {
    return 'unknown';
  }
}

export function versionReport(configFile = '/etc/podvisor/config.toml'): string {
  let cfg: Config;
  try {
    cfg = loadConfig(configFile, true);
  } catch {
    cfg = defaultConfig();
  }
  let guest = { agent_version: 'unknown', kernel_version: 'unknown' };
  try {
    guest = JSON.parse(fs.readFileSync(path.join(path.dirname(cfg.vm.kernel), 'manifest.json'), 'utf8'));
  } catch {
    /* no guest build */
  }
  let qemu = 'not found';
  try {
    qemu = /version (\S+)/.exec(execFileSync(cfg.vm.qemu, ['--version'], { encoding: 'utf8', timeout: 10_000 }))?.[1] ?? 'unknown';
  } catch {
    /* missing */
  }
  return [
    `podvisor ${VERSION} (commit ${commit()})`,
    `node ${process.version}`,
    `agent ${guest.agent_version}`,
    `kernel ${guest.kernel_version}`,
    `qemu ${qemu} (${cfg.vm.qemu})`,
  ].join('\n') + '\n';
}

// Operator-facing surface: config `version` and conf.d drop-ins merged in name order, `podvisor
// config default|dump`, `podvisor --version`, the text log format with errors' stack and code,
// deploy/crictl.yaml. The CLI cases run the compiled CLI (dist/, built by tsc) as an operator.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, configToToml, defaultConfig, loadConfig } from '../src/config/config';

const ROOT = path.join(__dirname, '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });

describe('config: version key and conf.d drop-ins', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-conf-'));
    fs.mkdirSync(path.join(dir, 'conf.d'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (rel: string, text: string) => fs.writeFileSync(path.join(dir, rel), text);

  test('drop-ins apply over the file in name order; other files in conf.d are ignored', () => {
    write('config.toml', 'version = 1\nlog_level = "warn"\n[vm]\ndefault_vcpus = 2\ntemplate_spares = 3\n');
    write('conf.d/20-b.toml', '[vm]\ndefault_vcpus = 4\n');
    write('conf.d/10-a.toml', 'version = 1\n[vm]\ndefault_vcpus = 3\ndefault_memory_mib = 512\n');
    write('conf.d/30-c.toml.disabled', '[vm]\ndefault_vcpus = 99\n');
    const cfg = loadConfig(path.join(dir, 'config.toml'), false);
    expect(cfg.logLevel).toBe('warn');
    expect(cfg.vm).toMatchObject({ defaultVcpus: 4, defaultMemoryMiB: 512, templateSpares: 3 });
  });

  test('drop-ins apply when the (optional) file is missing', () => {
    write('conf.d/10.toml', '[cni]\nconf_dir = "/x"\n');
    expect(loadConfig(path.join(dir, 'config.toml'), true).cni.confDir).toBe('/x');
  });

  test('a version this podvisor does not read, or a bad key in a drop-in, is an error naming the file', () => {
    write('config.toml', 'version = 2\n');
    expect(() => loadConfig(path.join(dir, 'config.toml'), false)).toThrow(/config.toml: version = 2: this podvisor reads config version 1/);
    write('config.toml', 'version = 1\n');
    write('conf.d/50-typo.toml', '[vm]\ndefault_vpcus = 2\n');
    expect(() => loadConfig(path.join(dir, 'config.toml'), false)).toThrow(ConfigError);
    expect(() => loadConfig(path.join(dir, 'config.toml'), false)).toThrow(/50-typo.toml: unknown key vm.default_vpcus/);
  });

  test('config default is the defaults as TOML: read back, it gives the defaults', () => {
    const text = configToToml(defaultConfig());
    expect(text).toMatch(/^version = 1$/m);
    write('config.toml', text);
    expect(loadConfig(path.join(dir, 'config.toml'), false)).toEqual(defaultConfig());
    expect(cli('config', 'default').stdout).toBe(text);
  });

  test('config dump shows the merged result and names the drop-ins', () => {
    write('config.toml', '[vm]\ndefault_vcpus = 2\n');
    write('conf.d/10.toml', '[vm]\ndefault_memory_mib = 1024\n');
    const r = cli('config', 'dump', '--config', path.join(dir, 'config.toml'));
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe(`# ${path.join(dir, 'config.toml')} + ${path.join(dir, 'conf.d', '10.toml')}`);
    expect(r.stdout).toMatch(/^default_vcpus = 2$/m);
    expect(r.stdout).toMatch(/^default_memory_mib = 1024$/m);
    write('conf.d/20.toml', 'bogus = 1\n');
    const bad = cli('config', 'dump', '--config', path.join(dir, 'config.toml'));
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/20.toml: unknown key bogus/);
  });
});

describe('podvisor --version, log format, crictl.yaml', () => {
  test('--version names podvisor and its commit, Node, the guest agent and kernel, QEMU', () => {
    const r = cli('--version');
    expect(r.status).toBe(0);
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'build', 'guest', 'manifest.json'), 'utf8'));
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(new RegExp(`^podvisor ${pkg.version.replace(/\./g, '\\.')} \\(commit [0-9a-f]{12}(-dirty)?\\)$`));
    expect(lines[1]).toBe(`node ${process.version}`);
    expect(lines[2]).toBe(`agent ${manifest.agent_version}`);
    expect(lines[3]).toBe(`kernel ${manifest.kernel_version}`);
    expect(lines[4]).toMatch(/^qemu \d+\.\d+\.\d+ \(/);
  });

  test('--log-format text: readable lines, errors with their stack and code; json stays the default', () => {
    const script = (format: string) => `const { createLogger } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'util', 'log.js'))});
      const l = createLogger('info', ${JSON.stringify(format)});
      const err = Object.assign(new Error('disk on fire'), { code: 'EFIRE' });
      l.info({ pod: 'p1' }, 'pod started'); l.error({ err }, 'cannot attach');`;
    const text = spawnSync(process.execPath, ['-e', script('text')], { encoding: 'utf8' }).stdout;
    expect(text).toMatch(/^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] INFO: pod started \{"pod":"p1"\}$/m);
    expect(text).toMatch(/ERROR: cannot attach/);
    expect(text).toMatch(/"code": "EFIRE"/);
    expect(text).toMatch(/^\s+Error: disk on fire\n\s+at \[eval\]:\d+:\d+$/m); // the stack
    const json = spawnSync(process.execPath, ['-e', script('json')], { encoding: 'utf8' }).stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(json[1].err).toMatchObject({ message: 'disk on fire', code: 'EFIRE' });
    expect(json[1].err.stack).toMatch(/disk on fire\n\s+at /);
    expect(cli('serve', '--log-format', 'xml', '--config', '/dev/null').status).toBe(2);
  });

  test('deploy/crictl.yaml points crictl at the default socket', () => {
    const y = fs.readFileSync(path.join(ROOT, 'deploy', 'crictl.yaml'), 'utf8');
    const sock = defaultConfig().socket;
    expect(y).toMatch(new RegExp(`^runtime-endpoint: unix://${sock}$`, 'm'));
    expect(y).toMatch(new RegExp(`^image-endpoint: unix://${sock}$`, 'm'));
  });
});

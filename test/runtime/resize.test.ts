// In-place resize on the host side: the size CRI resources ask for, the ceiling a VM boots
// with, and which resizes are refused before anything changes (e2e/resize.test.ts runs them).
import { bootSize, checkResize, neededSize, podSize } from '../../src/runtime/resize';
import { defaultConfig } from '../../src/config/config';
import { hasCode } from '../../src/util/errors';

const vm = { ...defaultConfig().vm, defaultVcpus: 1, defaultMemoryMiB: 256, maxVcpus: 8, maxMemoryMiB: 4096 };
const MiB = 1024 * 1024;

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return hasCode(e) ? e.code : 'other';
  }
  return undefined;
}

describe('resize sizes', () => {
  it('CPU quota → whole vCPUs, memory limit → MiB; unlimited is 0', () => {
    expect(neededSize({ cpu_quota: '250000', cpu_period: '100000', memory_limit_in_bytes: String(300 * MiB + 1) })).toEqual({ vcpus: 3, memoryMiB: 301 });
    expect(neededSize({})).toEqual({ vcpus: 0, memoryMiB: 0 });
    expect(neededSize(null)).toEqual({ vcpus: 0, memoryMiB: 0 });
    expect(codeOf(() => neededSize({ cpu_quota: 'x' } as any))).toBe('invalid_argument');
  });

  it('a pod size is within the defaults and maximums', () => {
    expect(podSize({}, vm)).toEqual({ vcpus: 1, memoryMiB: 256 });
    expect(podSize({ cpu_quota: '99900000', memory_limit_in_bytes: String(9000 * MiB) }, vm)).toEqual({ vcpus: 8, memoryMiB: 4096 });
  });

  it('a VM boots at the configured ceiling, or its own size when that is bigger', () => {
    expect(bootSize({ vcpus: 1, memoryMiB: 256 }, vm)).toEqual({ vcpus: 1, memoryMiB: 256 });
    const roomy = { ...vm, resizeVcpus: 4, resizeMemoryMiB: 1024 };
    expect(bootSize({ vcpus: 1, memoryMiB: 256 }, roomy)).toEqual({ vcpus: 4, memoryMiB: 1024 });
    expect(bootSize({ vcpus: 6, memoryMiB: 2048 }, roomy)).toEqual({ vcpus: 6, memoryMiB: 2048 });
    expect(bootSize({ vcpus: 1, memoryMiB: 256 }, { ...vm, resizeVcpus: 64, resizeMemoryMiB: 1 << 20 })).toEqual({ vcpus: 8, memoryMiB: 4096 });
  });

  it('a resize within the ceiling passes; beyond it or below a minimum is refused', () => {
    const ceiling = { vcpus: 2, memoryMiB: 512 };
    expect(checkResize({ vcpus: 2, memoryMiB: 512 }, ceiling, 'x')).toEqual({ vcpus: 2, memoryMiB: 512 });
    expect(codeOf(() => checkResize({ vcpus: 3, memoryMiB: 256 }, ceiling, 'x'))).toBe('failed_precondition');
    expect(codeOf(() => checkResize({ vcpus: 1, memoryMiB: 513 }, ceiling, 'x'))).toBe('failed_precondition');
    expect(codeOf(() => checkResize({ vcpus: 0, memoryMiB: 256 }, ceiling, 'x'))).toBe('invalid_argument');
    expect(codeOf(() => checkResize({ vcpus: 1, memoryMiB: 32 }, ceiling, 'x'))).toBe('invalid_argument');
  });
});

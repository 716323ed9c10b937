/** `mgllava doctor`: which backend runs, why, and what the machine offers. */
import type { CommandModule } from 'yargs';
import type { RuntimeInfo } from '../backend/info.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

interface DoctorArgs extends GlobalArgs {
  json: boolean;
}

export const doctorCommand: CommandModule<GlobalArgs, DoctorArgs> = {
  command: 'doctor',
  builder: (y) =>
    y
      .option('json', { type: 'boolean', default: false, describe: 'print one JSON object' })
      .example('$0 doctor', 'which backend runs and why, and where matrix products run')
      .example('$0 doctor --backend webgpu --json', 'the webgpu adapter and its limits, as JSON'),
  handler: async (args) => {
    await backendFromArgs(args);
    const { runtimeInfo } = await import('../backend/info.js');
    const info = runtimeInfo();
    process.stdout.write(args.json ? `${JSON.stringify(info)}\n` : formatInfo(info));
  },
};

const GiB = 1024 ** 3;

function formatInfo(i: RuntimeInfo): string {
  const lines = [
    `backend          ${i.backend} (${i.reason})`,
    ...i.attempts.map((a) => `  tried ${a.name.padEnd(10)} ${a.ok ? 'ok' : 'failed'}: ${a.detail}`),
    `tfjs             ${i.tfjsVersion}`,
    `node             ${i.node}, ${i.cpus} cpus, ${(i.totalMemoryBytes / GiB).toFixed(1)} GiB`,
    `gpu              ${i.gpu ? 'yes' : 'no'}`,
    `tfjs-node-gpu    ${i.tfjsNodeGpu.version ?? '-'}: ${i.tfjsNodeGpu.note}`,
  ];
  lines.push(`webgpu           webgpu ${i.webgpu.dawn ?? '-'} (Dawn), tfjs-backend-webgpu ${i.webgpu.tfjsBackendWebgpu ?? '-'}`);
  if (i.webgpu.adapter) lines.push(...webgpuLines(i.webgpu));
  if (i.backend === 'wasm') {
    lines.push(
      `wasm             threads ${i.wasm.threads}, simd ${i.wasm.simd}, kernel pack ${i.wasm.kernelPack ? 'registered' : 'absent'}`,
      `matmul           ${i.native.detail} (MGLLAVA_NATIVE=${i.native.mode})`,
    );
  }
  lines.push(
    `memory ceiling   ${i.memoryCeilingBytes == null ? 'none enforced' : `${(i.memoryCeilingBytes / GiB).toFixed(2)} GiB of live tensors`}`,
  );
  return `${lines.join('\n')}\n`;
}

/** The adapter webgpu runs on: name, type, software or not, the limits the device was granted. */
function webgpuLines(w: RuntimeInfo['webgpu']): string[] {
  const a = w.adapter!;
  const MiB = 1024 * 1024;
  const limits = Object.entries(w.deviceLimits ?? a.limits).map(([k, v]) => `${k} ${/Size$/.test(k) && v >= MiB ? `${(v / MiB).toFixed(0)} MiB` : v}`);
  return [
    `  adapter        vendor '${a.vendor}', architecture '${a.architecture}', device '${a.device}', ${a.description}`,
    `  type           ${a.type}${a.software ? ` (software: ${a.softwareReason})` : ' (hardware)'}`,
    `  limits         ${limits.join(', ')}`,
    `  largest tensor ${w.maxTensorBytes == null ? '-' : `${(w.maxTensorBytes / MiB).toFixed(0)} MiB`}; kernel pack ${w.kernelPack ? 'registered' : 'absent'}`,
  ];
}

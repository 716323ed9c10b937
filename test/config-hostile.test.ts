// Issue 12 (config side) and 17.6: hostile config files are refused with one line (anchor bombs, prototype
// keys, devices), and every config error names the key and, for a choice, the allowed values.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { applySets, ConfigError, configHash, loadConfig, MAX_CONFIG_NODES } from '../src/config/load.js';
import { MgllavaError } from '../src/errors.js';

const BASE = path.resolve(import.meta.dirname, '../configs/tiny-shapes/pretrain.yaml');
const dir = mkdtempSync(path.join(tmpdir(), 'mgllava-cfg-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function yamlFile(name: string, text: string): string {
  const f = path.join(dir, name);
  writeFileSync(f, text);
  return f;
}

/** The ConfigError of a call, checked to be one line. */
function configError(f: () => unknown): ConfigError {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ConfigError);
  expect(err).toBeInstanceOf(MgllavaError);
  expect((err as MgllavaError).exitCode).toBe(3);
  expect((err as Error).message.split('\n')).toHaveLength(1);
  return err as ConfigError;
}

/** Nine levels of nine aliases: 9^9 ≈ 387 M values once expanded (js-yaml shares them, consumers would not). */
function anchorBomb(): string {
  const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x]'];
  for (let i = 1; i <= 9; i++) lines.push(`a${i}: &a${i} [${Array.from({ length: 9 }, () => `*a${i - 1}`).join(', ')}]`);
  return lines.join('\n');
}

describe('hostile config files', () => {
  it('an anchor bomb as the value of a known key is refused quickly, naming the key', () => {
    const bomb = anchorBomb();
    const f = yamlFile('bomb.yaml', `extends: ${BASE}\nlayers:\n${bomb.replace(/^/gm, '  ')}\nwarmup:\n  annotations: x\n  box_heads: *a9\n`);
    const e = configError(() => loadConfig(f));
    expect(e.message).toMatch(new RegExp(`expands to more than ${MAX_CONFIG_NODES} values`));
    expect(e.message).toMatch(/YAML aliases/);
    // the same bomb through --set
    const s = configError(() => applySets({}, [`warmup.box_heads=${bomb.replace(/\n/g, ', ').replace(/^/, '{').concat('}')}`]));
    expect(s.message).toMatch(/--set 'warmup\.box_heads'/);
  });

  it('__proto__ / constructor / prototype keys are refused (through --set and in a file)', () => {
    const e = configError(() => loadConfig(BASE, ['__proto__.polluted=1']));
    expect(e.message).toBe("--set '__proto__.polluted=1': '__proto__' is not a config key (refused: it would reach the object prototype)");
    configError(() => loadConfig(BASE, ['train.constructor.x=1']));
    const f = yamlFile('proto.yaml', `extends: ${BASE}\ntrain:\n  __proto__:\n    lr: 5\n`);
    expect(configError(() => loadConfig(f)).message).toMatch(/'train\.__proto__': '__proto__' is not a config key/);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(({} as Record<string, unknown>).lr).toBeUndefined();
  });

  it('a device, a directory or a huge file as config: one line, nothing read', () => {
    expect(configError(() => loadConfig('/dev/zero')).message).toBe('config /dev/zero is not a regular file');
    expect(configError(() => loadConfig(dir)).message).toMatch(/is a directory; give the YAML file/);
    const big = yamlFile('big.yaml', `# ${'x'.repeat(2 << 20)}\n`);
    expect(configError(() => loadConfig(big)).message).toMatch(/more than the 1048576 a config may have/);
    expect(configError(() => loadConfig(path.join(dir, 'none.yaml'))).message).toMatch(/cannot read config .*none\.yaml: no such file/);
  });

  it('malformed YAML is one line with its position', () => {
    const f = yamlFile('bad.yaml', 'name: [unclosed\nstage: x\n');
    expect(configError(() => loadConfig(f)).message).toMatch(/bad\.yaml: invalid YAML: .*\(line \d+, column \d+\)$/);
  });
});

describe('config errors name the key and the allowed values', () => {
  it.each([
    ['model.fusion.variant=5', 'model.fusion.variant: 5 is not one of 0, 1, 2, 3'],
    ['data.template=foo', 'data.template: "foo" is not one of vicuna, llama3_chat, phi3_chat, qwen_chat'],
    ['data.tokenizer.type=zz', 'data.tokenizer.type: "zz" is not one of hf, llama2, byte'],
    ['stage=sft', 'stage: "sft" is not one of warmup, pretrain, finetune'],
    ['train.sampler=random', 'train.sampler: "random" is not one of shuffle, length_grouped'],
    ['data.exif_orientation=yes', 'data.exif_orientation: "yes" is not one of ignore, apply'],
    ['train.lr=-1', 'train.lr: must be > 0 (got -1)'],
    ['train.batch_size=1.5', 'train.batch_size: must be an integer (got 1.5)'],
    ['data.nms_threshold=2', 'data.nms_threshold: must be <= 1 (got 2)'],
    ['data.max_image_pixels=0', 'data.max_image_pixels: must be > 0 (got 0)'],
    ['train.batch_size=two', 'train.batch_size: must be a number (got "two")'],
  ])('--set %s', (set, want) => {
    expect(configError(() => loadConfig(BASE, [set])).message).toBe(`${BASE}: invalid config: ${want}`);
  });

  it('several problems stay on one line', () => {
    const m = configError(() => loadConfig(BASE, ['train.lr=-1', 'model.fusion.variant=9'])).message;
    expect(m).toContain('model.fusion.variant: 9 is not one of 0, 1, 2, 3; train.lr: must be > 0 (got -1)');
  });

  it('data.limit_num 50 (the value the reference crashes on) is refused at load time', () => {
    expect(configError(() => loadConfig(BASE, ['data.limit_num=50'])).message).toMatch(/data\.limit_num: 50 has no per-category cap in the reference .*use 49 or 51/);
    expect(loadConfig(BASE, ['data.limit_num=10']).config.data.limit_num).toBe(10);
  });

  it('new data keys do not change the hash of existing runs (their resume keeps working)', () => {
    const { config, hash } = loadConfig(BASE);
    // The hash of the config as it was before exif_orientation / max_image_pixels existed:
    const { exif_orientation: _e, max_image_pixels: _m, ...oldData } = config.data;
    expect(configHash({ ...config, data: oldData })).toBe(hash);
    expect(loadConfig(BASE, ['data.max_image_pixels=1000']).hash).toBe(hash); // operational: refusals only
    expect(loadConfig(BASE, ['data.exif_orientation=apply']).hash).not.toBe(hash); // changes the pixels
  });
});

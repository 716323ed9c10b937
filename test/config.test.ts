import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import yaml from 'js-yaml';
import { describe, expect, it } from 'vitest';
import { applySets, ConfigError, configHash, dumpConfig, loadConfig, suggest, validateConfig } from '../src/config/load.js';
import { modelConfigFrom } from '../src/config/build-model.js';
import { MGLLaVA } from '../src/model/mgllava.js';
import { Rng } from '../src/util/rng.js';

const CONFIGS = path.resolve(import.meta.dirname, '../configs');

async function experimentFiles(): Promise<string[]> {
  const out: string[] = [];
  for (const dir of await readdir(CONFIGS, { withFileTypes: true })) {
    if (!dir.isDirectory()) continue;
    for (const f of await readdir(path.join(CONFIGS, dir.name))) {
      if (f.endsWith('.yaml') && f !== 'base.yaml') out.push(path.join(CONFIGS, dir.name, f));
    }
  }
  return out.sort();
}

async function tmpYaml(files: Record<string, unknown>): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-config-'));
  for (const [name, body] of Object.entries(files)) {
    await writeFile(path.join(dir, name), typeof body === 'string' ? body : yaml.dump(body));
  }
  return dir;
}

describe('configs/', () => {
  it('every experiment file loads and validates; tiny ones build a model', async () => {
    const files = await experimentFiles();
    expect(files.length).toBeGreaterThanOrEqual(12);
    for (const f of files) {
      const { config } = loadConfig(f);
      expect(config.name, f).toMatch(/^[\w.-]+$/);
      if (!config.model.llm.pretrained && !config.model.vision.pretrained) {
        const m = new MGLLaVA(modelConfigFrom(config.model), { rng: new Rng(0), skipInit: true });
        expect(m.numParameters()).toBeGreaterThan(0);
        m.dispose();
      }
    }
  });

  it('round-trips: the resolved config dumped to YAML validates to the same config', () => {
    const { config, hash } = loadConfig(path.join(CONFIGS, 'tiny-shapes/finetune.yaml'));
    const again = validateConfig(yaml.load(dumpConfig(config)), 'dump');
    expect(again).toEqual(config);
    expect(configHash(again)).toBe(hash);
  });
});

describe('config loading', () => {
  it('extends deep-merges (child wins, lists replace) and --set overrides with YAML values', async () => {
    const dir = await tmpYaml({
      'base.yaml': yaml.dump(yaml.load((await import('node:fs')).readFileSync(path.join(CONFIGS, 'tiny-shapes/base.yaml'), 'utf8'))),
      'child.yaml': 'extends: base.yaml\nname: child\nstage: pretrain\nmodel:\n  vision_aux:\n    dims: [8, 8, 8, 8]\ntrain:\n  lr: 0.5\n',
    });
    const { config } = loadConfig(path.join(dir, 'child.yaml'), ['train.batch_size=3', 'model.fusion=null', 'model.objects=null', 'data.max_length=64']);
    expect(config.model.vision_aux!.dims).toEqual([8, 8, 8, 8]);
    expect(config.model.vision_aux!.depths).toEqual([1, 1, 1, 1]);
    expect(config.train.lr).toBe(0.5);
    expect(config.train.batch_size).toBe(3);
    expect(config.model.fusion).toBeNull();
    expect(config.data.max_length).toBe(64);
    expect(config.train.betas).toEqual([0.9, 0.999]); // default
  });

  it('rejects unknown keys with a suggestion and the YAML path', async () => {
    const dir = await tmpYaml({
      'a.yaml': 'extends: ' + path.join(CONFIGS, 'tiny-shapes/pretrain.yaml') + '\nmodel:\n  llm:\n    hiden_size: 12\ntrain:\n  learning_rate: 1\n',
    });
    let err: unknown;
    try {
      loadConfig(path.join(dir, 'a.yaml'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toContain(path.join(dir, 'a.yaml'));
    expect(msg).toMatch(/model\.llm\.hiden_size: unknown key \(did you mean 'model\.llm\.hidden_size'\?\)/);
    expect(msg).toMatch(/train\.learning_rate: unknown key/);
  });

  it('rejects bad types and ranges, naming the path and the value', () => {
    const base = path.join(CONFIGS, 'tiny-shapes/pretrain.yaml');
    expect(() => loadConfig(base, ['train.lr=-1'])).toThrow(/train\.lr: .*got -1/);
    expect(() => loadConfig(base, ['train.batch_size=two'])).toThrow(/train\.batch_size: .*got "two"/);
    expect(() => loadConfig(base, ['stage=sft'])).toThrow(/stage:/);
    expect(() => loadConfig(base, ['model.vision_aux=null'])).toThrow(/need model\.vision_aux/);
    expect(() => loadConfig(base, ['data.boxes=null'])).toThrow(/set data\.boxes/);
  });

  it('reports malformed YAML, missing files, extends cycles and bad --set', async () => {
    const dir = await tmpYaml({ 'bad.yaml': 'name: [unclosed\n', 'c1.yaml': 'extends: c2.yaml\n', 'c2.yaml': 'extends: c1.yaml\n' });
    expect(() => loadConfig(path.join(dir, 'bad.yaml'))).toThrow(/bad\.yaml: invalid YAML/);
    expect(() => loadConfig(path.join(dir, 'nope.yaml'))).toThrow(/cannot read config/);
    expect(() => loadConfig(path.join(dir, 'c1.yaml'))).toThrow(/extends cycle/);
    expect(() => applySets({}, ['novalue'])).toThrow(/key\.path=value/);
  });

  it('the hash covers what changes the numbers, not logging, saving or caching', () => {
    const file = path.join(CONFIGS, 'tiny-shapes/pretrain.yaml');
    const { hash } = loadConfig(file);
    const operational = ['train.log_steps=3', 'train.save_steps=7', 'train.feature_cache=off', 'train.feature_cache_mb=10', 'data.prefetch=0', 'data.image_workers=0'];
    expect(loadConfig(file, operational).hash).toBe(hash);
    for (const numeric of ['train.lr=0.5', 'seed=3', 'train.batch_size=8', 'data.max_length=100', 'model.llm.num_layers=1']) {
      expect(loadConfig(file, [numeric]).hash, numeric).not.toBe(hash);
    }
  });

  it('suggests only near misses', () => {
    expect(suggest('batchsize', ['batch_size', 'lr'])).toBe('batch_size');
    expect(suggest('zzzzzz', ['batch_size', 'lr'])).toBeNull();
  });
});

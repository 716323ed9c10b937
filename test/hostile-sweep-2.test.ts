/**
 * Red-team sweep, round 2 (issue 12), on the surfaces added since the first (hostile-sweep.test.ts): LoRA
 * configs and `lora.from` adapter directories, export destinations, dry runs of extreme configs, convert /
 * import, and outputs that collide with inputs. Each case failed before its fix (or pins a data-loss refusal).
 */
import { mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { failure, mkfifo } from './hostile-helpers.js';
import { expectOneLineError, runCli } from './cli-harness.js';
import { tempRoot } from './temp-root.js';
import { collector, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';
import { loadConfig } from '../src/config/load.js';
import { modelConfigFrom } from '../src/config/build-model.js';
import { EXIT, MgllavaError, WeightsError } from '../src/errors.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, readAdapterConfig, readAdapterWeights } from '../src/io/peft.js';
import { train } from '../src/train/trainer.js';
import { writeE2eDirs } from './io-fixtures.js';
import { writeTestImage, writeTinyOwlv2Dir } from './owlv2-fixture.js';

const tmp = tempRoot('hostile2');
const TINY_FT = path.resolve('configs/tiny-shapes/finetune.yaml');

/** A safetensors file written byte by byte (any dtype, any header), for adapters no writer of ours makes. */
function rawSafetensors(file: string, tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }>): void {
  const header: Record<string, unknown> = {};
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes.length] };
    parts.push(t.bytes);
    at += t.bytes.length;
  }
  const json = Buffer.from(JSON.stringify(header).padEnd(Math.ceil(JSON.stringify(header).length / 8) * 8, ' '));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, ...parts]));
}

/** Every file under `dir` with its bytes, to show that a refusal touched nothing. */
const snapshot = (dir: string) =>
  Object.fromEntries(readdirSync(dir, { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).map((d) => [path.join(d.parentPath, d.name), readFileSync(path.join(d.parentPath, d.name)).toString('base64')]));

const f32 = (...v: number[]) => new Uint8Array(new Float32Array(v).buffer);
const KEY_A = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight';
const KEY_B = 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight';
const ADAPTER_CONFIG = { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 1, lora_alpha: 1, lora_dropout: 0, target_modules: ['q_proj'], use_rslora: false, bias: 'none' };

/** An adapter dir: a good adapter_config.json and `tensors` as adapter_model.safetensors. */
async function adapterDir(name: string, tensors: Parameters<typeof rawSafetensors>[1]): Promise<string> {
  const dir = await tmp.fresh(name);
  writeFileSync(path.join(dir, ADAPTER_CONFIG_FILE), JSON.stringify(ADAPTER_CONFIG));
  rawSafetensors(path.join(dir, ADAPTER_WEIGHTS_FILE), tensors);
  return dir;
}

describe('lora.from: hostile adapter directories', () => {
  it('an adapter_config.json that is a FIFO, a link to /dev/zero, a folder, huge or not UTF-8 is one line (a FIFO and /dev/zero hung)', async () => {
    const fifo = await tmp.fresh('ad-fifo');
    mkfifo(path.join(fifo, ADAPTER_CONFIG_FILE));
    expect((await failure(() => readAdapterConfig(fifo))).message).toBe(`${fifo}/${ADAPTER_CONFIG_FILE}: the adapter config is not a regular file (a device, pipe or socket)`);
    const zero = await tmp.fresh('ad-zero');
    symlinkSync('/dev/zero', path.join(zero, ADAPTER_CONFIG_FILE));
    expect(await failure(() => readAdapterConfig(zero))).toBeInstanceOf(WeightsError);
    const folder = await tmp.fresh('ad-dir');
    mkdirSync(path.join(folder, ADAPTER_CONFIG_FILE));
    expect((await failure(() => readAdapterConfig(folder))).message).toMatch(/the adapter config is a directory, a file was expected$/);
    const huge = await tmp.fresh('ad-huge');
    writeFileSync(path.join(huge, ADAPTER_CONFIG_FILE), `${' '.repeat(5 << 20)}{}`);
    expect((await failure(() => readAdapterConfig(huge))).message).toMatch(/the adapter config is 5242882 bytes, more than the 4194304/);
    const latin1 = await tmp.fresh('ad-latin1'); // a U+FFFD in place of the byte loaded silently
    writeFileSync(path.join(latin1, ADAPTER_CONFIG_FILE), Buffer.concat([Buffer.from(JSON.stringify(ADAPTER_CONFIG).slice(0, -1)), Buffer.from(', "revision": "\xe4"}', 'latin1')]));
    expect((await failure(() => readAdapterConfig(latin1))).message).toMatch(/the adapter config is not UTF-8 text$/);
    // through the CLI: exit 5 (weights), one line, before any work
    const r = await runCli(['finetune', '--config', TINY_FT, '--dry-run', '--set', `model.llm.lora.from=${fifo}`]);
    expect(r.code).toBe(EXIT.weights);
    expect(expectOneLineError(r)).toMatch(/adapter_config\.json: the adapter config is not a regular file/);
  });

  it('NaN / Inf / integer adapter weights are refused (they loaded and trained silently); F16 and BF16 are widened', async () => {
    const nan = await adapterDir('w-nan', { [KEY_A]: { dtype: 'F32', shape: [1, 2], bytes: f32(1, 2) }, [KEY_B]: { dtype: 'F32', shape: [2, 1], bytes: f32(Number.NaN, 0) } });
    expect((await failure(() => readAdapterWeights(nan))).message).toMatch(new RegExp(`${KEY_B} has 1 non-finite value\\(s\\) \\(first at flat index 0: NaN\\)`));
    const inf = await adapterDir('w-inf', { [KEY_A]: { dtype: 'F32', shape: [1, 2], bytes: f32(1, Number.NEGATIVE_INFINITY) } });
    expect((await failure(() => readAdapterWeights(inf))).message).toMatch(/-Infinity/);
    const int = await adapterDir('w-i32', { [KEY_A]: { dtype: 'I32', shape: [1, 2], bytes: new Uint8Array(new Int32Array([1, 2]).buffer) } });
    expect((await failure(() => readAdapterWeights(int))).message).toBe(`${int}/${ADAPTER_WEIGHTS_FILE}: ${KEY_A} is I32, an adapter weight must be a float type (F32, F16, BF16)`);
    const half = await adapterDir('w-f16', {
      [KEY_A]: { dtype: 'F16', shape: [1, 2], bytes: new Uint8Array(new Uint16Array([0x3c00, 0xc000]).buffer) }, // 1, -2
      [KEY_B]: { dtype: 'BF16', shape: [2, 1], bytes: new Uint8Array(new Uint16Array([0x3f80, 0x4040]).buffer) }, // 1, 3
    });
    const w = await readAdapterWeights(half);
    expect([...w.get('llm.model.layers.0.self_attn.q_proj.lora_A.weight')!.data]).toEqual([1, -2]);
    expect([...w.get('llm.model.layers.0.self_attn.q_proj.lora_B.weight')!.data]).toEqual([1, 3]);
  });
});

describe('LoRA config keys this LLM cannot have', () => {
  const model = (sets: string[]) => modelConfigFrom(loadConfig(TINY_FT, sets).config.model);

  it.each([
    [['model.llm.lora.targets=[qkv_proj]'], /^model\.llm\.lora: LoRA config: target 'qkv_proj' is not a linear of this LLaMA model/],
    [['model.llm.tie_word_embeddings=true', 'model.llm.lora.modules_to_save=[lm_head]'], /^model\.llm\.lora: LoRA config: modules_to_save 'lm_head': this model ties lm_head to embed_tokens; name embed_tokens/],
  ])('%j is a config error (exit 3) before any work (a stack trace from the model builder; --dry-run said nothing)', async (sets, message) => {
    let e: unknown = null;
    try {
      model(sets);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(MgllavaError);
    expect((e as MgllavaError).category).toBe('config');
    expect((e as Error).message).toMatch(message);
    const r = await runCli(['finetune', '--config', TINY_FT, '--dry-run', ...sets.flatMap((s) => ['--set', s])]);
    expect(r.code).toBe(EXIT.config);
    expect(expectOneLineError(r)).toMatch(/model\.llm\.lora: LoRA config: /);
    expect(() => model(['model.llm.tie_word_embeddings=true', 'model.llm.lora.modules_to_save=[embed_tokens]'])).not.toThrow();
  });
});

describe('outputs of a run: export and eval', () => {
  let setup: TinyTrainSetup;
  let run: string;

  beforeAll(async () => {
    setup = await makeTinyTrainSetup(8);
    const quiet = { progress: 'off' as const, out: collector().stream, err: collector().stream };
    await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: ['train.max_steps=1'], ...quiet });
    await train({ configFile: setup.finetuneYaml, stage: 'finetune', sets: ['name=lora', 'model.llm.lora.r=2', 'train.max_steps=1', 'train.save_steps=1'], ...quiet });
    run = path.join(setup.runs, 'lora');
    return () => setup.cleanup();
  }, 120_000);

  it('--out inside the run, a step dir or init.from is refused, --overwrite or not (--overwrite replaced the step\'s model.safetensors)', async () => {
    const before = snapshot(setup.runs);
    const link = path.join(setup.root, 'link-to-run');
    symlinkSync(run, link);
    const cases = [
      [path.join(run, 'step-00000001'), 'the run directory', run],
      [run, 'the run directory', run],
      [path.join(link, 'exports', 'new'), 'the run directory', run],
      [path.join(setup.runs, 'tiny-pretrain'), 'init.from', path.join(setup.runs, 'tiny-pretrain')],
    ] as const;
    for (const [out, what, dir] of cases) {
      const r = await runCli(['export', run, '--format', 'xtuner', '--merge', '--out', out, '--overwrite']);
      expect(r.code).toBe(EXIT.run);
      expect(expectOneLineError(r)).toBe(`mgllava: --out ${out} is inside ${what} ${dir}: the export would write over what it reads; choose a folder outside it`);
    }
    expect(snapshot(setup.runs)).toEqual(before);
    // an export beside the run is fine
    const ok = await runCli(['export', run, '--format', 'peft', '--out', path.join(setup.root, 'exported')]);
    expect(ok.code).toBe(0);
  });

  it('eval --out naming a file of the run or its tokenizer is refused before evaluating (--out RUN/config.yaml made the run unusable)', async () => {
    const before = snapshot(setup.runs);
    const eval1 = ['eval', run, '--records', path.join(setup.data, 'finetune.json'), '--limit', '1'];
    for (const [out, what] of [
      [path.join(run, 'config.yaml'), 'a file of the run'],
      [path.join(run, 'metrics.jsonl'), 'a file of the run'],
      [path.join(run, 'step-00000001', 'state.json'), 'a file of the run'],
      [path.join(setup.data, 'tokenizer.json'), "the run's tokenizer"],
    ]) {
      const r = await runCli([...eval1, '--out', out]);
      expect(r.code).toBe(EXIT.data);
      expect(expectOneLineError(r)).toBe(`mgllava: the predictions file (--out) ${out} is ${what} (${out}): writing it would destroy that input; choose another name`);
    }
    expect(snapshot(setup.runs)).toEqual(before);
    // the default (RUN/predictions-...jsonl) may be written, and written again
    for (let i = 0; i < 2; i++) expect((await runCli(eval1)).code).toBe(0);
  });

  it('import --kind mgllava: --key on a safetensors release, or naming no tensors, is refused (ignored silently / "20 weights missing")', async () => {
    const pretrain = path.join(setup.runs, 'tiny-pretrain');
    const xt = path.join(setup.root, 'xt');
    expect((await runCli(['export', pretrain, '--format', 'xtuner', '--out', xt])).code).toBe(0);
    const imp = (from: string, key: string) => runCli(['import', '--kind', 'mgllava', '--from', from, '--config', path.join(pretrain, 'config.yaml'), '--out', path.join(setup.root, `imp-${key}`), '--key', key]);
    const st = path.join(xt, 'model.safetensors');
    const a = await imp(st, 'state_dict');
    expect(a.code).toBe(EXIT.usage);
    expect(expectOneLineError(a)).toBe(`mgllava: --key state_dict: ${st} is safetensors, whose tensors are not nested under keys; leave --key out`);
    const b = await imp(path.join(xt, 'model.pth'), 'meta');
    expect(b.code).toBe(EXIT.weights);
    expect(expectOneLineError(b)).toMatch(/model\.pth: the state dict under 'meta' holds no tensors \(\d+ other entries\) \[hint: check --key\]$/);
    expect(readdirSync(setup.root).filter((n) => n.startsWith('imp-'))).toEqual([]);
  });
});

describe('convert and import outputs', () => {
  const PTH = path.resolve('../shared/torch-checkpoints/plain_zip/model.pth');

  it('convert --out: a directory, below a file, /dev or a dangling link is one line before any work (/dev/null.safetensors was written into /dev)', async () => {
    const dir = await tmp.fresh('convert');
    mkdirSync(path.join(dir, 'd.safetensors'));
    writeFileSync(path.join(dir, 'file'), 'x');
    symlinkSync(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
    const cases = [
      [path.join(dir, 'd.safetensors'), /--out .*d\.safetensors is a directory; give a file name/], // was a "renaming" error naming a temporary
      [path.join(dir, 'file', 'x.safetensors'), /--out .*file: .*file is a file, not a directory$/],
      ['/dev/x.safetensors', /--out \/dev: \/dev is a virtual file system/],
      [path.join(dir, 'dangling', 'x.safetensors'), /dangling is a symbolic link to nothing/],
    ] as const;
    for (const [out, message] of cases) expect(expectOneLineError(await runCli(['convert', PTH, '--out', out, '--overwrite']))).toMatch(message);
    expect(readdirSync(dir).sort()).toEqual(['d.safetensors', 'dangling', 'file']);
    expect(readdirSync(path.join(dir, 'd.safetensors'))).toEqual([]);
  });

  it('import --out naming a file of --from is refused (the pretrained weights were replaced by their renamed copy); a wrong extension too', async () => {
    const d = await writeE2eDirs(await tmp.fresh('import'));
    const weights = path.join(d.llm, 'model.safetensors');
    const before = readFileSync(weights);
    const link = path.join(d.llm, '..', 'link.safetensors');
    symlinkSync(weights, link);
    for (const out of [weights, link]) {
      const r = await runCli(['import', '--kind', 'llm', '--from', d.llm, '--out', out]);
      expect(r.code).toBe(EXIT.data);
      expect(expectOneLineError(r)).toBe(`mgllava: --out ${out} is the weights read (${weights}): writing it would destroy that input; choose another name`);
    }
    const config = path.join(d.llm, 'config.json');
    const configText = readFileSync(config, 'utf8');
    expect(expectOneLineError(await runCli(['import', '--kind', 'llm', '--from', d.llm, '--out', config]))).toBe(`mgllava: --out ${config}: the file written is SAFETENSORS: give it a .safetensors name`);
    expect(readFileSync(weights).equals(before)).toBe(true);
    expect(readFileSync(config, 'utf8')).toBe(configText);
    expect(readdirSync(d.llm).sort()).toEqual(['config.json', 'model.safetensors']);
  });
});

describe('boxes --out', () => {
  it('naming the records, the tag list, a detector file or an image is refused, --overwrite or not (--overwrite deleted the input)', async () => {
    const dir = await tmp.fresh('boxes');
    const det = path.join(dir, 'det');
    mkdirSync(det);
    await writeTinyOwlv2Dir(det);
    mkdirSync(path.join(dir, 'images'));
    await writeTestImage(path.join(dir, 'images', 'a.png'), 40, 30, 1);
    const records = path.join(dir, 'records.json');
    writeFileSync(records, JSON.stringify([{ id: 'a', image: 'a.png', conversations: [{ from: 'human', value: '<image>\nq' }, { from: 'gpt', value: 'x' }] }]));
    const tags = path.join(dir, 'tags.txt');
    writeFileSync(tags, 'dog\n');
    const before = snapshot(dir);
    const base = ['boxes', '--detector', det, '--images', path.join(dir, 'images'), '--overwrite', '--progress', 'off'];
    const cases = [
      [['--records', records, '--tags', 'dog', '--out', records], `the records file (${records})`],
      [['--tags-file', tags, '--out', tags], `the tag list (--tags-file) (${tags})`],
      [['--tags', 'dog', '--out', path.join(det, 'config.json')], `a file of the detector (${path.join(det, 'config.json')})`],
      [['--tags', 'dog', '--out', path.join(dir, 'images', 'a.png')], `the image of a.png (${path.join(dir, 'images', 'a.png')})`],
    ] as const;
    for (const [extra, what] of cases) {
      const r = await runCli([...base, ...extra]);
      expect(r.code).toBe(EXIT.data);
      expect(expectOneLineError(r)).toBe(`mgllava: the box file (--out) ${extra[extra.length - 1]} is ${what}: writing it would destroy that input; choose another name`);
    }
    expect(snapshot(dir)).toEqual(before);
  });
});

/**
 * One user-facing error type: every error class a user can cause is an MgllavaError with a category, printed as
 * one line with that category's exit code; anything else is a bug (stack trace, "this is a bug", exit 70).
 */
import { describe, expect, it } from 'vitest';
import { MemoryCeilingError } from '../src/backend/memory.js';
import { BackendError } from '../src/backend/select.js';
import { ConfigError } from '../src/config/load.js';
import { BadDatasetError } from '../src/data/dataset.js';
import { ImageError } from '../src/data/image.js';
import { JsonSyntaxError } from '../src/data/json.js';
import { DataError, EXIT, fsError, MgllavaError, reportError, ResourceError, UsageError, WeightsError, type ErrorCategory } from '../src/errors.js';
import { BoxEntryError } from '../src/infer/box-entry.js';
import { ChatLengthError } from '../src/infer/chat.js';
import { EvalInputError } from '../src/infer/eval.js';
import { ExportError } from '../src/io/export.js';
import { PretrainedError } from '../src/io/pretrained.js';
import { SafetensorsError } from '../src/io/safetensors.js';
import { WeightLoadError } from '../src/nn/module.js';
import { DataSetupError } from '../src/train/build-data.js';
import { TrainError } from '../src/train/loop.js';
import { RunDirError } from '../src/run/layout.js';
import { AnnotationError } from '../src/train/warmup-data.js';

describe('error classes', () => {
  const cases: [Error, string, ErrorCategory][] = [
    [new ConfigError('c'), 'ConfigError', 'config'],
    [new PretrainedError('p'), 'PretrainedError', 'weights'],
    [new TrainError('t'), 'TrainError', 'training'],
    [new RunDirError('r'), 'RunDirError', 'run'],
    [new DataSetupError('d'), 'DataSetupError', 'data'],
    [new BadDatasetError([], 'records.json'), 'BadDatasetError', 'data'],
    [new WeightLoadError('w', ['a'], ['b']), 'WeightLoadError', 'weights'],
    [new MemoryCeilingError({ what: 'x', kernel: null, bytesNeeded: 1, bytesInUse: 0, ceilingBytes: 1, cause: 'ceiling' }), 'MemoryCeilingError', 'resource'],
    [new BackendError('b'), 'BackendError', 'backend'],
    [new ImageError('missing', 'a.png', 'not found'), 'ImageError', 'data'],
    [new JsonSyntaxError('r.json', 2, 3, 'bad'), 'JsonSyntaxError', 'data'],
    [new BoxEntryError('b'), 'BoxEntryError', 'data'],
    [new ChatLengthError('l'), 'ChatLengthError', 'usage'],
    [new EvalInputError('e'), 'EvalInputError', 'data'],
    [new SafetensorsError('f.safetensors', 'truncated'), 'SafetensorsError', 'weights'],
    [new ExportError('x'), 'ExportError', 'run'],
    [new AnnotationError('a'), 'AnnotationError', 'data'],
    [new UsageError('u'), 'UsageError', 'usage'],
  ];
  // A category with a class of its own: every error of that category is an instance of it (one catch finds them all).
  const baseOf: Partial<Record<ErrorCategory, abstract new (...args: never[]) => MgllavaError>> = { usage: UsageError, data: DataError, weights: WeightsError, resource: ResourceError };
  it.each(cases)('%s is an MgllavaError', (e, name, category) => {
    expect(e).toBeInstanceOf(MgllavaError);
    if (baseOf[category]) expect(e).toBeInstanceOf(baseOf[category]);
    expect(e.name).toBe(name);
    expect((e as MgllavaError).category).toBe(category);
    expect((e as MgllavaError).exitCode).toBe(EXIT[category]);
  });

  it('keeps the fields callers read', () => {
    const j = new JsonSyntaxError('r.json', 2, 3, 'bad');
    expect([j.file, j.line, j.column, j.message]).toEqual(['r.json', 2, 3, 'r.json:2:3: malformed JSON: bad']);
    const w = new WeightLoadError('w', ['a'], ['b']);
    expect([w.missing, w.unexpected]).toEqual([['a'], ['b']]);
    expect(new SafetensorsError('f', 'short', 't').tensor).toBe('t');
  });

  it('exit codes are distinct per category', () => {
    const codes = Object.values(EXIT);
    expect(new Set(codes).size).toBe(codes.length);
  });
});

describe('reportError', () => {
  it('an MgllavaError is one line with its hint and its exit code', () => {
    const r = reportError(new MgllavaError('records.json: record 3: image not found', 'data', { hint: 'check data.images' }));
    expect(r).toEqual({ text: 'mgllava: records.json: record 3: image not found [hint: check data.images]\n', exitCode: EXIT.data });
  });

  it('anything else is a bug: stack trace, says so, exit 70', () => {
    const r = reportError(new TypeError('x is undefined'));
    expect(r.exitCode).toBe(EXIT.bug);
    expect(r.text).toMatch(/this is a bug/);
    expect(r.text).toMatch(/TypeError: x is undefined\n\s+at /);
  });

  it('fsError names the file and the reason', () => {
    const e = fsError(Object.assign(new Error('ENOSPC'), { code: 'ENOSPC' }), 'run/step-1/model.safetensors', 'write');
    expect(e).toBeInstanceOf(ResourceError);
    expect(fsError(Object.assign(new Error('ENOENT'), { code: 'ENOENT' }), 'r.json', 'read')).toBeInstanceOf(DataError);
    expect(reportError(e).text).toMatch(/^mgllava: run\/step-1\/model\.safetensors: write: no space left on device \[hint: free disk space/);
  });
});

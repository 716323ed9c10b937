import { describe, expect, it } from 'vitest';
import { jsonItems, JsonSyntaxError, parseJson, type JsonItem } from '../src/data/json.js';
import { parseBoxes, parseRecords } from '../src/data/records.js';

const conv = (q = '<image>\nwhat ?', a = 'red') => [
  { from: 'human', value: q },
  { from: 'gpt', value: a },
];

describe('JSON reading', () => {
  it('reports line and column of a syntax error', () => {
    const text = '[\n  {"id": "a",\n   "x": [1, 2,, 3]}\n]';
    let err: unknown;
    try {
      parseJson(text, 'f.json');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(JsonSyntaxError);
    expect(err).toMatchObject({ file: 'f.json', line: 3, column: 15 });
    expect(String((err as Error).message)).toMatch(/^f\.json:3:15: malformed JSON/);
  });

  it('reports unterminated strings and trailing garbage', () => {
    expect(() => parseJson('{"a": "b', 'x')).toThrow(/x:1:7: malformed JSON: unterminated string/);
    expect(() => parseJson('{"a": 1} x', 'x')).toThrow(/x:1:10: .*after the JSON value/);
    expect(() => parseJson('{"a": 01}', 'x')).toThrow(/x:1:8/);
  });

  it("accepts Python's NaN / Infinity so they can be reported per record", () => {
    const v = parseJson('{"b": [NaN, Infinity, -Infinity, 1.5e2]}', 'x') as { b: number[] };
    expect(v.b[0]).toBeNaN();
    expect(v.b.slice(1)).toEqual([Infinity, -Infinity, 150]);
    // Same values as JSON.parse on valid text (strings with escapes too).
    const valid = '{"s": "a\\u00e9\\n\\"q\\"", "n": [-0.5, 1e-3, true, null]}';
    expect(parseJson(`${valid} NaN`.replace(' NaN', ''), 'x')).toEqual(JSON.parse(valid));
  });

  it('JSON Lines: bad lines reported with their line number, others kept', async () => {
    const lines = await collect('{"a":1}\n\n{"a":\n{"a":3}\r\n', 'lines');
    expect(lines.map((l) => l.line)).toEqual([1, 3, 4]);
    expect(lines[1]!.error).toMatchObject({ line: 3, column: 6 });
    expect(lines[2]!.value).toEqual({ a: 3 });
  });

  it('streams array / object items; a bad item is reported with its file position, the rest is read', async () => {
    const text = '[\n {"a": 1},\n {"a": [1, 2}, "s": "]"},\n\t"x,y", {"b": "\\"}"}\n]\n';
    const items = await collect(text, 'auto');
    expect(items.map((i) => [i.index, i.line, i.column])).toEqual([
      [0, 2, 2],
      [1, 3, 2],
      [2, 4, 2],
      [3, 4, 9],
    ]);
    expect(items[0]!.value).toEqual({ a: 1 });
    expect(items[1]!.error).toMatchObject({ line: 3, column: 13 }); // the '}' closing a '['
    expect(items[2]!.value).toBe('x,y');
    expect(items[3]!.value).toEqual({ b: '"}' });
    const obj = await collect('{"k1": {"v": 1}, "k\\"2": [NaN]}', 'auto');
    expect(obj.map((i) => i.key)).toEqual(['k1', 'k"2']);
    expect((obj[1]!.value as number[])[0]).toBeNaN();
  });

  it('gives the same items whatever the chunking of the stream', async () => {
    const text = '{"r1": {"boxes": [[1, 2, 3, 4]], "labels": ["a\\"b"], "scores": [0.5]},\n "r2": {"x": "{[,"}, "r3": {"bad": }}';
    const whole = await collect(text, 'auto');
    for (const size of [1, 2, 3, 7]) {
      const chunks = Array.from({ length: Math.ceil(text.length / size) }, (_, i) => text.slice(i * size, (i + 1) * size));
      expect(await collect({ chunks }, 'auto')).toEqual(whole);
    }
    expect(whole[2]!.error).toMatchObject({ line: 2, column: 36 });
  });

  it('structural errors stop the file with a position', async () => {
    await expect(collect('[{"a": 1} {"a": 2}]', 'auto')).rejects.toThrow(/x:1:11: malformed JSON: unexpected '\{'/);
    await expect(collect('[{"a": 1},]', 'auto')).rejects.toThrow(/x:1:11: .*after ','/);
    await expect(collect('[{"a": "1}]\n', 'auto')).rejects.toThrow(/x:2:1: .*end of input \(the item starting at line 1, column 2 is not closed\)/);
    await expect(collect('  ', 'auto')).rejects.toThrow(/empty file/);
    await expect(collect('[1] 2', 'auto')).rejects.toThrow(/after the JSON value/);
  });
});

async function collect(source: string | { chunks: string[] }, format: 'lines' | 'auto'): Promise<JsonItem[]> {
  const out: JsonItem[] = [];
  for await (const item of jsonItems(source, 'x', format)) out.push(item);
  return out;
}

describe('records', () => {
  it('reads a JSON array with text-only and image records, keeping extra fields', async () => {
    const text = JSON.stringify([
      { id: 'a', image: 'x.png', conversations: conv(), category: 'small_color' },
      { id: 7, conversations: conv('hello', 'hi') },
    ]);
    const { records, bad } = await parseRecords(text, 'r.json');
    expect(bad).toEqual([]);
    expect(records[0]).toMatchObject({ id: 'a', image: 'x.png', extra: { category: 'small_color' }, source: { file: 'r.json', index: 0 } });
    expect(records[1]).toMatchObject({ id: '7', image: null });
  });

  it('a malformed record in a JSON array is one bad record (line/column); a structural error spoils the file', async () => {
    const one = await parseRecords('[{"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},\n {"id": }]', 'r.json');
    expect(one.records.map((r) => r.id)).toEqual(['a']);
    expect(one.bad).toEqual([expect.objectContaining({ kind: 'malformed_json', file: 'r.json', line: 2, column: 9, id: null, index: 1 })]);
    const { records, bad } = await parseRecords('[{"id": "a"}\n {"id": "b"}]', 'r.json');
    expect(records).toEqual([]);
    expect(bad).toEqual([expect.objectContaining({ kind: 'malformed_json', file: 'r.json', line: 2, column: 2, id: null })]);
  });

  it('classifies every structural problem', async () => {
    const lines = [
      JSON.stringify({ id: 'ok', image: 'x.png', conversations: conv() }),
      '{"id": "broken", ',
      JSON.stringify({ image: 'x.png', conversations: conv() }),
      JSON.stringify({ id: 'ok', conversations: conv('q', 'a') }),
      JSON.stringify({ id: 'empty', image: 'x.png', conversations: [] }),
      JSON.stringify({ id: 'noanswer', conversations: [{ from: 'human', value: 'q' }] }),
      JSON.stringify({ id: 'two', image: 'x.png', conversations: conv('<image> <image> q') }),
      JSON.stringify({ id: 'none', image: 'x.png', conversations: conv('q') }),
      JSON.stringify({ id: 'textimg', conversations: conv('<image>\nq') }),
      JSON.stringify({ id: 'late', image: 'x.png', conversations: [...conv('q'), ...conv('<image> q2')] }),
      JSON.stringify({ id: 'role', conversations: [{ from: 'system', value: 'x' }] }),
    ];
    const { records, bad } = await parseRecords(lines.join('\n'), 'r.jsonl');
    expect(records.map((r) => r.id)).toEqual(['ok']);
    const got = bad.map((b) => [b.id, b.kind, b.line]);
    expect(got).toEqual([
      [null, 'malformed_json', 2],
      [null, 'bad_record', 3],
      ['ok', 'duplicate_id', 4],
      ['empty', 'empty_conversation', 5],
      ['noanswer', 'empty_conversation', 6],
      ['two', 'image_token_count', 7],
      ['none', 'image_token_count', 8],
      ['textimg', 'image_token_count', 9],
      ['late', 'image_token_count', 10],
      ['role', 'bad_record', 11],
    ]);
    expect(bad[0]!.reason).toMatch(/line 2, column 18/);
  });
});

describe('box JSON', () => {
  const entry = { boxes: [[1, 2, 3, 4]], labels: ['cat'], scores: [0.5] };

  it('reads the dict form and the list form', async () => {
    const a = await parseBoxes(JSON.stringify({ r1: entry }), 'b.json');
    const b = await parseBoxes(JSON.stringify([{ id: 'r1', ...entry }]), 'b.json');
    for (const r of [a, b]) {
      expect(r.bad).toEqual([]);
      expect(r.entries.get('r1')).toEqual(entry);
    }
  });

  it('flags non-finite coordinates (NaN from Python, null from JS), shape errors and duplicates', async () => {
    const text = [
      '{"nan": {"boxes": [[1, NaN, 3, 4]], "labels": ["a"], "scores": [0.1]},',
      ' "null": {"boxes": [[1, 2, null, 4]], "labels": ["a"], "scores": [0.1]},',
      ' "inf": {"boxes": [[1, 2, 3, Infinity]], "labels": ["a"], "scores": [0.1]},',
      ' "three": {"boxes": [[1, 2, 3]], "labels": ["a"], "scores": [0.1]},',
      ' "count": {"boxes": [[1, 2, 3, 4]], "labels": [], "scores": [0.1]},',
      ' "empty": {"boxes": [], "labels": [], "scores": []}}',
    ].join('\n');
    const r = await parseBoxes(text, 'b.json');
    expect(r.unreadable).toBeNull();
    expect(r.bad.map((b) => [b.id, b.kind])).toEqual([
      ['nan', 'nonfinite_box'],
      ['null', 'nonfinite_box'],
      ['inf', 'nonfinite_box'],
      ['three', 'bad_boxes'],
      ['count', 'bad_boxes'],
    ]);
    expect(r.entries.get('empty')).toEqual({ boxes: [], labels: [], scores: [] });
    const dup = await parseBoxes(JSON.stringify([{ id: 'x', ...entry }, { id: 'x', ...entry }]), 'b.json');
    expect(dup.entries.has('x')).toBe(false);
    expect(dup.bad).toEqual([expect.objectContaining({ id: 'x', kind: 'bad_boxes', reason: expect.stringMatching(/duplicate/) })]);
  });

  it('a malformed box file is unreadable, with line/column', async () => {
    const r = await parseBoxes('{"a": {"boxes": [[1,2,3,4]]\n', 'b.json');
    expect(r.unreadable).toMatchObject({ kind: 'malformed_json', line: 2, column: 1 });
  });
});

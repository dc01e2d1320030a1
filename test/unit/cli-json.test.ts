import { test } from 'node:test';
import assert from 'node:assert/strict';
import { qdictOrder, tdbHash, toQemuJson } from '../../src/cli/json.js';
import { humanInfo, snapshotLine, dumpQObject } from '../../src/cli/img/info.js';
import { jsonEntry } from '../../src/cli/img/map.js';
import { checkJson as imageCheckJson, emptyCounts } from '../../src/block/check.js';

// Captured from qemu-img 7.2.22: `qemu-img create -f qcow2 t.qcow2 1G; qemu-img info --output=json t.qcow2`
const QCOW2_INFO = `{
    "virtual-size": 1073741824,
    "filename": "t.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}`;

// qemu-img 7.2.22, overlay with two snapshots and a bitmap.
const OVERLAY_INFO = `{
    "backing-filename-format": "qcow2",
    "snapshots": [
        {
            "icount": 0,
            "vm-clock-nsec": 0,
            "name": "s1",
            "date-sec": 1795315087,
            "date-nsec": 760211000,
            "vm-clock-sec": 0,
            "id": "1",
            "vm-state-size": 0
        }
    ],
    "virtual-size": 1073741824,
    "filename": "o.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 225280,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "bitmaps": [
                {
                    "flags": [
                        "auto"
                    ],
                    "name": "b0",
                    "granularity": 65536
                }
            ],
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "full-backing-filename": "t.qcow2",
    "backing-filename": "t.qcow2",
    "dirty-flag": false
}`;

// Objects built in QAPI schema order, as the block layer builds them.
const qcow2Data = { compat: '1.1', 'lazy-refcounts': false, corrupt: false, 'refcount-bits': 16, 'compression-type': 'zlib', 'extended-l2': false };

test('QDict order of a qcow2 image info matches qemu-img 7.2 byte for byte', () => {
  const info = {
    filename: 't.qcow2',
    format: 'qcow2',
    'dirty-flag': false,
    'actual-size': 200704,
    'virtual-size': 1073741824,
    'cluster-size': 65536,
    'format-specific': { type: 'qcow2', data: { ...qcow2Data, 'extended-l2': false } },
  };
  assert.equal(toQemuJson(info), QCOW2_INFO);
});

test('snapshots, bitmaps and backing members come out in qemu-img 7.2 order', () => {
  const info = {
    filename: 'o.qcow2',
    format: 'qcow2',
    'dirty-flag': false,
    'actual-size': 225280,
    'virtual-size': 1073741824,
    'cluster-size': 65536,
    'backing-filename': 't.qcow2',
    'full-backing-filename': 't.qcow2',
    'backing-filename-format': 'qcow2',
    snapshots: [
      { id: '1', name: 's1', 'vm-state-size': 0, 'date-sec': 1795315087, 'date-nsec': 760211000, 'vm-clock-sec': 0, 'vm-clock-nsec': 0, icount: 0 },
    ],
    'format-specific': {
      type: 'qcow2',
      data: {
        compat: '1.1',
        'lazy-refcounts': false,
        corrupt: false,
        'refcount-bits': 16,
        bitmaps: [{ name: 'b0', granularity: 65536, flags: ['auto'] }],
        'compression-type': 'zlib',
        'extended-l2': false,
      },
    },
  };
  assert.equal(toQemuJson(info), OVERLAY_INFO);
});

test('key orders documented for QEMU structures', () => {
  assert.deepEqual(qdictOrder(['filename', 'format', 'dirty-flag', 'actual-size', 'virtual-size', 'cluster-size', 'encrypted', 'backing-filename', 'full-backing-filename', 'backing-filename-format', 'snapshots', 'format-specific']), [
    'backing-filename-format',
    'snapshots',
    'virtual-size',
    'filename',
    'cluster-size',
    'format',
    'actual-size',
    'format-specific',
    'full-backing-filename',
    'encrypted',
    'backing-filename',
    'dirty-flag',
  ]);
  assert.deepEqual(qdictOrder(['type', 'data']), ['type', 'data']);
  assert.deepEqual(qdictOrder(['bitmaps', 'required', 'fully-allocated']), ['bitmaps', 'required', 'fully-allocated']);
  assert.deepEqual(qdictOrder(['active', 'iters', 'stripes', 'key-offset']), ['active', 'iters', 'key-offset', 'stripes']);
  // The hash is defined mod 2^32: spot values.
  assert.equal(tdbHash('') , 12345);
  assert.equal(tdbHash('type') % 512, 425);
  assert.equal(tdbHash('data') % 512, 505);
});

test('keys sharing a bucket come out in reverse insertion order', () => {
  // find two keys with the same bucket
  const byBucket = new Map<number, string>();
  let pair: [string, string] | undefined;
  for (let i = 0; !pair; i++) {
    const k = `k${i}`;
    const b = tdbHash(k) % 512;
    const prev = byBucket.get(b);
    if (prev !== undefined) pair = [prev, k];
    else byBucket.set(b, k);
  }
  assert.deepEqual(qdictOrder(pair), [pair[1], pair[0]]);
});

test('empty containers, escaping and arrays', () => {
  assert.equal(toQemuJson({ children: [], data: {} }), '{\n    "children": [\n    ],\n    "data": {\n    }\n}');
  assert.equal(toQemuJson([]), '[\n]');
  assert.equal(toQemuJson({}), '{\n}');
  assert.equal(toQemuJson('a"b\\c\n\t\b\f\r\u0001\u007f\u00e9\u{1f600}'), '"a\\"b\\\\c\\n\\t\\b\\f\\r\\u0001\\u007F\\u00E9\\uD83D\\uDE00"');
  assert.equal(toQemuJson([1, true, null]), '[\n    1,\n    true,\n    null\n]');
  assert.equal(toQemuJson({ a: undefined, b: 1 }), '{\n    "b": 1\n}');
});

test('human info layout of qemu-img 7.2 with snapshots and nested format-specific data', () => {
  const prevTz = process.env.TZ;
  process.env.TZ = 'UTC';
  try {
    const text = humanInfo({
      filename: 'o.qcow2',
      format: 'qcow2',
      'virtual-size': 1073741824,
      'actual-size': 225280,
      'cluster-size': 65536,
      'dirty-flag': true,
      'backing-filename': 't.qcow2',
      'full-backing-filename': '/x/t.qcow2',
      'backing-filename-format': 'qcow2',
      snapshots: [
        { id: '1', name: 's1', 'vm-state-size': 0, 'date-sec': 1795315087, 'date-nsec': 0, 'vm-clock-sec': 3723, 'vm-clock-nsec': 4000000, icount: 0 },
        { id: '2', name: 'snapshot-two', 'vm-state-size': 1536, 'date-sec': 0, 'date-nsec': 0, 'vm-clock-sec': 0, 'vm-clock-nsec': 0 },
      ],
      'format-specific': { type: 'qcow2', data: { compat: '1.1', bitmaps: [{ name: 'b0', granularity: 65536, flags: ['in-use', 'auto'] }] } },
    });
    assert.equal(
      text,
      [
        'image: o.qcow2',
        'file format: qcow2',
        'virtual size: 1 GiB (1073741824 bytes)',
        'disk size: 220 KiB',
        'cluster_size: 65536',
        'cleanly shut down: no',
        'backing file: t.qcow2 (actual path: /x/t.qcow2)',
        'backing file format: qcow2',
        'Snapshot list:',
        'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT',
        '1         s1                    0 B 2026-11-22 02:38:07 01:02:03.004          0',
        '2         snapshot-two      1.5 KiB 1970-01-01 00:00:00 00:00:00.000           ',
        'Format specific information:',
        '    compat: 1.1',
        '    bitmaps:',
        '        [0]:',
        '            flags:',
        '                [0]: in-use',
        '                [1]: auto',
        '            name: b0',
        '            granularity: 65536',
        '',
      ].join('\n'),
    );
  } finally {
    if (prevTz === undefined) delete process.env.TZ;
    else process.env.TZ = prevTz;
  }
  assert.equal(snapshotLine(), 'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT');
  assert.equal(dumpQObject({ a: 1 }, 2), '        a: 1\n');
});

// qemu-img 7.2.22: `qemu-img create -f qcow2 t.qcow2 1M; qemu-io -c 'write -c 0 64k' -c 'write 128k 64k' t.qcow2`, then
// `qemu-img check --output=json t.qcow2` and `qemu-img map --output=json t.qcow2`.
const CHECK_JSON = `{
    "image-end-offset": 458752,
    "compressed-clusters": 1,
    "total-clusters": 16,
    "check-errors": 0,
    "allocated-clusters": 2,
    "filename": "t.qcow2",
    "format": "qcow2",
    "fragmented-clusters": 1
}
`;
const MAP_JSON = `[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},
{ "start": 65536, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 131072, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 393216},
{ "start": 196608, "length": 851968, "depth": 0, "present": false, "zero": true, "data": false}]
`;

test('check --output=json: zero optional counts left out, members in qemu-img 7.2 order', () => {
  const counts = { ...emptyCounts(), imageEndOffset: 458752, compressedClusters: 1, totalClusters: 16, allocatedClusters: 2, fragmentedClusters: 1 };
  assert.equal(`${toQemuJson(imageCheckJson(counts, 't.qcow2', 'qcow2'))}\n`, CHECK_JSON);
  // The same bytes when the members arrive in QAPI schema order (ImageCheck), as QEMU inserts them.
  const schemaOrder = { filename: 't.qcow2', format: 'qcow2', 'check-errors': 0, 'image-end-offset': 458752, 'total-clusters': 16, 'allocated-clusters': 2, 'fragmented-clusters': 1, 'compressed-clusters': 1 };
  assert.equal(`${toQemuJson(schemaOrder)}\n`, CHECK_JSON);
});

test('map --output=json: one line per extent, offset only where qemu-img has one, as qemu-img 7.2 prints', () => {
  const e = (start: number, length: number, present: boolean, data: boolean, offset?: number) => ({ start, length, depth: 0, present, zero: !data, data, compressed: false, offset });
  const entries = [e(0, 65536, true, true), e(65536, 65536, false, false), e(131072, 65536, true, true, 393216), e(196608, 851968, false, false)];
  assert.equal(`[${entries.map(jsonEntry).join(',\n')}]\n`, MAP_JSON);
});

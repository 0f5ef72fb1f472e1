// Preloaded (`node --require`) into the hub and agents by
// `scripts/bench/run --profile --alloc`: V8's sampling heap profiler, counting
// objects that the GC has already collected too, so that the profile is what
// a workload allocates, not what it keeps. SIGUSR2 starts it; the next SIGUSR2
// stops it and writes `alloc-<pid>.json` into $ZTM_ALLOC_DIR (renamed into
// place, so that a reader never sees it half written).
'use strict';
const inspector = require('node:inspector');
const { renameSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const dir = process.env.ZTM_ALLOC_DIR;
if (dir) {
  const session = new inspector.Session();
  session.connect();
  let sampling = false;
  const out = join(dir, `alloc-${process.pid}.json`);
  const write = (body) => {
    writeFileSync(`${out}.part`, body);
    renameSync(`${out}.part`, out);
  };
  process.on('SIGUSR2', () => {
    if (!sampling) {
      sampling = true;
      const params = { samplingInterval: 256, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true };
      session.post('HeapProfiler.startSampling', params, (err) => {
        if (err) write(JSON.stringify({ error: err.message }));
      });
      return;
    }
    sampling = false;
    session.post('HeapProfiler.stopSampling', (err, res) => {
      write(JSON.stringify(err ? { error: err.message } : res.profile));
    });
  });
}

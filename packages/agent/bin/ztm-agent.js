#!/usr/bin/env -S node --initial-old-space-size=64 --no-memory-reducer
// --initial-old-space-size=64: with V8's default (a limit a little above the
// ≈ 15 MB live heap) relaying kept V8 in back-to-back major GCs, ≈ 35 per GB
// relayed in every process of the path; from 64 MB there are none and the
// path's CPU per GB falls from 7.5 to 4.2 s (docs/performance.md, "Major GCs").
// It is a limit, not a reservation.
// --no-memory-reducer: after ≈ 30 s without traffic V8's memory reducer runs
// GCs that throw the optimized code of the relay away, and the first ≈ 2,000
// connections after it cost each process twice the CPU (1,043–1,444 conns/s
// against 2,000–2,200) and their round trips the p99; without it there is no
// such dip (docs/performance.md, Latest change). It only keeps an idle heap
// at the size traffic left it.
// Started as `node ztm-….js` the line above is not read: pass the flags yourself.
import { main } from '../dist/cli/main.js';
main(process.argv);

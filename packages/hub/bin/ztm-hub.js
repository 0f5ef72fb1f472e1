#!/usr/bin/env -S node --initial-old-space-size=64
// --initial-old-space-size=64: with V8's default (a limit a little above the
// ≈ 15 MB live heap) relaying kept V8 in back-to-back major GCs, ≈ 35 per GB
// relayed in every process of the path; from 64 MB there are none and the
// path's CPU per GB falls from 7.5 to 4.2 s (docs/performance.md, "Major GCs").
// It is a limit, not a reservation. Not --no-memory-reducer, which the agents
// take (their first connections after 30 s idle no longer cost twice): here
// it measured 67.1 KiB per idle agent between 1,000 and 5,000 against 63.9,
// and 112 against 102 with a reverse session (docs/performance.md).
// Started as `node ztm-….js` the line above is not read: pass the flag yourself.
import { main } from '../dist/cli/main.js';
main(process.argv);

#!/usr/bin/env -S node --initial-old-space-size=64 --no-memory-reducer
// --initial-old-space-size=64: with V8's default (a limit a little above the
// ≈ 15 MB live heap) relaying kept V8 in back-to-back major GCs, ≈ 35 per GB
// relayed in every process of the path; from 64 MB there are none and the
// path's CPU per GB falls from 7.5 to 4.2 s (docs/performance.md, "Major GCs").
// It is a limit, not a reservation.
// --no-memory-reducer: after ≈ 30 s without traffic V8's memory reducer runs
// GCs after which the relay's optimized code is compiled again: the first
// ≈ 2,000 connections after a pause cost an agent up to twice the CPU and
// the first round trips 1.6–2.6 ms at p99; without it an agent has no such
// dip (docs/performance.md, Latest change). It keeps an idle agent's heap at
// the size its traffic left it. (The hub runs without it: there it costs
// ≈ 3 KiB per idle agent, over the hub's target.)
// Started as `node ztm-….js` the line above is not read: pass the flags yourself.
import { main } from '../dist/cli/main.js';
main(process.argv);

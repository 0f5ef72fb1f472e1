/**
 * Helpers shared by the hub's and the agent's config schemas: durations like
 * "30s", host:port, YAML loading, and problems reported as `path: message`.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseDurationMs } from './duration.js';

export const durationMs = (dflt: string) =>
  z
    .union([z.string(), z.number()])
    .default(dflt)
    .transform((v, ctx) => {
      const ms = parseDurationMs(v);
      if (ms === null) {
        ctx.addIssue({ code: 'custom', message: 'not a duration (like "30s", "5m")' });
        return z.NEVER;
      }
      return ms;
    });

export const hostPortSchema = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port');
export const logLevelSchema = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

function formatIssues(issues: readonly z.core.$ZodIssue[], input: unknown): string[] {
  return issues.map((i) => {
    const path = i.path.length ? i.path.join('.') : '(root)';
    let value: unknown = input;
    for (const k of i.path) value = value && typeof value === 'object' ? (value as Record<PropertyKey, unknown>)[k as PropertyKey] : undefined;
    const shown = value === undefined || typeof value === 'object' ? '' : ` (got ${JSON.stringify(value)})`;
    const keys = 'keys' in i && Array.isArray(i.keys) ? `: ${i.keys.join(', ')}` : '';
    return `${path}: ${i.message}${keys}${shown}`;
  });
}

/** Validate `raw` against `schema`; throws ConfigError listing every problem. */
export function parseConfig<S extends z.ZodType>(schema: S, raw: unknown): Readonly<z.output<S>> {
  const r = schema.safeParse(raw ?? {});
  if (!r.success) throw new ConfigError(formatIssues(r.error.issues, raw));
  return Object.freeze(r.data) as Readonly<z.output<S>>;
}

/** Load a YAML file (optional), put defined CLI overrides on top, validate. */
export function loadConfig<S extends z.ZodType>(schema: S, file: string | undefined, overrides: Record<string, unknown> = {}): Readonly<z.output<S>> {
  let raw: unknown = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError([`${file}: cannot read (${(err as Error).message})`]);
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (err) {
      throw new ConfigError([`${file}: not valid YAML (${(err as Error).message.split('\n')[0]})`]);
    }
    if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(['(root): must be a mapping of keys to values']);
  }
  const merged: Record<string, unknown> = { ...(raw as Record<string, unknown>) };
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) merged[k] = v;
  return parseConfig(schema, merged);
}

/** Plain aligned table on stdout for human-facing listings. */
export function printTable(rows: Record<string, string>[]): void {
  if (rows.length === 0) {
    console.log('(none)');
    return;
  }
  const cols = Object.keys(rows[0] as Record<string, string>);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (vals: string[]) =>
    vals
      .map((v, i) => v.padEnd(width[i] as number))
      .join('  ')
      .trimEnd();
  console.log(line(cols));
  for (const r of rows) console.log(line(cols.map((c) => r[c] ?? '')));
}

/** One line on stderr for a failed CLI command; returns the exit status. */
export function reportCliError(bin: string, err: unknown, problems?: readonly string[]): number {
  const e = err as { code?: string; exitCode?: number; message?: string };
  if (typeof e.code === 'string' && e.code.startsWith('commander.')) return e.exitCode ?? 1; // commander printed it
  if (problems) {
    for (const p of problems) process.stderr.write(`${p}\n`);
    return 1;
  }
  process.stderr.write(`${bin}: ${e.message ?? String(err)}\n`);
  // 3: the hub refused this identity for good (revoked); 1: anything else.
  return e.code === 'ZTM_ERR_REVOKED' ? 3 : 1;
}

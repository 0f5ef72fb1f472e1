/** The mesh file catalogue, in the registry's database. */
import type { FileEntry } from '@ztm/proto';
import type { Registry } from './registry.js';

interface FileRow {
  name: string;
  sha256: string;
  size: number;
  publisher: string;
  user: string;
  published_at: number;
  deleted: number;
  version: number;
}

const toEntry = (r: FileRow): FileEntry => ({
  name: r.name,
  sha256: r.sha256,
  size: r.size,
  publisher: r.publisher,
  user: r.user,
  publishedAt: new Date(r.published_at).toISOString(),
  deleted: r.deleted === 1,
  version: r.version,
});

export class FileCatalogue {
  readonly #registry: Registry;
  readonly #stmts;

  constructor(registry: Registry) {
    this.#registry = registry;
    const db = registry.database;
    this.#stmts = {
      all: db.prepare<[], FileRow>('SELECT * FROM files ORDER BY name'),
      get: db.prepare<[string], FileRow>('SELECT * FROM files WHERE name = ?'),
      upsert: db.prepare(
        `INSERT INTO files (name, sha256, size, publisher, user, published_at, deleted, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, publisher = excluded.publisher,
           user = excluded.user, published_at = excluded.published_at, deleted = excluded.deleted, version = excluded.version`,
      ),
      referenced: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM files WHERE sha256 = ? AND deleted = 0'),
    };
  }

  all(): FileEntry[] {
    return this.#stmts.all.all().map(toEntry);
  }

  get(name: string): FileEntry | undefined {
    const r = this.#stmts.get.get(name);
    return r ? toEntry(r) : undefined;
  }

  put(e: Omit<FileEntry, 'publishedAt'> & { publishedAt: number }): FileEntry {
    this.#registry.write(`record ${e.deleted ? 'the removal of ' : ''}file ${e.name} in the catalogue`, () =>
      this.#stmts.upsert.run(e.name, e.sha256, e.size, e.publisher, e.user, e.publishedAt, e.deleted ? 1 : 0, e.version),
    );
    return this.get(e.name) as FileEntry;
  }

  isReferenced(sha256: string): boolean {
    return (this.#stmts.referenced.get(sha256)?.n ?? 0) > 0;
  }
}

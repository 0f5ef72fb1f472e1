/**
 * The hub's registry: the only owner of better-sqlite3. Opened once, WAL,
 * synchronous=NORMAL, statements prepared once, numbered migrations. Kept off
 * the data path: it is touched on enrolment, session open/close and admin calls.
 */
import { basename } from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCodes, ZtmError } from '@ztm/proto';
import { MIGRATIONS } from './migrations.js';
import { storageProblem } from './storage.js';

/** SQLite result codes of a write the disk refused (read-only, full, failing, locked). */
const STORAGE_SQLITE = /^SQLITE_(READONLY|FULL|IOERR|CANTOPEN|BUSY)/;

export interface PermitRow {
  token_sha256: string;
  endpoint: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  user: string | null;
}

export interface EndpointRow {
  name: string;
  user: string;
  /** Cluster agents: the cluster bound at enrolment. */
  cluster: string | null;
  spki_sha256: string;
  enrolled_at: number;
  revoked_at: number | null;
  last_seen: number | null;
  last_address: string | null;
}

export interface CertificateRow {
  serial: string;
  endpoint: string;
  spki_sha256: string;
  not_before: number;
  not_after: number;
  issued_at: number;
  revoked_at: number | null;
}

export interface EnrolmentRecord {
  tokenSha256: string;
  endpoint: string;
  user: string;
  cluster?: string | null;
  spkiSha256: string;
  serial: string;
  notBefore: number;
  notAfter: number;
  now: number;
}

/** How long a last-seen time may wait to be written (see touch). */
export const TOUCH_FLUSH_MS = 1_000;

export class Registry {
  readonly #db: Database.Database;
  readonly #file: string;
  readonly #stmts;
  readonly #touches = new Map<string, { now: number; address: string | null }>();
  #touchTimer: NodeJS.Timeout | undefined;
  /** Told about every write the disk refused (for the hub's log). */
  onWriteError?: (err: ZtmError) => void;

  constructor(file: string) {
    this.#file = file;
    this.#db = new Database(file);
    this.#db.pragma('journal_mode = WAL');
    this.#db.pragma('synchronous = NORMAL');
    this.#db.pragma('foreign_keys = ON');
    this.#db.pragma('busy_timeout = 5000');
    this.#migrate();
    const db = this.#db;
    this.#stmts = {
      getMeta: db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?'),
      setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
      insertPermit: db.prepare('INSERT INTO permits (token_sha256, endpoint, created_at, expires_at, user) VALUES (?, ?, ?, ?, ?)'),
      getPermit: db.prepare<[string], PermitRow>('SELECT * FROM permits WHERE token_sha256 = ?'),
      usePermit: db.prepare('UPDATE permits SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL'),
      getEndpoint: db.prepare<[string], EndpointRow>('SELECT * FROM endpoints WHERE name = ?'),
      listEndpoints: db.prepare<[], EndpointRow>('SELECT * FROM endpoints ORDER BY name'),
      upsertEndpoint: db.prepare(
        `INSERT INTO endpoints (name, spki_sha256, enrolled_at, user, cluster) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET spki_sha256 = excluded.spki_sha256, enrolled_at = excluded.enrolled_at, user = excluded.user,
           cluster = excluded.cluster, revoked_at = NULL`,
      ),
      insertCert: db.prepare('INSERT INTO certificates (serial, endpoint, spki_sha256, not_before, not_after, issued_at) VALUES (?, ?, ?, ?, ?, ?)'),
      getCert: db.prepare<[string], CertificateRow>('SELECT * FROM certificates WHERE serial = ?'),
      latestCert: db.prepare<[string], CertificateRow>('SELECT * FROM certificates WHERE endpoint = ? AND revoked_at IS NULL ORDER BY not_after DESC LIMIT 1'),
      revokeEndpoint: db.prepare('UPDATE endpoints SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL'),
      revokeCerts: db.prepare('UPDATE certificates SET revoked_at = ? WHERE endpoint = ? AND revoked_at IS NULL'),
      touch: db.prepare('UPDATE endpoints SET last_seen = ?, last_address = coalesce(?, last_address) WHERE name = ?'),
    };
  }

  #migrate(): void {
    const current = this.#db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new ZtmError(ErrorCodes.CONFIG, `registry schema version ${current} is newer than this hub (${MIGRATIONS.length}): upgrade ztm-hub`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.#db.transaction(() => {
        this.#db.exec(MIGRATIONS[v] as string);
        this.#db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  /** For the other stores of registry/ (same database, same transactions). */
  get database(): Database.Database {
    return this.#db;
  }

  /** Run a write. A write the disk refuses (read-only, full, …) becomes a
   * STORAGE error that says what was not recorded and why; SQLite rolled it
   * back, so nothing of it remains. Other errors pass through. */
  write<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw this.#storageError(what, err) ?? err;
    }
  }

  #storageError(what: string, err: unknown): ZtmError | undefined {
    const code = (err as { code?: unknown } | undefined)?.code;
    if (!(err instanceof Database.SqliteError) || typeof code !== 'string' || !STORAGE_SQLITE.test(code)) return undefined;
    const why = storageProblem([this.#file, `${this.#file}-wal`], code);
    const e = new ZtmError(ErrorCodes.STORAGE, `cannot ${what}: the hub's registry (${basename(this.#file)}) is not writable: ${why}`, {
      cause: err,
      details: { path: this.#file, sqlite: code },
    });
    this.onWriteError?.(e);
    return e;
  }

  get schemaVersion(): number {
    return this.#db.pragma('user_version', { simple: true }) as number;
  }

  getMeta(key: string): string | undefined {
    return this.#stmts.getMeta.get(key)?.value;
  }

  setMeta(key: string, value: string): void {
    this.write(`record ${key}`, () => this.#stmts.setMeta.run(key, value));
  }

  addPermit(tokenSha256: string, endpoint: string, user: string, now: number, expiresAt: number): void {
    this.write(`record a permit for ${endpoint}`, () => this.#stmts.insertPermit.run(tokenSha256, endpoint, now, expiresAt, user));
  }

  getPermit(tokenSha256: string): PermitRow | undefined {
    return this.#stmts.getPermit.get(tokenSha256);
  }

  getEndpoint(name: string): EndpointRow | undefined {
    return this.#stmts.getEndpoint.get(name);
  }

  listEndpoints(): EndpointRow[] {
    this.flushTouches();
    return this.#stmts.listEndpoints.all();
  }

  getCertificate(serial: string): CertificateRow | undefined {
    return this.#stmts.getCert.get(serial);
  }

  latestCertificate(endpoint: string): CertificateRow | undefined {
    return this.#stmts.latestCert.get(endpoint);
  }

  /** Spend the token, bind the name to the key, record the certificate: all or
   * nothing. Re-checks the token inside the transaction so two racing
   * enrolments cannot both win. */
  recordEnrolment(r: EnrolmentRecord): void {
    this.write(`record the enrolment of ${r.endpoint} (the permit stays unused)`, () =>
      this.#db.transaction(() => {
        const spent = this.#stmts.usePermit.run(r.now, r.tokenSha256);
        if (spent.changes !== 1) throw new ZtmError(ErrorCodes.TOKEN_USED, 'this permit was already used: ask the hub operator for a new one');
        const ep = this.getEndpoint(r.endpoint);
        if (ep && ep.revoked_at === null && ep.spki_sha256 !== r.spkiSha256) {
          throw new ZtmError(ErrorCodes.NAME_TAKEN, `endpoint name ${r.endpoint} is held by another key`);
        }
        this.#stmts.upsertEndpoint.run(r.endpoint, r.spkiSha256, r.now, r.user, r.cluster ?? null);
        this.#stmts.insertCert.run(r.serial, r.endpoint, r.spkiSha256, r.notBefore, r.notAfter, r.now);
      })(),
    );
  }

  /** A renewed certificate for an endpoint already bound to this key. */
  recordRenewal(endpoint: string, c: { serial: string; spkiSha256: string; notBefore: number; notAfter: number }, now: number): void {
    this.write(`record the renewed certificate of ${endpoint}`, () =>
      this.#stmts.insertCert.run(c.serial, endpoint, c.spkiSha256, c.notBefore, c.notAfter, now),
    );
  }

  /** Revoke the endpoint and every certificate it holds. Returns how many
   * certificates were revoked now. */
  revokeEndpoint(name: string, now: number): number {
    return this.write(`revoke ${name}`, () =>
      this.#db.transaction(() => {
        this.#stmts.revokeEndpoint.run(now, name);
        return this.#stmts.revokeCerts.run(now, name).changes;
      })(),
    );
  }

  /** Last seen and address: advisory, so written in batches: a transaction per
   * connect cost ≈ 80 µs of every handshake, and 10,000 agents reconnect at
   * once after a hub restart. Kept here until the next flush (within
   * TOUCH_FLUSH_MS, before any listing, at close). A disk that refuses it is
   * reported (onWriteError) and otherwise ignored, so sessions keep opening
   * and closing. */
  touch(name: string, now: number, address: string | null): void {
    const prev = this.#touches.get(name);
    this.#touches.set(name, { now, address: address ?? prev?.address ?? null });
    this.#touchTimer ??= setTimeout(() => this.flushTouches(), TOUCH_FLUSH_MS).unref();
  }

  /** Write the pending last-seen times, in one transaction. */
  flushTouches(): void {
    clearTimeout(this.#touchTimer);
    this.#touchTimer = undefined;
    if (this.#touches.size === 0 || !this.#db.open) return;
    const batch = [...this.#touches];
    this.#touches.clear();
    try {
      this.#db.transaction(() => {
        for (const [name, t] of batch) this.#stmts.touch.run(t.now, t.address, name);
      })();
    } catch (err) {
      const who = batch.length === 1 ? `${batch[0]?.[0]} was` : `${batch.length} endpoints were`;
      if (!this.#storageError(`record when ${who} last seen`, err)) throw err;
    }
  }

  integrityCheck(): string {
    return this.#db.pragma('integrity_check', { simple: true }) as string;
  }

  close(): void {
    this.flushTouches();
    if (this.#db.open) this.#db.close();
  }
}

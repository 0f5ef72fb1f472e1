/** Numbered migrations. Never edit a shipped one: add the next. */
export const MIGRATIONS: readonly string[] = [
  // 1: meta, permits, endpoints, certificates
  `
  CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE permits (
    token_sha256 TEXT PRIMARY KEY,
    endpoint     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
  );
  CREATE TABLE endpoints (
    name          TEXT PRIMARY KEY,
    spki_sha256   TEXT NOT NULL,
    enrolled_at   INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_seen     INTEGER,
    last_address  TEXT
  );
  CREATE TABLE certificates (
    serial       TEXT PRIMARY KEY,
    endpoint     TEXT NOT NULL REFERENCES endpoints(name),
    spki_sha256  TEXT NOT NULL,
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    issued_at    INTEGER NOT NULL,
    revoked_at   INTEGER
  );
  CREATE INDEX certificates_by_endpoint ON certificates(endpoint);
  `,
  // 2: the user an endpoint acts for (tunnel allow-lists name users)
  `
  ALTER TABLE permits ADD COLUMN user TEXT;
  ALTER TABLE endpoints ADD COLUMN user TEXT NOT NULL DEFAULT '';
  UPDATE endpoints SET user = name WHERE user = '';
  `,
  // 3: the cluster a cluster agent is bound to (multicluster services, proto mcs.ts)
  `
  ALTER TABLE endpoints ADD COLUMN cluster TEXT;
  `,
  // 4: the mesh file catalogue (files/), tombstones included
  `
  CREATE TABLE files (
    name          TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    publisher     TEXT NOT NULL,
    user          TEXT NOT NULL,
    published_at  INTEGER NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    version       INTEGER NOT NULL
  );
  `,
];

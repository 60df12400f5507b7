-- Documents with an expiry (milliseconds since the Unix epoch), changed by compare-and-swap, and
-- small ordered indexes of them. The same text for SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_expiry ON records (expires_ms);
CREATE TABLE IF NOT EXISTS record_index (
    index_name TEXT NOT NULL,
    member TEXT NOT NULL,
    score BIGINT NOT NULL,
    PRIMARY KEY (index_name, member)
);
CREATE INDEX IF NOT EXISTS record_index_by_score ON record_index (index_name, score, member);

-- kb schema, SQLite flavour. AUTOINCREMENT: chunk ids are never reused, because the
-- vector and keyword indexes are keyed by them.
CREATE TABLE collections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    embedder TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id BIGINT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    title TEXT,
    content_hash TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    format TEXT,
    status TEXT NOT NULL,
    error TEXT,
    chunk_count BIGINT NOT NULL DEFAULT 0,
    source_path TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX documents_by_name ON documents(collection_id, filename);
CREATE INDEX documents_by_hash ON documents(collection_id, content_hash);

CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id BIGINT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    collection_id BIGINT NOT NULL,
    ordinal BIGINT NOT NULL,
    text TEXT NOT NULL,
    heading_path TEXT NOT NULL,
    page BIGINT,
    char_start BIGINT NOT NULL,
    char_end BIGINT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX chunks_by_collection ON chunks(collection_id, id);
CREATE INDEX chunks_by_document ON chunks(document_id);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id BIGINT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_by_status ON jobs(status, id);

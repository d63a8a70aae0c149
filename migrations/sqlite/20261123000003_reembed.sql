-- Vectors of a collection being re-embedded with another embedder. They wait here until every
-- chunk has one, then replace the chunks' embeddings and the collection's embedder in one
-- transaction: an interrupted re-embed leaves the collection as it was (and resumes).
CREATE TABLE reembed_staging (
    chunk_id BIGINT PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
    collection_id BIGINT NOT NULL,
    embedder TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX reembed_staging_by_collection ON reembed_staging(collection_id, embedder);

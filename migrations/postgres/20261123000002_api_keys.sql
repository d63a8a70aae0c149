-- API keys. Only a SHA-256 of each key is stored; grants name collections, so a key may be
-- scoped to a collection before it exists. access: 'read' or 'write'.
CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    admin BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_key_grants (
    key_id BIGINT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    access TEXT NOT NULL,
    PRIMARY KEY (key_id, collection)
);

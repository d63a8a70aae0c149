-- The document that carried this one (an e-mail message, for its attachments): deleting or
-- replacing the message takes its attachments with it.
ALTER TABLE documents ADD COLUMN parent_id BIGINT;
CREATE INDEX documents_by_parent ON documents(parent_id);

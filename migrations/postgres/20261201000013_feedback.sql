-- What people said about answers: a thumbs up or down, an optional comment, and the answer as
-- they saw it (question, answer text, citations as a JSON array), so that it can be read back
-- after documents change. rating: 'up' or 'down'. The collection is kept by name: feedback
-- outlives a deleted collection.
CREATE TABLE feedback (
    id BIGSERIAL PRIMARY KEY,
    collection TEXT NOT NULL,
    rating TEXT NOT NULL,
    comment TEXT,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    citations TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX feedback_by_collection ON feedback(collection, id);

-- Search over message text, SQLite half (PostgreSQL runs 0017_search.postgres.sql).
-- An FTS5 index over messages.text that keeps no copy of the text (external content:
-- highlights read it from messages). The message path never writes it: the indexer
-- (domain::search) adds the messages after search_cursor every quarter of a second, so
-- a send costs nothing more. Every message with id <= last_id is in the index.
CREATE VIRTUAL TABLE message_search USING fts5(
    text,
    content = 'messages',
    content_rowid = 'id'
);
CREATE TABLE search_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_id BIGINT NOT NULL
);
INSERT INTO search_cursor (id, last_id) VALUES (1, 0);
-- Erasure deletes messages. One already indexed leaves the index (FTS5 needs its text to
-- do so). And since a new message id is the largest plus one, deleting the largest ones
-- would hand their ids out again, below the cursor: the cursor comes back down to the
-- largest id left, so that those new messages are indexed too.
CREATE TRIGGER messages_leave_search AFTER DELETE ON messages BEGIN
    INSERT INTO message_search (message_search, rowid, text)
        SELECT 'delete', old.id, old.text
        WHERE old.id <= (SELECT last_id FROM search_cursor WHERE id = 1);
    UPDATE search_cursor SET last_id = (SELECT COALESCE(MAX(id), 0) FROM messages)
        WHERE id = 1 AND last_id > (SELECT COALESCE(MAX(id), 0) FROM messages);
END;

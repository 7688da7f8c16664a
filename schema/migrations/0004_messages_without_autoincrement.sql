-- SQLite only (PostgreSQL records this version and runs nothing). Messages keep their
-- ids, but the table loses AUTOINCREMENT: with it, every insert also rewrites the
-- table's row in sqlite_sequence, one page more in each commit (a fifth of a lone send's
-- WAL writes). Without it a new id is the largest plus one, the same as before, since
-- messages are never deleted.
CREATE TABLE messages_new (
    id INTEGER PRIMARY KEY,
    chat_id BIGINT NOT NULL REFERENCES chats (id),
    seq BIGINT NOT NULL,
    author_kind TEXT NOT NULL,
    author_id BIGINT NOT NULL,
    local_id TEXT,
    payload TEXT NOT NULL,
    text TEXT NOT NULL,
    file_id TEXT REFERENCES files (id),
    created_at BIGINT NOT NULL,
    received_at BIGINT,
    read_at BIGINT,
    UNIQUE (chat_id, seq),
    UNIQUE (chat_id, author_kind, author_id, local_id)
);
INSERT INTO messages_new (id, chat_id, seq, author_kind, author_id, local_id, payload, text,
    file_id, created_at, received_at, read_at)
    SELECT id, chat_id, seq, author_kind, author_id, local_id, payload, text, file_id,
    created_at, received_at, read_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
DELETE FROM sqlite_sequence WHERE name = 'messages';

-- Files that can be uploaded: each belongs to the chat it was uploaded into, and is
-- counted against its organisation's quota until its bytes are removed (by retention or
-- by erasing a customer's data; the row stays, so that the message showing it can say
-- it is gone).
ALTER TABLE files ADD COLUMN chat_id BIGINT REFERENCES chats (id);
ALTER TABLE files ADD COLUMN removed_at BIGINT;
CREATE INDEX files_by_chat ON files (chat_id);
CREATE INDEX files_by_org ON files (org_id, removed_at);
CREATE INDEX files_by_age ON files (created_at);
-- Whether a file was ever sent (uploads never sent are deleted after a day).
CREATE INDEX messages_by_file ON messages (file_id) WHERE file_id IS NOT NULL;

-- When a chat was finished: its files' retention counts from then.
ALTER TABLE chats ADD COLUMN finished_at BIGINT;

-- Days after which a finished chat's files are removed (NULL: kept).
ALTER TABLE organisations ADD COLUMN file_retention_days BIGINT;

-- Keys of the server, shared by every node (the key that signs download links).
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

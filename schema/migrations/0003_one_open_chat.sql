-- At most one unfinished chat per customer and inbox, so that two concurrent opens give
-- the same chat on PostgreSQL too (SQLite's single writer already ordered them).
CREATE UNIQUE INDEX chats_one_open ON chats (customer_id, inbox_id) WHERE status <> 'finished';

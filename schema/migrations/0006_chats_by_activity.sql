-- Chats by their activity time alone, for each node's look at the chats that moved
-- lately (a message committed whose announcement may not have reached every node).
CREATE INDEX chats_activity ON chats (last_activity_at);

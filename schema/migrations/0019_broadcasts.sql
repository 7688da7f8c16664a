-- A store's broadcast, stored once: its audience is not written down but read, the
-- customers with a chat in the inbox created no later than the broadcast.
CREATE TABLE broadcasts (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    inbox_id BIGINT NOT NULL REFERENCES inboxes (id),
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- A customer's broadcasts: those of each inbox they have a chat in, newest first.
CREATE INDEX broadcasts_inbox ON broadcasts (inbox_id, id);
-- A broadcast's audience: an inbox's chats by customer, with when each was opened.
CREATE INDEX chats_inbox_customer ON chats (inbox_id, customer_id, created_at);

-- A support desk's day: routing of new chats to operators (per inbox: off, round-robin or
-- least-busy, with capacities), the queue, snoozes, reopening, private notes, labels and
-- custom attributes.

-- How an inbox hands out new chats; the most open chats an operator gets from it
-- (NULL: no limit); how long after finishing a chat a customer's new message reopens it
-- (seconds; 0: never); the operator round-robin gave the last chat to.
ALTER TABLE inboxes ADD COLUMN routing TEXT NOT NULL DEFAULT 'off';
ALTER TABLE inboxes ADD COLUMN capacity INTEGER;
ALTER TABLE inboxes ADD COLUMN reopen_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inboxes ADD COLUMN routed_to BIGINT;

-- The most open chats an operator gets from routing, over all inboxes (NULL: no limit).
ALTER TABLE operators ADD COLUMN capacity INTEGER;

-- When the chat got its operator (by routing, a take or a transfer), and when it last
-- joined its inbox's queue (opened, handed back, moved, reopened): the queue's order.
ALTER TABLE chats ADD COLUMN assigned_at BIGINT;
ALTER TABLE chats ADD COLUMN queued_at BIGINT NOT NULL DEFAULT 0;
UPDATE chats SET queued_at = created_at;
-- A snooze: the chat's newest seq when it was snoozed, and until when (NULL: until the
-- customer writes). A customer message after snooze_seq, or the time passing, ends it.
ALTER TABLE chats ADD COLUMN snooze_seq BIGINT;
ALTER TABLE chats ADD COLUMN snoozed_until BIGINT;
-- Custom attributes: a JSON object of strings, numbers and booleans.
ALTER TABLE chats ADD COLUMN attributes TEXT;
ALTER TABLE customers ADD COLUMN attributes TEXT;

-- The queue of an inbox: its pending chats without an operator, oldest first.
CREATE INDEX chats_queue ON chats (inbox_id, status, operator_id, queued_at);
-- The chats an inbox's queue handed out lately (the wait estimate).
CREATE INDEX chats_assigned ON chats (inbox_id, assigned_at);
-- An operator's open chats (routing counts them against capacities).
CREATE INDEX chats_operator ON chats (operator_id, status);

CREATE TABLE chat_labels (
    chat_id BIGINT NOT NULL REFERENCES chats (id),
    org_id BIGINT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (chat_id, label)
);
CREATE INDEX chat_labels_label ON chat_labels (org_id, label);

CREATE TABLE customer_labels (
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    org_id BIGINT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (customer_id, label)
);
CREATE INDEX customer_labels_label ON customer_labels (org_id, label);

-- Private notes: operators' words in a chat that its customer never sees; `mentions` is
-- the comma-separated ids of the operators they name.
CREATE TABLE notes (
    id {ID},
    org_id BIGINT NOT NULL,
    chat_id BIGINT NOT NULL REFERENCES chats (id),
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    text TEXT NOT NULL,
    mentions TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notes_chat ON notes (chat_id, id);

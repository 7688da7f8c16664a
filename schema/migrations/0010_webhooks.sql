-- Webhooks: an organisation's endpoints, and the outbox of their events. Each event row
-- is written by a trigger in the transaction of the change it reports (0011 and 0012, one
-- for each backend), so none is lost on a crash and none comes of a rolled-back change.

CREATE TABLE webhooks (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    -- The event kinds wanted, comma-separated (message.created,chat.created,...).
    events TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, active);

-- One row per event and endpoint. What the event is about: subject_id (a message, a chat,
-- an operator, a member), subject_text (a file's id, a member's kind), n1 and n2 (a
-- receipt's seqs, a presence code). The body is made at delivery from these.
CREATE TABLE webhook_events (
    id {ID},
    -- No foreign key: a message's trigger must never wait on, or fail over, an endpoint
    -- being removed at that moment (an event of a removed endpoint is forgotten).
    webhook_id BIGINT NOT NULL,
    org_id BIGINT NOT NULL,
    -- Events of one chat go out in order (0: of no chat, such as presence).
    chat_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    subject_text TEXT NOT NULL,
    n1 BIGINT NOT NULL,
    n2 BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    -- pending, sending (claimed by a node until next_at), done, dead.
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at BIGINT NOT NULL,
    last_error TEXT,
    done_at BIGINT
);
-- The undelivered events of an endpoint, in order (what a claim walks), and of each of
-- its chats (whether an event has one before it): partial, so that delivered events,
-- kept a week for the listing, are never in the way.
CREATE INDEX webhook_events_open ON webhook_events (webhook_id, id)
    WHERE state IN ('pending', 'sending');
CREATE INDEX webhook_events_queue ON webhook_events (webhook_id, chat_id, id)
    WHERE state IN ('pending', 'sending');
-- The listing by state, and the forgetting of delivered events.
CREATE INDEX webhook_events_listed ON webhook_events (webhook_id, state, id);
CREATE INDEX webhook_events_done ON webhook_events (done_at) WHERE state = 'done';

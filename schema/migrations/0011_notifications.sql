-- Offline reach: a member who leaves a message unread while away from the app is told
-- out of band (src/domain/notify.rs). One notification per person covers every chat with
-- such messages; it goes to the person's feed, to webhooks that want `notify`, by e-mail
-- where the organisation set SMTP, and by Web Push to the person's subscriptions.

-- When a message's recipient was told of it out of band (iqstore's `Pushed`).
ALTER TABLE messages ADD COLUMN pushed_at BIGINT;

-- Seconds a message may stay unread by an absent member before they are told (NULL: never).
ALTER TABLE organisations ADD COLUMN notify_after_secs BIGINT DEFAULT 300;
-- Where e-mail goes out (smtp://user:pass@host:port?tls=required, smtps://...), and as whom.
ALTER TABLE organisations ADD COLUMN smtp_url TEXT;
ALTER TABLE organisations ADD COLUMN mail_from TEXT;
-- The link back in a notification: `{chat_id}` becomes the chat's id.
ALTER TABLE organisations ADD COLUMN notify_link TEXT;

-- A customer's address for e-mail notifications (operators have theirs).
ALTER TABLE customers ADD COLUMN email TEXT;

-- Per chat member, the highest seq the notifier need not look at again: what a
-- notification covered, or the member's own messages.
CREATE TABLE notify_marks (
    chat_id BIGINT NOT NULL,
    member_kind TEXT NOT NULL,
    member_id BIGINT NOT NULL,
    through_seq BIGINT NOT NULL,
    PRIMARY KEY (chat_id, member_kind, member_id)
);

-- The feed: each person's notifications. `body` is JSON (the chats, their unread counts
-- and newest messages).
CREATE TABLE notifications (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    person_kind TEXT NOT NULL,
    person_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    -- What it shows, for erasure: its chats (",1,2,"), or whose doing it reports
    -- (",customer:5,").
    chat_ids TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_feed ON notifications (person_kind, person_id, id);

-- A browser's Web Push subscription (RFC 8030 endpoint, RFC 8291 keys) of one person.
CREATE TABLE push_subscriptions (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    person_kind TEXT NOT NULL,
    person_id BIGINT NOT NULL,
    endpoint TEXT NOT NULL UNIQUE,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX push_subscriptions_person ON push_subscriptions (person_kind, person_id);

-- The outbox of e-mail and Web Push: one row per notification and target (an address, a
-- subscription's id), written in the notification's transaction; any node claims due
-- rows, sends, and marks them done, due again after a backoff, or dead.
CREATE TABLE deliveries (
    id {ID},
    notification_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    last_error TEXT,
    done_at BIGINT
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state IN ('pending', 'sending');
CREATE INDEX deliveries_of ON deliveries (notification_id);

-- The notifier's progress (one row): a node looks while it holds the row.
CREATE TABLE notify_sweeps (
    id INTEGER PRIMARY KEY,
    swept_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
INSERT INTO notify_sweeps (id, swept_at, lease_until) VALUES (1, 0, 0);

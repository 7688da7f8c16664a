-- Canned responses: an organisation's ready answers, for all its inboxes (inbox_id 0) or
-- one, found by a short code; placeholders are filled in for a chat when used.
CREATE TABLE canned_responses (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    inbox_id BIGINT NOT NULL,
    short_code TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, inbox_id, short_code)
);

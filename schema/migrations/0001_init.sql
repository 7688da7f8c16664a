-- souq schema, version 1. Runs on SQLite and PostgreSQL: `{ID}` becomes the dialect's
-- auto-increment primary key. Timestamps are unix milliseconds. Every tenant-owned row
-- carries org_id so that a query can always be filtered by organisation.

CREATE TABLE organisations (
    id {ID},
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    subdomain TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE addons (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE admin_tokens (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    addon_id BIGINT NOT NULL REFERENCES addons (id),
    access_hash TEXT NOT NULL UNIQUE,
    refresh_hash TEXT NOT NULL UNIQUE,
    access_expires_at BIGINT NOT NULL,
    refresh_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE operators (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    avatar TEXT,
    presence SMALLINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE customers (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    name TEXT NOT NULL,
    avatar TEXT,
    external_id TEXT,
    phone TEXT,
    telegram_id TEXT,
    facebook_id TEXT,
    vk_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, external_id),
    UNIQUE (org_id, phone)
);

CREATE TABLE sessions (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    subject_kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE domains (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    addon_id BIGINT NOT NULL REFERENCES addons (id),
    name TEXT NOT NULL,
    email TEXT,
    active BOOLEAN NOT NULL,
    widget_key TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE inboxes (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    domain_id BIGINT NOT NULL REFERENCES domains (id),
    unique_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (domain_id, unique_id)
);

CREATE TABLE assignments (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    inbox_id BIGINT NOT NULL REFERENCES inboxes (id),
    domain_id BIGINT NOT NULL REFERENCES domains (id),
    is_admin BOOLEAN NOT NULL,
    online BOOLEAN NOT NULL,
    receiving BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (operator_id, inbox_id)
);
CREATE INDEX assignments_inbox ON assignments (inbox_id);

CREATE TABLE chats (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    inbox_id BIGINT NOT NULL REFERENCES inboxes (id),
    domain_id BIGINT NOT NULL REFERENCES domains (id),
    customer_id BIGINT NOT NULL REFERENCES customers (id),
    operator_id BIGINT REFERENCES operators (id),
    status TEXT NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL
);
CREATE INDEX chats_customer ON chats (customer_id, last_activity_at);
CREATE INDEX chats_inbox ON chats (inbox_id, last_activity_at);
CREATE INDEX chats_domain ON chats (domain_id, last_activity_at);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    owner_kind TEXT NOT NULL,
    owner_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    image_width INTEGER,
    image_height INTEGER,
    created_at BIGINT NOT NULL
);

CREATE TABLE messages (
    id {ID},
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

CREATE TABLE receipts (
    chat_id BIGINT NOT NULL REFERENCES chats (id),
    member_kind TEXT NOT NULL,
    member_id BIGINT NOT NULL,
    received_seq BIGINT NOT NULL,
    read_seq BIGINT NOT NULL,
    received_at BIGINT,
    read_at BIGINT,
    PRIMARY KEY (chat_id, member_kind, member_id)
);

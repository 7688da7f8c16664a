-- As operators.access_changed_at, for customers: when their sessions were last revoked,
-- so that every node closes their sockets even when the announcement is lost.
ALTER TABLE customers ADD COLUMN access_changed_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX customers_access_changed ON customers (access_changed_at);

-- When what an operator may see last changed (an assignment made, moved or removed, an
-- addon turned off): each node re-checks the sockets of operators stamped lately, so that
-- a change reaches every node even when its announcement is lost.
ALTER TABLE operators ADD COLUMN access_changed_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX operators_access_changed ON operators (access_changed_at);

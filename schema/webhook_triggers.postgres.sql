-- The outbox's writers on PostgreSQL. Messages and receipts, written in batches, are read
-- once per statement from its transition table; the rest, rarer, row by row. They are
-- installed while some organisation has an active webhook, and dropped when none has
-- (src/domain/webhooks.rs), so that a deployment without webhooks pays nothing for them.

CREATE OR REPLACE FUNCTION souq_webhook_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks WHERE active) THEN
        INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
            n1, n2, created_at, state, attempts, next_at)
        SELECT w.id, w.org_id, n.chat_id, 'message.created', n.id, '', 0, 0,
            n.created_at, 'pending', 0, n.created_at
        FROM new_rows n JOIN chats c ON c.id = n.chat_id
        JOIN webhooks w ON w.org_id = c.org_id AND w.active
        WHERE (',' || w.events || ',') LIKE '%,message.created,%'
        ORDER BY n.id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER webhooks_message_created AFTER INSERT ON messages
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION souq_webhook_messages();

CREATE OR REPLACE FUNCTION souq_webhook_receipts_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks WHERE active) THEN
        INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
            n1, n2, created_at, state, attempts, next_at)
        SELECT w.id, w.org_id, n.chat_id, 'receipt', n.member_id, n.member_kind,
            n.received_seq, n.read_seq, c.last_activity_at, 'pending', 0, c.last_activity_at
        FROM new_rows n JOIN chats c ON c.id = n.chat_id
        JOIN webhooks w ON w.org_id = c.org_id AND w.active
        WHERE (',' || w.events || ',') LIKE '%,receipt,%'
        ORDER BY n.chat_id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER webhooks_receipt_new AFTER INSERT ON receipts
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION souq_webhook_receipts_new();

CREATE OR REPLACE FUNCTION souq_webhook_receipts_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks WHERE active) THEN
        INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
            n1, n2, created_at, state, attempts, next_at)
        SELECT w.id, w.org_id, n.chat_id, 'receipt', n.member_id, n.member_kind,
            n.received_seq, n.read_seq, c.last_activity_at, 'pending', 0, c.last_activity_at
        FROM new_rows n
        JOIN old_rows o ON o.chat_id = n.chat_id AND o.member_kind = n.member_kind
            AND o.member_id = n.member_id
        JOIN chats c ON c.id = n.chat_id
        JOIN webhooks w ON w.org_id = c.org_id AND w.active
        WHERE (n.received_seq <> o.received_seq OR n.read_seq <> o.read_seq)
            AND (',' || w.events || ',') LIKE '%,receipt,%'
        ORDER BY n.chat_id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER webhooks_receipt_moved AFTER UPDATE ON receipts
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION souq_webhook_receipts_moved();

CREATE OR REPLACE FUNCTION souq_webhook_chat() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind TEXT;
    subject BIGINT := NEW.id;
    previous BIGINT := 0;
    at BIGINT := NEW.last_activity_at;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE active) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        kind := 'chat.created';
        at := NEW.created_at;
    ELSIF NEW.status = 'finished' AND OLD.status <> 'finished' THEN
        kind := 'chat.finished';
        at := COALESCE(NEW.finished_at, NEW.last_activity_at);
    ELSIF OLD.operator_id IS NULL AND NEW.operator_id IS NOT NULL THEN
        kind := 'chat.taken';
        subject := NEW.operator_id;
    ELSIF OLD.operator_id IS DISTINCT FROM NEW.operator_id AND NEW.operator_id IS NOT NULL THEN
        kind := 'chat.assigned';
        subject := NEW.operator_id;
        previous := OLD.operator_id;
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.id, kind, subject, '', previous, 0, at, 'pending', 0, at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,' || kind || ',%';
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER webhooks_chat_created AFTER INSERT ON chats
FOR EACH ROW EXECUTE FUNCTION souq_webhook_chat();

CREATE OR REPLACE TRIGGER webhooks_chat_changed AFTER UPDATE OF status, operator_id ON chats
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
    OR OLD.operator_id IS DISTINCT FROM NEW.operator_id)
EXECUTE FUNCTION souq_webhook_chat();

CREATE OR REPLACE FUNCTION souq_webhook_presence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, 0, 'presence', NEW.id, '', NEW.presence, 0,
        NEW.updated_at, 'pending', 0, NEW.updated_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,presence,%';
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER webhooks_presence AFTER UPDATE OF presence ON operators
FOR EACH ROW WHEN (OLD.presence IS DISTINCT FROM NEW.presence)
EXECUTE FUNCTION souq_webhook_presence();

CREATE OR REPLACE FUNCTION souq_webhook_file() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, COALESCE(NEW.chat_id, 0), 'file.uploaded', 0, NEW.id, 0, 0,
        NEW.created_at, 'pending', 0, NEW.created_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,file.uploaded,%';
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER webhooks_file_uploaded AFTER INSERT ON files
FOR EACH ROW EXECUTE FUNCTION souq_webhook_file();

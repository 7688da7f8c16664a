-- The outbox's writers on SQLite: one trigger per event kind. They are installed while
-- some organisation has an active webhook, and dropped when none has (src/domain/
-- webhooks.rs), so that a deployment without webhooks pays nothing for them. (No
-- CASE ... END inside a trigger body: the statement splitter ends a trigger at its first
-- END.)

CREATE TRIGGER IF NOT EXISTS webhooks_message_created AFTER INSERT ON messages
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.chat_id, 'message.created', NEW.id, '', 0, 0,
        NEW.created_at, 'pending', 0, NEW.created_at
    FROM chats c JOIN webhooks w ON w.org_id = c.org_id AND w.active
    WHERE c.id = NEW.chat_id AND (',' || w.events || ',') LIKE '%,message.created,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_chat_created AFTER INSERT ON chats
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.id, 'chat.created', NEW.id, '', 0, 0,
        NEW.created_at, 'pending', 0, NEW.created_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,chat.created,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_chat_taken AFTER UPDATE OF operator_id ON chats
WHEN OLD.operator_id IS NULL AND NEW.operator_id IS NOT NULL
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.id, 'chat.taken', NEW.operator_id, '', 0, 0,
        NEW.last_activity_at, 'pending', 0, NEW.last_activity_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,chat.taken,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_chat_assigned AFTER UPDATE OF operator_id ON chats
WHEN OLD.operator_id IS NOT NULL AND NEW.operator_id IS NOT NULL
    AND OLD.operator_id <> NEW.operator_id
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.id, 'chat.assigned', NEW.operator_id, '', OLD.operator_id, 0,
        NEW.last_activity_at, 'pending', 0, NEW.last_activity_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,chat.assigned,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_chat_finished AFTER UPDATE OF status ON chats
WHEN NEW.status = 'finished' AND OLD.status <> 'finished'
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.id, 'chat.finished', NEW.id, '', 0, 0,
        COALESCE(NEW.finished_at, NEW.last_activity_at), 'pending', 0,
        COALESCE(NEW.finished_at, NEW.last_activity_at)
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,chat.finished,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_receipt_new AFTER INSERT ON receipts
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.chat_id, 'receipt', NEW.member_id, NEW.member_kind,
        NEW.received_seq, NEW.read_seq, c.last_activity_at, 'pending', 0, c.last_activity_at
    FROM chats c JOIN webhooks w ON w.org_id = c.org_id AND w.active
    WHERE c.id = NEW.chat_id AND (',' || w.events || ',') LIKE '%,receipt,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_receipt_moved AFTER UPDATE ON receipts
WHEN (NEW.received_seq <> OLD.received_seq OR NEW.read_seq <> OLD.read_seq)
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, NEW.chat_id, 'receipt', NEW.member_id, NEW.member_kind,
        NEW.received_seq, NEW.read_seq, c.last_activity_at, 'pending', 0, c.last_activity_at
    FROM chats c JOIN webhooks w ON w.org_id = c.org_id AND w.active
    WHERE c.id = NEW.chat_id AND (',' || w.events || ',') LIKE '%,receipt,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_presence AFTER UPDATE OF presence ON operators
WHEN NEW.presence <> OLD.presence
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, 0, 'presence', NEW.id, '', NEW.presence, 0,
        NEW.updated_at, 'pending', 0, NEW.updated_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,presence,%';
END;

CREATE TRIGGER IF NOT EXISTS webhooks_file_uploaded AFTER INSERT ON files
BEGIN
    INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, subject_text,
        n1, n2, created_at, state, attempts, next_at)
    SELECT w.id, w.org_id, COALESCE(NEW.chat_id, 0), 'file.uploaded', 0, NEW.id, 0, 0,
        NEW.created_at, 'pending', 0, NEW.created_at
    FROM webhooks w
    WHERE w.org_id = NEW.org_id AND w.active AND (',' || w.events || ',') LIKE '%,file.uploaded,%';
END;

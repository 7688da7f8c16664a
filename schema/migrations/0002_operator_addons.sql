-- Whether an operator works in an addon (Chatwhizz's per-addon operator status). No row
-- means active. An inactive operator sees no chats of that addon's domains.
CREATE TABLE operator_addons (
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    addon_id BIGINT NOT NULL REFERENCES addons (id),
    active BOOLEAN NOT NULL,
    PRIMARY KEY (operator_id, addon_id)
);

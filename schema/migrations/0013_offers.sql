-- A store's offer to one customer (hojre's offers): a seller writes it, the customer reads
-- it; it reaches them as a notification.
CREATE TABLE offers (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    -- The store (an inbox) and the seller (an operator) who made it.
    inbox_id BIGINT NOT NULL REFERENCES inboxes (id),
    operator_id BIGINT NOT NULL,
    customer_id BIGINT NOT NULL,
    -- A product of the store it is about, if any.
    product_id BIGINT,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX offers_to ON offers (customer_id, id);

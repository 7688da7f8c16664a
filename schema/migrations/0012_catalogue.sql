-- The marketplace around the chats (hojre's bazaars, malls, stores and products), and
-- what customers do with it: comment, like, dislike, favorite, view and follow. Bazaars
-- contain malls, malls contain stores, stores contain products. A store is an inbox (a
-- seller's store page); bazaars, malls and products are rows here.
CREATE TABLE catalogue (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    -- bazaar, mall or product.
    kind TEXT NOT NULL,
    -- A mall's bazaar (a catalogue id), a product's store (an inbox id); none for a bazaar.
    parent_id BIGINT,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX catalogue_children ON catalogue (kind, parent_id);
-- A store's mall (a catalogue id).
ALTER TABLE inboxes ADD COLUMN mall_id BIGINT;

-- One per customer, subject and reaction: adding it twice keeps one, so counts are exact
-- under any number of concurrent adds.
CREATE TABLE reactions (
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    -- bazaar, mall, store or product; the id is a catalogue id, or a store's inbox id.
    subject_kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    -- like, dislike, favorite, view or follow (hojre's "notification").
    reaction TEXT NOT NULL,
    customer_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (subject_kind, subject_id, reaction, customer_id)
);
CREATE INDEX reactions_by_customer ON reactions (customer_id, subject_kind, reaction, created_at);

CREATE TABLE comments (
    id {ID},
    org_id BIGINT NOT NULL REFERENCES organisations (id),
    -- bazaar, mall, store, product, or user (a customer: comments on a person).
    subject_kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    customer_id BIGINT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX comments_on ON comments (subject_kind, subject_id, id);
CREATE INDEX comments_by ON comments (customer_id, subject_kind, id);

-- Search over message text, PostgreSQL half (SQLite runs 0017_search.sqlite.sql).
-- A GIN index on each message's words ('simple': lowercased, no stemming, no stop
-- words, as SQLite's index). Searches write the same expression, so that they use it.
-- Built in the migration's transaction: on a large table that blocks sends while it is
-- built (about a minute per ten million messages on a small machine; see
-- docs/benchmarks.md).
CREATE INDEX messages_search ON messages USING GIN (to_tsvector('simple', text));

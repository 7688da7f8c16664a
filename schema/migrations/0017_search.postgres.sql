-- Search over message text, PostgreSQL half (SQLite runs 0017_search.sqlite.sql).
-- A GIN index on each message's words ('simple': lowercased, no stemming, no stop
-- words, as SQLite's index). Searches write the same expression, so that they use it.
-- fastupdate off: with it on, a send now and then has to move the index's pending list
-- into the index and waits about a second (the largest wait of a 20 s closed loop went
-- from 0.2 s to 1.0-1.1 s); off, each send adds its words at once, with no such waits and
-- sends/s within the noise of no index at all (docs/benchmarks.md, "Search").
-- Built in the migration's transaction: on a large table sends wait while it is built.
CREATE INDEX messages_search ON messages USING GIN (to_tsvector('simple', text))
    WITH (fastupdate = off);

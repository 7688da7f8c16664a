-- A customer may have a password of their own (hojre's Change Password), to sign in by
-- phone without the organisation's backend issuing the session (argon2id, as the
-- organisations' own).
ALTER TABLE customers ADD COLUMN password_hash TEXT;

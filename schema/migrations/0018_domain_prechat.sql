-- Whether the website widget asks a new visitor for a name and an e-mail before the chat.
ALTER TABLE domains ADD COLUMN prechat BOOLEAN NOT NULL DEFAULT FALSE;

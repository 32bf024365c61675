-- Transactional messages: one message from a template to one recipient, sent by the
-- tx stage ahead of bulk traffic. The row is its own ledger entry.
CREATE TABLE tx_messages (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id        INTEGER NOT NULL REFERENCES workspaces(id),
    template_id         INTEGER NOT NULL REFERENCES templates(id),
    email               TEXT    NOT NULL,
    name                TEXT,
    attributes          TEXT    NOT NULL DEFAULT '{}',
    data                TEXT    NOT NULL DEFAULT '{}',
    from_addr           TEXT    NOT NULL,
    provider            TEXT    NOT NULL,
    delivery_key        TEXT    NOT NULL UNIQUE,
    status              TEXT    NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    provider_message_id TEXT,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    sent_at             INTEGER
);

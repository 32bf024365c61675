-- Initial schema (SQLite). Timestamps are unix epoch milliseconds (INTEGER);
-- JSON documents are TEXT. Keep in step with ../postgres/0001_initial.sql.

CREATE TABLE workspaces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
INSERT INTO workspaces (id, name, created_at) VALUES (1, 'default', 0);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id),
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    created_at    INTEGER NOT NULL
);

CREATE TABLE refresh_tokens (
    id          TEXT    PRIMARY KEY,
    family_id   TEXT    NOT NULL,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE revoked_access_tokens (
    jti         TEXT    PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE lists (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name         TEXT    NOT NULL,
    description  TEXT,
    created_at   INTEGER NOT NULL
);
CREATE INDEX lists_workspace ON lists (workspace_id, id);

CREATE TABLE subscribers (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    email        TEXT    NOT NULL,
    name         TEXT,
    attributes   TEXT    NOT NULL DEFAULT '{}',
    status       TEXT    NOT NULL DEFAULT 'enabled'
                         CHECK (status IN ('enabled', 'unsubscribed', 'blocklisted')),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (workspace_id, email)
);

CREATE TABLE list_memberships (
    list_id       INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (list_id, subscriber_id)
);
CREATE INDEX list_memberships_subscriber ON list_memberships (subscriber_id);

CREATE TABLE templates (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name         TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    html         TEXT    NOT NULL,
    text         TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE plugins (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    size_bytes   INTEGER NOT NULL,
    component    BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (workspace_id, name, version)
);

CREATE TABLE campaigns (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    name         TEXT    NOT NULL,
    template_id  INTEGER NOT NULL REFERENCES templates(id),
    from_addr    TEXT    NOT NULL,
    reply_to     TEXT,
    provider     TEXT    NOT NULL,
    plugins      TEXT    NOT NULL DEFAULT '[]',
    status       TEXT    NOT NULL DEFAULT 'draft'
                         CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'done', 'cancelled', 'failed')),
    send_at      INTEGER,
    planned      INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER
);
CREATE INDEX campaigns_status ON campaigns (status, send_at);

CREATE TABLE campaign_lists (
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    list_id     INTEGER NOT NULL REFERENCES lists(id),
    PRIMARY KEY (campaign_id, list_id)
);

CREATE TABLE deliveries (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id         INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    subscriber_id       INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    email               TEXT    NOT NULL,
    delivery_key        TEXT    NOT NULL UNIQUE,
    batch_no            INTEGER NOT NULL,
    status              TEXT    NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'bounced', 'complained')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    provider_message_id TEXT,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    sent_at             INTEGER,
    claimed_at          INTEGER,
    UNIQUE (campaign_id, subscriber_id)
);
CREATE INDEX deliveries_batch ON deliveries (campaign_id, batch_no, status);
CREATE INDEX deliveries_status ON deliveries (campaign_id, status);

CREATE TABLE suppressions (
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    email        TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, email)
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT,
    detail       TEXT    NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id);

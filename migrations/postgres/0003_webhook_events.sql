-- Provider webhook events already applied, by the provider's event id, so a redelivered
-- event changes nothing twice.
CREATE TABLE webhook_events (
    id          TEXT    PRIMARY KEY,
    source      TEXT    NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX deliveries_provider_message ON deliveries (provider_message_id);

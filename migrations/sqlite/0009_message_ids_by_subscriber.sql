-- Provider message ids indexed under their subscriber, not on their own.
--
-- Providers give random ids (Resend's are UUIDs), so an index on the id alone took every
-- sent message into a random leaf of a B-tree as large as the ledger's sent rows: once
-- it outgrew the page cache, a page read and a whole page written to the WAL per message
-- (`mailing bench` at 1,000,000 recipients on SQLite with the sink answering UUIDs, as
-- Resend does: 12,351-13,191 emails/s against 16,019-17,598 with ids in sending order,
-- and 18,601-18,676 with UUIDs and this index).
--
-- Under (subscriber_id, provider_message_id) the id goes next to its subscriber's other
-- rows, and a campaign sends in subscriber order, so a batch writes a few neighbouring
-- leaves. Every provider event names its recipient's address (Resend's `data.to`, the
-- bounce hook's `email`), so a webhook finds the row through the subscriber with that
-- address and then the id: both lookups by index. This index also serves what the
-- subscriber index of 0008 was for (a subscriber's deletion, a bounce by address), so it
-- replaces it, and the ledger keeps one index fewer.
DROP INDEX deliveries_provider_message;
DROP INDEX deliveries_subscriber;
CREATE INDEX deliveries_subscriber ON deliveries (subscriber_id, provider_message_id);

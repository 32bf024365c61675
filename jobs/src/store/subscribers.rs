//! Subscribers and list memberships: validation of incoming rows and the upsert that
//! adds them to a list in one transaction.

use serde::{Deserialize, Serialize};

use super::{Backend, Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

/// The most bytes an email address may have (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// The most characters a subscriber's name may have.
pub const MAX_NAME_LEN: usize = 256;
/// Subscribers written per statement by an import (3 parameters each, well under the
/// parameter limits of SQLite and PostgreSQL).
const UPSERT_CHUNK: usize = 500;

/// The most bytes of a subscriber's attributes, serialized as JSON.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;

/// A subscriber as a client submits it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSubscriber {
    /// The address (surrounding spaces are trimmed; the domain is lower-cased).
    #[cfg_attr(feature = "openapi", salvo(schema(format = Email, max_length = 254)))]
    pub email: String,
    /// Display name: at most 256 characters, without control characters (surrounding
    /// spaces are trimmed; blank means none).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        salvo(schema(max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))
    )]
    pub name: Option<String>,
    /// Free-form attributes (a JSON object), available to templates and plugins.
    #[serde(default)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A subscriber row that was refused, and why.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    /// Zero-based index of the row in the request (for CSV, the data row number).
    pub row: usize,
    /// The address as given (truncated).
    pub email: String,
    /// What is wrong, in words.
    pub reason: String,
}

/// The result of adding subscribers to a list.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// New subscribers created.
    pub inserted: u64,
    /// Existing subscribers updated (name, attributes) and ensured on the list.
    pub updated: u64,
    /// Rows refused, with reasons. Nothing of them was written.
    pub rejected: Vec<Rejection>,
}

/// One ledger row in a GDPR export.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ExportedDelivery {
    /// The campaign.
    pub campaign_id: i64,
    /// Outcome.
    pub status: String,
    /// Attempts.
    pub attempts: i64,
    /// When sent, epoch ms.
    pub sent_at: Option<i64>,
    /// Last error.
    pub last_error: Option<String>,
}

/// A subscriber as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Subscriber {
    /// Id.
    pub id: i64,
    /// Address, lower-cased domain.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// JSON object, as text.
    #[serde(skip)]
    pub attributes: String,
    /// `enabled`, `unsubscribed` or `blocklisted`.
    pub status: String,
    /// Creation time.
    pub created_at: i64,
}

/// Checks an address and returns its canonical form (trimmed, domain lower-cased).
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let email = raw.trim();
    if email.is_empty() {
        return Err("email is empty".into());
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(format!("email is longer than {MAX_EMAIL_LEN} bytes"));
    }
    let address: lettre::Address = email
        .parse()
        .map_err(|e| format!("not a valid email address: {e}"))?;
    Ok(format!(
        "{}@{}",
        address.user(),
        address.domain().to_ascii_lowercase()
    ))
}

impl NewSubscriber {
    /// Validates the row; on success returns (email, name, attributes JSON).
    pub fn validate(&self) -> Result<(String, Option<String>, String), String> {
        let email = normalize_email(&self.email)?;
        let name = match self.name.as_deref().map(str::trim) {
            Some(n) if n.chars().count() > MAX_NAME_LEN => {
                return Err(format!("name is longer than {MAX_NAME_LEN} characters"));
            }
            Some(n) if n.chars().any(char::is_control) => {
                return Err("name contains control characters".into());
            }
            Some("") | None => None,
            Some(n) => Some(n.to_owned()),
        };
        let attributes = serde_json::Value::Object(self.attributes.clone().unwrap_or_default());
        let attributes = attributes.to_string();
        if attributes.len() > MAX_ATTRIBUTES_BYTES {
            return Err(format!(
                "attributes exceed {MAX_ATTRIBUTES_BYTES} bytes of JSON"
            ));
        }
        Ok((email, name, attributes))
    }
}

/// A subscriber's ledger rows, deleted with the subscriber (by the ledger's
/// `deliveries_subscriber` index, not a scan of the ledger).
pub(crate) const DELETE_SUBSCRIBER_DELIVERIES: &str =
    "DELETE FROM deliveries WHERE subscriber_id = $1";

impl Store {
    /// Validates every row, then upserts the valid ones and adds them to the list, all in
    /// one transaction: either every valid row is written or none is.
    pub async fn add_subscribers(
        &self,
        list_id: i64,
        rows: &[NewSubscriber],
    ) -> Result<ImportReport, StoreError> {
        self.list(list_id).await?;
        let mut report = ImportReport::default();
        let mut valid = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::new();
        for (i, row) in rows.iter().enumerate() {
            match row.validate() {
                Ok(v) if !seen.insert(v.0.clone()) => report.rejected.push(Rejection {
                    row: i,
                    email: v.0,
                    reason: "duplicate of an earlier row in this request".into(),
                }),
                Ok(v) => valid.push(v),
                Err(reason) => report.rejected.push(Rejection {
                    row: i,
                    email: row.email.chars().take(MAX_EMAIL_LEN).collect(),
                    reason,
                }),
            }
        }
        let now = now_ms();
        let postgres = self.backend() == Backend::Postgres;
        let mut tx = self.begin_write().await?;
        // In chunks: one upsert writes the chunk and returns the ids, one insert adds the
        // memberships. The report's inserted/updated split comes from the upsert itself on
        // PostgreSQL; SQLite counts the chunk's existing addresses first.
        for chunk in valid.chunks(UPSERT_CHUNK) {
            let existing = if postgres {
                None
            } else {
                Some(count_existing(&mut tx, chunk).await?)
            };

            let mut upsert = String::from(
                "INSERT INTO subscribers (workspace_id, email, name, attributes, status, created_at, updated_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 3;
                upsert.push_str(if i == 0 { "" } else { ", " });
                upsert.push_str(&format!(
                    "($1, ${}, ${}, ${}, 'enabled', $2, $2)",
                    b + 3,
                    b + 4,
                    b + 5
                ));
            }
            upsert.push_str(
                " ON CONFLICT (workspace_id, email) DO UPDATE SET name = COALESCE(excluded.name, subscribers.name), \
                 attributes = excluded.attributes, updated_at = excluded.updated_at ",
            );
            // On PostgreSQL the second column is 1 for a row this statement inserted (on
            // SQLite it is unused, as the count came first): a row that `DO UPDATE`
            // wrote carries the updating transaction's row lock in `xmax`, a row it
            // inserted none. Counting the existing addresses with a query instead
            // depends on the planner finding the `(workspace_id, email)` index:
            // without statistics (a fresh deployment's first imports, before autovacuum
            // analyzes the table) it scanned every subscriber of the workspace for each
            // chunk, 25 ms per 500 addresses at the start of a 300,000-row import and 82
            // ms by its end (`mailing bench --backend redis`, PostgreSQL's log).
            upsert.push_str(if postgres {
                "RETURNING id, CAST((xmax = 0) AS INTEGER)"
            } else {
                "RETURNING id, 0"
            });
            // Three foreign-key checks per new subscriber and its membership, planned
            // once for the chunk (`fk_checks_keep_plans`).
            self.fk_checks_keep_plans(&mut tx).await?;
            let mut query = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(upsert))
                .persistent(false)
                .bind(DEFAULT_WORKSPACE)
                .bind(now);
            for (email, name, attributes) in chunk {
                query = query.bind(email).bind(name).bind(attributes);
            }
            let written = query.fetch_all(&mut *tx).await?;
            let inserted = match existing {
                Some(existing) => (chunk.len() as u64).saturating_sub(existing),
                None => written.iter().filter(|(_, new)| *new == 1).count() as u64,
            };
            report.inserted += inserted;
            report.updated += written.len() as u64 - inserted;
            let ids: Vec<i64> = written.into_iter().map(|(id, _)| id).collect();

            let mut members = String::from(
                "INSERT INTO list_memberships (list_id, subscriber_id, created_at) VALUES ",
            );
            for i in 0..ids.len() {
                members.push_str(if i == 0 { "" } else { ", " });
                members.push_str(&format!("($1, ${}, $2)", i + 3));
            }
            members.push_str(" ON CONFLICT (list_id, subscriber_id) DO NOTHING");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(members))
                .persistent(false)
                .bind(list_id)
                .bind(now);
            for id in ids {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
            self.plan_every_execution(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Unsubscribes a subscriber (from every list of the workspace) and records why.
    /// Returns whether the status changed (false when already unsubscribed or unknown).
    pub async fn unsubscribe(
        &self,
        subscriber_id: i64,
        campaign_id: i64,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE subscribers SET status = 'unsubscribed', updated_at = $1 \
             WHERE id = $2 AND status = 'enabled'",
        )
        .bind(now_ms())
        .bind(subscriber_id)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        if changed {
            let email: Option<String> =
                sqlx::query_scalar("SELECT email FROM subscribers WHERE id = $1")
                    .bind(subscriber_id)
                    .fetch_optional(self.pool())
                    .await?;
            if let Some(email) = email {
                self.suppress(&email, "unsubscribe").await?;
            }
            self.audit(
                "subscriber",
                "subscriber.unsubscribe",
                Some(&format!("subscriber:{subscriber_id}")),
                &serde_json::json!({ "campaign_id": campaign_id }),
            )
            .await?;
        }
        Ok(changed)
    }

    /// A subscriber by id.
    pub async fn subscriber(&self, id: i64) -> Result<Subscriber, StoreError> {
        sqlx::query_as::<_, Subscriber>(
            "SELECT id, email, name, attributes, status, created_at FROM subscribers \
             WHERE id = $1 AND workspace_id = $2",
        )
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("subscriber"))
    }

    /// Subscribers whose address starts with `prefix` (case as stored), by id.
    pub async fn search_subscribers(
        &self,
        prefix: &str,
        after: i64,
        limit: u32,
    ) -> Result<Page<Subscriber>, StoreError> {
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = sqlx::query_as::<_, Subscriber>(
            "SELECT id, email, name, attributes, status, created_at FROM subscribers \
             WHERE workspace_id = $1 AND email LIKE $2 ESCAPE '\\' AND id > $3 ORDER BY id LIMIT CAST($4 AS BIGINT)",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(pattern)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |s| s.id))
    }

    /// Replaces a subscriber's name and/or attributes (already validated).
    pub async fn update_subscriber(
        &self,
        id: i64,
        name: Option<Option<String>>,
        attributes: Option<String>,
    ) -> Result<Subscriber, StoreError> {
        let current = self.subscriber(id).await?;
        let name = name.unwrap_or(current.name);
        let attributes = attributes.unwrap_or(current.attributes);
        sqlx::query(
            "UPDATE subscribers SET name = $1, attributes = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(&name)
        .bind(&attributes)
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await?;
        self.subscriber(id).await
    }

    /// Everything stored about a subscriber (GDPR access): the row, list memberships and
    /// every ledger row.
    pub async fn export_subscriber(&self, id: i64) -> Result<serde_json::Value, StoreError> {
        let s = self.subscriber(id).await?;
        let lists: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT l.id, l.name, m.created_at FROM list_memberships m JOIN lists l ON l.id = m.list_id \
             WHERE m.subscriber_id = $1 ORDER BY l.id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let deliveries: Vec<ExportedDelivery> = sqlx::query_as(
            "SELECT campaign_id, status, attempts, sent_at, last_error FROM deliveries WHERE subscriber_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(serde_json::json!({
            "subscriber": {
                "id": s.id, "email": s.email, "name": s.name, "status": s.status, "created_at": s.created_at,
                "attributes": serde_json::from_str::<serde_json::Value>(&s.attributes).unwrap_or_default(),
            },
            "lists": lists.into_iter().map(|(id, name, at)| serde_json::json!({"id": id, "name": name, "joined_at": at})).collect::<Vec<_>>(),
            "deliveries": deliveries,
        }))
    }

    /// Erases a subscriber (GDPR erasure): the row, its memberships and its ledger rows.
    /// A suppression of the address, if any, stays so the address is never mailed again.
    pub async fn delete_subscriber(&self, id: i64) -> Result<(), StoreError> {
        self.subscriber(id).await?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(DELETE_SUBSCRIBER_DELIVERIES)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM list_memberships WHERE subscriber_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM subscribers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of a list's subscribers by id.
    pub async fn list_subscribers(
        &self,
        list_id: i64,
        after: i64,
        limit: u32,
    ) -> Result<Page<Subscriber>, StoreError> {
        let rows = sqlx::query_as::<_, Subscriber>(
            "SELECT s.id, s.email, s.name, s.attributes, s.status, s.created_at \
             FROM subscribers s JOIN list_memberships m ON m.subscriber_id = s.id \
             WHERE m.list_id = $1 AND s.id > $2 ORDER BY s.id LIMIT CAST($3 AS BIGINT)",
        )
        .bind(list_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |s| s.id))
    }
}

/// How many of `chunk`'s addresses the workspace has already (SQLite's import report; the
/// `(workspace_id, email)` index answers it).
async fn count_existing(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    chunk: &[(String, Option<String>, String)],
) -> Result<u64, StoreError> {
    let find = format!(
        "SELECT COUNT(*) FROM subscribers WHERE workspace_id = $1 AND email IN ({})",
        super::placeholders(2, chunk.len())
    );
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(find)).bind(DEFAULT_WORKSPACE);
    for (email, _, _) in chunk {
        query = query.bind(email);
    }
    Ok(query.fetch_one(&mut **tx).await? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports that count existing addresses before writing take SQLite's write lock
    /// first, so concurrent ones queue instead of failing with "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_imports_on_sqlite_wait_for_each_other_instead_of_failing() {
        let dir = std::env::temp_dir().join(format!(
            "mailing-imports-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let store = Store::connect(&crate::store::StoreConfig {
            url: format!("sqlite://{}", dir.join("store.sqlite3").display()),
            max_connections: 8,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .expect("a file store");
        let list = store.create_list("Everyone", None).await.unwrap();
        let imports: Vec<_> = (0..8)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let rows: Vec<NewSubscriber> = (0..100)
                        .map(|i| NewSubscriber {
                            email: format!("u{}@example.com", (n * 50) + i),
                            name: None,
                            attributes: None,
                        })
                        .collect();
                    store.add_subscribers(list.id, &rows).await
                })
            })
            .collect();
        for import in imports {
            let report = import.await.unwrap().expect("no import fails");
            assert_eq!(report.inserted + report.updated, 100);
        }
        assert_eq!(store.list(list.id).await.unwrap().subscriber_count, 450);
        store.close().await;
        std::fs::remove_dir_all(&dir).ok();
    }

    fn addresses(range: std::ops::Range<usize>) -> Vec<NewSubscriber> {
        range
            .map(|i| NewSubscriber {
                email: format!("reader{i}@example.com"),
                name: Some(format!("Reader {i}")),
                attributes: None,
            })
            .collect()
    }

    /// The report's split between new and known addresses, over several upsert chunks
    /// and with known addresses in the middle of a chunk: PostgreSQL reads it from the
    /// upsert, SQLite counts first; both must agree with what the lists hold.
    #[tokio::test]
    async fn imports_count_new_and_known_addresses_on_both_databases() {
        crate::store::on_both_databases(
            "imports_count_new_and_known_addresses_on_both_databases",
            async |store: &Store| {
                // (new, known) as the import reports them.
                let import = async |list: i64, range: std::ops::Range<usize>| {
                    let report = store
                        .add_subscribers(list, &addresses(range))
                        .await
                        .unwrap();
                    (report.inserted, report.updated)
                };
                let first = store.create_list("First", None).await.unwrap();
                assert_eq!(import(first.id, 0..700).await, (700, 0));

                // 600 known (100..700) and 500 new (700..1200), in chunks of 500 that mix
                // them; a second list, so the memberships are all new.
                let second = store.create_list("Second", None).await.unwrap();
                assert_eq!(import(second.id, 100..1200).await, (500, 600));
                assert_eq!(store.list(second.id).await.unwrap().subscriber_count, 1100);

                // The same rows again: every one known, nothing new on either list.
                assert_eq!(import(second.id, 100..1200).await, (0, 1100));
                assert_eq!(store.list(first.id).await.unwrap().subscriber_count, 700);
                assert_eq!(store.list(second.id).await.unwrap().subscriber_count, 1100);
            },
        )
        .await;
    }

    #[test]
    fn email_domain_is_lowercased_and_local_part_kept() {
        assert_eq!(
            normalize_email(" Ann.Lee@Example.COM ").as_deref(),
            Ok("Ann.Lee@example.com")
        );
    }

    #[test]
    fn garbage_email_is_refused_with_a_reason() {
        let err = normalize_email("not-an-address").unwrap_err();
        assert!(err.starts_with("not a valid email address"), "{err}");
    }

    #[test]
    fn oversized_attributes_are_refused() {
        let mut attributes = serde_json::Map::new();
        attributes.insert("blob".into(), "x".repeat(MAX_ATTRIBUTES_BYTES).into());
        let row = NewSubscriber {
            email: "a@b.co".into(),
            name: None,
            attributes: Some(attributes),
        };
        assert!(row.validate().unwrap_err().contains("attributes exceed"));
    }
}

//! Liquid templates as stored. Parsing and rendering live in `crate::render`; callers
//! must validate a template there before storing it.

use serde::Serialize;

use super::{Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

/// A stored template.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Template {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Liquid source of the subject line.
    pub subject: String,
    /// Liquid source of the HTML body.
    pub html: String,
    /// Liquid source of the plain-text body.
    pub text: Option<String>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms. Part of the compiled-template cache key.
    pub updated_at: i64,
}

macro_rules! select_template {
    () => {
        "SELECT id, name, subject, html, text, created_at, updated_at FROM templates"
    };
}

impl Store {
    /// Stores a template.
    pub async fn create_template(
        &self,
        name: &str,
        subject: &str,
        html: &str,
        text: Option<&str>,
    ) -> Result<Template, StoreError> {
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO templates (workspace_id, name, subject, html, text, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(name)
        .bind(subject)
        .bind(html)
        .bind(text)
        .bind(now)
        .fetch_one(self.pool())
        .await?;
        self.template(id).await
    }

    /// A template by id.
    pub async fn template(&self, id: i64) -> Result<Template, StoreError> {
        sqlx::query_as::<_, Template>(concat!(
            select_template!(),
            " WHERE id = $1 AND workspace_id = $2"
        ))
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("template"))
    }

    /// Replaces a template's parts (validated by the caller) and moves `updated_at`,
    /// so caches keyed by it compile the new version.
    pub async fn update_template(
        &self,
        id: i64,
        name: &str,
        subject: &str,
        html: &str,
        text: Option<&str>,
    ) -> Result<Template, StoreError> {
        let current = self.template(id).await?;
        let now = now_ms().max(current.updated_at + 1);
        sqlx::query(
            "UPDATE templates SET name = $1, subject = $2, html = $3, text = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(name)
        .bind(subject)
        .bind(html)
        .bind(text)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        self.template(id).await
    }

    /// Deletes a template no campaign or transactional message uses; `Conflict` otherwise.
    pub async fn delete_template(&self, id: i64) -> Result<(), StoreError> {
        self.template(id).await?;
        let (campaigns, messages): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM campaigns WHERE template_id = $1), \
                    (SELECT COUNT(*) FROM tx_messages WHERE template_id = $1)",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        if campaigns > 0 || messages > 0 {
            return Err(StoreError::Conflict(format!(
                "template {id} is used by {campaigns} campaign(s) and {messages} transactional \
                 message(s); it cannot be deleted (delete the campaigns first, or replace the \
                 template's content with PUT)"
            )));
        }
        // A campaign or message created since the count still holds the template: the
        // foreign key refuses the delete, and that is the same conflict.
        sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db)
                    if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation =>
                {
                    StoreError::Conflict(format!(
                        "template {id} came into use while it was being deleted; it cannot be deleted"
                    ))
                }
                _ => StoreError::from(e),
            })?;
        Ok(())
    }

    /// A page of templates by id.
    pub async fn templates(&self, after: i64, limit: u32) -> Result<Page<Template>, StoreError> {
        let rows = sqlx::query_as::<_, Template>(concat!(
            select_template!(),
            " WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT CAST($3 AS BIGINT)"
        ))
        .bind(DEFAULT_WORKSPACE)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |t| t.id))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::StoreError;
    use crate::store::transactional::NewTx;

    #[tokio::test]
    async fn a_template_a_transactional_message_used_is_a_conflict_not_a_failure() {
        let store = crate::store::memory_store().await;
        let used = store
            .create_template("t", "s", "<p>x</p>", None)
            .await
            .unwrap();
        store
            .create_tx(&NewTx {
                template_id: used.id,
                email: "a@example.com".into(),
                name: None,
                attributes: "{}".into(),
                data: "{}".into(),
                from: "news@example.com".into(),
                provider: "file".into(),
            })
            .await
            .unwrap();
        match store.delete_template(used.id).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("1 transactional"), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(store.template(used.id).await.unwrap().id, used.id);

        let unused = store
            .create_template("u", "s", "<p>x</p>", None)
            .await
            .unwrap();
        store.delete_template(unused.id).await.unwrap();
        assert!(matches!(
            store.template(unused.id).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

//! Mailing lists of a workspace.

use serde::Serialize;

use super::{Page, Store, StoreError};
use crate::model::{DEFAULT_WORKSPACE, now_ms};

/// A mailing list.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MailingList {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Members of any status.
    pub subscriber_count: i64,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

macro_rules! select_list {
    () => {
        "SELECT l.id, l.name, l.description, l.created_at, \
     (SELECT COUNT(*) FROM list_memberships m WHERE m.list_id = l.id) AS subscriber_count \
     FROM lists l"
    };
}

impl Store {
    /// Creates a list.
    pub async fn create_list(
        &self,
        name: &str,
        description: Option<&str>,
    ) -> Result<MailingList, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO lists (workspace_id, name, description, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .fetch_one(self.pool())
        .await?;
        self.list(id).await
    }

    /// Changes what is given of a list's name and description (`Some(None)` clears the
    /// description), in one statement; `NotFound` for an unknown id.
    pub async fn update_list(
        &self,
        id: i64,
        name: Option<&str>,
        description: Option<Option<&str>>,
    ) -> Result<MailingList, StoreError> {
        let updated = sqlx::query(
            "UPDATE lists SET name = COALESCE($1, name), \
             description = CASE WHEN $2 = 1 THEN $3 ELSE description END \
             WHERE id = $4 AND workspace_id = $5",
        )
        .bind(name)
        .bind(i64::from(description.is_some()))
        .bind(description.flatten())
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .execute(self.pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound("list"));
        }
        self.list(id).await
    }

    /// A list by id.
    pub async fn list(&self, id: i64) -> Result<MailingList, StoreError> {
        sqlx::query_as::<_, MailingList>(concat!(
            select_list!(),
            " WHERE l.id = $1 AND l.workspace_id = $2"
        ))
        .bind(id)
        .bind(DEFAULT_WORKSPACE)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("list"))
    }

    /// A page of lists by id.
    pub async fn lists(&self, after: i64, limit: u32) -> Result<Page<MailingList>, StoreError> {
        let rows = sqlx::query_as::<_, MailingList>(concat!(
            select_list!(),
            " WHERE l.workspace_id = $1 AND l.id > $2 ORDER BY l.id LIMIT CAST($3 AS BIGINT)"
        ))
        .bind(DEFAULT_WORKSPACE)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::from_rows(rows, limit, |l| l.id))
    }

    /// Deletes a list no campaign targets (its memberships go with it; subscribers
    /// stay); `Conflict` otherwise.
    pub async fn delete_list(&self, id: i64) -> Result<(), StoreError> {
        self.list(id).await?;
        let used: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM campaign_lists WHERE list_id = $1")
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "list {id} is targeted by {used} campaign(s); it cannot be deleted"
            )));
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM list_memberships WHERE list_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM lists WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Which of `ids` do not name a list of the workspace.
    pub async fn missing_lists(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let mut missing = Vec::new();
        for id in ids {
            let found: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM lists WHERE id = $1 AND workspace_id = $2",
            )
            .bind(id)
            .bind(DEFAULT_WORKSPACE)
            .fetch_one(self.pool())
            .await?;
            if found == 0 {
                missing.push(*id);
            }
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::StoreError;

    #[tokio::test]
    async fn an_update_changes_only_what_is_given_and_null_clears_the_description() {
        let store = crate::store::memory_store().await;
        let list = store.create_list("News", Some("Weekly")).await.unwrap();

        let renamed = store
            .update_list(list.id, Some("Digest"), None)
            .await
            .unwrap();
        assert_eq!(renamed.name, "Digest");
        assert_eq!(renamed.description.as_deref(), Some("Weekly"));

        let described = store
            .update_list(list.id, None, Some(Some("Monthly")))
            .await
            .unwrap();
        assert_eq!(described.name, "Digest");
        assert_eq!(described.description.as_deref(), Some("Monthly"));

        let cleared = store.update_list(list.id, None, Some(None)).await.unwrap();
        assert_eq!(cleared.name, "Digest");
        assert_eq!(cleared.description, None);
        assert_eq!(cleared.created_at, list.created_at);

        assert!(matches!(
            store.update_list(list.id + 1, Some("Nobody"), None).await,
            Err(StoreError::NotFound("list"))
        ));
    }
}

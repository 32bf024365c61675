//! The `file` provider: writes each message to `OUTBOX_DIR/<delivery key>.eml`.
//! Writes go to a temporary file that is renamed into place, so a reader never sees a
//! half-written message and a repeated send of the same key replaces, never duplicates.

use std::path::{Path, PathBuf};

use super::{Outgoing, ProviderError};

/// Writes messages into a directory.
#[derive(Debug, Clone)]
pub struct FileProvider {
    dir: PathBuf,
}

impl FileProvider {
    /// A provider writing into `dir` (created on first send).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileProvider { dir: dir.into() }
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the message; the delivery key names the file.
    pub async fn send(&self, message: &Outgoing) -> Result<Option<String>, ProviderError> {
        let transient = |what: &str, e: std::io::Error| ProviderError::Transient {
            message: format!("{what} {}: {e}", self.dir.display()),
            retry_after: None,
        };
        if !message
            .delivery_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ProviderError::Permanent(
                "delivery key is not a safe file name".into(),
            ));
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| transient("cannot create outbox", e))?;
        let path = self.dir.join(format!("{}.eml", message.delivery_key));
        let tmp = self.dir.join(format!(".{}.eml.tmp", message.delivery_key));
        tokio::fs::write(&tmp, &message.raw)
            .await
            .map_err(|e| transient("cannot write to outbox", e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| transient("cannot move message into outbox", e))?;
        Ok(Some(path.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_twice_leaves_one_file() {
        let dir = std::env::temp_dir().join(format!("mailing-outbox-{}", uuid::Uuid::new_v4()));
        let p = FileProvider::new(&dir);
        let m = Outgoing {
            from: "a@b.co".into(),
            to: "c@d.co".into(),
            delivery_key: "k1".into(),
            raw: b"Subject: x\r\n\r\nbody".to_vec(),
            ..Outgoing::default()
        };
        p.send(&m).await.unwrap();
        p.send(&m).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_key_that_is_not_a_file_name_is_refused() {
        let p = FileProvider::new(std::env::temp_dir());
        let m = Outgoing {
            from: "a@b.co".into(),
            to: "c@d.co".into(),
            delivery_key: "../escape".into(),
            raw: Vec::new(),
            ..Outgoing::default()
        };
        assert!(matches!(p.send(&m).await, Err(ProviderError::Permanent(_))));
    }
}

//! The `file` provider: writes each message to `OUTBOX_DIR/<delivery key>.eml`.
//! Writes go to a temporary file of their own that is renamed into place, so a reader
//! never sees a half-written message and a repeated send of the same key, even one
//! running at the same time (a batch redelivered while its first run still sends),
//! replaces, never duplicates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Outgoing, ProviderError};

/// Writes messages into a directory.
#[derive(Debug, Clone)]
pub struct FileProvider {
    dir: PathBuf,
    /// Writes at a time: each is a blocking task, and tokio starts a thread for every
    /// blocking task that finds the others busy (up to 512), so without a bound a
    /// campaign's concurrent sends became ~170 threads.
    writers: Arc<Semaphore>,
}

impl FileProvider {
    /// A provider writing into `dir` (created on first send).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        FileProvider {
            dir: dir.into(),
            writers: Arc::new(Semaphore::new(cores.saturating_mul(2).max(2))),
        }
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the message; the delivery key names the file.
    pub async fn send(&self, message: &Outgoing) -> Result<Option<String>, ProviderError> {
        if !message
            .delivery_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ProviderError::Permanent(
                "delivery key is not a safe file name".into(),
            ));
        }
        let _writer = self
            .writers
            .acquire()
            .await
            .map_err(|e| transient("cannot write to outbox", &self.dir, e))?;
        let (dir, key, raw) = (
            self.dir.clone(),
            message.delivery_key.clone(),
            message.raw.clone(),
        );
        let path = tokio::task::spawn_blocking(move || write_atomically(&dir, &key, &raw))
            .await
            .map_err(|e| transient("cannot write to outbox", &self.dir, e))??;
        Ok(Some(path.display().to_string()))
    }
}

fn transient(what: &str, dir: &Path, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Transient {
        message: format!("{what} {}: {e}", dir.display()),
        retry_after: None,
    }
}

/// Writes `raw` to a temporary file of its own, then renames it to `<key>.eml`: two
/// sends of the same key never rename each other's file away. Creates the directory
/// when it is missing.
fn write_atomically(dir: &Path, key: &str, raw: &[u8]) -> Result<PathBuf, ProviderError> {
    let path = dir.join(format!("{key}.eml"));
    let tmp = dir.join(format!(".{key}.{}.eml.tmp", uuid::Uuid::new_v4().simple()));
    let written = match std::fs::write(&tmp, raw) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| transient("cannot create outbox", dir, e))?;
            std::fs::write(&tmp, raw)
        }
        other => other,
    }
    .map_err(|e| transient("cannot write to outbox", dir, e))
    .and_then(|()| {
        std::fs::rename(&tmp, &path)
            .map_err(|e| transient("cannot move message into outbox", dir, e))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
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
    async fn concurrent_sends_of_one_key_all_succeed_and_leave_one_file() {
        let dir = std::env::temp_dir().join(format!("mailing-outbox-{}", uuid::Uuid::new_v4()));
        let p = FileProvider::new(&dir);
        let sends = (0..32).map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                p.send(&Outgoing {
                    from: "a@b.co".into(),
                    to: "c@d.co".into(),
                    delivery_key: "same-key".into(),
                    raw: format!("Subject: {i}\r\n\r\nbody").into_bytes(),
                    ..Outgoing::default()
                })
                .await
            })
        });
        for send in futures::future::join_all(sends).await {
            send.expect("the task ran").expect("every send succeeds");
        }
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["same-key.eml".to_owned()],
            "no temporary file left"
        );
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

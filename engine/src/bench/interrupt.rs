//! A run interrupted (SIGINT, as Ctrl-C sends, or SIGTERM) ends like a failed one: the
//! engine's processes are stopped and what the run set up (its directory, its
//! PostgreSQL database, its Redis keys) is removed, instead of the bench dying with a
//! database of up to millions of rows left on the user's server.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, listened for from [`Interrupt::listen`] on: a signal that arrives
/// before [`Interrupt::wait`] is polled is kept, not lost.
pub struct Interrupt {
    int: Signal,
    term: Signal,
}

impl Interrupt {
    /// Takes over SIGINT and SIGTERM for the rest of the process.
    pub fn listen() -> std::io::Result<Self> {
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Runs `run` to its end, unless a signal comes first: then `run` is dropped (the
    /// processes it started are killed with it, its connections closed) and the run
    /// ends with an error naming the signal. The caller removes the scratch either way.
    pub async fn unless_interrupted<T>(
        &mut self,
        run: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            result = run => result,
            signal = self.wait() => {
                eprintln!("bench: {signal}: stopping the engine and removing what the run set up ...");
                Err(anyhow::anyhow!(
                    "the bench was interrupted by {signal}; nothing was measured"
                ))
            }
        }
    }

    /// The name of the first signal received.
    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

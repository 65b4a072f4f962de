//! `eventually`: the one way a test waits for something to become true.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use super::Host;

/// A wait for `what`, at most `within`; see [`Eventually::until`].
pub struct Eventually {
    what: String,
    within: Duration,
    every: Duration,
    log: Option<PathBuf>,
}

/// Waits at most `within` for `what` (a few words for the panic message) to
/// become true:
///
/// ```text
/// let rows = eventually(WAIT, "a delivered row")
///     .log(&host)
///     .until(async || { let rows = host.deliveries("c"); … })
///     .await;
/// ```
pub fn eventually(within: Duration, what: impl Display) -> Eventually {
    Eventually {
        what: what.to_string(),
        within,
        every: Duration::from_millis(50),
        log: None,
    }
}

impl Eventually {
    /// Polls every `every` (50 ms unless told).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Puts the host's log in the panic message.
    pub fn log(mut self, host: &Host) -> Self {
        self.log = Some(host.log_path().to_path_buf());
        self
    }

    /// Calls `probe` until it says done — `true`, `Some(v)` or `Ok(v)` — and
    /// returns `v`. When `within` has passed, panics naming what it waited for,
    /// what the last call saw (the `Err`), and the host's log when given.
    pub async fn until<O: Outcome>(self, mut probe: impl AsyncFnMut() -> O) -> O::Done {
        let deadline = tokio::time::Instant::now() + self.within;
        loop {
            let seen = match probe().await.done() {
                Ok(done) => return done,
                Err(seen) => seen,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let log = match &self.log {
                    Some(path) => format!(
                        "\n---- host log ----\n{}",
                        std::fs::read_to_string(path).unwrap_or_default()
                    ),
                    None => String::new(),
                };
                panic!(
                    "waited {:?} for {}; last seen: {seen}{log}",
                    self.within, self.what
                );
            }
            tokio::time::sleep(self.every.min(deadline - now)).await;
        }
    }
}

/// What a probe returns: done (with a value) or not yet (with what it saw).
pub trait Outcome {
    type Done;
    type Seen: Display;
    fn done(self) -> Result<Self::Done, Self::Seen>;
}

impl Outcome for bool {
    type Done = ();
    type Seen = &'static str;
    fn done(self) -> Result<(), &'static str> {
        if self { Ok(()) } else { Err("false") }
    }
}

impl<T> Outcome for Option<T> {
    type Done = T;
    type Seen = &'static str;
    fn done(self) -> Result<T, &'static str> {
        self.ok_or("None")
    }
}

impl<T, S: Display> Outcome for Result<T, S> {
    type Done = T;
    type Seen = S;
    fn done(self) -> Result<T, S> {
        self
    }
}

//! One attempt of a claimed delivery: send it, decide what comes next (delivered,
//! retry later, failed, or the client disabled after a 410), record it with the
//! queue, and keep the client's health: how long it has been failing, and
//! whether it is disabled.

use super::http::Verdict;
use super::retry::{self, Next};
use super::{Slot, Worker};
use crate::model::{Job, State, StoredRender, Update, now_ms};
use crate::queue::{Health, HealthBy};

impl Worker {
    /// Makes one attempt and records it with the delivery's next state. The
    /// permit (one of the client's `max_in_flight`) is given back once the
    /// receiver has answered and the answer is judged, before the outcome is
    /// committed.
    pub(super) async fn attempt(
        &self,
        job: Job,
        render: StoredRender,
        first_render: bool,
        slot: Slot,
    ) {
        let settings = self.settings();
        let (attempt, verdict) = settings
            .sender
            .attempt(&settings.client, &job.id, &render.request)
            .await;
        let attempts = job.attempts + 1;
        let failed = verdict != Verdict::Delivered;
        let mut update = match verdict {
            Verdict::Delivered => Update::new(job.seq, State::Delivered),
            // The 410 that disables the client fails its delivery; the others of
            // the same burst are kept for when the client is enabled again.
            Verdict::Gone if self.disable("the receiver answered 410 Gone") => {
                let mut u = Update::new(job.seq, State::Failed);
                u.reason = Some("the receiver answered 410 Gone; the client is disabled".into());
                u
            }
            Verdict::Gone => {
                let mut u = Update::new(job.seq, State::Retrying);
                u.next_attempt_at = Some(now_ms());
                u.reason =
                    Some("the receiver answered 410 Gone while the client was disabled".into());
                u
            }
            Verdict::Retry { retry_after } => {
                let schedule = &settings.client.delivery.retry_schedule;
                match retry::next(schedule, attempts, retry_after, rand::random()) {
                    Next::GiveUp => {
                        let mut u = Update::new(job.seq, State::Failed);
                        u.reason = Some(format!(
                            "gave up after {attempts} attempts: {}",
                            attempt.error.as_deref().unwrap_or("")
                        ));
                        u
                    }
                    Next::RetryIn(wait) => {
                        let mut u = Update::new(job.seq, State::Retrying);
                        u.next_attempt_at = Some(now_ms() + wait.as_millis() as i64);
                        u.reason = attempt.error.clone();
                        u
                    }
                }
            }
        };
        let outcome = match (verdict == Verdict::Gone, update.state) {
            (true, _) => "gone",
            (_, State::Delivered) => "delivered",
            (_, State::Failed) => "failed",
            _ => "retry",
        };
        self.metrics.attempt(
            outcome,
            std::time::Duration::from_millis(attempt.duration_ms.max(0) as u64),
        );
        if matches!(update.state, State::Delivered | State::Failed) {
            self.metrics.delivery(update.state.as_str());
        }
        if failed {
            tracing::debug!(client = %self.id, delivery = %job.id, attempt = attempts,
                error = attempt.error.as_deref().unwrap_or(""), "attempt failed");
        }
        self.note_health(!failed);
        // What this answer decides in memory (a 410's disabling, the health
        // window) is decided before the next attempt may take the permit.
        drop(slot);
        update.attempt = Some(attempt);
        if first_render {
            update.render_is_event_body = render.request.body == job.event.raw;
            update.render = Some(render);
        }
        let retry_at = update
            .next_attempt_at
            .filter(|_| update.state == State::Retrying);
        if let Err(e) = self.queue.complete(&self.id, &job, update).await {
            // Not recorded: the queue still has the delivery due, so it is sent
            // again later (the receiver drops the duplicate by its webhook-id).
            tracing::error!(client = %self.id, delivery = %job.id, "cannot record an attempt: {e}");
            if job.rendered.is_some() || job.attempts > 0 {
                self.note_retry_at(now_ms() + 5_000);
            }
            return;
        }
        if let Some(at) = retry_at {
            self.note_retry_at(at);
        }
    }

    /// Tracks how long the client has been failing; disables it past its window.
    fn note_health(&self, ok: bool) {
        let mut h = self.health.lock().unwrap();
        if h.disabled.is_some() {
            // An attempt from before the client was disabled: writing its health
            // now could undo an operator's `clients enable` in the store.
            return;
        }
        let now = now_ms();
        match (ok, h.failing_since) {
            (true, Some(_)) => {
                h.failing_since = None;
                self.queue.set_health(&self.id, &h, HealthBy::Attempts);
            }
            (false, None) => {
                h.failing_since = Some(now);
                self.queue.set_health(&self.id, &h, HealthBy::Attempts);
            }
            (false, Some(since))
                if h.disabled.is_none()
                    && now - since
                        >= self.settings().client.delivery.disable_after.as_millis() as i64 =>
            {
                drop(h);
                self.disable(&format!(
                    "every delivery failed for {}",
                    humantime::format_duration(self.settings().client.delivery.disable_after)
                ));
            }
            _ => {}
        }
    }

    /// Disables the client; true if this call did (it was enabled until now).
    fn disable(&self, why: &str) -> bool {
        let mut h = self.health.lock().unwrap();
        if h.disabled.is_some() {
            return false;
        }
        tracing::error!(client = %self.id, "client disabled: {why}; its new events are kept. \
            Enable it again with `hookwasm clients enable {}`", self.id);
        h.disabled = Some(why.to_string());
        let health: Health = h.clone();
        self.queue.set_health(&self.id, &health, HealthBy::Attempts);
        true
    }
}

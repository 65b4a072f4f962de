//! What lives inside one plugin instance's `Store`: the deny-all WASI context,
//! the clocks a plugin sees, the memory limiter, the log tag and the captured
//! stdout/stderr. An instance serves one client only.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::capture::Capture;
use crate::text::escape;

/// Per-instance state inside a `Store`. An instance serves one client only.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) log: LogTag,
    pub(super) stdout: Capture,
    pub(super) stderr: Capture,
    /// What the guest's wall clock reads: the current event's `received_at` (ms).
    pub(super) now: Arc<AtomicI64>,
}

/// The wall clock a plugin sees: the time the event was received, fixed for the
/// whole call.
pub(super) struct EventClock(pub(super) Arc<AtomicI64>);

impl wasmtime_wasi::HostWallClock for EventClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64)
    }
}

/// A monotonic clock in whole milliseconds: enough to measure, too coarse to
/// time the host's work from inside.
pub(super) struct CoarseClock(pub(super) std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for CoarseClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        let ns = self.0.elapsed().as_nanos() as u64;
        ns - ns % 1_000_000
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it did, so the trap that follows is
/// reported as a memory error rather than whatever the guest did on failure.
pub(super) struct Limiter {
    pub(super) memory: usize,
    pub(super) hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Tags and counts a call's log lines.
pub(super) struct LogTag {
    pub(super) client: String,
    pub(super) plugin: String,
    pub(super) lines: usize,
    pub(super) max: usize,
    pub(super) dropped: usize,
}

impl LogTag {
    pub(super) fn emit(&mut self, level: tracing::Level, message: &str) {
        if self.lines >= self.max {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        // Cut a long line at a character boundary; a short one costs nothing.
        let mut end = message.len().min(2000);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = escape(&message[..end]);
        let (client, plugin) = (&self.client, &self.plugin);
        match level {
            tracing::Level::ERROR => tracing::error!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::TRACE => tracing::trace!(target: "plugin", client, plugin, "{message}"),
        }
    }
}

/// An instantiated plugin, kept warm between calls for one client.
pub(super) struct Warm {
    pub(super) store: Store<HostState>,
    pub(super) instance: Box<dyn super::world::Instance>,
    pub(super) calls: u32,
}

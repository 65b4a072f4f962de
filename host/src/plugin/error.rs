//! Why a plugin could not be loaded, and why a call gave no verdict: typed, so
//! the caller can act on the kind (a memory error is not a trap), and bounded,
//! since a plugin's text is stored with every delivery.

use std::time::Duration;

use crate::text::cut;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component: {0}")]
    NotComponent(String),
    #[error(
        "does not export a supported plugin world (found exports: {found}; supported: {supported})"
    )]
    NoWorld { found: String, supported: String },
    #[error("does not fit world {version}: {reason}")]
    Mismatch {
        version: &'static str,
        reason: String,
    },
}

/// Why one call did not produce a verdict. The delivery is held, never sent raw.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    #[error("the plugin says the event is invalid: {0}")]
    InvalidEvent(String),
    #[error("the plugin says the client's config is invalid: {0}")]
    InvalidConfig(String),
    #[error("the plugin failed: {0}")]
    Failed(String),
    #[error("the plugin ran past its deadline of {0:?}")]
    Deadline(Duration),
    #[error("the plugin tried to grow its memory past the cap of {0} bytes")]
    Memory(usize),
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin's answer was refused: {0}")]
    BadOutput(String),
}

impl PluginError {
    /// The same error with its message cut to `max` bytes: a plugin's text is
    /// stored with every delivery and logged, so it is bounded like its body.
    pub fn capped(self, max: usize) -> PluginError {
        match self {
            PluginError::InvalidEvent(m) => PluginError::InvalidEvent(cut(m, max)),
            PluginError::InvalidConfig(m) => PluginError::InvalidConfig(cut(m, max)),
            PluginError::Failed(m) => PluginError::Failed(cut(m, max)),
            PluginError::Trap(m) => PluginError::Trap(cut(m, max)),
            PluginError::BadOutput(m) => PluginError::BadOutput(cut(m, max)),
            other => other,
        }
    }

    /// A short machine-readable kind, as stored with the delivery.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::InvalidEvent(_) => "invalid-event",
            PluginError::InvalidConfig(_) => "invalid-config",
            PluginError::Failed(_) => "failed",
            PluginError::Deadline(_) => "deadline",
            PluginError::Memory(_) => "memory",
            PluginError::Trap(_) => "trap",
            PluginError::BadOutput(_) => "bad-output",
        }
    }
}

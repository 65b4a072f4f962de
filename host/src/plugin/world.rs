//! What every world version's bindings share, written once: linking the world's
//! imports, the host's `log`, and turning the guest's answer into the host's
//! [`super::Verdict`]. Each `vX_Y` module runs `bindgen!` for its frozen WIT, then
//! `world_glue!()` for this, and keeps only what differs between versions: the
//! event and client records it builds. A new version is a new module of that
//! shape, not a copy of this.

/// Expands, inside a version module after its `bindgen!`, to `add_to_linker`,
/// the `host` interface (`log`), and `from_wit`, which maps the guest's answer.
macro_rules! world_glue {
    () => {
        pub fn add_to_linker(
            linker: &mut wasmtime::component::Linker<$crate::plugin::HostState>,
        ) -> wasmtime::Result<()> {
            Plugin::add_to_linker::<
                $crate::plugin::HostState,
                wasmtime::component::HasSelf<$crate::plugin::HostState>,
            >(linker, |s| s)
        }

        impl self::hookwasm::plugin::types::Host for $crate::plugin::HostState {}

        impl self::hookwasm::plugin::host::Host for $crate::plugin::HostState {
            fn log(&mut self, level: self::hookwasm::plugin::types::Level, message: String) {
                use self::hookwasm::plugin::types::Level as L;
                let level = match level {
                    L::Trace => tracing::Level::TRACE,
                    L::Debug => tracing::Level::DEBUG,
                    L::Info => tracing::Level::INFO,
                    L::Warn => tracing::Level::WARN,
                    L::Error => tracing::Level::ERROR,
                };
                self.log.emit(level, &message);
            }
        }

        /// The guest's answer in the host's terms.
        fn from_wit(
            answer: Result<
                self::hookwasm::plugin::types::Verdict,
                self::hookwasm::plugin::types::Error,
            >,
        ) -> Result<$crate::plugin::Verdict, $crate::plugin::PluginError> {
            use self::hookwasm::plugin::types as t;
            use $crate::plugin::{PluginError, Verdict};
            match answer {
                Ok(t::Verdict::Deliver(d)) => Ok(Verdict::Deliver($crate::model::Rendered {
                    body: d.body,
                    content_type: d.content_type,
                    headers: d.headers,
                })),
                Ok(t::Verdict::Skip(reason)) => Ok(Verdict::Skip(reason)),
                Err(t::Error::InvalidEvent(m)) => Err(PluginError::InvalidEvent(m)),
                Err(t::Error::InvalidConfig(m)) => Err(PluginError::InvalidConfig(m)),
                Err(t::Error::Failed(m)) => Err(PluginError::Failed(m)),
            }
        }
    };
}

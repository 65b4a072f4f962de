//! What every world version's bindings share, written once: linking the world's
//! imports, the host's `log`, and turning the guest's answer into the host's
//! [`super::Verdict`]. Each `vX_Y` module runs `bindgen!` for its frozen WIT, then
//! `world_glue!()` for this, and keeps only what differs between versions: the
//! event and client records it builds. A new version is a new module of that
//! shape, not a copy of this.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{CallContext, HostState, PluginError, Verdict};
use crate::event::Event;

/// One world version the host runs.
pub struct World {
    /// `0.1.0`, `0.2.0`, …
    pub version: &'static str,
    /// The export that marks a component as targeting this version.
    pub export: &'static str,
    /// Checks a component's pre-instance against this version's bindings.
    pub pre: fn(InstancePre<HostState>) -> wasmtime::Result<Box<dyn Pre>>,
}

impl World {
    pub fn as_str(&self) -> &'static str {
        self.version
    }
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World({})", self.version)
    }
}

/// A component checked against its version's bindings, ready to instantiate.
pub trait Pre: Send + Sync {
    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Box<dyn Instance>>;
}

/// A live instance of some version.
pub trait Instance: Send {
    /// Calls the plugin. The outer error is a trap; the inner one the plugin's.
    fn call(
        &self,
        store: &mut Store<HostState>,
        event: &Event,
        cx: &CallContext<'_>,
    ) -> wasmtime::Result<Result<Verdict, PluginError>>;

    /// For the benchmark's bare call, which wants the concrete bindings.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

/// Expands, inside a version module after its `bindgen!` and its `call`, to
/// the version's [`World`] (`WORLD`), `add_to_linker`, the `host` interface
/// (`log`), and `from_wit`, which maps the guest's answer.
macro_rules! world_glue {
    ($version:literal) => {
        /// This version, for the runtime's table of worlds.
        pub static WORLD: $crate::plugin::World = $crate::plugin::World {
            version: $version,
            export: concat!("hookwasm:plugin/handler@", $version),
            pre: |pre| Ok(Box::new(PluginPre::new(pre)?)),
        };

        impl $crate::plugin::world::Pre for PluginPre<$crate::plugin::HostState> {
            fn instantiate(
                &self,
                store: &mut wasmtime::Store<$crate::plugin::HostState>,
            ) -> wasmtime::Result<Box<dyn $crate::plugin::world::Instance>> {
                Ok(Box::new(PluginPre::instantiate(self, store)?))
            }
        }

        impl $crate::plugin::world::Instance for Plugin {
            fn call(
                &self,
                store: &mut wasmtime::Store<$crate::plugin::HostState>,
                event: &$crate::event::Event,
                cx: &$crate::plugin::CallContext<'_>,
            ) -> wasmtime::Result<Result<$crate::plugin::Verdict, $crate::plugin::PluginError>>
            {
                call(self, store, event, cx)
            }

            fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
                self
            }
        }

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

        /// A feed entry's subscribers, lent to this world's records.
        fn subscribers(
            users: &[$crate::event::Subscriber],
        ) -> Vec<self::hookwasm::plugin::types::Subscriber<'_>> {
            users
                .iter()
                .map(|u| self::hookwasm::plugin::types::Subscriber {
                    email: &u.email,
                    firstname: u.firstname.as_deref(),
                    lastname: u.lastname.as_deref(),
                })
                .collect()
        }

        /// The client's config as this world's list of pairs, lent.
        fn config<'a>(cx: &'a $crate::plugin::CallContext<'_>) -> Vec<(&'a str, &'a str)> {
            cx.config
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
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

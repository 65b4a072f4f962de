//! hookwasm: Phraseanet events in, per-client WebAssembly plugins, signed HTTP
//! deliveries out. The modules follow an event's path: `ingest` → `store` →
//! `plugin` → `deliver`; `config` and `event` are shared by all of them.

pub mod config;
pub mod event;
pub mod plugin;

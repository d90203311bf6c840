//! The configuration of a shardgate process: its model, loading from YAML with errors that
//! name file, line and key, the `SHARDGATE__SECTION__KEY` environment overlay, validation,
//! and [`ConfigHandle`], the swappable handle sessions read the live config through.

mod load;
mod model;
pub mod shardmap;

pub use load::{load_file, load_str, ConfigError, Problem};
pub use model::*;
pub use shardmap::{KeyType, KeyValue, ShardMap};

use std::sync::Arc;

/// The live config, replaced whole on reload; readers take a cheap snapshot.
pub type ConfigHandle = Arc<arc_swap::ArcSwap<Config>>;

pub fn handle(config: Config) -> ConfigHandle {
    Arc::new(arc_swap::ArcSwap::from_pointee(config))
}

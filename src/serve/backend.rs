//! Placeholder replaced when the engine lands.
use std::path::Path;
use std::sync::Arc;

use super::{Backend, ServeConfig};

/// Builds the backend from the configuration.
pub async fn build(_config: &Path, _cfg: &ServeConfig) -> anyhow::Result<Arc<dyn Backend>> {
    anyhow::bail!("serve backend: waiting for the engine")
}

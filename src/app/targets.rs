//! Builds a connector from a target's configuration: one `match` on `kind`.
//!
//! To add a kind: add an arm below (behind the crate's cargo feature when the connector is
//! heavy), deserializing the table into the connector's config type with [`connector_config`].

use std::sync::Arc;

use anyhow::Context;
use idbridge_core::Connector;
use serde::de::DeserializeOwned;

use super::config::TargetConfig;

/// The kinds this build knows, for error messages.
pub fn known_kinds() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut kinds = vec!["mock", "manifest"];
    #[cfg(feature = "aws-iot")]
    kinds.push("aws-iot");
    #[cfg(feature = "azure")]
    kinds.push("azure-iot-hub");
    #[cfg(feature = "azure")]
    kinds.push("azure-dps");
    #[cfg(feature = "http")]
    kinds.extend(["interop", "webhook"]);
    #[cfg(feature = "gcp")]
    kinds.extend(["gcp-firestore", "gcp-pubsub"]);
    kinds
}

/// The connector for `target`.
pub async fn build(target: &TargetConfig) -> anyhow::Result<Arc<dyn Connector>> {
    let name = &target.name;
    let connector: Arc<dyn Connector> = match target.kind.as_str() {
        "mock" => Arc::new(
            idbridge_mock::MockConnector::new(connector_config(target)?)
                .await
                .with_context(|| format!("target {name}"))?,
        ),
        "manifest" => Arc::new(
            idbridge_manifest::ManifestConnector::new(connector_config(target)?)
                .with_context(|| format!("target {name}"))?,
        ),
        #[cfg(feature = "http")]
        "interop" => Arc::new(
            idbridge_http::InteropConnector::new(name, connector_config_without_kind(target)?)
                .with_context(|| format!("target {name}"))?,
        ),
        #[cfg(feature = "http")]
        "webhook" => Arc::new(
            idbridge_http::WebhookConnector::new(name, connector_config_without_kind(target)?)
                .with_context(|| format!("target {name}"))?,
        ),
        #[cfg(feature = "aws-iot")]
        "aws-iot" => Arc::new(
            idbridge_aws_iot::AwsIot::connect(connector_config(target)?)
                .await
                .with_context(|| format!("target {name}"))?,
        ),
        #[cfg(feature = "azure")]
        "azure-iot-hub" | "azure-dps" => idbridge_azure::connector(&connector_config(target)?)
            .with_context(|| format!("target {name}"))?,
        #[cfg(feature = "gcp")]
        "gcp-firestore" => Arc::new(
            idbridge_gcp::FirestoreConnector::new(name, connector_config(target)?)
                .with_context(|| format!("target {name}"))?,
        ),
        #[cfg(feature = "gcp")]
        "gcp-pubsub" => Arc::new(
            idbridge_gcp::PubSubConnector::new(name, connector_config(target)?)
                .with_context(|| format!("target {name}"))?,
        ),
        other => anyhow::bail!(
            "target {name}: unknown kind {other:?} (this build knows: {})",
            known_kinds().join(", ")
        ),
    };
    Ok(connector)
}

/// Deserializes the target's table (with `kind`) into a connector's config type; an error names
/// the target and the key.
/// An unknown key is an error naming the nearest valid one.
pub fn connector_config<T: DeserializeOwned>(target: &TargetConfig) -> anyhow::Result<T> {
    table_config(target, target.table.clone())
}

/// Like [`connector_config`], for connector configs that have no `kind` key.
pub fn connector_config_without_kind<T: DeserializeOwned>(
    target: &TargetConfig,
) -> anyhow::Result<T> {
    let mut table = target.table.clone();
    table.remove("kind");
    table_config(target, table)
}

fn table_config<T: DeserializeOwned>(
    target: &TargetConfig,
    table: toml::Table,
) -> anyhow::Result<T> {
    toml::Value::Table(table).try_into::<T>().map_err(|e| {
        let file = target
            .file
            .as_ref()
            .map_or_else(String::new, |p| format!("{}: ", p.display()));
        anyhow::anyhow!(
            "{file}[targets.{}]: {}",
            target.name,
            super::config::suggest(e.message())
        )
    })
}

/// Checks `target`'s keys as [`build`] would read them, without connecting: unknown keys (with
/// the nearest valid one), wrong types, and the connector's own validation where it has one.
pub fn validate(target: &TargetConfig) -> anyhow::Result<()> {
    let name = &target.name;
    match target.kind.as_str() {
        "mock" => drop(connector_config::<idbridge_mock::MockConfig>(target)?),
        "manifest" => drop(connector_config::<idbridge_manifest::ManifestConfig>(
            target,
        )?),
        #[cfg(feature = "http")]
        "interop" => drop(connector_config_without_kind::<idbridge_http::InteropConfig>(target)?),
        #[cfg(feature = "http")]
        "webhook" => drop(connector_config_without_kind::<idbridge_http::WebhookConfig>(target)?),
        #[cfg(feature = "aws-iot")]
        "aws-iot" => connector_config::<idbridge_aws_iot::AwsIotConfig>(target)?
            .validate()
            .with_context(|| format!("target {name}"))?,
        #[cfg(feature = "azure")]
        "azure-iot-hub" | "azure-dps" => {
            drop(connector_config::<idbridge_azure::AzureConfig>(target)?)
        }
        #[cfg(feature = "gcp")]
        "gcp-firestore" => drop(connector_config::<idbridge_gcp::FirestoreConfig>(target)?),
        #[cfg(feature = "gcp")]
        "gcp-pubsub" => drop(connector_config::<idbridge_gcp::PubSubConfig>(target)?),
        other => anyhow::bail!(
            "target {name}: unknown kind {other:?} (this build knows: {})",
            known_kinds().join(", ")
        ),
    }
    Ok(())
}

/// Whether a deprovision of `target` revokes certificates (AWS IoT `REVOKED`, which can never
/// be undone), given the operator's `--revoke`: with it, an `aws-iot` target revokes; a target
/// whose table says `revoke_on_deregister = true` is refused without it, so a config line alone
/// never revokes a reel. Other kinds have nothing to revoke and refuse `--revoke`.
pub fn deprovision_revokes(target: &mut TargetConfig, revoke: bool) -> anyhow::Result<bool> {
    let configured = target
        .table
        .get("revoke_on_deregister")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    if target.kind != "aws-iot" {
        anyhow::ensure!(
            !revoke,
            "target {}: --revoke is for aws-iot targets (kind {} has nothing to revoke)",
            target.name,
            target.kind
        );
        return Ok(false);
    }
    if configured && !revoke {
        anyhow::bail!(
            "target {} sets revoke_on_deregister = true: its certificates would be REVOKED, \
             which AWS IoT never undoes; pass --revoke to confirm (or remove the key to \
             deactivate and delete them instead)",
            target.name
        );
    }
    if revoke {
        target
            .table
            .insert("revoke_on_deregister".into(), toml::Value::Boolean(true));
    }
    Ok(revoke)
}

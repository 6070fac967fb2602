//! `kind = "gcp-firestore"`: one document per device in a collection, document ID = device id.
//!
//! Register is one create-only `documents:batchWrite` (`currentDocument.exists = false`) per
//! call; a write answered `ALREADY_EXISTS` is read back with one `documents:batchGet` and
//! compared (identical → `AlreadyPresent`, different → `Conflict`). A create can never
//! overwrite, so repeating a call whose answer was lost creates nothing twice. Deregister is
//! one `batchWrite` of deletes with `currentDocument.exists = true`, so a missing document is
//! reported `NotFound`. Lookup is a `GET`, list a paged `GET` with a field mask.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceId, DeviceIdentity, Error,
    ErrorKind, ListPage, Quota, RegisterOutcome, RemoteDevice, Result,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::{
    BatchGetItem, BatchGetRequest, BatchWriteRequest, BatchWriteResponse, Document, GcpClient,
    ListDocumentsResponse, Precondition, Write,
};
use crate::config::FirestoreConfig;
use crate::copy_error;
use crate::error::parse_write_status;

/// The pacer API of document writes (creates, deletes), counted per document.
pub const FIRESTORE_WRITE_API: &str = "firestore.write";
/// The pacer API of document reads (lookup, compare, list), counted per document or page.
pub const FIRESTORE_READ_API: &str = "firestore.read";
/// Documents per `list` page.
pub const LIST_PAGE_SIZE: usize = 300;

/// A Firestore collection as a device allowlist.
pub struct FirestoreConnector {
    name: String,
    cfg: FirestoreConfig,
    client: GcpClient,
    /// `/v1/projects/{p}/databases/{d}/documents`.
    documents_path: String,
    /// `projects/{p}/databases/{d}/documents/{collection}/`.
    name_prefix: String,
}

impl fmt::Debug for FirestoreConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirestoreConnector")
            .field("name", &self.name)
            .field("base_url", &self.client.base_url())
            .field("collection", &self.cfg.collection)
            .finish_non_exhaustive()
    }
}

impl FirestoreConnector {
    /// Builds the connector of target `name`: resolves endpoint and credentials (no call).
    pub fn new(name: &str, cfg: FirestoreConfig) -> Result<Self> {
        let resolved = cfg.resolve()?;
        let client = GcpClient::new(&resolved, Duration::from_secs(cfg.timeout_secs))?;
        let database = format!("projects/{}/databases/{}", resolved.project, cfg.database);
        Ok(FirestoreConnector {
            name: name.to_owned(),
            documents_path: format!("/v1/{database}/documents"),
            name_prefix: format!("{database}/documents/{}/", cfg.collection),
            client,
            cfg,
        })
    }

    /// The full resource name of `device`'s document.
    pub fn document_name(&self, device: &DeviceId) -> String {
        format!("{}{}", self.name_prefix, device)
    }

    async fn batch_write(
        &self,
        ctx: &CallContext,
        operation: &'static str,
        writes: &[Write],
    ) -> Result<BatchWriteResponse> {
        ctx.acquire_n(FIRESTORE_WRITE_API, count(writes.len()))
            .await;
        let resp: BatchWriteResponse = self
            .client
            .post(
                operation,
                &format!("{}:batchWrite", self.documents_path),
                &BatchWriteRequest { writes },
            )
            .await
            .map_err(|e| e.with_context("target", &self.name))?;
        if resp.status.len() != writes.len() {
            return Err(Error::new(
                ErrorKind::OutcomeUnknown,
                format!(
                    "batchWrite answered {} statuses for {} writes",
                    resp.status.len(),
                    writes.len()
                ),
            )
            .with_operation(operation)
            .with_context("target", &self.name));
        }
        Ok(resp)
    }

    /// The stored documents of `devices` by document name (None: missing).
    async fn batch_get(
        &self,
        ctx: &CallContext,
        devices: &[&DeviceIdentity],
    ) -> Result<HashMap<String, Option<Document>>> {
        let names: Vec<String> = devices
            .iter()
            .map(|d| self.document_name(&d.device_id))
            .collect();
        ctx.acquire_n(FIRESTORE_READ_API, count(names.len())).await;
        let items: Vec<BatchGetItem> = self
            .client
            .post(
                "batchGet",
                &format!("{}:batchGet", self.documents_path),
                &BatchGetRequest { documents: &names },
            )
            .await
            .map_err(|e| e.with_context("target", &self.name))?;
        let mut out = HashMap::with_capacity(items.len());
        for item in items {
            if let Some(doc) = item.found {
                out.insert(doc.name.clone(), Some(doc));
            } else if let Some(name) = item.missing {
                out.insert(name, None);
            }
        }
        Ok(out)
    }

    fn remote(&self, device: &DeviceIdentity, doc: Option<&Document>) -> RemoteDevice {
        let mut r = RemoteDevice::named(device.device_id.to_string())
            .with_resource("document", self.document_name(&device.device_id));
        r.device_id = Some(device.device_id.clone());
        if let Some(doc) = doc {
            if let Some(t) = &doc.update_time {
                r = r.with_resource("update_time", t);
            }
            r.status = Some("allowed".to_owned());
            r.differences = differences(device, doc);
        }
        r
    }
}

#[async_trait]
impl Connector for FirestoreConnector {
    // `..Default::default()` keeps this building while the engine grows Capabilities.
    #[allow(clippy::needless_update)]
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "gcp-firestore",
            max_batch_size: self.cfg.batch_size,
            max_deregister_batch_size: 0,
            quotas: vec![
                Quota {
                    api: FIRESTORE_WRITE_API.to_owned(),
                    per_second: self.cfg.writes_per_second,
                    burst: count(self.cfg.batch_size),
                },
                Quota {
                    api: FIRESTORE_READ_API.to_owned(),
                    per_second: self.cfg.reads_per_second,
                    burst: count(self.cfg.batch_size),
                },
            ],
            supports_list: true,
            supports_deregister: true,
            // Creates are create-only: repeating one after a lost answer finds ALREADY_EXISTS
            // and compares, never writes twice.
            idempotent_register: true,
            max_concurrency: 8,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        // The engine sends at most `batch_size`; a direct caller may send more.
        if devices.len() > self.cfg.batch_size {
            let mut out = Vec::with_capacity(devices.len());
            for part in devices.chunks(self.cfg.batch_size) {
                match self.register(ctx, part).await {
                    Ok(o) => out.extend(o),
                    Err(e) => out.extend(part.iter().map(|d| {
                        RegisterOutcome::Failed(
                            copy_error(&e).with_context("device_id", &d.device_id),
                        )
                    })),
                }
            }
            return Ok(out);
        }
        let (unique, first_of) = dedupe(devices);
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let now = OffsetDateTime::now_utc();
        let writes: Vec<Write> = unique
            .iter()
            .map(|&i| Write {
                update: Some(Document {
                    name: self.document_name(&devices[i].device_id),
                    fields: document_fields(&devices[i], now),
                    ..Default::default()
                }),
                delete: None,
                current_document: Precondition { exists: false },
            })
            .collect();
        let resp = self.batch_write(ctx, "batchWrite create", &writes).await?;
        let mut outcomes: Vec<Option<RegisterOutcome>> = (0..devices.len()).map(|_| None).collect();
        let mut existing: Vec<usize> = Vec::new();
        for (w, (&i, status)) in unique.iter().zip(&resp.status).enumerate() {
            let d = &devices[i];
            match parse_write_status("batchWrite create", status.code, &status.message) {
                None => {
                    let mut remote = self.remote(d, None);
                    remote.status = Some("allowed".to_owned());
                    if let Some(t) = resp
                        .write_results
                        .get(w)
                        .and_then(|w| w.update_time.clone())
                    {
                        remote = remote.with_resource("update_time", t);
                    }
                    outcomes[i] = Some(RegisterOutcome::Created(remote));
                }
                Some(e) if e.kind() == ErrorKind::AlreadyExists => existing.push(i),
                Some(e) => {
                    outcomes[i] = Some(RegisterOutcome::Failed(
                        e.with_context("device_id", &d.device_id)
                            .with_context("target", &self.name),
                    ));
                }
            }
        }
        if !existing.is_empty() {
            let refs: Vec<&DeviceIdentity> = existing.iter().map(|&i| &devices[i]).collect();
            match self.batch_get(ctx, &refs).await {
                Ok(mut docs) => {
                    for &i in &existing {
                        let d = &devices[i];
                        let doc = docs.remove(&self.document_name(&d.device_id)).flatten();
                        outcomes[i] = Some(compare_outcome(self, d, doc.as_ref()));
                    }
                }
                Err(e) => {
                    for &i in &existing {
                        outcomes[i] = Some(RegisterOutcome::Failed(
                            copy_error(&e).with_context("device_id", &devices[i].device_id),
                        ));
                    }
                }
            }
        }
        Ok(fill_duplicates(
            outcomes,
            &first_of,
            |first| match first {
                RegisterOutcome::Created(r) | RegisterOutcome::AlreadyPresent(r) => {
                    RegisterOutcome::AlreadyPresent(r.clone())
                }
                RegisterOutcome::Conflict { remote, reason } => RegisterOutcome::Conflict {
                    remote: remote.clone(),
                    reason: reason.clone(),
                },
                RegisterOutcome::Failed(e) => RegisterOutcome::Failed(copy_error(e)),
                other => RegisterOutcome::Failed(Error::new(
                    ErrorKind::Unexpected,
                    format!("unhandled outcome {other:?}"),
                )),
            },
            || RegisterOutcome::Failed(missing_outcome()),
        ))
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        if devices.len() > self.cfg.batch_size {
            let mut out = Vec::with_capacity(devices.len());
            for part in devices.chunks(self.cfg.batch_size) {
                match self.deregister(ctx, part).await {
                    Ok(o) => out.extend(o),
                    Err(e) => out.extend(part.iter().map(|d| {
                        DeregisterOutcome::Failed(
                            copy_error(&e).with_context("device_id", &d.device_id),
                        )
                    })),
                }
            }
            return Ok(out);
        }
        let (unique, first_of) = dedupe(devices);
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let writes: Vec<Write> = unique
            .iter()
            .map(|&i| Write {
                update: None,
                delete: Some(self.document_name(&devices[i].device_id)),
                current_document: Precondition { exists: true },
            })
            .collect();
        let resp = self.batch_write(ctx, "batchWrite delete", &writes).await?;
        let mut outcomes: Vec<Option<DeregisterOutcome>> =
            (0..devices.len()).map(|_| None).collect();
        for (&i, status) in unique.iter().zip(&resp.status) {
            outcomes[i] = Some(
                match parse_write_status("batchWrite delete", status.code, &status.message) {
                    None => DeregisterOutcome::Deleted,
                    Some(e) if e.kind() == ErrorKind::NotFound => DeregisterOutcome::NotFound,
                    Some(e) => DeregisterOutcome::Failed(
                        e.with_context("device_id", &devices[i].device_id)
                            .with_context("target", &self.name),
                    ),
                },
            );
        }
        Ok(fill_duplicates(
            outcomes,
            &first_of,
            |first| match first {
                // The first occurrence removed it: for the repeat it is gone.
                DeregisterOutcome::Deleted | DeregisterOutcome::NotFound => {
                    DeregisterOutcome::NotFound
                }
                DeregisterOutcome::Failed(e) => DeregisterOutcome::Failed(copy_error(e)),
                other => DeregisterOutcome::Failed(Error::new(
                    ErrorKind::Unexpected,
                    format!("unhandled outcome {other:?}"),
                )),
            },
            || DeregisterOutcome::Failed(missing_outcome()),
        ))
    }

    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        ctx.acquire(FIRESTORE_READ_API).await;
        let path = format!(
            "{}/{}/{}",
            self.documents_path, self.cfg.collection, device.device_id
        );
        match self.client.get::<Document>("get", &path).await {
            Ok(doc) => Ok(Some(self.remote(device, Some(&doc)))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e
                .with_context("device_id", &device.device_id)
                .with_context("target", &self.name)),
        }
    }

    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        ctx.acquire(FIRESTORE_READ_API).await;
        let mut path = format!(
            "{}/{}?pageSize={LIST_PAGE_SIZE}&mask.fieldPaths=fingerprint&mask.fieldPaths=batch",
            self.documents_path, self.cfg.collection
        );
        if let Some(token) = &cursor {
            path.push_str("&pageToken=");
            path.push_str(&percent_encode(token));
        }
        let page: ListDocumentsResponse = self
            .client
            .get("list", &path)
            .await
            .map_err(|e| e.with_context("target", &self.name))?;
        let devices = page
            .documents
            .iter()
            .map(|doc| {
                let id = doc.name.rsplit('/').next().unwrap_or_default().to_owned();
                let fingerprint = string_field(doc, "fingerprint").unwrap_or(id.as_str());
                let mut r =
                    RemoteDevice::named(id.clone()).with_resource("document", doc.name.clone());
                r.device_id = fingerprint.parse().ok();
                if let Some(batch) = string_field(doc, "batch") {
                    r = r.with_resource("batch", batch);
                }
                r.status = Some("allowed".to_owned());
                r
            })
            .collect();
        Ok(ListPage {
            devices,
            next: page.next_page_token.filter(|t| !t.is_empty()),
        })
    }

    /// An empty `batchWrite`: proves the endpoint, the database and write permission without
    /// writing (Google checks credentials before it validates the request, so an
    /// `INVALID_ARGUMENT` answer also proves them).
    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        ctx.acquire(FIRESTORE_WRITE_API).await;
        let r: Result<BatchWriteResponse> = self
            .client
            .post(
                "health_check",
                &format!("{}:batchWrite", self.documents_path),
                &BatchWriteRequest { writes: &[] },
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "Firestore database {:?} not found in the project: {e}",
                    self.cfg.database
                ),
            )
            .with_operation("health_check")
            .with_context("target", &self.name)),
            Err(e) => Err(e.with_context("target", &self.name)),
        }
    }
}

/// The fields of `device`'s document. Carries the batch's non-secret tag, never the batch ID.
pub fn document_fields(
    d: &DeviceIdentity,
    provisioned_at: OffsetDateTime,
) -> BTreeMap<String, Value> {
    let mut f = BTreeMap::new();
    f.insert("fingerprint".to_owned(), string(d.device_id.as_str()));
    f.insert("subject".to_owned(), string(&d.subject));
    f.insert("issuer".to_owned(), string(&d.issuer));
    f.insert("serial".to_owned(), string(&d.serial_hex));
    f.insert("not_before".to_owned(), timestamp(d.not_before));
    f.insert("not_after".to_owned(), timestamp(d.not_after));
    f.insert("key".to_owned(), string(&d.key.to_string()));
    f.insert("vendor".to_owned(), vendor_map(d));
    f.insert(
        "batch".to_owned(),
        match &d.batch {
            Some(b) => string(b.tag()),
            None => json!({"nullValue": null}),
        },
    );
    f.insert("provisioned_at".to_owned(), timestamp(provisioned_at));
    f.insert("pem".to_owned(), string(&d.to_pem()));
    f
}

/// How the stored document differs from what idbridge would write for `d` (`provisioned_at`
/// aside; batch and vendor attributes only where the input knows them).
pub fn differences(d: &DeviceIdentity, doc: &Document) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |field: &str, want: &str| {
        let got = string_field(doc, field);
        if got != Some(want) {
            out.push(format!(
                "{field}: stored {}, expected {}",
                shown(got),
                shown(Some(want))
            ));
        }
    };
    check("fingerprint", d.device_id.as_str());
    check("pem", &d.to_pem());
    check("subject", &d.subject);
    check("issuer", &d.issuer);
    check("serial", &d.serial_hex);
    if let Some(b) = &d.batch {
        check("batch", b.tag());
    }
    let stored_not_after = doc
        .fields
        .get("not_after")
        .and_then(|v| v.get("timestampValue"))
        .and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
    if stored_not_after != Some(d.not_after) {
        out.push("not_after differs".to_owned());
    }
    let want_vendor = vendor_map(d);
    if let Some(want) = want_vendor
        .get("mapValue")
        .and_then(|m| m.get("fields"))
        .and_then(Value::as_object)
    {
        let got = doc
            .fields
            .get("vendor")
            .and_then(|v| v.get("mapValue"))
            .and_then(|m| m.get("fields"))
            .and_then(Value::as_object);
        for (k, v) in want {
            if got.and_then(|g| g.get(k)) != Some(v) {
                out.push(format!("vendor.{k} differs"));
            }
        }
    }
    out
}

fn compare_outcome(
    c: &FirestoreConnector,
    d: &DeviceIdentity,
    doc: Option<&Document>,
) -> RegisterOutcome {
    match doc {
        Some(doc) => {
            let remote = c.remote(d, Some(doc));
            if remote.differences.is_empty() {
                RegisterOutcome::AlreadyPresent(remote)
            } else {
                RegisterOutcome::Conflict {
                    reason: format!(
                        "a different document is stored under this fingerprint: {}",
                        remote.differences.join("; ")
                    ),
                    remote: Some(remote),
                }
            }
        }
        // Deleted between the create and the read: worth another try.
        None => RegisterOutcome::Failed(
            Error::new(
                ErrorKind::Unexpected,
                "the document existed at create time and was gone when read back",
            )
            .set_temporary(true)
            .with_operation("batchGet")
            .with_context("device_id", &d.device_id),
        ),
    }
}

/// Indices of the first occurrence of each device id, and for every index the index of its
/// first occurrence (one write per document per `batchWrite`).
fn dedupe(devices: &[DeviceIdentity]) -> (Vec<usize>, Vec<usize>) {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(devices.len());
    let mut unique = Vec::with_capacity(devices.len());
    let mut first_of = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let first = *seen.entry(d.device_id.as_str()).or_insert(i);
        if first == i {
            unique.push(i);
        }
        first_of.push(first);
    }
    (unique, first_of)
}

/// Completes outcomes: repeats copy their first occurrence's outcome through `repeat`;
/// `missing` stands in for an outcome never filled (a bug, reported rather than panicking).
fn fill_duplicates<T>(
    mut outcomes: Vec<Option<T>>,
    first_of: &[usize],
    repeat: impl Fn(&T) -> T,
    missing: impl Fn() -> T,
) -> Vec<T> {
    for i in 0..outcomes.len() {
        if outcomes[i].is_none()
            && let Some(Some(first)) = outcomes.get(first_of[i])
        {
            outcomes[i] = Some(repeat(first));
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(&missing))
        .collect()
}

fn missing_outcome() -> Error {
    Error::new(
        ErrorKind::OutcomeUnknown,
        "internal: no outcome was recorded for this device",
    )
}

fn vendor_map(d: &DeviceIdentity) -> Value {
    let v = &d.vendor;
    let mut fields = serde_json::Map::new();
    for (k, val) in [
        ("vendor", &v.vendor),
        ("chip_id", &v.chip_id),
        ("slot", &v.slot),
        ("unique_id", &v.unique_id),
        ("group_id", &v.group_id),
        ("part_number", &v.part_number),
        ("provisioning_timestamp", &v.provisioning_timestamp),
        ("mac", &v.mac),
    ] {
        if let Some(val) = val {
            fields.insert(k.to_owned(), string(val));
        }
    }
    json!({"mapValue": {"fields": fields}})
}

fn string(s: &str) -> Value {
    json!({ "stringValue": s })
}

fn timestamp(t: OffsetDateTime) -> Value {
    let s = t
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    json!({ "timestampValue": s })
}

fn string_field<'a>(doc: &'a Document, field: &str) -> Option<&'a str> {
    doc.fields
        .get(field)
        .and_then(|v| v.get("stringValue"))
        .and_then(Value::as_str)
}

fn shown(v: Option<&str>) -> String {
    match v {
        None => "nothing".to_owned(),
        Some(s) if s.len() > 40 => format!("{:?}…", &s[..s.floor_char_boundary(40)]),
        Some(s) => format!("{s:?}"),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Page tokens are opaque: encode everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keeps_first_occurrences() {
        // Device ids only matter here; build three from two certificates.
        let key = rcgen::KeyPair::generate().unwrap();
        let mk = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let der = p.self_signed(&key).unwrap().der().to_vec();
            DeviceIdentity::from_der(der, idbridge_core::Source::default()).unwrap()
        };
        let a = mk("a");
        let b = mk("b");
        let (unique, first_of) = dedupe(&[a.clone(), b, a]);
        assert_eq!(unique, vec![0, 1]);
        assert_eq!(first_of, vec![0, 1, 0]);
        let filled = fill_duplicates(vec![Some(1), Some(2), None], &first_of, |x| x * 10, || 0);
        assert_eq!(filled, vec![1, 2, 10]);
    }

    #[test]
    fn fields_carry_the_batch_tag_never_the_batch_id() {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let mut d = DeviceIdentity::from_der(der, idbridge_core::Source::default()).unwrap();
        d.batch = Some(idbridge_core::BatchRef::new("b41425b9-secret"));
        let f = document_fields(&d, OffsetDateTime::UNIX_EPOCH);
        let text = serde_json::to_string(&f).unwrap();
        assert!(!text.contains("b41425b9"), "batch ID leaked: {text}");
        assert!(text.contains(d.batch.as_ref().unwrap().tag()));
        let doc = Document {
            fields: f,
            ..Default::default()
        };
        assert!(differences(&d, &doc).is_empty());
        d.batch = Some(idbridge_core::BatchRef::new("other"));
        assert_eq!(
            differences(&d, &doc).len(),
            1,
            "{:?}",
            differences(&d, &doc)
        );
    }

    #[test]
    fn page_tokens_are_encoded() {
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }
}

//! The mock's AWS IoT registry: certificates, things, principals, policies, thing types and
//! thing groups, with AWS's semantics (409s, REVOKED is final, DeleteConflict while attached,
//! asynchronous detach when scripted).

use std::collections::{BTreeMap, BTreeSet};

use aws_lc_rs::digest;
use serde_json::{Value, json};

/// An AWS error answer: status, `x-amzn-ErrorType` code, message, optional resource id/ARN.
#[derive(Debug, Clone)]
pub struct AwsError {
    /// HTTP status.
    pub status: u16,
    /// The error code (`ResourceAlreadyExistsException` ...).
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// `resourceId` and `resourceArn`, for ResourceAlreadyExistsException.
    pub resource: Option<(String, String)>,
}

impl AwsError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            code,
            message: message.into(),
            resource: None,
        }
    }
    pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequestException", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFoundException", message)
    }
    fn exists(message: impl Into<String>, id: &str, arn: &str) -> Self {
        AwsError {
            resource: Some((id.to_owned(), arn.to_owned())),
            ..Self::new(409, "ResourceAlreadyExistsException", message)
        }
    }
    fn cert_state(message: impl Into<String>) -> Self {
        Self::new(406, "CertificateStateException", message)
    }
    fn delete_conflict(message: impl Into<String>) -> Self {
        Self::new(409, "DeleteConflictException", message)
    }
}

type Res = Result<Value, AwsError>;

/// A link from a certificate to a thing. `detaching` > 0: detached, but the detach has not
/// propagated; deletes still see it that many more times.
#[derive(Debug, Clone)]
struct Link {
    exclusive: bool,
    detaching: u32,
}

#[derive(Debug, Clone)]
struct Cert {
    arn: String,
    pem: String,
    der: Vec<u8>,
    status: String,
    created: f64,
    modified: f64,
    generation: u64,
    version: u64,
    seq: u64,
    not_before: f64,
    not_after: f64,
    policies: BTreeSet<String>,
    things: BTreeMap<String, Link>,
}

#[derive(Debug, Clone)]
struct Thing {
    id: String,
    arn: String,
    type_name: Option<String>,
    attributes: BTreeMap<String, String>,
    version: i64,
    principals: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Policy {
    arn: String,
    document: String,
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    arn: String,
    things: BTreeSet<String>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    pub(crate) region: String,
    pub(crate) account: String,
    pub(crate) data_host: String,
    pub(crate) async_detach_polls: u32,
    certs: BTreeMap<String, Cert>,
    things: BTreeMap<String, Thing>,
    policies: BTreeMap<String, Policy>,
    groups: BTreeMap<String, Group>,
    thing_types: BTreeMap<String, String>,
    seq: u64,
}

fn now() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    // SystemRandom only fails if the OS has no randomness; a fixed id would still be unique-ish
    // per sequence, and the mock must never panic in a handler.
    let _ = aws_lc_rs::rand::fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(crate) fn request_id() -> String {
    random_id()
}

/// `[a-zA-Z0-9:_-]+`, 1..128.
pub(crate) fn valid_thing_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b))
}

/// `[\w+=,.@-]+`, 1..128.
fn valid_policy_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

fn valid_attr(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty())
        && s.len() <= 800
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b))
}

impl Registry {
    pub(crate) fn new(region: &str, account: &str, data_host: &str) -> Self {
        Registry {
            region: region.to_owned(),
            account: account.to_owned(),
            data_host: data_host.to_owned(),
            ..Default::default()
        }
    }

    fn arn(&self, kind: &str, name: &str) -> String {
        format!("arn:aws:iot:{}:{}:{kind}/{name}", self.region, self.account)
    }

    /// The certificate id named by a principal ARN (or an id).
    fn cert_id_of_principal(&self, principal: &str) -> Result<String, AwsError> {
        let id = principal.rsplit('/').next().unwrap_or(principal);
        let expected = self.arn("cert", id);
        if principal != expected && principal != id {
            return Err(AwsError::invalid(format!("Invalid principal: {principal}")));
        }
        if self.certs.contains_key(id) {
            Ok(id.to_owned())
        } else {
            Err(AwsError::not_found(format!(
                "The certificate {id} does not exist."
            )))
        }
    }

    fn cert(&self, id: &str) -> Result<&Cert, AwsError> {
        check_cert_id(id)?;
        self.certs
            .get(&id.to_ascii_lowercase())
            .ok_or_else(|| AwsError::not_found(format!("The certificate {id} does not exist.")))
    }

    // ---- certificates -------------------------------------------------------------------

    pub(crate) fn register_without_ca(&mut self, body: &Value) -> Res {
        let pem = body.get("certificatePem").and_then(Value::as_str).ok_or_else(|| {
            AwsError::invalid("1 validation error detected: Value null at 'certificatePem' failed to satisfy constraint: Member must not be null")
        })?;
        if pem.is_empty() || pem.len() > 65536 {
            return Err(AwsError::invalid(
                "certificatePem must be 1 to 65536 characters",
            ));
        }
        let status = match body.get("status").and_then(Value::as_str) {
            None => "INACTIVE",
            Some(s @ ("ACTIVE" | "INACTIVE" | "REVOKED")) => s,
            Some(s @ ("PENDING_TRANSFER" | "PENDING_ACTIVATION" | "REGISTER_INACTIVE")) => {
                return Err(AwsError::cert_state(format!(
                    "Cannot register a certificate with status {s}"
                )));
            }
            Some(s) => return Err(AwsError::invalid(format!("Invalid status: {s}"))),
        };
        let der = parse_pem_cert(pem)?;
        let (nb, na) = {
            let (_, c) = x509_parser::parse_x509_certificate(&der).map_err(|_| {
                AwsError::new(
                    400,
                    "CertificateValidationException",
                    "The certificate is not valid",
                )
            })?;
            (
                c.validity().not_before.timestamp() as f64,
                c.validity().not_after.timestamp() as f64,
            )
        };
        let id = hex::encode(digest::digest(&digest::SHA256, &der));
        let arn = self.arn("cert", &id);
        if self.certs.contains_key(&id) {
            return Err(AwsError::exists(
                "The certificate is already provisioned or registered",
                &id,
                &arn,
            ));
        }
        let t = now();
        self.seq += 1;
        self.certs.insert(
            id.clone(),
            Cert {
                arn: arn.clone(),
                pem: pem.to_owned(),
                der,
                status: status.to_owned(),
                created: t,
                modified: t,
                generation: self.seq,
                version: 1,
                seq: self.seq,
                not_before: nb,
                not_after: na,
                policies: BTreeSet::new(),
                things: BTreeMap::new(),
            },
        );
        Ok(json!({"certificateArn": arn, "certificateId": id}))
    }

    pub(crate) fn describe_certificate(&self, id: &str) -> Res {
        let c = self.cert(id)?;
        let id = id.to_ascii_lowercase();
        Ok(json!({"certificateDescription": {
            "certificateArn": c.arn, "certificateId": id, "status": c.status,
            "certificatePem": c.pem, "ownedBy": self.account, "creationDate": c.created,
            "lastModifiedDate": c.modified, "customerVersion": c.version,
            "generationId": c.generation.to_string(),
            "transferData": {},
            "validity": {"notBefore": c.not_before, "notAfter": c.not_after},
            "certificateMode": "SNI_ONLY"
        }}))
    }

    pub(crate) fn update_certificate(&mut self, id: &str, new_status: Option<&str>) -> Res {
        let new_status = new_status.ok_or_else(|| AwsError::invalid("newStatus is required"))?;
        let c = self.cert(id)?;
        match new_status {
            "ACTIVE" | "INACTIVE" | "REVOKED" => {}
            "PENDING_TRANSFER" | "PENDING_ACTIVATION" | "REGISTER_INACTIVE" => {
                return Err(AwsError::invalid(format!(
                    "Cannot set certificate status to {new_status}"
                )));
            }
            s => return Err(AwsError::invalid(format!("Invalid newStatus: {s}"))),
        }
        if c.status == "REVOKED" && new_status != "REVOKED" {
            return Err(AwsError::cert_state(
                "Certificate is revoked and cannot be reactivated.",
            ));
        }
        let key = id.to_ascii_lowercase();
        if let Some(c) = self.certs.get_mut(&key)
            && c.status != new_status
        {
            c.status = new_status.to_owned();
            c.modified = now();
            c.version += 1;
        }
        Ok(Value::Null)
    }

    pub(crate) fn delete_certificate(&mut self, id: &str, force: bool) -> Res {
        let c = self.cert(id)?;
        if c.status == "ACTIVE" {
            return Err(AwsError::cert_state(
                "Certificate must be deactivated (not ACTIVE) before deletion.",
            ));
        }
        let key = id.to_ascii_lowercase();
        let attached = self.see_attached_things(&key);
        if attached {
            return Err(AwsError::delete_conflict(
                "Things must be detached before deletion (arn: ".to_owned()
                    + &self.arn("cert", &key)
                    + ")",
            ));
        }
        let c = self.cert(id)?;
        if !c.policies.is_empty() && !force {
            return Err(AwsError::delete_conflict(format!(
                "Certificate policies must be detached before deletion (arn: {})",
                c.arn
            )));
        }
        if let Some(c) = self.certs.remove(&key) {
            for t in c.things.keys() {
                if let Some(th) = self.things.get_mut(t) {
                    th.principals.remove(&key);
                }
            }
        }
        Ok(Value::Null)
    }

    /// Whether any thing is (or is still seen as) attached; decrements pending detaches.
    fn see_attached_things(&mut self, cert: &str) -> bool {
        let Some(c) = self.certs.get_mut(cert) else {
            return false;
        };
        let mut attached = false;
        let mut done = Vec::new();
        for (thing, link) in c.things.iter_mut() {
            if link.detaching == 0 {
                attached = true;
            } else {
                link.detaching -= 1;
                attached = true;
                if link.detaching == 0 {
                    done.push(thing.clone());
                }
            }
        }
        for t in done {
            c.things.remove(&t);
            if let Some(th) = self.things.get_mut(&t) {
                th.principals.remove(cert);
            }
        }
        attached
    }

    pub(crate) fn list_certificates(
        &self,
        page_size: Option<usize>,
        marker: Option<&str>,
        ascending: bool,
    ) -> Res {
        let mut all: Vec<(&String, &Cert)> = self.certs.iter().collect();
        all.sort_by_key(|(_, c)| c.seq);
        if !ascending {
            all.reverse();
        }
        let (page, next) = paginate(&all, page_size, marker)?;
        let certs: Vec<Value> = page
            .iter()
            .map(|(id, c)| json!({"certificateArn": c.arn, "certificateId": id, "status": c.status, "certificateMode": "SNI_ONLY", "creationDate": c.created}))
            .collect();
        let mut out = json!({"certificates": certs});
        if let Some(n) = next {
            out["nextMarker"] = json!(n);
        }
        Ok(out)
    }

    // ---- things ---------------------------------------------------------------------------

    pub(crate) fn create_thing(&mut self, name: &str, body: &Value) -> Res {
        check_thing_name(name)?;
        let type_name = body
            .get("thingTypeName")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(t) = &type_name
            && !self.thing_types.contains_key(t)
        {
            return Err(AwsError::not_found(format!(
                "Thing type {t} does not exist."
            )));
        }
        let mut attributes = BTreeMap::new();
        if let Some(a) = body
            .pointer("/attributePayload/attributes")
            .and_then(Value::as_object)
        {
            for (k, v) in a {
                let v = v
                    .as_str()
                    .ok_or_else(|| AwsError::invalid("attribute values must be strings"))?;
                if !valid_attr(k, false) || k.len() > 128 || !valid_attr(v, true) {
                    return Err(AwsError::invalid(format!("Invalid attribute {k}={v}")));
                }
                attributes.insert(k.clone(), v.to_owned());
            }
        }
        if type_name.is_none() && attributes.len() > 3 {
            return Err(AwsError::invalid(
                "A thing without a thing type can have at most 3 attributes.",
            ));
        }
        if attributes.len() > 50 {
            return Err(AwsError::invalid("A thing can have at most 50 attributes."));
        }
        if let Some(existing) = self.things.get(name) {
            if existing.type_name == type_name && existing.attributes == attributes {
                return Ok(
                    json!({"thingName": name, "thingArn": existing.arn, "thingId": existing.id}),
                );
            }
            return Err(AwsError::exists(
                format!("Thing {name} already exists in account with different attributes"),
                &existing.id,
                &existing.arn,
            ));
        }
        let thing = Thing {
            id: random_id(),
            arn: self.arn("thing", name),
            type_name,
            attributes,
            version: 1,
            principals: BTreeSet::new(),
        };
        let out = json!({"thingName": name, "thingArn": thing.arn, "thingId": thing.id});
        self.things.insert(name.to_owned(), thing);
        Ok(out)
    }

    pub(crate) fn describe_thing(&self, name: &str) -> Res {
        check_thing_name(name)?;
        let t = self
            .things
            .get(name)
            .ok_or_else(|| AwsError::not_found(format!("Thing {name} cannot be found.")))?;
        let mut out = json!({"thingName": name, "thingId": t.id, "thingArn": t.arn,
            "attributes": t.attributes, "version": t.version, "defaultClientId": name});
        if let Some(tt) = &t.type_name {
            out["thingTypeName"] = json!(tt);
        }
        Ok(out)
    }

    pub(crate) fn delete_thing(&mut self, name: &str, expected_version: Option<i64>) -> Res {
        check_thing_name(name)?;
        let Some(t) = self.things.get(name) else {
            return Ok(Value::Null); // AWS: deleting a missing thing succeeds
        };
        if let Some(v) = expected_version
            && v != t.version
        {
            return Err(AwsError::new(
                409,
                "VersionConflictException",
                format!("The version for thing {name} does not match the expected version."),
            ));
        }
        let principals: Vec<String> = t.principals.iter().cloned().collect();
        let mut attached = false;
        for p in principals {
            if let Some(c) = self.certs.get_mut(&p)
                && let Some(link) = c.things.get_mut(name)
            {
                attached = true;
                if link.detaching > 0 {
                    link.detaching -= 1;
                    if link.detaching == 0 {
                        c.things.remove(name);
                        if let Some(th) = self.things.get_mut(name) {
                            th.principals.remove(&p);
                        }
                    }
                }
            }
        }
        if attached {
            return Err(AwsError::invalid(format!(
                "Cannot delete. Thing {name} is still attached to one or more principals"
            )));
        }
        self.things.remove(name);
        for g in self.groups.values_mut() {
            g.things.remove(name);
        }
        Ok(Value::Null)
    }

    pub(crate) fn list_things(&self, max: Option<usize>, token: Option<&str>) -> Res {
        let names: Vec<&String> = self.things.keys().collect();
        let (page, next) = paginate(&names, max, token)?;
        let things: Vec<Value> = page
            .iter()
            .map(|n| {
                let t = &self.things[*n];
                json!({"thingName": n, "thingArn": t.arn, "attributes": t.attributes, "version": t.version, "thingTypeName": t.type_name})
            })
            .collect();
        let mut out = json!({"things": things});
        if let Some(n) = next {
            out["nextToken"] = json!(n);
        }
        Ok(out)
    }

    pub(crate) fn create_thing_type(&mut self, name: &str) -> Res {
        check_thing_name(name)?;
        let arn = self.arn("thingtype", name);
        let id = self
            .thing_types
            .entry(name.to_owned())
            .or_insert_with(random_id)
            .clone();
        Ok(json!({"thingTypeName": name, "thingTypeArn": arn, "thingTypeId": id}))
    }

    /// DescribeThingType (`GET /thing-types/{thingTypeName}`).
    pub(crate) fn describe_thing_type(&self, name: &str) -> Res {
        let id = self
            .thing_types
            .get(name)
            .ok_or_else(|| AwsError::not_found(format!("Thing type {name} cannot be found.")))?;
        Ok(json!({
            "thingTypeName": name,
            "thingTypeArn": self.arn("thingtype", name),
            "thingTypeId": id,
            "thingTypeProperties": {},
            "thingTypeMetadata": {"deprecated": false}
        }))
    }

    // ---- principals -------------------------------------------------------------------------

    pub(crate) fn attach_thing_principal(
        &mut self,
        thing: &str,
        principal: Option<&str>,
        kind: Option<&str>,
    ) -> Res {
        check_thing_name(thing)?;
        let principal =
            principal.ok_or_else(|| AwsError::invalid("x-amzn-principal header is required"))?;
        let exclusive = match kind {
            None | Some("NON_EXCLUSIVE_THING") => false,
            Some("EXCLUSIVE_THING") => true,
            Some(k) => {
                return Err(AwsError::invalid(format!(
                    "Invalid thingPrincipalType: {k}"
                )));
            }
        };
        if !self.things.contains_key(thing) {
            return Err(AwsError::not_found(format!(
                "Thing {thing} cannot be found."
            )));
        }
        let id = self.cert_id_of_principal(principal)?;
        let c = &self.certs[&id];
        for (other, link) in &c.things {
            if other == thing && link.detaching == 0 {
                return Ok(Value::Null); // repeat attach: no-op
            }
            if other != thing && link.detaching == 0 && (link.exclusive || exclusive) {
                return Err(AwsError::invalid(format!(
                    "Principal {principal} is already attached to thing {other} exclusively or cannot be attached exclusively"
                )));
            }
        }
        if let Some(c) = self.certs.get_mut(&id) {
            c.things.insert(
                thing.to_owned(),
                Link {
                    exclusive,
                    detaching: 0,
                },
            );
        }
        if let Some(t) = self.things.get_mut(thing) {
            t.principals.insert(id);
        }
        Ok(Value::Null)
    }

    pub(crate) fn detach_thing_principal(&mut self, thing: &str, principal: Option<&str>) -> Res {
        check_thing_name(thing)?;
        let principal =
            principal.ok_or_else(|| AwsError::invalid("x-amzn-principal header is required"))?;
        if !self.things.contains_key(thing) {
            return Err(AwsError::not_found(format!(
                "Thing {thing} cannot be found."
            )));
        }
        let id = self.cert_id_of_principal(principal)?;
        let lag = self.async_detach_polls;
        let mut remove = false;
        if let Some(c) = self.certs.get_mut(&id) {
            match c.things.get_mut(thing) {
                Some(link) if link.detaching == 0 => {
                    if lag == 0 {
                        remove = true;
                    } else {
                        link.detaching = lag;
                    }
                }
                _ => {}
            }
            if remove {
                c.things.remove(thing);
            }
        }
        if remove && let Some(t) = self.things.get_mut(thing) {
            t.principals.remove(&id);
        }
        Ok(Value::Null)
    }

    pub(crate) fn list_thing_principals(
        &self,
        thing: &str,
        v2: bool,
        max: Option<usize>,
        token: Option<&str>,
    ) -> Res {
        check_thing_name(thing)?;
        let t = self
            .things
            .get(thing)
            .ok_or_else(|| AwsError::not_found(format!("Thing {thing} cannot be found.")))?;
        let visible: Vec<(String, bool)> = t
            .principals
            .iter()
            .filter_map(|id| {
                let link = self.certs.get(id)?.things.get(thing)?;
                (link.detaching == 0).then(|| (self.arn("cert", id), link.exclusive))
            })
            .collect();
        let (page, next) = paginate(&visible, max, token)?;
        let mut out = if v2 {
            json!({"thingPrincipalObjects": page.iter().map(|(p, ex)| json!({"principal": p, "thingPrincipalType": kind_name(*ex)})).collect::<Vec<_>>()})
        } else {
            json!({"principals": page.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()})
        };
        if let Some(n) = next {
            out["nextToken"] = json!(n);
        }
        Ok(out)
    }

    pub(crate) fn list_principal_things(
        &self,
        principal: Option<&str>,
        v2: bool,
        max: Option<usize>,
        token: Option<&str>,
    ) -> Res {
        let principal =
            principal.ok_or_else(|| AwsError::invalid("x-amzn-principal header is required"))?;
        let id = self.cert_id_of_principal(principal)?;
        let visible: Vec<(String, bool)> = self.certs[&id]
            .things
            .iter()
            .filter(|(_, l)| l.detaching == 0)
            .map(|(t, l)| (t.clone(), l.exclusive))
            .collect();
        let (page, next) = paginate(&visible, max, token)?;
        let mut out = if v2 {
            json!({"principalThingObjects": page.iter().map(|(t, ex)| json!({"thingName": t, "thingPrincipalType": kind_name(*ex)})).collect::<Vec<_>>()})
        } else {
            json!({"things": page.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()})
        };
        if let Some(n) = next {
            out["nextToken"] = json!(n);
        }
        Ok(out)
    }

    // ---- policies -----------------------------------------------------------------------------

    pub(crate) fn create_policy(&mut self, name: &str, body: &Value) -> Res {
        if !valid_policy_name(name) {
            return Err(AwsError::invalid(format!("Invalid policy name: {name}")));
        }
        let doc = body
            .get("policyDocument")
            .and_then(Value::as_str)
            .ok_or_else(|| AwsError::invalid("policyDocument is required"))?;
        if serde_json::from_str::<Value>(doc)
            .map(|v| v.get("Statement").is_none())
            .unwrap_or(true)
        {
            return Err(AwsError::new(
                400,
                "MalformedPolicyException",
                "Policy document is malformed",
            ));
        }
        let arn = self.arn("policy", name);
        if self.policies.contains_key(name) {
            return Err(AwsError::exists(
                format!("Policy cannot be created - name already exists (name={name})"),
                name,
                &arn,
            ));
        }
        self.policies.insert(
            name.to_owned(),
            Policy {
                arn: arn.clone(),
                document: doc.to_owned(),
            },
        );
        Ok(
            json!({"policyName": name, "policyArn": arn, "policyDocument": doc, "policyVersionId": "1"}),
        )
    }

    pub(crate) fn get_policy(&self, name: &str) -> Res {
        let p = self
            .policies
            .get(name)
            .ok_or_else(|| AwsError::not_found(format!("Policy {name} does not exist")))?;
        Ok(
            json!({"policyName": name, "policyArn": p.arn, "policyDocument": p.document, "defaultVersionId": "1", "generationId": "1"}),
        )
    }

    pub(crate) fn attach_policy(&mut self, name: &str, body: &Value) -> Res {
        let target = body
            .get("target")
            .and_then(Value::as_str)
            .ok_or_else(|| AwsError::invalid("target is required"))?;
        if !self.policies.contains_key(name) {
            return Err(AwsError::not_found(format!("Policy {name} does not exist")));
        }
        let id = self.cert_id_of_principal(target)?;
        let c = self
            .certs
            .get_mut(&id)
            .ok_or_else(|| AwsError::not_found("no such certificate"))?;
        if !c.policies.contains(name) && c.policies.len() >= 10 {
            return Err(AwsError::new(
                410,
                "LimitExceededException",
                "The number of attached policies cannot exceed 10.",
            ));
        }
        c.policies.insert(name.to_owned());
        Ok(Value::Null)
    }

    pub(crate) fn detach_policy(&mut self, name: &str, body: &Value) -> Res {
        let target = body
            .get("target")
            .and_then(Value::as_str)
            .ok_or_else(|| AwsError::invalid("target is required"))?;
        if !self.policies.contains_key(name) {
            return Err(AwsError::not_found(format!("Policy {name} does not exist")));
        }
        let id = self.cert_id_of_principal(target)?;
        // moto answers 404 for a policy that is not attached to the target.
        let attached = self
            .certs
            .get_mut(&id)
            .is_some_and(|c| c.policies.remove(name));
        if !attached {
            return Err(AwsError::not_found(format!(
                "Policy {name} is not attached to {target}"
            )));
        }
        Ok(Value::Null)
    }

    pub(crate) fn list_attached_policies(
        &self,
        target: &str,
        page_size: Option<usize>,
        marker: Option<&str>,
    ) -> Res {
        let id = self.cert_id_of_principal(target)?;
        let names: Vec<&String> = self.certs[&id].policies.iter().collect();
        let (page, next) = paginate(&names, page_size, marker)?;
        let mut out = json!({"policies": page.iter().map(|n| json!({"policyName": n, "policyArn": self.arn("policy", n)})).collect::<Vec<_>>()});
        if let Some(n) = next {
            out["nextMarker"] = json!(n);
        }
        Ok(out)
    }

    // ---- thing groups ---------------------------------------------------------------------------

    pub(crate) fn create_thing_group(&mut self, name: &str) -> Res {
        check_thing_name(name)?;
        let arn = self.arn("thinggroup", name);
        let g = self.groups.entry(name.to_owned()).or_insert_with(|| Group {
            id: random_id(),
            arn,
            things: BTreeSet::new(),
        });
        Ok(json!({"thingGroupName": name, "thingGroupArn": g.arn, "thingGroupId": g.id}))
    }

    pub(crate) fn describe_thing_group(&self, name: &str) -> Res {
        let g = self
            .groups
            .get(name)
            .ok_or_else(|| AwsError::not_found(format!("Thing group {name} cannot be found.")))?;
        Ok(
            json!({"thingGroupName": name, "thingGroupArn": g.arn, "thingGroupId": g.id, "version": 1, "status": "ACTIVE"}),
        )
    }

    pub(crate) fn group_membership(&mut self, add: bool, body: &Value) -> Res {
        let by_arn = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        };
        let group = body
            .get("thingGroupName")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| by_arn("thingGroupArn"))
            .ok_or_else(|| AwsError::invalid("thingGroupName or thingGroupArn is required"))?;
        let thing = body
            .get("thingName")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| by_arn("thingArn"))
            .ok_or_else(|| AwsError::invalid("thingName or thingArn is required"))?;
        if !self.things.contains_key(&thing) {
            return Err(AwsError::not_found(format!(
                "Thing {thing} cannot be found."
            )));
        }
        let g = self
            .groups
            .get_mut(&group)
            .ok_or_else(|| AwsError::not_found(format!("Thing group {group} cannot be found.")))?;
        if add {
            g.things.insert(thing);
        } else {
            g.things.remove(&thing);
        }
        Ok(Value::Null)
    }

    pub(crate) fn list_things_in_group(
        &self,
        name: &str,
        max: Option<usize>,
        token: Option<&str>,
    ) -> Res {
        let g = self
            .groups
            .get(name)
            .ok_or_else(|| AwsError::not_found(format!("Thing group {name} cannot be found.")))?;
        let names: Vec<&String> = g.things.iter().collect();
        let (page, next) = paginate(&names, max, token)?;
        let mut out = json!({"things": page});
        if let Some(n) = next {
            out["nextToken"] = json!(n);
        }
        Ok(out)
    }

    pub(crate) fn describe_endpoint(&self, kind: Option<&str>) -> Res {
        match kind.unwrap_or("iot:Data") {
            "iot:Data" | "iot:Data-ATS" | "iot:CredentialProvider" | "iot:Jobs" => {
                Ok(json!({"endpointAddress": self.data_host}))
            }
            k => Err(AwsError::invalid(format!("Invalid endpointType: {k}"))),
        }
    }

    // ---- device admission and test inspection --------------------------------------------------

    /// The device endpoint's rule: registered, ACTIVE, attached to a thing, with a policy.
    pub(crate) fn admit(&self, der: &[u8]) -> Result<String, String> {
        let id = hex::encode(digest::digest(&digest::SHA256, der));
        let c = self.certs.get(&id).ok_or("certificate not registered")?;
        if c.der != der {
            return Err("certificate mismatch".into());
        }
        if c.status != "ACTIVE" {
            return Err(format!("certificate is {}", c.status));
        }
        let thing = c
            .things
            .iter()
            .find(|(_, l)| l.detaching == 0)
            .map(|(t, _)| t.clone())
            .ok_or("no thing attached")?;
        if c.policies.is_empty() {
            return Err("no policy attached".into());
        }
        Ok(thing)
    }

    /// Status of a certificate, if registered.
    pub fn certificate_status(&self, id: &str) -> Option<String> {
        self.certs.get(id).map(|c| c.status.clone())
    }
    /// Things the certificate is attached to (including not yet propagated detaches).
    pub fn certificate_things(&self, id: &str) -> Vec<String> {
        self.certs
            .get(id)
            .map(|c| c.things.keys().cloned().collect())
            .unwrap_or_default()
    }
    /// Policies attached to the certificate.
    pub fn certificate_policies(&self, id: &str) -> Vec<String> {
        self.certs
            .get(id)
            .map(|c| c.policies.iter().cloned().collect())
            .unwrap_or_default()
    }
    /// Attributes of a thing, if it exists.
    pub fn thing_attributes(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.things.get(name).map(|t| t.attributes.clone())
    }
    /// Things in a group.
    pub fn group_things(&self, name: &str) -> Vec<String> {
        self.groups
            .get(name)
            .map(|g| g.things.iter().cloned().collect())
            .unwrap_or_default()
    }
    /// The policy document, if the policy exists.
    pub fn policy_document(&self, name: &str) -> Option<String> {
        self.policies.get(name).map(|p| p.document.clone())
    }
    /// Number of certificates.
    pub fn certificate_count(&self) -> usize {
        self.certs.len()
    }
    /// Number of things.
    pub fn thing_count(&self) -> usize {
        self.things.len()
    }
    /// Certificates that are orphans: no thing, or no policy.
    pub fn orphan_certificates(&self) -> Vec<String> {
        self.certs
            .iter()
            .filter(|(_, c)| c.things.is_empty() || c.policies.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }
    /// Things without a principal.
    pub fn things_without_principal(&self) -> Vec<String> {
        self.things
            .iter()
            .filter(|(_, t)| t.principals.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }
    /// Creates a policy directly (test setup).
    pub fn put_policy(&mut self, name: &str, document: &str) {
        let arn = self.arn("policy", name);
        self.policies.insert(
            name.to_owned(),
            Policy {
                arn,
                document: document.to_owned(),
            },
        );
    }
    /// Creates a thing group directly (test setup).
    pub fn put_thing_group(&mut self, name: &str) {
        let _ = self.create_thing_group(name);
    }
    /// Sets how many delete attempts still see a detached thing (0: synchronous detach).
    pub fn set_async_detach_polls(&mut self, n: u32) {
        self.async_detach_polls = n;
    }
}

fn kind_name(exclusive: bool) -> &'static str {
    if exclusive {
        "EXCLUSIVE_THING"
    } else {
        "NON_EXCLUSIVE_THING"
    }
}

fn check_thing_name(n: &str) -> Result<(), AwsError> {
    if valid_thing_name(n) {
        Ok(())
    } else {
        Err(AwsError::invalid(format!(
            "1 validation error detected: Value '{n}' at 'thingName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+"
        )))
    }
}

fn check_cert_id(id: &str) -> Result<(), AwsError> {
    let hex = id.strip_prefix("0x").unwrap_or(id);
    if id.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AwsError::invalid(format!(
            "1 validation error detected: Value '{id}' at 'certificateId' failed to satisfy constraint: Member must have length greater than or equal to 64"
        )))
    }
}

fn parse_pem_cert(pem: &str) -> Result<Vec<u8>, AwsError> {
    let bad = || {
        AwsError::new(
            400,
            "CertificateValidationException",
            "The certificate is not valid",
        )
    };
    let mut reader = pem.as_bytes();
    let mut blocks = rustls_pemfile::certs(&mut reader);
    let first = blocks.next().ok_or_else(bad)?.map_err(|_| bad())?;
    if blocks.next().is_some() {
        return Err(AwsError::new(
            400,
            "CertificateValidationException",
            "The certificate PEM contains more than one certificate",
        ));
    }
    Ok(first.to_vec())
}

/// Offset-based paging with opaque-looking tokens.
fn paginate<'a, T>(
    items: &'a [T],
    size: Option<usize>,
    token: Option<&str>,
) -> Result<(&'a [T], Option<String>), AwsError> {
    let size = size.unwrap_or(25).clamp(1, 250);
    let start = match token {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix("page-")
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| *s <= items.len())
            .ok_or_else(|| AwsError::invalid("Invalid pagination token"))?,
    };
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| format!("page-{end}"));
    Ok((&items[start..end], next))
}

//! The only file that touches the wire: one method per AWS IoT API, each asking the engine's
//! pacer for a token first and mapping failures through [`crate::error::from_sdk`].

use std::collections::BTreeMap;

use aws_sdk_iot::types::{AttributePayload, CertificateStatus, ThingPrincipalType};
use idbridge_core::{CallContext, ErrorKind, Result};

use crate::error::from_sdk;

/// A certificate as AWS reports it.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub arn: String,
    pub status: String,
}

/// A thing as AWS reports it.
#[derive(Debug, Clone)]
pub(crate) struct ThingInfo {
    pub arn: String,
    pub type_name: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// aws-sdk-iot with retries off.
#[derive(Debug, Clone)]
pub(crate) struct IotClient {
    pub sdk: aws_sdk_iot::Client,
}

fn not_found<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl IotClient {
    /// RegisterCertificateWithoutCA, ACTIVE (it authorises nothing until a policy is
    /// attached). `Ok(Some(arn))` when created, `Ok(None)` on 409.
    pub async fn register(&self, ctx: &CallContext, pem: &str) -> Result<Option<String>> {
        const OP: &str = "RegisterCertificateWithoutCA";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .register_certificate_without_ca()
            .certificate_pem(pem)
            .status(CertificateStatus::Active)
            .send()
            .await;
        match r.map_err(|e| from_sdk(OP, e)) {
            Ok(out) => Ok(Some(out.certificate_arn.unwrap_or_default())),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DescribeCertificate; None when absent.
    pub async fn describe_certificate(
        &self,
        ctx: &CallContext,
        id: &str,
    ) -> Result<Option<CertInfo>> {
        const OP: &str = "DescribeCertificate";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .describe_certificate()
            .certificate_id(id)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        Ok(not_found(r)?.map(|out| {
            let d = out.certificate_description;
            CertInfo {
                arn: d
                    .as_ref()
                    .and_then(|d| d.certificate_arn.clone())
                    .unwrap_or_default(),
                status: d
                    .and_then(|d| d.status)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            }
        }))
    }

    /// UpdateCertificate to `status` (`ACTIVE`, `INACTIVE`, `REVOKED`).
    pub async fn update_certificate(
        &self,
        ctx: &CallContext,
        id: &str,
        status: &str,
    ) -> Result<()> {
        const OP: &str = "UpdateCertificate";
        ctx.acquire(OP).await;
        self.sdk
            .update_certificate()
            .certificate_id(id)
            .new_status(CertificateStatus::from(status))
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok(())
    }

    /// CreateThing; 200 for an identical thing, AlreadyExists for a different one.
    pub async fn create_thing(
        &self,
        ctx: &CallContext,
        name: &str,
        thing_type: Option<&str>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String> {
        const OP: &str = "CreateThing";
        ctx.acquire(OP).await;
        let mut payload = AttributePayload::builder();
        for (k, v) in attributes {
            payload = payload.attributes(k, v);
        }
        let out = self
            .sdk
            .create_thing()
            .thing_name(name)
            .set_thing_type_name(thing_type.map(str::to_owned))
            .attribute_payload(payload.build())
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok(out.thing_arn.unwrap_or_default())
    }

    /// DescribeThing; None when absent.
    pub async fn describe_thing(&self, ctx: &CallContext, name: &str) -> Result<Option<ThingInfo>> {
        const OP: &str = "DescribeThing";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .describe_thing()
            .thing_name(name)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        Ok(not_found(r)?.map(|t| ThingInfo {
            arn: t.thing_arn.unwrap_or_default(),
            type_name: t.thing_type_name,
            attributes: t.attributes.unwrap_or_default().into_iter().collect(),
        }))
    }

    /// AttachThingPrincipal (a repeat is a no-op).
    pub async fn attach_thing_principal(
        &self,
        ctx: &CallContext,
        thing: &str,
        cert_arn: &str,
        exclusive: bool,
    ) -> Result<()> {
        const OP: &str = "AttachThingPrincipal";
        ctx.acquire(OP).await;
        let kind = if exclusive {
            ThingPrincipalType::ExclusiveThing
        } else {
            ThingPrincipalType::NonExclusiveThing
        };
        self.sdk
            .attach_thing_principal()
            .thing_name(thing)
            .principal(cert_arn)
            .thing_principal_type(kind)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok(())
    }

    /// AttachPolicy (a repeat is a no-op).
    pub async fn attach_policy(
        &self,
        ctx: &CallContext,
        policy: &str,
        cert_arn: &str,
    ) -> Result<()> {
        const OP: &str = "AttachPolicy";
        ctx.acquire(OP).await;
        self.sdk
            .attach_policy()
            .policy_name(policy)
            .target(cert_arn)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok(())
    }

    /// AddThingToThingGroup (a repeat is a no-op).
    pub async fn add_thing_to_group(
        &self,
        ctx: &CallContext,
        group: &str,
        thing: &str,
    ) -> Result<()> {
        const OP: &str = "AddThingToThingGroup";
        ctx.acquire(OP).await;
        self.sdk
            .add_thing_to_thing_group()
            .thing_group_name(group)
            .thing_name(thing)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok(())
    }

    /// ListAttachedPolicies, all pages.
    pub async fn list_attached_policies(
        &self,
        ctx: &CallContext,
        cert_arn: &str,
    ) -> Result<Vec<String>> {
        const OP: &str = "ListAttachedPolicies";
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            ctx.acquire(OP).await;
            let out = self
                .sdk
                .list_attached_policies()
                .target(cert_arn)
                .page_size(250)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| from_sdk(OP, e))?;
            names.extend(
                out.policies
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.policy_name),
            );
            match out.next_marker {
                Some(m) if !m.is_empty() => marker = Some(m),
                _ => return Ok(names),
            }
        }
    }

    /// DetachPolicy; a policy that is not attached (404 ResourceNotFound, e.g. detached by an
    /// earlier attempt whose answer was lost) counts as detached.
    pub async fn detach_policy(
        &self,
        ctx: &CallContext,
        policy: &str,
        cert_arn: &str,
    ) -> Result<()> {
        const OP: &str = "DetachPolicy";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .detach_policy()
            .policy_name(policy)
            .target(cert_arn)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|_| ())
    }

    /// ListPrincipalThingsV2, all pages: the things a certificate is attached to.
    pub async fn list_principal_things(
        &self,
        ctx: &CallContext,
        cert_arn: &str,
    ) -> Result<Vec<String>> {
        const OP: &str = "ListPrincipalThingsV2";
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            ctx.acquire(OP).await;
            let out = self
                .sdk
                .list_principal_things_v2()
                .principal(cert_arn)
                .max_results(250)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| from_sdk(OP, e))?;
            names.extend(
                out.principal_thing_objects
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| o.thing_name),
            );
            match out.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(names),
            }
        }
    }

    /// ListThingPrincipals, all pages; None when the thing is absent.
    pub async fn list_thing_principals(
        &self,
        ctx: &CallContext,
        thing: &str,
    ) -> Result<Option<Vec<String>>> {
        const OP: &str = "ListThingPrincipals";
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            ctx.acquire(OP).await;
            let r = self
                .sdk
                .list_thing_principals()
                .thing_name(thing)
                .max_results(250)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| from_sdk(OP, e));
            let Some(out) = not_found(r)? else {
                return Ok(None);
            };
            arns.extend(out.principals.unwrap_or_default());
            match out.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(Some(arns)),
            }
        }
    }

    /// DetachThingPrincipal; a missing thing or certificate counts as detached.
    pub async fn detach_thing_principal(
        &self,
        ctx: &CallContext,
        thing: &str,
        cert_arn: &str,
    ) -> Result<()> {
        const OP: &str = "DetachThingPrincipal";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .detach_thing_principal()
            .thing_name(thing)
            .principal(cert_arn)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|_| ())
    }

    /// DeleteCertificate; `Ok(false)` when it was already gone.
    pub async fn delete_certificate(&self, ctx: &CallContext, id: &str) -> Result<bool> {
        const OP: &str = "DeleteCertificate";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .delete_certificate()
            .certificate_id(id)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|o| o.is_some())
    }

    /// DeleteThing (AWS answers success for a missing thing).
    pub async fn delete_thing(&self, ctx: &CallContext, name: &str) -> Result<()> {
        const OP: &str = "DeleteThing";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .delete_thing()
            .thing_name(name)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|_| ())
    }

    /// GetPolicy: whether it exists.
    pub async fn policy_exists(&self, ctx: &CallContext, name: &str) -> Result<bool> {
        const OP: &str = "GetPolicy";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .get_policy()
            .policy_name(name)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|o| o.is_some())
    }

    /// CreatePolicy; an existing policy of that name is fine.
    pub async fn create_policy(&self, ctx: &CallContext, name: &str, document: &str) -> Result<()> {
        const OP: &str = "CreatePolicy";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .create_policy()
            .policy_name(name)
            .policy_document(document)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// ListCertificates, one page: (certificate id, status) and the next marker.
    pub async fn list_certificates(
        &self,
        ctx: &CallContext,
        marker: Option<String>,
    ) -> Result<(Vec<(String, String)>, Option<String>)> {
        const OP: &str = "ListCertificates";
        ctx.acquire(OP).await;
        let out = self
            .sdk
            .list_certificates()
            .page_size(250)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        let certs = out
            .certificates
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                Some((
                    c.certificate_id?,
                    c.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                ))
            })
            .collect();
        Ok((certs, out.next_marker.filter(|m| !m.is_empty())))
    }

    /// ListThingsInThingGroup, one page.
    pub async fn list_things_in_group(
        &self,
        ctx: &CallContext,
        group: &str,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>)> {
        const OP: &str = "ListThingsInThingGroup";
        ctx.acquire(OP).await;
        let out = self
            .sdk
            .list_things_in_thing_group()
            .thing_group_name(group)
            .max_results(250)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok((
            out.things.unwrap_or_default(),
            out.next_token.filter(|t| !t.is_empty()),
        ))
    }

    /// DescribeEndpoint(iot:Data-ATS): the host devices connect to (and send as SNI).
    pub async fn data_endpoint(&self, ctx: &CallContext) -> Result<String> {
        const OP: &str = "DescribeEndpoint";
        ctx.acquire(OP).await;
        let out = self
            .sdk
            .describe_endpoint()
            .endpoint_type("iot:Data-ATS")
            .send()
            .await
            .map_err(|e| from_sdk(OP, e))?;
        Ok(out.endpoint_address.unwrap_or_default())
    }

    // ---- preflight probes (`idbridge check`) ------------------------------------------------

    /// DescribeThingType: whether it exists.
    pub async fn thing_type_exists(&self, ctx: &CallContext, name: &str) -> Result<bool> {
        const OP: &str = "DescribeThingType";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .describe_thing_type()
            .thing_type_name(name)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|o| o.is_some())
    }

    /// DescribeThingGroup: whether it exists.
    pub async fn thing_group_exists(&self, ctx: &CallContext, name: &str) -> Result<bool> {
        const OP: &str = "DescribeThingGroup";
        ctx.acquire(OP).await;
        let r = self
            .sdk
            .describe_thing_group()
            .thing_group_name(name)
            .send()
            .await
            .map_err(|e| from_sdk(OP, e));
        not_found(r).map(|o| o.is_some())
    }

    /// One harmless call of `action`: it names resources that do not exist (or sends a
    /// certificate AWS cannot parse), so AWS answers only after authorizing the action, and
    /// nothing changes. The answer as mapped: `NotFound`/`InvalidInput` mean "allowed",
    /// `PermissionDenied` "denied", `Unauthenticated` "bad credentials".
    pub async fn probe(&self, ctx: &CallContext, action: &str, p: &Probe<'_>) -> Result<()> {
        const CERT: &str = "0000000000000000000000000000000000000000000000000000000000000000";
        const THING: &str = "idbridge-check-absent-thing";
        let principal = format!("arn:aws:iot:{}:000000000000:cert/{CERT}", p.region);
        let op: &'static str = match action {
            "RegisterCertificateWithoutCA" => "RegisterCertificateWithoutCA",
            "DescribeCertificate" => "DescribeCertificate",
            "UpdateCertificate" => "UpdateCertificate",
            "DeleteCertificate" => "DeleteCertificate",
            "CreateThing" => "CreateThing",
            "DescribeThing" => "DescribeThing",
            "DeleteThing" => "DeleteThing",
            "AttachThingPrincipal" => "AttachThingPrincipal",
            "DetachThingPrincipal" => "DetachThingPrincipal",
            "ListThingPrincipals" => "ListThingPrincipals",
            "ListPrincipalThingsV2" => "ListPrincipalThingsV2",
            "AttachPolicy" => "AttachPolicy",
            "DetachPolicy" => "DetachPolicy",
            "ListAttachedPolicies" => "ListAttachedPolicies",
            "CreatePolicy" => "CreatePolicy",
            "AddThingToThingGroup" => "AddThingToThingGroup",
            "ListThingsInThingGroup" => "ListThingsInThingGroup",
            "ListCertificates" => "ListCertificates",
            other => {
                return Err(idbridge_core::Error::new(
                    ErrorKind::Unsupported,
                    format!("no probe for {other}"),
                ));
            }
        };
        ctx.acquire(op).await;
        let sdk = &self.sdk;
        match op {
            "RegisterCertificateWithoutCA" => sdk
                .register_certificate_without_ca()
                .certificate_pem("-----BEGIN CERTIFICATE-----\naWRicmlkZ2UtY2hlY2s=\n-----END CERTIFICATE-----\n")
                .status(CertificateStatus::Inactive)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "DescribeCertificate" => sdk
                .describe_certificate()
                .certificate_id(CERT)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "UpdateCertificate" => sdk
                .update_certificate()
                .certificate_id(CERT)
                .new_status(CertificateStatus::Inactive)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "DeleteCertificate" => sdk
                .delete_certificate()
                .certificate_id(CERT)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "CreateThing" => sdk
                .create_thing()
                .thing_name(THING)
                .thing_type_name("idbridge-check-absent-type")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "DescribeThing" => sdk
                .describe_thing()
                .thing_name(THING)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "DeleteThing" => sdk
                .delete_thing()
                .thing_name(THING)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "AttachThingPrincipal" => sdk
                .attach_thing_principal()
                .thing_name(THING)
                .principal(&principal)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "DetachThingPrincipal" => sdk
                .detach_thing_principal()
                .thing_name(THING)
                .principal(&principal)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "ListThingPrincipals" => sdk
                .list_thing_principals()
                .thing_name(THING)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "ListPrincipalThingsV2" => sdk
                .list_principal_things_v2()
                .principal(&principal)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "AttachPolicy" => sdk
                .attach_policy()
                .policy_name(p.policy)
                .target(&principal)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "DetachPolicy" => sdk
                .detach_policy()
                .policy_name(p.policy)
                .target(&principal)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "ListAttachedPolicies" => sdk
                .list_attached_policies()
                .target(&principal)
                .page_size(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "CreatePolicy" => sdk
                .create_policy()
                .policy_name("idbridge-check-probe")
                .policy_document("not a policy")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "AddThingToThingGroup" => sdk
                .add_thing_to_thing_group()
                .thing_group_name(p.group.unwrap_or("idbridge-check-absent-group"))
                .thing_name(THING)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            "ListThingsInThingGroup" => sdk
                .list_things_in_thing_group()
                .thing_group_name(p.group.unwrap_or("idbridge-check-absent-group"))
                .max_results(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
            _ => sdk
                .list_certificates()
                .page_size(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| from_sdk(op, e)),
        }
    }
}

/// What a [`IotClient::probe`] names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe<'a> {
    pub region: &'a str,
    pub policy: &'a str,
    pub group: Option<&'a str>,
}

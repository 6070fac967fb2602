//! Ambient Microsoft Entra credentials (`credential = "…"`): the `azure_identity` crate's
//! credentials, found the way Azure's own tools find them, on idbridge's reqwest client.
//!
//! `azure_identity` 1.0 has no `EnvironmentCredential` and no `DefaultAzureCredential`; the
//! `environment` kind is its `ClientSecretCredential` built from `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, and `default` is the chain of [`Chain`] (ADR
//! 1800). The crate's HTTP goes through [`Transport`], an adapter over the connector's own
//! reqwest 0.12 client (rustls, `ca_file`), so the crate is built without its reqwest 0.13
//! and its retry policy is off (the engine retries). Besides `client.rs`, this is the only
//! module that touches the wire, and only the token services'.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::headers::Headers;
use azure_core::http::{
    AsyncRawResponse, Body, ClientOptions, HttpClient, Method, Request, RetryOptions,
};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use idbridge_core::{Error, ErrorKind, Result};

use crate::config::CredentialKind;

/// An ambient credential for one service scope.
pub(crate) struct Ambient {
    kind: CredentialKind,
    scope: &'static str,
    chain: Chain,
}

impl std::fmt::Debug for Ambient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ambient")
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The links tried in order; the first that yields a token is remembered and asked first
/// from then on (as `DefaultAzureCredential` does). A single kind is a chain of one.
struct Chain {
    links: Vec<Link>,
    chosen: Mutex<Option<usize>>,
}

struct Link {
    kind: CredentialKind,
    /// The credential, or why it is not available here (a variable is missing).
    credential: std::result::Result<Arc<dyn TokenCredential>, String>,
    /// Whether a refusal from this link ends the chain: a credential the operator configured
    /// (environment, workload identity, an App Service identity endpoint) that fails is an
    /// error to report, not a reason to try the next one under another identity.
    decisive: bool,
}

impl Ambient {
    /// Builds the credential of `kind` for `scope` (`https://iothubs.azure.net/.default`…).
    /// `http` carries the target's `ca_file` and timeouts. Nothing is called yet.
    pub fn new(kind: CredentialKind, scope: &'static str, http: reqwest::Client) -> Result<Self> {
        let transport = Arc::new(Transport(http));
        let kinds = match kind {
            CredentialKind::Default => vec![
                CredentialKind::Environment,
                CredentialKind::WorkloadIdentity,
                CredentialKind::ManagedIdentity,
                CredentialKind::AzureCli,
            ],
            other => vec![other],
        };
        let links = kinds
            .iter()
            .map(|&k| Link {
                kind: k,
                credential: build(k, &transport),
                decisive: match k {
                    CredentialKind::ManagedIdentity => env("IDENTITY_ENDPOINT").is_some(),
                    CredentialKind::AzureCli => false,
                    _ => true,
                },
            })
            .collect::<Vec<_>>();
        if kind != CredentialKind::Default
            && let Some(Link {
                credential: Err(why),
                ..
            }) = links.first()
        {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("credential = \"{}\": {why}", kind.as_str()),
            )
            .with_operation("config"));
        }
        Ok(Ambient {
            kind,
            scope,
            chain: Chain {
                links,
                chosen: Mutex::new(None),
            },
        })
    }

    /// A new token and when it expires. Errors are `Unauthenticated` (permanent) and name
    /// every credential tried and why it failed; they never carry a token.
    pub async fn token(&self, operation: &'static str) -> Result<(String, Instant)> {
        // A poisoned lock only means another thread panicked between two plain assignments.
        let chosen = *self.chain.chosen.lock().unwrap_or_else(|p| p.into_inner());
        let order: Vec<usize> = match chosen {
            Some(i) => std::iter::once(i)
                .chain((0..self.chain.links.len()).filter(|&j| j != i))
                .collect(),
            None => (0..self.chain.links.len()).collect(),
        };
        let mut tried = Vec::new();
        for i in order {
            let link = &self.chain.links[i];
            let cred = match &link.credential {
                Ok(c) => c,
                Err(why) => {
                    tried.push(format!("{}: {why}", link.kind.as_str()));
                    continue;
                }
            };
            let started = Instant::now();
            match cred.get_token(&[self.scope], None).await {
                Ok(t) => {
                    *self.chain.chosen.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                    let left = t.expires_on - time::OffsetDateTime::now_utc();
                    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
                    tracing::debug!(
                        credential = link.kind.as_str(),
                        scope = self.scope,
                        expires_in_secs = left.as_secs(),
                        "azure token"
                    );
                    return Ok((t.token.secret().to_owned(), started + left));
                }
                Err(e) => {
                    tried.push(format!("{}: {}", link.kind.as_str(), one_line(&e)));
                    if link.decisive {
                        break;
                    }
                }
            }
        }
        Err(Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "credential = \"{}\" found no token for {}: {}",
                self.kind.as_str(),
                self.scope,
                tried.join("; ")
            ),
        )
        .with_operation(operation))
    }
}

/// The credential of one kind, or why it cannot be used in this environment.
fn build(
    kind: CredentialKind,
    transport: &Arc<Transport>,
) -> std::result::Result<Arc<dyn TokenCredential>, String> {
    let client_options = || ClientOptions {
        transport: Some(azure_core::http::Transport::new(
            Arc::clone(transport) as Arc<dyn HttpClient>
        )),
        retry: RetryOptions::none(),
        ..Default::default()
    };
    match kind {
        CredentialKind::Environment => {
            let vars = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"];
            let missing: Vec<&str> = vars.iter().copied().filter(|v| env(v).is_none()).collect();
            let (Some(tenant), Some(client), Some(secret)) =
                (env(vars[0]), env(vars[1]), env(vars[2]))
            else {
                return Err(format!("{} not set", missing.join(", ")));
            };
            ClientSecretCredential::new(
                &tenant,
                client,
                secret.into(),
                Some(ClientSecretCredentialOptions {
                    client_options: client_options(),
                }),
            )
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| one_line(&e))
        }
        CredentialKind::WorkloadIdentity => {
            let missing: Vec<&str> = [
                "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
            ]
            .into_iter()
            .filter(|v| env(v).is_none())
            .collect();
            if !missing.is_empty() {
                return Err(format!("{} not set", missing.join(", ")));
            }
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: client_options(),
                },
                ..Default::default()
            }))
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| one_line(&e))
        }
        CredentialKind::ManagedIdentity => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
                client_options: client_options(),
            }))
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| one_line(&e))
        }
        // `default` never reaches here: it is expanded into its links.
        CredentialKind::AzureCli | CredentialKind::Default => AzureCliCredential::new(None)
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| one_line(&e)),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// An `azure_core` error on one line, without the troubleshooting link's line break.
fn one_line(e: &azure_core::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `azure_core`'s `HttpClient` on the connector's reqwest 0.12 client. A transport failure
/// comes back as a non-transport error kind, so the SDK's retry policy never resends.
#[derive(Debug)]
struct Transport(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        use azure_core::error::ErrorKind as AzKind;
        let method = match request.method() {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
            Method::Patch => reqwest::Method::PATCH,
            other => {
                return Err(azure_core::Error::with_message(
                    AzKind::Other,
                    format!("HTTP method {other:?} is not used by credentials"),
                ));
            }
        };
        let mut req = self.0.request(method, request.url().as_str());
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        match request.body() {
            Body::Bytes(b) => req = req.body(b.clone()),
            Body::SeekableStream(_) => {
                return Err(azure_core::Error::with_message(
                    AzKind::Other,
                    "streamed request bodies are not used by credentials",
                ));
            }
        }
        let resp = req.send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            azure_core::Error::with_message(AzKind::Other, msg)
        })?;
        let status = resp.status().as_u16();
        let mut headers = Headers::new();
        for (k, v) in resp.headers() {
            if let Ok(v) = v.to_str() {
                headers.insert(k.as_str().to_owned(), v.to_owned());
            }
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| azure_core::Error::with_message(AzKind::Other, e.to_string()))?;
        Ok(AsyncRawResponse::from_bytes(status.into(), headers, body))
    }
}

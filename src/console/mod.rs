//! The web console at `/console`: bind a batch or reel by scanning its QR code (a handheld
//! scanner types it), by its Product Batch ID and Reel ID, or from a photo of the letter; watch
//! provisioning jobs live; download manifests; manage targets and read the audit log (admin).
//!
//! Pages are rendered on the server ([`pages`]) and work without JavaScript; the one script
//! (`assets/console.js`) only turns the job page's progress live over Server-Sent Events.
//! Every asset is embedded in the binary. All data comes from the service API ([`client`]),
//! called in-process with the signed-in account's token, so the console can show, bind or
//! change nothing the same API call could not.
//!
//! Sessions and CSRF are in [`session`]; QR decoding of uploaded photos in [`qr`].

pub mod client;
mod handlers;
pub mod pages;
pub mod qr;
pub mod session;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use self::client::{Api, Caller};
use self::pages::Ctx;
use self::session::Sessions;
use self::view::Who;

/// Largest accepted QR photo upload (phone photos are a few MB).
pub const MAX_UPLOAD: usize = 16 * 1024 * 1024;

/// The console's state: the service API and the session keys.
#[derive(Debug)]
pub struct Console {
    api: Api,
    sessions: Sessions,
}

/// The console's routes (all under `/console`), calling `api` (the service's `/api/v1`
/// router) for every piece of data. `secure_cookies`: the service runs TLS.
pub fn router(api: Router, secure_cookies: bool) -> anyhow::Result<Router> {
    let state = Arc::new(Console {
        api: Api::new(api),
        sessions: Sessions::new(secure_cookies)?,
    });
    use handlers as h;
    Ok(Router::new()
        .route("/console", get(h::home))
        .route("/console/", get(h::home))
        .route("/console/static/console.css", get(h::css))
        .route("/console/static/console.js", get(h::js))
        .route("/console/sign-in", get(h::sign_in_page).post(h::sign_in))
        .route("/console/sign-out", post(h::sign_out))
        .route("/console/bind", get(h::bind_page).post(h::bind))
        .route(
            "/console/bind/qr",
            post(h::bind_qr).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/console/bindings", get(h::bindings))
        .route("/console/bindings/{id}", get(h::binding))
        .route(
            "/console/bindings/{id}/provision",
            get(h::confirm_provision).post(h::provision),
        )
        .route(
            "/console/bindings/{id}/deprovision",
            get(h::confirm_deprovision).post(h::deprovision),
        )
        .route("/console/bindings/{id}/manifest", get(h::manifest))
        .route("/console/jobs", get(h::jobs))
        .route("/console/jobs/{id}", get(h::job))
        .route("/console/jobs/{id}/events", get(h::job_events))
        .route("/console/targets", get(h::targets).post(h::save_target))
        .route("/console/targets/new", get(h::new_target))
        .route("/console/targets/{name}", get(h::target))
        .route("/console/audit", get(h::audit))
        .fallback(h::unknown)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state))
}

/// The browser's address (from the listener's connect info, when served with it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// A signed-in request: who calls the API, and the page context.
#[derive(Debug)]
pub struct Signed {
    caller: Caller,
    ctx: Ctx,
}

impl Signed {
    fn who(&self) -> Option<&Who> {
        self.ctx.who.as_ref()
    }

    fn admin(&self) -> bool {
        self.who().is_some_and(Who::admin)
    }
}

impl Console {
    /// The session of the request, confirmed by the service (`GET /api/v1/whoami`);
    /// otherwise a redirect to the sign-in page.
    async fn signed(
        &self,
        headers: &HeaderMap,
        peer: Peer,
        nav: &'static str,
    ) -> Result<Signed, Response> {
        let Some(token) = self.sessions.token(headers) else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        let caller = Caller {
            token: token.clone(),
            peer: peer.0,
        };
        let answer = self.api.get(&caller, "/api/v1/whoami").await;
        if !answer.ok() {
            // A revoked or expired token ends the session.
            let mut r = Redirect::to("/console/sign-in").into_response();
            if let Ok(c) = self.sessions.end(session::SESSION_COOKIE) {
                r.headers_mut().append(header::SET_COOKIE, c);
            }
            return Err(r);
        }
        let ctx = Ctx {
            who: Some(Who::from_json(&answer.body)),
            csrf: self.sessions.csrf_for(&token),
            nav,
        };
        Ok(Signed { caller, ctx })
    }

    /// As [`Self::signed`], and the form's CSRF token must match the session.
    async fn signed_form(
        &self,
        headers: &HeaderMap,
        peer: Peer,
        csrf: &str,
        nav: &'static str,
    ) -> Result<Signed, Response> {
        let Some(token) = self.sessions.token(headers) else {
            return Err(csrf_refused());
        };
        if !self.sessions.check_csrf(&token, csrf) {
            tracing::warn!(peer = ?peer.0, "console: form post without a valid CSRF token refused");
            return Err(csrf_refused());
        }
        self.signed(headers, peer, nav).await
    }
}

fn csrf_refused() -> Response {
    (StatusCode::FORBIDDEN, pages::csrf_refused()).into_response()
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

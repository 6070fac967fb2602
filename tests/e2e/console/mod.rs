//! The web console in a real browser: headless Chromium over WebDriver against a real
//! `idbridge serve` process with the registration service (SQLite store) on loopback, the
//! mock cloud as the account's target. Batches are imported with `idbridge service import`
//! (the real Infineon Cloud ID bundle, or generated devices); every page is reached the way a
//! person would: sign in, scan or type, click.
#![allow(clippy::unwrap_used)] // test helpers

mod browser;

use std::path::PathBuf;

use fantoccini::Locator;
use serde_json::{Value, json};

use self::browser::Browser;
use super::service::{Service, start};

/// The real Infineon bundle under the name Infineon gives it: `REELID_GUID_vX.Y.7z` carries
/// the reel ID and the batch ID, which `service import` takes from there.
const BUNDLE: &str = "78211223032C7EFA_b41425b9-b42b-47fd-95c2-f981b4c61561_v1.2.7z";
const BUNDLE_BATCH: &str = "b41425b9-b42b-47fd-95c2-f981b4c61561";
const BUNDLE_REEL: &str = "78211223032C7EFA";

/// Imports the real Infineon Cloud ID bundle (tests/fixtures) under its vendor file name;
/// returns the number of valid devices.
async fn import_bundle(s: &Service) -> u64 {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real/infineon/cloud-id-bundle/manifest-infineon.7z");
    let dst = s.fx.path(BUNDLE);
    std::fs::copy(&src, &dst).unwrap();
    let out = s.cli(&["import", &dst.display().to_string()]).await;
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains(BUNDLE_BATCH) && !text.contains(BUNDLE_REEL),
        "import printed a claim secret: {text}"
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    let n = v["devices"].as_u64().unwrap();
    assert!(n > 0, "{v}");
    n
}

/// An account with default `mode`, its admin token, and the mock cloud as its default target.
async fn account(s: &Service, name: &str, mode: &str) -> String {
    s.account(name, mode).await;
    let admin = s.token(name, "admin").await;
    s.put_cloud_target(&admin).await;
    admin
}

/// Opens the console, is sent to the sign-in page, signs in with `token`.
async fn sign_in(b: &Browser, url: &str, token: &str) {
    let c = &b.client;
    c.goto(&format!("{url}/console")).await.unwrap();
    b.wait_text("Account token").await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("main button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_text("Bind a batch or reel").await;
}

async fn click(b: &Browser, css: &str) {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn text_of(b: &Browser, css: &str) -> String {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// The path of the page the browser shows.
async fn path(b: &Browser) -> String {
    b.client.current_url().await.unwrap().path().to_owned()
}

/// The browser's cookies as a `Cookie` header (to fetch downloads and post forms outside it).
async fn cookie_header(b: &Browser) -> String {
    b.client
        .get_all_cookies()
        .await
        .unwrap()
        .iter()
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The bindings of the account of `token`, through the API.
async fn api_bindings(s: &Service, token: &str) -> Vec<Value> {
    let (code, v) = s.call("GET", "/api/v1/bindings", Some(token), None).await;
    assert_eq!(code, 200, "{v}");
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_binds_by_typed_scanner_text_in_automatic_mode_and_the_job_reaches_100_percent() {
    let s = start("").await;
    let n = import_bundle(&s).await;
    let _admin = account(&s, "acme", "automatic").await;
    let binder = s.token("acme", "binder").await;
    let b = Browser::start("console_bind_scan_automatic", true).await;
    sign_in(&b, &s.url, &binder).await;
    // The scan field has the focus: a handheld scanner types into it and presses Enter.
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("scan"));
    let page = b.client.source().await.unwrap();
    assert!(!page.contains(BUNDLE_BATCH) && !page.contains(BUNDLE_REEL));
    b.screenshot("bind.png").await;
    focused
        .send_keys(&format!(
            "https://labels.example/bind?batch={BUNDLE_BATCH}&reel={BUNDLE_REEL}\u{E007}"
        ))
        .await
        .unwrap();
    // Automatic mode: the bind starts the job and the browser lands on its live page.
    b.wait_text("Job job_").await;
    assert!(
        path(&b).await.starts_with("/console/jobs/"),
        "{}",
        path(&b).await
    );
    let text = b.wait_text("Progress: 100%").await;
    b.wait_text("State: finished").await;
    assert!(!text.contains(BUNDLE_REEL), "the reel ID is never shown");
    assert_eq!(text_of(&b, "#done").await, n.to_string());
    assert_eq!(text_of(&b, "#failed").await, "0");
    assert_eq!(text_of(&b, "#remaining").await, "0");
    b.screenshot("job.png").await;
    // The mock cloud holds every device of the reel, each created once.
    let stats = s.registry.stats();
    assert_eq!(stats.devices as u64, n, "{stats:?}");
    assert_eq!(stats.max_creates_per_device, 1);
    // The bindings page lists it with its counts.
    click(&b, "a[href='/console/bindings']").await;
    let text = b.wait_text("provision finished").await;
    assert!(text.contains(&n.to_string()), "{text}");
    b.screenshot("bindings.png").await;
    b.close().await;
}

/// A QR code image as a phone photo might give it: the code rendered, rotated by `degrees`
/// about its centre on a white page, and scaled by `scale`.
fn qr_photo(text: &str, degrees: f64, scale: f64) -> image::GrayImage {
    let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
    let img = code
        .render::<image::Luma<u8>>()
        .min_dimensions(300, 300)
        .build();
    let (w, h) = (img.width() as f64, img.height() as f64);
    let side = ((w * w + h * h).sqrt() * scale).ceil() as u32 + 40;
    let (cx, cy) = (f64::from(side) / 2.0, f64::from(side) / 2.0);
    let (sin, cos) = degrees.to_radians().sin_cos();
    // Inverse mapping (nearest pixel): each output pixel looks up where it came from.
    image::GrayImage::from_fn(side, side, |x, y| {
        let (dx, dy) = ((f64::from(x) - cx) / scale, (f64::from(y) - cy) / scale);
        let sx = cos * dx + sin * dy + w / 2.0;
        let sy = -sin * dx + cos * dy + h / 2.0;
        if sx >= 0.0 && sy >= 0.0 && sx < w && sy < h {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Luma([255])
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_binds_by_an_uploaded_qr_photo_rotated_and_scaled() {
    let s = start("").await;
    s.import("reel-q.pem", 1..4, "BATCH-Q", "REEL-Q").await;
    let _admin = account(&s, "acme", "manual").await;
    let binder = s.token("acme", "binder").await;
    let b = Browser::start("console_bind_qr_photo", false).await;
    // A JPEG "photo": rotated 23 degrees and shrunk to 70 %.
    let photo = qr_photo(
        "https://labels.example/bind?batch=BATCH-Q&reel=REEL-Q",
        23.0,
        0.7,
    );
    let file = b.out.join("letter-photo.jpg");
    photo.save(&file).unwrap();
    sign_in(&b, &s.url, &binder).await;
    b.client
        .find(Locator::Id("image"))
        .await
        .unwrap()
        .send_keys(&file.display().to_string())
        .await
        .unwrap();
    click(&b, "#photo-form button[type=submit]").await;
    // Manual mode (the account's): bound, nothing provisioned yet.
    let text = b.wait_text("Bound.").await;
    let at = path(&b).await;
    assert!(at.starts_with("/console/bindings/bnd_"), "{at}: {text}");
    assert_eq!(text_of(&b, "#valid").await, "3", "{text}");
    assert_eq!(text_of(&b, "#refused").await, "0");
    assert!(text.contains("manual"), "{text}");
    // Its devices are listed and searchable.
    let rows = b
        .client
        .find_all(Locator::Css("main table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    b.screenshot("bound-from-photo.png").await;
    // Search by serial number (any case), from the serial the table shows.
    let serial = text_of(&b, "main table tbody tr td:nth-child(3)").await;
    assert!(!serial.is_empty());
    let q = b.client.find(Locator::Id("q")).await.unwrap();
    q.send_keys(&format!("{}\u{E007}", serial.to_lowercase()))
        .await
        .unwrap();
    b.wait_text("Search devices").await;
    for _ in 0..240 {
        let n = b
            .client
            .find_all(Locator::Css("main table tbody tr"))
            .await
            .map(|r| r.len())
            .unwrap_or(0);
        if n == 1 && b.client.current_url().await.unwrap().query().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let rows = b
        .client
        .find_all(Locator::Css("main table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "search by serial {serial}");
    assert_eq!(
        text_of(&b, "main table tbody tr td:nth-child(3)").await,
        serial
    );
    let bindings = api_bindings(&s, &binder).await;
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0]["mode"], "manual");
    assert_eq!(
        s.registry.stats().devices,
        0,
        "manual mode provisions nothing"
    );
    // A picture without a QR code: a clear message, nothing bound.
    let blank = b.out.join("blank.png");
    image::GrayImage::from_pixel(200, 200, image::Luma([255]))
        .save(&blank)
        .unwrap();
    click(&b, "a[href='/console/bind']").await;
    b.wait_text("Bind a batch or reel").await;
    b.client
        .find(Locator::Id("image"))
        .await
        .unwrap()
        .send_keys(&blank.display().to_string())
        .await
        .unwrap();
    click(&b, "#photo-form button[type=submit]").await;
    b.wait_text("no QR code was found").await;
    assert_eq!(api_bindings(&s, &binder).await.len(), 1);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_manual_mode_provision_now_works_without_javascript() {
    let s = start("").await;
    s.import("reel-m.pem", 10..16, "BATCH-M", "REEL-M").await;
    let admin = account(&s, "acme", "automatic").await;
    // JavaScript off: every step is a plain form or link; the job page refreshes itself.
    let b = Browser::start("console_manual_provision_now", false).await;
    sign_in(&b, &s.url, &admin).await;
    let c = &b.client;
    c.find(Locator::Id("batch_id"))
        .await
        .unwrap()
        .send_keys("BATCH-M")
        .await
        .unwrap();
    c.find(Locator::Id("reel_id"))
        .await
        .unwrap()
        .send_keys("REEL-M")
        .await
        .unwrap();
    c.find(Locator::Id("mode-scan"))
        .await
        .unwrap()
        .select_by_value("manual")
        .await
        .unwrap();
    click(&b, "#scan-form button[type=submit]").await;
    b.wait_text("Bound.").await;
    assert_eq!(text_of(&b, "#valid").await, "6");
    assert_eq!(s.registry.stats().devices, 0);
    click(&b, "a.button[href$='/provision']").await;
    b.wait_text("Register this binding's valid devices").await;
    b.screenshot("confirm.png").await;
    click(&b, "main form button[type=submit]").await;
    b.wait_text("State: finished").await;
    assert!(path(&b).await.starts_with("/console/jobs/"));
    assert_eq!(text_of(&b, "#percent").await, "100%");
    assert_eq!(text_of(&b, "#done").await, "6");
    b.screenshot("job.png").await;
    assert_eq!(s.registry.stats().devices, 6);
    // The jobs page lists it.
    click(&b, "a[href='/console/jobs']").await;
    b.wait_text("finished").await;
    // Deprovision, after a confirmation page: the devices leave the cloud.
    click(&b, "a[href='/console/bindings']").await;
    b.wait_text("provision finished").await;
    click(&b, "main table tbody a[href^='/console/bindings/']").await;
    b.wait_text("Valid devices").await;
    click(&b, "a.button[href$='/deprovision']").await;
    b.wait_text("Remove this binding's devices").await;
    click(&b, "main form button.danger").await;
    b.wait_text("State: finished").await;
    assert_eq!(text_of(&b, "#done").await, "6");
    let stats = s.registry.stats();
    assert_eq!(stats.devices, 0, "{stats:?}");
    // The audit log (admin) shows what happened.
    click(&b, "a[href='/console/audit']").await;
    let text = b.wait_text("job.deprovision").await;
    assert!(
        text.contains("bind") && text.contains("job.provision"),
        "{text}"
    );
    assert!(
        !text.contains("REEL-M") && !text.contains("BATCH-M"),
        "{text}"
    );
    b.screenshot("audit.png").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_manifest_mode_downloads_parse_in_every_format() {
    let s = start("").await;
    let devices = s.import("reel-f.pem", 20..24, "BATCH-F", "REEL-F").await;
    let admin = account(&s, "acme", "manifest").await;
    let b = Browser::start("console_manifest_downloads", false).await;
    sign_in(&b, &s.url, &admin).await;
    b.client
        .find(Locator::Id("scan"))
        .await
        .unwrap()
        .send_keys("idbridge:bind?batch_id=BATCH-F&reel_id=REEL-F\u{E007}")
        .await
        .unwrap();
    b.wait_text("Manifest downloads").await;
    b.screenshot("binding.png").await;
    let links = b
        .client
        .find_all(Locator::Css("#manifests a"))
        .await
        .unwrap();
    let mut hrefs = Vec::new();
    for l in &links {
        hrefs.push(l.attr("href").await.unwrap().unwrap());
    }
    assert_eq!(hrefs.len(), 5, "{hrefs:?}");
    let cookie = cookie_header(&b).await;
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    for href in &hrefs {
        let url = if href.starts_with("http") {
            href.clone()
        } else {
            format!("{}{href}", s.url)
        };
        let r = http
            .get(&url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let body = r.text().await.unwrap();
        let format = href.rsplit("format=").next().unwrap().to_owned();
        match format.as_str() {
            "pem" => {
                let certs = pem::parse_many(&body).unwrap();
                assert_eq!(certs.len(), devices.len(), "{format}");
                assert!(certs.iter().all(|p| p.tag() == "CERTIFICATE"));
            }
            "jsonl.jws" => {
                // A detached compact JWS: header..signature, the header names ES256.
                let parts: Vec<&str> = body.trim().split('.').collect();
                assert_eq!(parts.len(), 3, "{body}");
                assert!(parts[1].is_empty(), "detached payload");
                use base64::Engine as _;
                let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(parts[0])
                    .unwrap();
                let header: Value = serde_json::from_slice(&header).unwrap();
                assert_eq!(header["alg"], "ES256", "{header}");
            }
            "jsonl" | "aws-bulk" | "azure-import" => {
                let lines: Vec<Value> = body
                    .lines()
                    .map(|l| {
                        serde_json::from_str(l).unwrap_or_else(|e| panic!("{format}: {e}: {l}"))
                    })
                    .collect();
                let header = usize::from(format == "jsonl");
                assert_eq!(lines.len(), devices.len() + header, "{format}: {body}");
                if format == "aws-bulk" {
                    assert!(lines.iter().all(|l| l["ThingName"].is_string()), "{body}");
                }
                if format == "azure-import" {
                    assert!(lines.iter().all(|l| l["id"].is_string()), "{body}");
                }
            }
            other => panic!("unexpected format {other}"),
        }
        seen.push(format);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["aws-bulk", "azure-import", "jsonl", "jsonl.jws", "pem"]
    );
    assert_eq!(
        s.registry.stats().devices,
        0,
        "manifest mode provisions nothing"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_a_binder_sees_no_admin_page_and_another_accounts_binding_is_not_found() {
    let s = start("").await;
    s.import("reel-a.pem", 30..32, "BATCH-A", "REEL-A").await;
    s.import("reel-o.pem", 40..42, "BATCH-O", "REEL-O").await;
    let _acme = account(&s, "acme", "manual").await;
    let binder = s.token("acme", "binder").await;
    let other = account(&s, "other", "manual").await;
    let (code, theirs) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&other),
            Some(json!({"batch_id": "BATCH-O", "reel_id": "REEL-O"})),
        )
        .await;
    assert_eq!(code, 201, "{theirs}");
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let (code, mine) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"batch_id": "BATCH-A", "reel_id": "REEL-A"})),
        )
        .await;
    assert_eq!(code, 201, "{mine}");
    let mine = mine["id"].as_str().unwrap().to_owned();

    let b = Browser::start("console_roles_and_isolation", false).await;
    sign_in(&b, &s.url, &binder).await;
    // No admin links in the navigation of a binder...
    let nav = text_of(&b, "nav").await;
    assert!(!nav.contains("Targets") && !nav.contains("Audit"), "{nav}");
    // ...and the admin pages refuse, typed by hand.
    for page in [
        "/console/targets".to_owned(),
        "/console/targets/new".to_owned(),
        "/console/audit".to_owned(),
        format!("/console/bindings/{mine}/provision"),
        format!("/console/bindings/{mine}/deprovision"),
    ] {
        b.client.goto(&format!("{}{page}", s.url)).await.unwrap();
        b.wait_text("This page needs the admin role").await;
    }
    b.screenshot("binder-refused.png").await;
    // Its own binding shows, without admin actions or manifest downloads.
    b.client
        .goto(&format!("{}/console/bindings/{mine}", s.url))
        .await
        .unwrap();
    let text = b.wait_text("Valid devices").await;
    assert!(!text.contains("Provision now") && !text.contains("Manifest downloads"));
    // Another account's binding is "not found", exactly like an id that does not exist.
    for id in [theirs.as_str(), "bnd_doesnotexist"] {
        b.client
            .goto(&format!("{}/console/bindings/{id}", s.url))
            .await
            .unwrap();
        let text = b.wait_text("was not found").await;
        assert!(
            !text.contains("BATCH-O") && !text.contains("other"),
            "{text}"
        );
    }
    b.screenshot("not-found.png").await;
    // Nor its manifest (a binder downloads no manifest at all: 403 for any binding).
    let r = reqwest::Client::new()
        .get(format!(
            "{}/console/bindings/{theirs}/manifest?format=pem",
            s.url
        ))
        .header("cookie", cookie_header(&b).await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_refuses_a_bad_token_and_a_post_without_csrf() {
    let s = start("").await;
    s.import("reel-c.pem", 50..52, "BATCH-C", "REEL-C").await;
    let admin = account(&s, "acme", "automatic").await;
    let browser = Browser::start("console_sign_in", true).await;
    let c = &browser.client;
    c.goto(&format!("{}/console", s.url)).await.unwrap();
    // Not signed in: the console sends the browser to the sign-in page.
    browser.wait_text("Account token").await;
    assert!(path(&browser).await.ends_with("/console/sign-in"));
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys("not-a-token").await.unwrap();
    click(&browser, "main button[type=submit]").await;
    let text = browser.wait_text("That token was not accepted").await;
    assert!(!text.contains("not-a-token"), "the token is never echoed");
    browser.screenshot("sign-in.png").await;
    // A signed-in session: a form post without its CSRF token (a cross-site form) is refused
    // and binds nothing, though the session cookie is valid.
    sign_in(&browser, &s.url, &admin).await;
    let cookie = cookie_header(&browser).await;
    assert!(cookie.contains("idbridge_session="), "{cookie}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for csrf in [None, Some("forged")] {
        let mut form = vec![("scan", "https://x/?batch=BATCH-C&reel=REEL-C")];
        if let Some(t) = csrf {
            form.push(("csrf", t));
        }
        let r = http
            .post(format!("{}/console/bind", s.url))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("security token"));
    }
    assert!(api_bindings(&s, &admin).await.is_empty(), "nothing bound");
    assert_eq!(s.registry.stats().devices, 0);
    // Sign-in itself needs the form's token.
    let r = http
        .post(format!("{}/console/sign-in", s.url))
        .form(&[("token", admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Sign out ends the session: the console asks to sign in again.
    click(&browser, "form[action='/console/sign-out'] button").await;
    browser.wait_text("Account token").await;
    c.goto(&format!("{}/console/bindings", s.url))
        .await
        .unwrap();
    browser.wait_text("Account token").await;
    // Assets are served by idbridge itself, with a strict content security policy.
    let r = http
        .get(format!("{}/console/static/console.css", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_targets_are_tested_before_saving_and_secrets_stay_write_only() {
    let s = start("").await;
    s.import("reel-t.pem", 60..63, "BATCH-T", "REEL-T").await;
    s.account("acme", "automatic").await;
    let admin = s.token("acme", "admin").await;
    let token = s.cloud_target()["token"].as_str().unwrap().to_owned();
    let b = Browser::start("console_targets", false).await;
    sign_in(&b, &s.url, &admin).await;
    click(&b, "a[href='/console/targets']").await;
    b.wait_text("No targets yet").await;
    click(&b, "a[href='/console/targets/new']").await;
    b.wait_text("New target").await;
    let fill = |id: &'static str, text: String| {
        let c = b.client.clone();
        async move {
            let e = c.find(Locator::Id(id)).await.unwrap();
            e.clear().await.unwrap();
            e.send_keys(&text).await.unwrap();
        }
    };
    fill("name", "cloud".into()).await;
    fill("kind", "mock".into()).await;
    fill("k0", "url".into()).await;
    fill("v0", s.cloud.url.clone()).await;
    fill("k1", "allow_http".into()).await;
    fill("v1", "true".into()).await;
    fill("k2", "token".into()).await;
    fill("v2", "wrong-token".into()).await;
    // A wrong credential: the health check fails and nothing is saved.
    click(&b, "button[value=save]").await;
    let text = b.wait_text("Connection test failed").await;
    assert!(
        !text.contains("wrong-token"),
        "a secret is never shown back"
    );
    let (_, targets) = s.call("GET", "/api/v1/targets", Some(&admin), None).await;
    assert_eq!(targets, json!([]));
    // The secret row came back empty (write-only): type the right one, test, then save.
    fill("v2", token.clone()).await;
    click(&b, "button[value=test]").await;
    b.wait_text("Connection test passed.").await;
    assert!(!b.client.source().await.unwrap().contains(&token));
    fill("v2", token.clone()).await;
    click(&b, "button[value=save]").await;
    b.wait_text("target cloud saved").await;
    // Edit it without touching the secret: the stored one is kept (tested, then saved).
    click(&b, "a[href='/console/targets/cloud']").await;
    b.wait_text("Target cloud").await;
    let page = b.client.source().await.unwrap();
    assert!(
        !page.contains(&token),
        "the stored secret is not in the page"
    );
    b.screenshot("target.png").await;
    click(&b, "button[value=save]").await;
    b.wait_text("target cloud saved").await;
    let (code, t) = s
        .call("GET", "/api/v1/targets/cloud", Some(&admin), None)
        .await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["config"]["token"], "<redacted>");
    assert_eq!(t["default"], true);
    // The kept secret works: an automatic bind lands the devices through this target.
    let (code, bound) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "BATCH-T", "reel_id": "REEL-T"})),
        )
        .await;
    assert_eq!(code, 201, "{bound}");
    assert_eq!(bound["target"], "cloud");
    let job = s
        .wait_job(&admin, bound["job"]["id"].as_str().unwrap())
        .await;
    assert_eq!(job["state"], "finished", "{job}");
    assert_eq!(s.registry.stats().devices, 3);
    b.close().await;
}

/// Every form control of the page has a label, nothing is wider than the screen, the page has
/// its language and one heading, and every visible text meets WCAG 2 AA contrast against the
/// background it is drawn on (4.5:1, 3:1 for large text), as the browser computed the styles.
async fn check_page(b: &Browser, page: &str) {
    let low = b
        .client
        .execute(
            r#"
            const rgb = (c) => {
              const m = c.match(/rgba?\(([^)]+)\)/);
              if (!m) { return null; }
              const p = m[1].split(/[ ,\/]+/).filter((x) => x).map(parseFloat);
              return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
            };
            const lum = (c) => {
              const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
              return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
            };
            const background = (el) => {
              for (let e = el; e; e = e.parentElement) {
                const c = rgb(getComputedStyle(e).backgroundColor);
                if (c && c.a > 0) { return c; }
              }
              return {r: 255, g: 255, b: 255, a: 1};
            };
            const low = [];
            let checked = 0;
            for (const el of document.body.querySelectorAll('*')) {
              const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
              if (!own || !el.getClientRects().length) { continue; }
              const st = getComputedStyle(el);
              if (st.visibility === 'hidden' || el.closest('[hidden]')) { continue; }
              const fg = rgb(st.color);
              const bg = background(el);
              const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
              const ratio = (hi + 0.05) / (lo + 0.05);
              const size = parseFloat(st.fontSize);
              const large = size >= 24 || (size >= 18.66 && parseInt(st.fontWeight, 10) >= 700);
              checked += 1;
              if (ratio < (large ? 3 : 4.5)) {
                low.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${el.textContent.trim().slice(0, 30)}" ${st.color} on ${JSON.stringify(bg)}: ${ratio.toFixed(2)}`);
              }
            }
            return {low, checked};
            "#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(low["low"], json!([]), "{page}: text below WCAG AA contrast");
    assert!(low["checked"].as_u64().unwrap() > 3, "{page}: {low}");
    let v = b
        .client
        .execute(
            r#"
            const unlabelled = [];
            for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
              if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !el.getAttribute('aria-labelledby')) { unlabelled.push(el.name || el.id); }
            }
            const d = document.documentElement;
            return {unlabelled, overflow: d.scrollWidth - d.clientWidth, lang: d.lang,
                    h1: document.querySelectorAll('h1').length};
            "#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(v["unlabelled"], json!([]), "{page}: {v}");
    assert!(
        v["overflow"].as_i64().unwrap() <= 0,
        "{page} scrolls sideways: {v}"
    );
    assert_eq!(v["lang"], "en", "{page}");
    assert_eq!(v["h1"], 1, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_fit_a_phone_screen_and_every_control_has_a_label() {
    let s = start("").await;
    s.import("reel-p.pem", 70..73, "BATCH-P", "REEL-P").await;
    let admin = account(&s, "acme", "automatic").await;
    let (code, bound) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "BATCH-P", "reel_id": "REEL-P"})),
        )
        .await;
    assert_eq!(code, 201, "{bound}");
    let binding = bound["id"].as_str().unwrap().to_owned();
    let job = bound["job"]["id"].as_str().unwrap().to_owned();
    s.wait_job(&admin, &job).await;
    let b = Browser::start("console_phone", true).await;
    // A phone's viewport.
    b.client.set_window_size(390, 844).await.unwrap();
    b.client
        .goto(&format!("{}/console/sign-in", s.url))
        .await
        .unwrap();
    b.wait_text("Account token").await;
    check_page(&b, "sign-in").await;
    sign_in(&b, &s.url, &admin).await;
    for page in [
        "/console/bind".to_owned(),
        "/console/bindings".to_owned(),
        format!("/console/bindings/{binding}"),
        format!("/console/bindings/{binding}/deprovision"),
        "/console/jobs".to_owned(),
        format!("/console/jobs/{job}"),
        "/console/targets".to_owned(),
        "/console/targets/new".to_owned(),
        "/console/targets/cloud".to_owned(),
        "/console/audit".to_owned(),
    ] {
        b.client.goto(&format!("{}{page}", s.url)).await.unwrap();
        b.wait_text("Sign out").await;
        check_page(&b, &page).await;
        if page == "/console/bind" {
            b.screenshot("bind-phone.png").await;
        }
    }
    // Keyboard only: the first Tab reaches the "Skip to content" link.
    b.client
        .goto(&format!("{}/console/bindings", s.url))
        .await
        .unwrap();
    b.wait_text("Sign out").await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E004}")
        .await
        .unwrap();
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(focused.text().await.unwrap(), "Skip to content");
    b.close().await;
}

/// Types `text` into the scan field of the bind page and presses Enter.
async fn scan(b: &Browser, url: &str, text: &str) {
    b.client.goto(&format!("{url}/console/bind")).await.unwrap();
    b.wait_text("Bind a batch or reel").await;
    b.client
        .find(Locator::Id("scan"))
        .await
        .unwrap()
        .send_keys(&format!("{text}\u{E007}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_bind_explains_wrong_ids_already_bound_a_bad_qr_and_the_attempt_limit() {
    let s = start("bind_attempts = 3\nbind_window_secs = 900").await;
    s.import("reel-w.pem", 80..82, "BATCH-W", "REEL-W").await;
    let other = account(&s, "other", "manual").await;
    let (code, v) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&other),
            Some(json!({"batch_id": "BATCH-W", "reel_id": "REEL-W"})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let _acme = account(&s, "acme", "manual").await;
    let binder = s.token("acme", "binder").await;
    let b = Browser::start("console_bind_messages", false).await;
    sign_in(&b, &s.url, &binder).await;
    // Bound to another account: said so, without naming it.
    scan(&b, &s.url, "https://l.example/b?batch=BATCH-W&reel=REEL-W").await;
    let text = b.wait_text("already bound to an account").await;
    assert!(!text.contains("other"), "{text}");
    // Not a QR payload of a letter.
    scan(&b, &s.url, "hello").await;
    b.wait_text("could not be used").await;
    // Wrong IDs: one generic message, the typed secret never echoed.
    for i in 0..3 {
        scan(
            &b,
            &s.url,
            &format!("https://l.example/b?batch=BATCH-W&reel=GUESS{i}"),
        )
        .await;
        let text = b.wait_text("No batch or reel matches").await;
        assert!(!text.contains(&format!("GUESS{i}")), "{text}");
        let value = b
            .client
            .find(Locator::Id("scan"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some(""), "the form comes back empty");
    }
    // Past the limit: told to wait, even for a right pair.
    scan(&b, &s.url, "https://l.example/b?batch=BATCH-W&reel=REEL-W").await;
    b.wait_text("Too many failed attempts. Wait").await;
    b.screenshot("attempt-limit.png").await;
    assert!(api_bindings(&s, &binder).await.is_empty());
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_job_page_names_each_failed_device_with_its_error() {
    let s = start("").await;
    // A batch delivered whole (no reel), bound by its batch ID alone.
    let (devices, out) = s.import_whole("order-e.pem", 400..404, "ORDER-E").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The cloud already holds a device under the first one's name with another certificate:
    // that device fails with the cloud's reason, the others land.
    let clash = super::interop::device_id(&devices[0]);
    let (other, _) = s.fx.devices("other.pem", 990..991);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/devices", s.cloud.url))
        .bearer_auth(s.cloud_token())
        .json(&json!({"name": clash, "certificate_pem": other[0].cert_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let _admin = account(&s, "acme", "automatic").await;
    let binder = s.token("acme", "binder").await;
    let b = Browser::start("console_job_device_errors", true).await;
    sign_in(&b, &s.url, &binder).await;
    let c = &b.client;
    c.find(Locator::Id("batch_id"))
        .await
        .unwrap()
        .send_keys("ORDER-E")
        .await
        .unwrap();
    click(&b, "#scan-form button[type=submit]").await;
    b.wait_text("State: finished").await;
    assert_eq!(text_of(&b, "#done").await, "3");
    assert_eq!(text_of(&b, "#failed").await, "1");
    let errors = b.wait_text("Device errors").await;
    let table = text_of(&b, "#errors tbody").await;
    assert!(
        table.contains(&clash),
        "the failed device is named: {table}\n{errors}"
    );
    assert_eq!(table.lines().count(), 1, "only the failed device: {table}");
    assert!(
        table.trim().len() > clash.len() + 5,
        "the failed device carries its error: {table}"
    );
    b.screenshot("job-errors.png").await;
    // The same list through the API, filtered by state; a bad state is a 400.
    let job = path(&b)
        .await
        .trim_start_matches("/console/jobs/")
        .to_owned();
    let (code, v) = s
        .call(
            "GET",
            &format!("/api/v1/jobs/{job}/devices?state=failed"),
            Some(&binder),
            None,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let failed = v["devices"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["device_id"], clash.as_str());
    assert!(
        failed[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    let (code, v) = s
        .call(
            "GET",
            &format!("/api/v1/jobs/{job}/devices?state=done"),
            Some(&binder),
            None,
        )
        .await;
    assert_eq!(
        (code, v["devices"].as_array().map(Vec::len)),
        (200, Some(3)),
        "{v}"
    );
    let (code, v) = s
        .call(
            "GET",
            &format!("/api/v1/jobs/{job}/devices?state=nope"),
            Some(&binder),
            None,
        )
        .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    b.close().await;
}

//! The console's HTML: one layout and one function per page, rendered on the server with
//! `maud` (compile-time templates, every interpolation escaped).
//!
//! Accessibility: a skip link, one `h1` a page, every field has a `label` (hints tied with
//! `aria-describedby`), errors in a `role="alert"` box, tables with headers, the current page
//! marked `aria-current`, no colour-only meaning. Phones: a viewport meta and a single column
//! under 40rem.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::client::enc;
use super::view::{self, Binding, Job, Who};

/// What every page needs: who is signed in and the CSRF token for forms.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// The signed-in account (None on the sign-in page).
    pub who: Option<Who>,
    /// The CSRF token every form carries.
    pub csrf: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
}

/// A message box above the page content.
#[derive(Debug, Clone)]
pub enum Flash {
    /// Something went wrong (role=alert).
    Error(String),
    /// Something worked (role=status).
    Ok(String),
}

/// The manifest formats the service serves, with their labels.
pub const MANIFEST_FORMATS: &[(&str, &str)] = &[
    ("pem", "PEM bundle"),
    ("jsonl", "idbridge JSON lines"),
    ("jsonl.jws", "JSON lines, signed (detached JWS)"),
    ("aws-bulk", "AWS IoT bulk registration"),
    ("azure-import", "Azure IoT Hub import"),
];

/// The three provisioning modes.
pub const MODES: &[(&str, &str)] = &[
    ("", "The account's default"),
    ("automatic", "Automatic: provision into the target now"),
    ("manual", "Manual: provision later with \"Provision now\""),
    (
        "manifest",
        "Manifest: download a file and import it yourself",
    ),
];

/// The page frame.
pub fn layout(ctx: &Ctx, title: &str, flash: Option<&Flash>, body: Markup) -> Markup {
    layout_with(ctx, title, flash, body, None)
}

/// The page frame; `head_extra` goes into `<head>` (the job page's no-script refresh).
pub fn layout_with(
    ctx: &Ctx,
    title: &str,
    flash: Option<&Flash>,
    body: Markup,
    head_extra: Option<Markup>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · idbridge console" }
                link rel="stylesheet" href="/console/static/console.css";
                @if let Some(extra) = head_extra { (extra) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        span.brand { "idbridge console" }
                        @if let Some(who) = &ctx.who {
                            (nav_link(ctx, "bind", "/console/bind", "Bind"))
                            (nav_link(ctx, "bindings", "/console/bindings", "Bindings"))
                            (nav_link(ctx, "jobs", "/console/jobs", "Jobs"))
                            @if who.admin() {
                                (nav_link(ctx, "targets", "/console/targets", "Targets"))
                                (nav_link(ctx, "audit", "/console/audit", "Audit"))
                            }
                            span.spacer {}
                            span.who { (who.account) " (" (who.role) ")" }
                            form method="post" action="/console/sign-out" {
                                input type="hidden" name="csrf" value=(ctx.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    @match flash {
                        Some(Flash::Error(m)) => div.msg.error role="alert" { (m) },
                        Some(Flash::Ok(m)) => div.msg.ok role="status" { (m) },
                        None => {},
                    }
                    (body)
                }
            }
        }
    }
}

fn nav_link(ctx: &Ctx, key: &str, href: &str, label: &str) -> Markup {
    html! {
        @if ctx.nav == key {
            a href=(href) aria-current="page" { (label) }
        } @else {
            a href=(href) { (label) }
        }
    }
}

fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// Sign in with an account token.
pub fn sign_in(login_csrf: &str, flash: Option<&Flash>) -> Markup {
    let ctx = Ctx {
        csrf: login_csrf.to_owned(),
        ..Ctx::default()
    };
    layout(
        &ctx,
        "Sign in",
        flash,
        html! {
            form method="post" action="/console/sign-in" {
                (csrf(&ctx))
                label for="token" { "Account token" }
                p.hint #token-hint { "The token your operator created for you (idbridge service token create). It is kept in a browser cookie scripts cannot read." }
                input #token type="password" name="token" autocomplete="off" required autofocus aria-describedby="token-hint";
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The bind page: scanner / pasted QR text, batch + reel ID, QR photo upload.
pub fn bind(ctx: &Ctx, targets: &[String], flash: Option<&Flash>) -> Markup {
    let mode_and_target = |suffix: &str| {
        html! {
            div.row {
                div {
                    label for={"mode-" (suffix)} { "Mode" }
                    select #{"mode-" (suffix)} name="mode" {
                        @for (value, label) in MODES {
                            option value=(value) { (label) }
                        }
                    }
                }
                div {
                    label for={"target-" (suffix)} { "Target" }
                    select #{"target-" (suffix)} name="target" {
                        option value="" { "The account's default" }
                        @for t in targets {
                            option value=(t) { (t) }
                        }
                    }
                }
            }
        }
    };
    layout(
        ctx,
        "Bind a batch or reel",
        flash,
        html! {
            form method="post" action="/console/bind" #scan-form {
                (csrf(ctx))
                fieldset {
                    legend { "Scan the reel letter's QR code" }
                    label for="scan" { "QR code" }
                    p.hint #scan-hint { "Focus is here: scan with a handheld scanner (it types the code and presses Enter), or paste the QR text." }
                    input.scan #scan type="text" name="scan" autofocus autocomplete="off" spellcheck="false" aria-describedby="scan-hint";
                    p.hint { "Or type the letter's two IDs (a batch delivered whole, without reels, needs only its batch ID):" }
                    div.row {
                        div {
                            label for="batch_id" { "Product Batch ID" }
                            input #batch_id type="text" name="batch_id" autocomplete="off" spellcheck="false" placeholder="xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
                        }
                        div {
                            label for="reel_id" { "Reel ID" }
                            input #reel_id type="password" name="reel_id" autocomplete="off" spellcheck="false" placeholder="16 hex digits";
                        }
                    }
                    (mode_and_target("scan"))
                    button type="submit" { "Bind" }
                }
            }
            form method="post" action="/console/bind/qr" enctype="multipart/form-data" #photo-form {
                (csrf(ctx))
                fieldset {
                    legend { "Or upload a photo of the QR code" }
                    label for="image" { "Photo or scan (PNG or JPEG)" }
                    p.hint #image-hint { "On a phone this opens the camera. The code may be at an angle." }
                    input #image type="file" name="image" accept="image/png,image/jpeg" capture="environment" required aria-describedby="image-hint";
                    (mode_and_target("photo"))
                    button type="submit" { "Bind from photo" }
                }
            }
        },
    )
}

/// The list of the account's bindings.
pub fn bindings(ctx: &Ctx, list: &[Binding], flash: Option<&Flash>) -> Markup {
    layout(
        ctx,
        "Bindings",
        flash,
        html! {
            @if list.is_empty() {
                p { "No bindings yet. " a href="/console/bind" { "Bind a batch or reel" } "." }
            } @else {
                div.table-wrap {
                    table {
                        caption.hint { "Batches and reels bound to this account" }
                        thead { tr {
                            th scope="col" { "Binding" } th scope="col" { "Scope" }
                            th.num scope="col" { "Valid" } th.num scope="col" { "Refused" }
                            th scope="col" { "Mode" } th scope="col" { "Target" } th scope="col" { "State" }
                            th scope="col" { "Bound" }
                        } }
                        tbody {
                            @for b in list {
                                tr {
                                    td { a href={"/console/bindings/" (enc(&b.id))} .mono { (b.id) } }
                                    td { (b.scope) }
                                    td.num { (b.valid) } td.num { (b.refused) }
                                    td { (b.mode) } td { (b.target) }
                                    td { span.state { (b.state) } }
                                    td { (b.created) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One binding: summary, actions, manifest downloads, its devices.
pub fn binding(
    ctx: &Ctx,
    b: &Binding,
    devices: &view::Page,
    query: &str,
    flash: Option<&Flash>,
) -> Markup {
    let admin = ctx.who.as_ref().is_some_and(Who::admin);
    let base = format!("/console/bindings/{}", enc(&b.id));
    layout(
        ctx,
        &format!("Binding {}", b.id),
        flash,
        html! {
            dl.stats {
                div { dt { "Valid devices" } dd #valid { (b.valid) } }
                div { dt { "Refused" } dd #refused { (b.refused) } }
                div { dt { "Mode" } dd { (b.mode) } }
                div { dt { "Target" } dd { (b.target) } }
                div { dt { "State" } dd { (b.state) } }
            }
            @if !b.jobs.is_empty() {
                h2 { "Jobs" }
                ul {
                    @for j in &b.jobs {
                        li { a href={"/console/jobs/" (enc(j))} .mono { "Job " (j) } }
                    }
                }
            }
            @if admin {
                h2 { "Provisioning" }
                p {
                    a.button href={(base) "/provision"} { "Provision now" }
                    a.button.secondary href={(base) "/deprovision"} { "Deprovision" }
                }
                h2 { "Manifest downloads" }
                ul #manifests {
                    @for (format, label) in MANIFEST_FORMATS {
                        li { a href={(base) "/manifest?format=" (format)} download { (label) } " " code { (format) } }
                    }
                }
            }
            h2 #devices { "Devices" }
            form method="get" action=(base) role="search" {
                label for="q" { "Search devices" }
                p.hint #q-hint { "By device id, chip id or serial number." }
                input #q type="search" name="q" value=(query) aria-describedby="q-hint";
                button type="submit" { "Search" }
            }
            (device_table(devices, &["device_id", "chip_id", "serial", "status"]))
            (pager(&base, query, devices))
        },
    )
}

fn device_table(page: &view::Page, columns: &[&str]) -> Markup {
    html! {
        @if page.items.is_empty() {
            p { "No devices." }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { @for c in columns { th scope="col" { (view::title_case(c)) } } } }
                    tbody {
                        @for d in &page.items {
                            tr { @for c in columns { td.mono { (view::text(d, c)) } } }
                        }
                    }
                }
            }
        }
    }
}

fn pager(base: &str, query: &str, page: &view::Page) -> Markup {
    html! {
        @if let Some(next) = &page.next {
            p.pager { a href={(base) "?q=" (enc(query)) "&cursor=" (enc(next)) "#devices"} { "Next page" } }
        }
    }
}

/// "Are you sure?" before provisioning or deprovisioning (works without JavaScript).
pub fn confirm(ctx: &Ctx, b: &Binding, action: &str, targets: &[String]) -> Markup {
    let (title, text, danger) = if action == "deprovision" {
        (
            "Deprovision",
            "Remove this binding's devices from the target cloud? Devices then cannot connect until provisioned again.",
            true,
        )
    } else {
        (
            "Provision now",
            "Register this binding's valid devices in the target cloud?",
            false,
        )
    };
    layout(
        ctx,
        &format!("{title}: binding {}", b.id),
        None,
        html! {
            form method="post" action={"/console/bindings/" (enc(&b.id)) "/" (action)} {
                (csrf(ctx))
                p { (text) }
                p { (b.valid) " valid devices; mode " (b.mode) "; target " (b.target) "." }
                @if action == "provision" {
                    label for="target" { "Target" }
                    select #target name="target" {
                        option value="" { "The binding's target" }
                        @for t in targets { option value=(t) { (t) } }
                    }
                }
                input type="hidden" name="confirm" value="yes";
                @if danger {
                    button.danger type="submit" { "Yes, deprovision" }
                } @else {
                    button type="submit" { "Yes, provision now" }
                }
                a.button.secondary href={"/console/bindings/" (enc(&b.id))} { "Cancel" }
            }
        },
    )
}

/// Jobs of the account.
pub fn jobs(ctx: &Ctx, list: &[Job]) -> Markup {
    layout(
        ctx,
        "Jobs",
        None,
        html! {
            @if list.is_empty() {
                p { "No jobs yet." }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Job" } th scope="col" { "State" }
                        th.num scope="col" { "Done" } th.num scope="col" { "Failed" } th.num scope="col" { "Total" }
                    } }
                    tbody { @for j in list { tr {
                        td { a.mono href={"/console/jobs/" (enc(&j.id))} { (j.id) } }
                        td { span.state { (j.state) } }
                        td.num { (j.done) } td.num { (j.failed) } td.num { (j.total) }
                    } } }
                } }
            }
        },
    )
}

/// One job with live progress.
pub fn job(ctx: &Ctx, j: &Job, p: &view::Progress, errors: &[(String, String)]) -> Markup {
    let events = format!("/console/jobs/{}/events", enc(&j.id));
    // Without JavaScript the page refreshes itself while the job runs; the script removes this.
    let head = (!j.finished()).then(|| {
        html! { noscript #no-js-refresh { meta http-equiv="refresh" content="3"; } }
    });
    layout_with(
        ctx,
        &format!("Job {}", j.id),
        None,
        html! {
            div #job data-events=(events) {
                p { "State: " span.state #state { (p.state) } }
                progress #bar max="100" value=(p.percent) aria-labelledby="percent-label" { (p.percent) "%" }
                p #percent-label { "Progress: " strong #percent { (p.percent) "%" } }
                dl.stats aria-live="polite" {
                    div { dt { "Done" } dd #done { (p.done) } }
                    div { dt { "Failed" } dd #failed { (p.failed) } }
                    div { dt { "Remaining" } dd #remaining { (p.remaining) } }
                    div { dt { "Total" } dd #total { (p.total) } }
                    div { dt { "Rate" } dd #rate { (p.rate) } }
                    div { dt { "ETA" } dd #eta { (p.eta) } }
                }
                p.hint #live role="status" { "Live updates need JavaScript; without it this page refreshes every few seconds. " a href="" { "Refresh" } }
                @if let Some(b) = &j.binding {
                    p { a href={"/console/bindings/" (enc(b))} { "Back to the binding" } }
                }
                div #errors hidden[errors.is_empty()] {
                    h2 { "Device errors" }
                    div.table-wrap { table {
                        thead { tr { th scope="col" { "Device" } th scope="col" { "Error" } } }
                        tbody { @for (d, e) in errors { tr { td.mono { (d) } td { (e) } } } }
                    } }
                }
            }
            script src="/console/static/console.js" defer {}
        },
        head,
    )
}

/// Targets of the account (admin).
pub fn targets(ctx: &Ctx, list: &[Value], flash: Option<&Flash>) -> Markup {
    layout(
        ctx,
        "Targets",
        flash,
        html! {
            p { a.button href="/console/targets/new" { "New target" } }
            @if list.is_empty() {
                p { "No targets yet." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Default" } } }
                    tbody { @for t in list { tr {
                        td { a href={"/console/targets/" (enc(&view::text(t, "name")))} { (view::text(t, "name")) } }
                        td { (view::text(t, "kind")) }
                        td { @if t.get("default").and_then(Value::as_bool).unwrap_or(false) { "yes" } }
                    } } }
                } }
            }
        },
    )
}

/// One target's form: name, kind, its connector keys; secret keys are write-only.
pub fn target_form(ctx: &Ctx, form: &view::TargetForm, flash: Option<&Flash>) -> Markup {
    let title = if form.existing {
        format!("Target {}", form.name)
    } else {
        "New target".to_owned()
    };
    layout(
        ctx,
        &title,
        flash,
        html! {
            form method="post" action="/console/targets" {
                (csrf(ctx))
                div.row {
                    div {
                        label for="name" { "Name" }
                        @if form.existing {
                            input #name type="text" name="name" value=(form.name) readonly;
                        } @else {
                            input #name type="text" name="name" value=(form.name) required pattern="[A-Za-z0-9_.-]+";
                        }
                    }
                    div {
                        label for="kind" { "Kind" }
                        input #kind type="text" name="kind" value=(form.kind) required list="kinds";
                        datalist #kinds { @for k in view::KINDS { option value=(k) {} } }
                    }
                }
                fieldset {
                    legend { "Connector keys" }
                    p.hint { "The same keys as the target's table in idbridge.toml. Secret values are never shown: leave a secret empty to keep it." }
                    @for (i, (key, value, secret)) in form.keys.iter().enumerate() {
                        div.row {
                            div {
                                label for={"k" (i)} { "Key " (i + 1) }
                                input #{"k" (i)} type="text" name={"k" (i)} value=(key);
                            }
                            div {
                                label for={"v" (i)} { "Value" @if *secret { " (secret, write-only)" } }
                                @if *secret {
                                    input #{"v" (i)} type="password" name={"v" (i)} value="" placeholder="unchanged" autocomplete="new-password";
                                } @else {
                                    input #{"v" (i)} type="text" name={"v" (i)} value=(value);
                                }
                            }
                        }
                    }
                }
                label { input type="checkbox" name="default" value="yes" checked[form.default]; " The account's default target" }
                button type="submit" name="action" value="test" .secondary { "Test connection" }
                button type="submit" name="action" value="save" { "Test and save" }
            }
        },
    )
}

/// The audit log (admin).
pub fn audit(ctx: &Ctx, events: &[Value], next: Option<&str>) -> Markup {
    layout(
        ctx,
        "Audit log",
        None,
        html! {
            div.table-wrap { table {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" }
                    th scope="col" { "Outcome" } th scope="col" { "From" }
                } }
                tbody { @for e in events { tr {
                    td.mono { (view::first(e, &["at", "time", "when"])) }
                    td { (view::first(e, &["actor", "account", "who"])) }
                    td { (view::first(e, &["action", "what"])) " " span.mono { (view::first(e, &["subject", "target_id", "resource"])) } }
                    td { (view::first(e, &["outcome", "result"])) }
                    td.mono { (view::first(e, &["client", "from", "peer", "address"])) }
                } } }
            } }
            @if let Some(n) = next {
                p.pager { a href={"/console/audit?cursor=" (enc(n))} { "Older entries" } }
            }
        },
    )
}

/// "Not found" (also what another account's binding or job shows).
pub fn not_found(ctx: &Ctx, what: &str) -> Markup {
    layout(
        ctx,
        "Not found",
        None,
        html! { p { (what) " was not found." } p { a href="/console/bindings" { "Your bindings" } } },
    )
}

/// "Forbidden": an admin page for a binder.
pub fn forbidden(ctx: &Ctx) -> Markup {
    layout(
        ctx,
        "Not allowed",
        None,
        html! { p { "This page needs the admin role. Ask an administrator of your account." } },
    )
}

/// A refused form post (CSRF token missing or stale).
pub fn csrf_refused() -> Markup {
    layout(
        &Ctx::default(),
        "Form refused",
        Some(&Flash::Error(
            "This form was refused: its security token is missing or has expired. Go back, reload the page and try again.".into(),
        )),
        html! { p { a href="/console" { "Back to the console" } } },
    )
}

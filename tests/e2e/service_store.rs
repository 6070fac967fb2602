//! One conformance suite for every service store (`idbridge::service::Store`): each scenario
//! is a plain `async fn` taking the store, run on a fresh SQLite file and on a fresh database
//! of a real PostgreSQL (started by the test with initdb + pg_ctl). The bind-once race runs on
//! both, and on PostgreSQL also across two stores (two processes' pools) on one database.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::sync::Arc;

use idbridge::service::store::{
    self, Account, AuditEntry, BatchRecord, BindOutcome, BindingRecord, DeviceRow, JobRecord,
    Store, TargetRecord, TokenRecord,
};
use idbridge_local_postgres::LocalPostgres;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn account(id: &str) -> Account {
    Account {
        id: id.into(),
        name: format!("name-{id}"),
        mode: "manual".into(),
        created_ms: 1,
    }
}

fn batch(id: &str, devices: i64) -> BatchRecord {
    BatchRecord {
        id: id.into(),
        claim_hash: format!("claim-{id}"),
        batch_tag: format!("batch:{id}"),
        source: "reel.csv".into(),
        devices,
        invalid: 0,
        created_ms: 10,
    }
}

fn device(n: usize, valid: bool) -> DeviceRow {
    DeviceRow {
        device_id: format!("{n:064x}"),
        status: if valid { "valid" } else { "invalid" }.into(),
        reason: (!valid).then(|| format!("entry {n}: bad")),
        source: format!("reel.csv:{n}"),
        cert_pem: valid.then(|| format!("PEM {n}")),
    }
}

fn binding(id: &str, account: &str, batch: &str) -> BindingRecord {
    BindingRecord {
        id: id.into(),
        account_id: account.into(),
        batch_id: batch.into(),
        mode: "manual".into(),
        target: Some("demo".into()),
        created_ms: 20,
    }
}

fn job(id: &str, account: &str, binding: &str, created_ms: i64) -> JobRecord {
    JobRecord {
        id: id.into(),
        account_id: account.into(),
        binding_id: binding.into(),
        operation: "provision".into(),
        target: "demo".into(),
        state: "queued".into(),
        journal_job: None,
        error: None,
        created_ms,
        updated_ms: created_ms,
    }
}

fn target(account: &str, name: &str, is_default: bool) -> TargetRecord {
    TargetRecord {
        account_id: account.into(),
        name: name.into(),
        kind: "mock".into(),
        is_default,
        secret_keys: "[\"token\"]".into(),
        sealed: format!("sealed-{name}"),
        updated_ms: 5,
    }
}

/// Accounts are unique by name (and id); tokens are found by hash only.
async fn accounts_and_tokens(s: &dyn Store) {
    s.ping().await.unwrap();
    assert!(s.create_account(&account("a1")).await.unwrap());
    let mut same_name = account("a2");
    same_name.name = "name-a1".into();
    assert!(!s.create_account(&same_name).await.unwrap(), "name taken");
    assert!(!s.create_account(&account("a1")).await.unwrap(), "id taken");
    assert_eq!(
        s.account_by_name("name-a1").await.unwrap(),
        Some(account("a1"))
    );
    assert_eq!(s.account("a1").await.unwrap(), Some(account("a1")));
    assert_eq!(s.account("a2").await.unwrap(), None);
    assert_eq!(s.account_by_name("nobody").await.unwrap(), None);

    let t = TokenRecord {
        id: "tok1".into(),
        account_id: Some("a1".into()),
        role: "binder".into(),
        token_hash: "ab".repeat(32),
        created_ms: 3,
    };
    s.create_token(&t).await.unwrap();
    let op = TokenRecord {
        id: "tok2".into(),
        account_id: None,
        role: "operator".into(),
        token_hash: "cd".repeat(32),
        created_ms: 4,
    };
    s.create_token(&op).await.unwrap();
    let got = s.token_by_hash(&"ab".repeat(32)).await.unwrap().unwrap();
    assert_eq!(
        (
            got.id.as_str(),
            got.account_id.as_deref(),
            got.role.as_str()
        ),
        ("tok1", Some("a1"), "binder")
    );
    let got = s.token_by_hash(&"cd".repeat(32)).await.unwrap().unwrap();
    assert_eq!(got.account_id, None);
    assert!(s.token_by_hash("ef").await.unwrap().is_none());
}

/// A batch and its devices land in one transaction; the same claim twice is refused and
/// writes nothing; devices page in id order, `valid_only` skipping refused ones.
async fn batches_and_devices(s: &dyn Store) {
    let devices: Vec<DeviceRow> = (0..2500).map(|n| device(n, n % 10 != 3)).collect();
    assert!(s.insert_batch(&batch("b1", 2250), &devices).await.unwrap());
    let mut dup = batch("b2", 1);
    dup.claim_hash = "claim-b1".into();
    assert!(!s.insert_batch(&dup, &devices[..1]).await.unwrap());
    assert!(s.batch("b2").await.unwrap().is_none(), "nothing written");
    assert!(s.devices("b2", None, 10, false).await.unwrap().is_empty());
    assert!(s.insert_batch(&batch("b0", 0), &[]).await.unwrap());

    let b = s.batch_by_claim("claim-b1").await.unwrap().unwrap();
    assert_eq!((b.id.as_str(), b.devices), ("b1", 2250));
    assert_eq!(s.batch("b1").await.unwrap().unwrap().batch_tag, "batch:b1");
    let mut newer = batch("b3", 0);
    newer.created_ms = 99;
    assert!(s.insert_batch(&newer, &[]).await.unwrap());
    let ids: Vec<String> = s
        .batches()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["b3", "b0", "b1"], "newest first, then by id");

    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.devices("b1", after.as_deref(), 700, false).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.device_id.clone());
        all.extend(page);
    }
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].device_id < w[1].device_id));
    let bad = all.iter().find(|d| d.status == "invalid").unwrap();
    assert_eq!(bad.reason.as_deref(), Some("entry 3: bad"));
    assert_eq!(bad.cert_pem, None);
    let valid = s.devices("b1", None, 10_000, true).await.unwrap();
    assert_eq!(valid.len(), 2250);
    assert!(
        valid
            .iter()
            .all(|d| d.status == "valid" && d.cert_pem.is_some())
    );
    assert_eq!(valid[0].source, "reel.csv:0");
}

/// Targets are replaced in place; one default per account; other accounts' are invisible.
async fn targets(s: &dyn Store) {
    for a in ["t1", "t2"] {
        assert!(s.create_account(&account(a)).await.unwrap());
    }
    s.put_target(&target("t1", "lab", true)).await.unwrap();
    s.put_target(&target("t1", "prod", false)).await.unwrap();
    s.put_target(&target("t2", "lab", true)).await.unwrap();
    let names = |v: Vec<TargetRecord>| {
        v.into_iter()
            .map(|t| (t.name, t.is_default))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.targets("t1").await.unwrap()),
        [("lab".to_owned(), true), ("prod".to_owned(), false)]
    );
    let mut prod = target("t1", "prod", true);
    prod.sealed = "sealed-v2".into();
    prod.updated_ms = 6;
    s.put_target(&prod).await.unwrap();
    assert_eq!(
        names(s.targets("t1").await.unwrap()),
        [("lab".to_owned(), false), ("prod".to_owned(), true)]
    );
    let got = s.target("t1", "prod").await.unwrap().unwrap();
    assert_eq!((got.sealed.as_str(), got.updated_ms), ("sealed-v2", 6));
    assert!(
        s.target("t2", "lab").await.unwrap().unwrap().is_default,
        "another account's default is untouched"
    );
    assert!(s.target("t2", "prod").await.unwrap().is_none());
    assert!(s.delete_target("t1", "lab").await.unwrap());
    assert!(!s.delete_target("t1", "lab").await.unwrap());
    assert!(!s.delete_target("t2", "prod").await.unwrap());
    assert_eq!(s.targets("t1").await.unwrap().len(), 1);
}

/// Bind-once: Bound, then AlreadyYours for the same account, Taken for another; bindings are
/// per account; jobs keep their state and journal job; unfinished ones come back oldest first.
async fn bindings_and_jobs(s: &dyn Store) {
    for a in ["k1", "k2"] {
        assert!(s.create_account(&account(a)).await.unwrap());
    }
    assert!(s.insert_batch(&batch("kb", 0), &[]).await.unwrap());
    assert!(s.insert_batch(&batch("kc", 0), &[]).await.unwrap());
    let first = binding("bind1", "k1", "kb");
    assert_eq!(
        s.bind(&first).await.unwrap(),
        BindOutcome::Bound(first.clone())
    );
    assert_eq!(
        s.bind(&binding("bind2", "k1", "kb")).await.unwrap(),
        BindOutcome::AlreadyYours(first.clone())
    );
    assert_eq!(
        s.bind(&binding("bind3", "k2", "kb")).await.unwrap(),
        BindOutcome::Taken
    );
    let mut second = binding("bind4", "k1", "kc");
    second.created_ms = 21;
    second.target = None;
    assert_eq!(
        s.bind(&second).await.unwrap(),
        BindOutcome::Bound(second.clone())
    );
    assert_eq!(s.bindings("k1").await.unwrap(), [first.clone(), second]);
    assert!(s.bindings("k2").await.unwrap().is_empty());
    assert_eq!(s.binding("k1", "bind1").await.unwrap(), Some(first));
    assert_eq!(s.binding("k2", "bind1").await.unwrap(), None, "not yours");

    s.create_job(&job("job-2", "k1", "bind1", 200))
        .await
        .unwrap();
    s.create_job(&job("job-1", "k1", "bind1", 100))
        .await
        .unwrap();
    s.create_job(&job("job-3", "k1", "bind4", 300))
        .await
        .unwrap();
    let unfinished: Vec<String> = s
        .unfinished_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(unfinished, ["job-1", "job-2", "job-3"]);
    s.update_job("job-1", "running", Some("journal-7"), None)
        .await
        .unwrap();
    s.update_job("job-1", "failed", None, Some("no target"))
        .await
        .unwrap();
    let j = s.job("k1", "job-1").await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.journal_job.as_deref(), Some("journal-7"), "kept");
    assert_eq!(j.error.as_deref(), Some("no target"));
    assert!(j.updated_ms >= j.created_ms);
    assert!(s.job("k2", "job-1").await.unwrap().is_none(), "not yours");
    s.update_job("job-2", "finished", Some("journal-8"), None)
        .await
        .unwrap();
    let unfinished: Vec<String> = s
        .unfinished_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(unfinished, ["job-3"]);
    let of_binding: Vec<String> = s
        .binding_jobs("bind1")
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(of_binding, ["job-2", "job-1"], "newest first");

    assert!(s.delete_binding("k1", "bind4").await.unwrap());
    assert!(!s.delete_binding("k1", "bind4").await.unwrap());
    assert!(!s.delete_binding("k2", "bind1").await.unwrap(), "not yours");
}

/// The audit log pages in id order, per account or all.
async fn audit_log(s: &dyn Store) {
    for i in 0..25 {
        let e = AuditEntry {
            id: format!("audit-{i:04}"),
            at_ms: i,
            account_id: (i % 2 == 0).then(|| "a-even".to_owned()),
            actor: "tok1".into(),
            client: "127.0.0.1".into(),
            action: "bind".into(),
            subject: Some(format!("bind{i}")),
            outcome: "ok".into(),
            detail: None,
        };
        s.audit(&e).await.unwrap();
    }
    let all = s.audit_entries(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 25);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let even = s.audit_entries(Some("a-even"), None, 100).await.unwrap();
    assert_eq!(even.len(), 13);
    let page = s
        .audit_entries(Some("a-even"), Some("audit-0010"), 3)
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["audit-0012", "audit-0014", "audit-0016"]);
    assert!(
        s.audit_entries(Some("nobody"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `racers` accounts bind one batch at once, `rounds` times: exactly one wins each round and
/// every loser is told `Taken`. The binds alternate between `stores` (one per process).
async fn bind_once_race(stores: &[Arc<dyn Store>], rounds: usize, racers: usize) {
    let s = &stores[0];
    for r in 0..racers {
        s.create_account(&account(&format!("racer{r}")))
            .await
            .unwrap();
    }
    for round in 0..rounds {
        let batch_id = format!("race-{round}");
        assert!(s.insert_batch(&batch(&batch_id, 0), &[]).await.unwrap());
        let barrier = Arc::new(tokio::sync::Barrier::new(racers));
        let tasks: Vec<_> = (0..racers)
            .map(|r| {
                let s = Arc::clone(&stores[r % stores.len()]);
                let barrier = Arc::clone(&barrier);
                let b = binding(
                    &format!("bind-{round}-{r}"),
                    &format!("racer{r}"),
                    &batch_id,
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.bind(&b).await.unwrap()
                })
            })
            .collect();
        let mut bound = 0;
        for t in tasks {
            match t.await.unwrap() {
                BindOutcome::Bound(_) => bound += 1,
                BindOutcome::Taken => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(bound, 1, "round {round}: exactly one bind wins");
    }
}

async fn conformance(stores: &[Arc<dyn Store>]) {
    let s = &*stores[0];
    accounts_and_tokens(s).await;
    batches_and_devices(s).await;
    targets(s).await;
    bindings_and_jobs(s).await;
    audit_log(s).await;
    bind_once_race(stores, 20, 8).await;
}

#[test]
fn sqlite_service_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("svc.sqlite").display());
    rt().block_on(async {
        let s = store::open(&url).await.unwrap();
        conformance(&[s]).await;
    });
}

#[test]
fn postgres_service_store_conformance() {
    let pg = LocalPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database().unwrap();
    rt().block_on(async {
        // Two stores on one database: two `serve` processes. The second one's migration
        // finds the schema there.
        let a = store::open(&url).await.unwrap();
        let b = store::open(&url).await.unwrap();
        conformance(&[a, b]).await;
    });
}

#[test]
fn postgres_service_store_shares_a_database_with_the_journal() {
    let pg = LocalPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database().unwrap();
    rt().block_on(async {
        // Both have tables named `jobs` and `devices`: the store keeps its own in its schema.
        let journal = idbridge_core::journal::open(&url).unwrap();
        assert!(journal.jobs().await.unwrap().is_empty());
        let s = store::open(&url).await.unwrap();
        bindings_and_jobs(&*s).await;
        assert!(journal.jobs().await.unwrap().is_empty());
        assert_eq!(s.unfinished_jobs().await.unwrap().len(), 1);
    });
}

#[test]
fn store_url_errors_name_no_password() {
    rt().block_on(async {
        let e = store::open("postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus")
            .await
            .err()
            .unwrap();
        let text = format!("{e:#}");
        assert!(!text.contains("hunter2"), "{text}");
        let e = store::open("mysql://u:hunter2@h/db").await.err().unwrap();
        let text = format!("{e:#}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://"), "{text}");
    });
}

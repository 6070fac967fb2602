#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Why a server could not be started or driven. `Display` says what to do.
#[derive(Debug, Clone)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `fsync` on (a bench that measures durable commits) or off (tests: faster, and a killed
    /// server is never what a test checks).
    pub fsync: bool,
    /// `max_connections`.
    pub max_connections: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: false,
            max_connections: 300,
        }
    }
}

/// A running PostgreSQL on `127.0.0.1`, its data in a temporary directory.
#[derive(Debug)]
pub struct LocalPostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_nobody: Option<(u32, u32)>,
    options: Options,
    pid: Mutex<Option<u32>>,
}

impl LocalPostgres {
    /// Starts a private server with default options: stopped (by PID) and deleted on drop.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(Options::default())
    }

    /// Starts a private server.
    pub fn start_with(options: Options) -> Result<Self, Error> {
        let bin = find_bin_dir()?;
        let as_nobody = if is_root() { Some(nobody()) } else { None };
        let root = fresh_dir()?;
        let mut pg = LocalPostgres {
            root,
            bin,
            port: 0,
            as_nobody,
            options,
            pid: Mutex::new(None),
        };
        if let Some((uid, gid)) = as_nobody {
            std::os::unix::fs::chown(&pg.root, Some(uid), Some(gid))
                .map_err(|e| Error(format!("cannot chown {}: {e}", pg.root.display())))?;
        }
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .map_err(|e| Error(format!("cannot run initdb: {e}")))?;
        if !out.status.success() {
            return Err(Error(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.launch() {
                Ok(()) => return Ok(pg),
                Err(e) => last = e.0,
            }
        }
        Err(Error(format!("PostgreSQL did not start: {last}")))
    }

    /// One server per test binary, started on first use. A watchdog process stops it (by its
    /// PID file) and deletes its directory when this process exits.
    pub fn shared() -> Result<&'static LocalPostgres, Error> {
        static SHARED: OnceLock<Result<LocalPostgres, Error>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let pg = Self::start()?;
                pg.spawn_watchdog()?;
                Ok(pg)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The postmaster's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn database(&self) -> Result<String, Error> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos() % 1_000_000
        );
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url_of(&name))
    }

    /// Runs one SQL command as `postgres` in the `postgres` database; returns its output.
    pub fn psql(&self, sql: &str) -> Result<String, Error> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("cannot run psql: {e}")))?;
        if !out.status.success() {
            return Err(Error(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits for it to exit.
    pub fn stop(&self) -> Result<(), Error> {
        let Some(pid) = self.pid.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        signal(pid, "INT");
        if !wait_gone(pid, Duration::from_secs(30)) {
            signal(pid, "KILL");
            wait_gone(pid, Duration::from_secs(10));
        }
        Ok(())
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&self) -> Result<(), Error> {
        self.stop()?;
        self.launch()
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn launch(&self) -> Result<(), Error> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync={} \
             -c synchronous_commit={} -c full_page_writes={} -c max_connections={}",
            self.port,
            on_off(self.options.fsync),
            on_off(self.options.fsync),
            on_off(self.options.fsync),
            self.options.max_connections
        );
        let out = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-o", &opts])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("cannot run pg_ctl: {e}")))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
            return Err(Error(format!(
                "pg_ctl start failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&log, 20)
            )));
        }
        let pidfile = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .map_err(|e| Error(format!("no postmaster.pid after pg_ctl start: {e}")))?;
        let pid = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .ok_or_else(|| Error("unreadable postmaster.pid".into()))?;
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        Ok(())
    }

    /// `bin/name`, as `nobody` when we are root (initdb refuses root).
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut c = match self.as_nobody {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        c.current_dir(&self.root);
        c
    }

    fn spawn_watchdog(&self) -> Result<(), Error> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; kill -QUIT {pid} 2>/dev/null; \
             i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; \
             kill -KILL {pid} 2>/dev/null; rm -rf '{root}'",
            parent = std::process::id(),
            root = self.root.display()
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error(format!("cannot start the PostgreSQL watchdog: {e}")))?;
        Ok(())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const INSTALL: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on \
PATH nor in /usr/lib/postgresql/*/bin. Install them: `apt-get install -y postgresql` (Debian, \
Ubuntu; .ci/run does this), `dnf install postgresql-server` (Fedora) or `brew install \
postgresql@15` (macOS), and put the directory holding initdb on PATH.";

/// The directory of `initdb`, `pg_ctl`, `postgres` and `psql`.
fn find_bin_dir() -> Result<PathBuf, Error> {
    let complete = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Debian links /usr/local/bin/initdb to the versioned directory: use that one.
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                if let Some(d) = real.parent()
                    && complete(d)
                {
                    return Ok(d.to_path_buf());
                }
                if complete(&dir) {
                    return Ok(dir);
                }
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|d| complete(d))
        .ok_or_else(|| Error(INSTALL.into()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `nobody`'s uid and gid (65534 where /etc/passwd does not say).
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or((65534, 65534))
}

fn fresh_dir() -> Result<PathBuf, Error> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "idbridge-pg-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error(format!("no free loopback port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error(format!("no free loopback port: {e}")))
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_creates_databases_restarts_and_stops_by_pid() {
        let pg = LocalPostgres::start().unwrap();
        let pid = pg.pid().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let url = pg.database().unwrap();
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"));
        assert_eq!(pg.psql("SELECT 40 + 2").unwrap().trim(), "42");
        pg.restart().unwrap();
        assert_ne!(pg.pid(), Some(pid));
        assert_eq!(pg.psql("SELECT 1").unwrap().trim(), "1");
        let pid = pg.pid().unwrap();
        let root = pg.root.clone();
        drop(pg);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "stopped");
        assert!(!root.exists(), "deleted");
    }
}

//! Google's own Firestore and Pub/Sub emulators (Google Cloud SDK `platform/`), started on a
//! free loopback port in their own process group and stopped by that group.
//!
//! These are not fakes: tests and `idbridge bench gcp` run the real emulators the Cloud SDK
//! ships (Debian packages `google-cloud-cli-firestore-emulator`,
//! `google-cloud-cli-pubsub-emulator`, Java 17). Each emulator runs under a small `sh` watchdog
//! that leads the process group: when the process that started it exits (even by `kill -9`),
//! the watchdog kills the whole group, so no JVM outlives a test binary. [`Emulator`] also kills
//! the group when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How to install what the emulators need, for error messages.
pub const INSTALL_HINT: &str = "install the Google Cloud SDK emulators and Java 17: \
`apt-get install -y google-cloud-cli google-cloud-cli-firestore-emulator \
google-cloud-cli-pubsub-emulator openjdk-17-jre-headless` (Google's apt repository \
https://packages.cloud.google.com/apt, see https://cloud.google.com/sdk/docs/install#deb), or \
`gcloud components install beta cloud-firestore-emulator pubsub-emulator`; set \
CLOUDSDK_ROOT_DIR if the SDK is not under /usr/lib/google-cloud-sdk";

/// Which emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatorKind {
    /// `gcloud beta emulators firestore start`.
    Firestore,
    /// `gcloud beta emulators pubsub start`.
    PubSub,
}

impl EmulatorKind {
    fn ready_marker(self) -> &'static str {
        match self {
            EmulatorKind::Firestore => "Dev App Server is now running",
            EmulatorKind::PubSub => "Server started, listening on",
        }
    }

    fn name(self) -> &'static str {
        match self {
            EmulatorKind::Firestore => "Firestore emulator",
            EmulatorKind::PubSub => "Pub/Sub emulator",
        }
    }
}

/// A running emulator. Dropping it kills its process group.
#[derive(Debug)]
pub struct Emulator {
    kind: EmulatorKind,
    port: u16,
    pgid: u32,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    _dir: tempfile_dir::TempDir,
}

impl Emulator {
    /// Starts `kind` on a free loopback port and waits (at most `timeout`) until it serves.
    /// Fails with [`INSTALL_HINT`] when the SDK, the emulator or Java is missing.
    pub fn start(kind: EmulatorKind, timeout: Duration) -> anyhow::Result<Emulator> {
        Self::start_in(&sdk_root()?, kind, timeout)
    }

    /// [`Emulator::start`] with the Cloud SDK at `sdk`.
    pub fn start_in(sdk: &Path, kind: EmulatorKind, timeout: Duration) -> anyhow::Result<Emulator> {
        let java =
            which("java").with_context(|| format!("java not found on PATH; {INSTALL_HINT}"))?;
        let port = free_port()?;
        let dir = tempfile_dir::TempDir::new()?;
        let log = dir.path().join("emulator.log");
        let host = "127.0.0.1".to_owned();
        let mut cmd: Vec<String> = match kind {
            EmulatorKind::Firestore => {
                let jar =
                    sdk.join("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar");
                require(&jar)?;
                vec![
                    java.display().to_string(),
                    "-Duser.language=en".into(),
                    "-cp".into(),
                    jar.display().to_string(),
                    "com.google.cloud.datastore.emulator.firestore.CloudFirestore".into(),
                    format!("--host={host}"),
                    format!("--port={port}"),
                ]
            }
            EmulatorKind::PubSub => {
                let script = sdk.join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
                require(&script)?;
                vec![
                    script.display().to_string(),
                    format!("--host={host}"),
                    format!("--port={port}"),
                ]
            }
        };
        // The watchdog: start the emulator, then wait while both the parent and the emulator
        // live; then kill the whole group (itself included, TERM first, KILL after 2 s).
        let script = r#"parent=$1; log=$2; shift 2
"$@" >"$log" 2>&1 </dev/null &
child=$!
trap '' TERM
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
kill -TERM 0 2>/dev/null; sleep 2; rm -rf "$(dirname "$log")"; kill -KILL 0 2>/dev/null"#;
        let mut args = vec![
            "-c".to_owned(),
            script.to_owned(),
            "idbridge-emulator-watchdog".to_owned(),
            std::process::id().to_string(),
            log.display().to_string(),
        ];
        args.append(&mut cmd);
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new("sh")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            0,
        )
        .spawn()
        .with_context(|| format!("cannot start the {} watchdog", kind.name()))?;
        let emulator = Emulator {
            kind,
            port,
            pgid: child.id(),
            log,
            child: Mutex::new(Some(child)),
            _dir: dir,
        };
        emulator.wait_ready(timeout)?;
        Ok(emulator)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the value of `FIRESTORE_EMULATOR_HOST` / `PUBSUB_EMULATOR_HOST`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process group id (the watchdog's pid).
    pub fn pgid(&self) -> u32 {
        self.pgid
    }

    /// Kills the process group now.
    pub fn stop(&self) {
        kill_group(self.pgid, "KILL");
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.wait();
        }
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let marker = self.kind.ready_marker();
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(marker) && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let exited = {
                let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
                child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some())
            };
            if exited || start.elapsed() > timeout {
                self.stop();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "the {} on port {} {} (log tail:\n{tail}\n); {INSTALL_HINT}",
                    self.kind.name(),
                    self.port,
                    if exited {
                        "exited before it was ready".to_owned()
                    } else {
                        format!("was not ready after {timeout:?}")
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Cloud SDK root: `$CLOUDSDK_ROOT_DIR`, `/usr/lib/google-cloud-sdk`, or two levels above
/// the resolved `gcloud` on PATH.
pub fn sdk_root() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CLOUDSDK_ROOT_DIR") {
        let p = PathBuf::from(dir);
        if p.join("platform").is_dir() {
            return Ok(p);
        }
    }
    let debian = PathBuf::from("/usr/lib/google-cloud-sdk");
    if debian.join("platform").is_dir() {
        return Ok(debian);
    }
    if let Some(gcloud) = which("gcloud")
        && let Ok(real) = std::fs::canonicalize(gcloud)
        && let Some(root) = real.parent().and_then(Path::parent)
        && root.join("platform").is_dir()
    {
        return Ok(root.to_owned());
    }
    bail!("the Google Cloud SDK was not found; {INSTALL_HINT}")
}

fn require(p: &Path) -> anyhow::Result<()> {
    if p.exists() {
        Ok(())
    } else {
        bail!("{} is missing; {INSTALL_HINT}", p.display())
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A temporary directory removed on drop (mock-clouds has no tempfile dependency).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<Self> {
            let mut b = [0u8; 8];
            let _ = aws_lc_rs::rand::fill(&mut b);
            let p = std::env::temp_dir().join(format!("idbridge-emulator-{}", hex::encode(b)));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_emulator_says_how_to_install_it() {
        let dir = tempfile_dir::TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("platform")).unwrap();
        for kind in [EmulatorKind::Firestore, EmulatorKind::PubSub] {
            let e = Emulator::start_in(dir.path(), kind, Duration::from_secs(1)).unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.contains("apt-get install") && msg.contains("emulator"),
                "{msg}"
            );
        }
    }
}

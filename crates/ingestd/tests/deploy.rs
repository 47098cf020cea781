//! What deployment relies on, on the real binary: `--version` names the
//! commit, `ingestd health` (the container HEALTHCHECK) tells a serving
//! process from none, the example config passes `config check`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ingestd");

fn ingestd(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

#[test]
fn version_shows_the_package_version_and_a_commit_of_this_repository() {
    let dir = tempfile::tempdir().unwrap();
    let out = ingestd(dir.path()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    let rest = shown
        .trim()
        .strip_prefix(&format!("ingestd {} (", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{shown:?}"));
    let commit = rest.strip_suffix(')').unwrap_or_else(|| panic!("{shown:?}"));
    assert!(commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "not a commit: {commit:?}");
    // A commit git knows here (the build ran in this checkout).
    let known = Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(repo_root())
        .status()
        .expect("git is needed");
    assert!(known.success(), "{commit} is not a commit of this repository");
}

#[test]
fn health_exits_0_while_serving_and_1_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let health = || ingestd(dir.path()).env("BIND_ADDR", addr.to_string()).arg("health").output().unwrap();
    let out = health();
    assert_eq!(out.status.code(), Some(1), "nothing listens yet");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));

    let db = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let mut child = ingestd(dir.path())
        .env("BIND_ADDR", addr.to_string())
        .env("DATABASE_URL", &db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        let out = health();
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(String::from_utf8_lossy(&out.stderr).into_owned());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(last.is_none(), "`ingestd health` never succeeded: {last:?}");
    assert_eq!(status.code(), Some(0));

    // A wildcard bind address is asked on loopback; something that is not ingestd is unhealthy.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = other.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n").unwrap();
    });
    let out = ingestd(dir.path()).env("BIND_ADDR", format!("0.0.0.0:{port}")).arg("health").output().unwrap();
    answer.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_example_config_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_root().join("deploy/ingestd.toml");
    let out = ingestd(dir.path()).arg("--config").arg(&config).args(["config", "check"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("# configuration is valid"), "{stdout}");
    assert!(stdout.contains("sqlite:///var/lib/ingestd/ingestd.db"), "{stdout}");
}

/// systemd's own checks of deploy/systemd/ingestd.service, with ExecStart
/// pointing at this build: `verify` reports nothing (an unknown or misspelt
/// key is a warning there, so any output fails), and `security --offline`
/// rates the hardening at most 2.0 ("OK").
#[cfg(target_os = "linux")]
#[test]
fn systemd_verifies_the_unit_and_rates_its_exposure_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/ingestd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ingestd "));
    let path = dir.path().join("ingestd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ingestd", BIN)).unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze is needed for this check (Debian/Ubuntu: apt-get install systemd)")
    };
    let out = analyze(&["verify"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    let out = analyze(&["security", "--offline=true", "--threshold=20"]);
    let said = String::from_utf8_lossy(&out.stdout);
    let level = said.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
    assert!(out.status.success(), "exposure above 2.0: {level}\n{said}");
    assert!(level.contains(" OK"), "{level}");
}

/// Prometheus's own checks of deploy/prometheus: the rules parse
/// (`promtool check rules`), and the alerts fire when, and only when, the
/// cases of ingestd-rules.test.yml say (`promtool test rules`).
#[test]
fn promtool_checks_the_rules_and_their_tests_pass() {
    let dir = repo_root().join("deploy/prometheus");
    for args in [["check", "rules", "ingestd-rules.yml"], ["test", "rules", "ingestd-rules.test.yml"]] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is needed for this check (Debian/Ubuntu: apt-get install prometheus)");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("SUCCESS"), "promtool {}:\n{said}", args.join(" "));
    }
}

//! Checks of `deploy/` and of `cargo xtask dist|release` that run without
//! Docker, Kubernetes or systemd: every file parses, and what the artifacts
//! say (ports, probe paths, grace periods, environment) agrees with the
//! configuration defaults of `ingestd::Config` and passes its validation,
//! the same `Config::load` that `ingestd config check` runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ingestd::Config;
use yaml_rust2::{Yaml, YamlLoader};

use crate::dist;

fn root() -> PathBuf {
    crate::project_root()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn one_yaml(path: &str) -> Yaml {
    let mut docs = yaml(path);
    assert_eq!(docs.len(), 1, "{path}: one document expected");
    docs.remove(0)
}

fn defaults() -> Config {
    Config::default()
}

fn default_port() -> i64 {
    let bind = defaults().server.bind;
    bind.rsplit(':').next().unwrap().parse().unwrap()
}

/// `Config::load` must accept the configuration (stream sources included).
fn assert_config_passes(what: &str, file: Option<&Path>, env: &[(String, String)]) {
    if let Err(e) = Config::load(file, env) {
        panic!("{what} fails `ingestd config check`: {e}");
    }
}

fn str_of(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Real(r) => r.clone(),
        other => panic!("a scalar expected, found {other:?}"),
    }
}

/// "40s" / "1m30s" (compose durations) → seconds.
fn compose_secs(s: &str) -> u64 {
    let mut total = 0;
    let mut n = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => n.push(c),
            'h' | 'm' | 's' => {
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total += n.parse::<u64>().unwrap() * unit;
                n.clear();
            }
            _ => panic!("unexpected duration {s:?}"),
        }
    }
    assert!(n.is_empty(), "duration {s:?} lacks a unit");
    total
}

// ---------------------------------------------------------------- dist

#[test]
fn dist_tarball_holds_binary_docs_config_and_unit_with_a_sha256sum_checksum() {
    let root = root();
    let tmp = tempfile::tempdir().unwrap();
    // The packaging of a real build, on a stand-in binary: no second release build in CI.
    let binary = tmp.path().join("ingestd");
    std::fs::write(&binary, b"#!/bin/sh\necho fake ingestd\n").unwrap();
    let name = dist::package_name("9.8.7", "x86_64-unknown-linux-gnu");
    let out = tmp.path().join("dist");
    let entries = dist::entries(&root, &binary);
    let (tarball, checksum) = dist::pack(&out, &name, &entries, 1_700_000_000).unwrap();
    assert_eq!(tarball, out.join("ingestd-9.8.7-x86_64-unknown-linux-gnu.tar.gz"));
    assert_eq!(checksum, out.join("ingestd-9.8.7-x86_64-unknown-linux-gnu.tar.gz.sha256"));

    let bytes = std::fs::read(&tarball).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut found: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mode = entry.header().mode().unwrap();
        assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000, "{path}");
        assert_eq!(entry.header().uid().unwrap(), 0, "{path}");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        found.insert(path, (mode, data));
    }
    let expected: Vec<String> = std::iter::once(format!("{name}/"))
        .chain(
            ["ingestd", "README.md", "LICENSE", "CHANGELOG.md", "ingestd.toml", "ingestd.service"]
                .map(|f| format!("{name}/{f}")),
        )
        .collect();
    let mut listed: Vec<&String> = found.keys().collect();
    let mut wanted: Vec<&String> = expected.iter().collect();
    listed.sort();
    wanted.sort();
    assert_eq!(listed, wanted);
    assert_eq!(found[&format!("{name}/ingestd")], (0o755, std::fs::read(&binary).unwrap()));
    for (source, archived) in dist::DIST_FILES {
        let (mode, data) = &found[&format!("{name}/{archived}")];
        assert_eq!(*mode, 0o644, "{archived}");
        assert_eq!(data, &std::fs::read(root.join(source)).unwrap(), "{archived} differs from {source}");
    }
    let license = String::from_utf8(found[&format!("{name}/LICENSE")].1.clone()).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0"), "LICENSE is not Apache-2.0");

    // `<sha256 hex>  <file name>\n`, the format `sha256sum -c` reads.
    let line = std::fs::read_to_string(&checksum).unwrap();
    assert_eq!(line, format!("{}  {name}.tar.gz\n", dist::sha256_hex(&bytes)));
    assert_eq!(dist::sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    if cfg!(target_os = "linux") {
        let check = Command::new("sha256sum").arg("-c").arg(checksum.file_name().unwrap()).current_dir(&out).output();
        let check = check.expect("sha256sum (coreutils) is needed for this check");
        assert!(check.status.success(), "sha256sum -c: {}", String::from_utf8_lossy(&check.stdout));
    }

    // The same inputs give the same bytes.
    let (again, _) = dist::pack(&tmp.path().join("again"), &name, &entries, 1_700_000_000).unwrap();
    assert_eq!(std::fs::read(again).unwrap(), bytes, "the tarball is not reproducible");
}

#[test]
fn workspace_version_and_version_syntax() {
    assert_eq!(dist::workspace_version(&root()).unwrap(), env!("CARGO_PKG_VERSION"));
    for ok in ["0.1.0", "1.22.333", "1.0.0-rc.1", "2.0.0-alpha-2"] {
        assert!(dist::valid_version(ok), "{ok}");
    }
    for bad in ["", "1.0", "1.0.0.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-a..b", "1.x.0", "1.0.0 "] {
        assert!(!dist::valid_version(bad), "{bad:?}");
    }
    assert_eq!(dist::civil_date(0), "1970-01-01");
    assert_eq!(dist::civil_date(20_454), "2026-01-01");
    assert_eq!(dist::civil_date(11_016), "2000-02-29");
}

#[test]
fn release_changelog_moves_unreleased_notes_under_the_version() {
    let before = "# Changelog\n\n## Unreleased\n\n### Features\n- b\n\n## 0.1.0 (2026-01-01)\n\n- a\n";
    let after = dist::release_changelog(before, "0.2.0", "2026-11-27").unwrap();
    assert_eq!(
        after,
        "# Changelog\n\n## Unreleased\n\n## 0.2.0 (2026-11-27)\n\n### Features\n- b\n\n## 0.1.0 (2026-01-01)\n\n- a\n"
    );
    // Nothing to release.
    assert!(dist::release_changelog(&after, "0.3.0", "2026-11-28").is_err());
    assert!(dist::release_changelog("# Changelog\n", "0.3.0", "2026-11-28").is_err());
    let only = dist::release_changelog("## Unreleased\n- x\n", "1.0.0", "d").unwrap();
    assert_eq!(only, "## Unreleased\n\n## 1.0.0 (d)\n\n- x\n");
    let manifest = "[workspace]\nmembers = []\n\n[workspace.package]\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[x]\nversion = \"5\"\n";
    assert_eq!(
        dist::bump_manifest(manifest, "0.2.0").unwrap(),
        manifest.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1)
    );
    assert!(dist::bump_manifest("[package]\nversion = \"1.0.0\"\n", "2.0.0").is_err());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(dir).output().expect("git is needed");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask release` on a clone of this repository (never on the repository itself).
#[test]
fn release_bumps_commits_and_tags_in_a_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("repo");
    let out = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(root())
        .arg(&clone)
        .output()
        .expect("git is needed");
    assert!(out.status.success(), "git clone: {}", String::from_utf8_lossy(&out.stderr));
    git(&clone, &["config", "user.name", "xtask test"]);
    git(&clone, &["config", "user.email", "xtask-test@example.invalid"]);
    let old = dist::workspace_version(&clone).unwrap();
    let head_before = git(&clone, &["rev-parse", "HEAD"]);
    let unreleased = {
        let c = std::fs::read_to_string(clone.join("CHANGELOG.md")).unwrap();
        let start = c.find("## Unreleased\n").expect("CHANGELOG.md has ## Unreleased") + "## Unreleased\n".len();
        let end = c[start..].find("\n## ").map_or(c.len(), |i| start + i);
        c[start..end].trim().to_owned()
    };

    // Refusals change nothing.
    assert!(dist::release(&clone, "1.0", "2026-11-27").is_err());
    assert!(dist::release(&clone, &old, "2026-11-27").is_err());
    std::fs::write(clone.join("README.md"), "dirty").unwrap();
    let e = dist::release(&clone, "99.0.0", "2026-11-27").unwrap_err();
    assert!(e.to_string().contains("uncommitted"), "{e}");
    git(&clone, &["checkout", "--", "README.md"]);
    git(&clone, &["tag", "v99.0.0"]);
    assert!(dist::release(&clone, "99.0.0", "2026-11-27").unwrap_err().to_string().contains("exists"));
    git(&clone, &["tag", "-d", "v99.0.0"]);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), head_before);

    dist::release(&clone, "99.0.0", "2026-11-27").unwrap();
    assert_eq!(dist::workspace_version(&clone).unwrap(), "99.0.0");
    let lock = std::fs::read_to_string(clone.join("Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"ingestd\"\nversion = \"99.0.0\"\n"), "Cargo.lock not updated");
    assert!(lock.contains("name = \"xtask\"\nversion = \"99.0.0\"\n"), "Cargo.lock not updated");
    let changelog = std::fs::read_to_string(clone.join("CHANGELOG.md")).unwrap();
    let expected_head = format!("## Unreleased\n\n## 99.0.0 (2026-11-27)\n\n{unreleased}\n");
    assert!(changelog.contains(&expected_head), "CHANGELOG.md:\n{changelog}");
    assert!(git(&clone, &["status", "--porcelain"]).trim().is_empty(), "release left changes uncommitted");
    assert_eq!(git(&clone, &["log", "-1", "--format=%s"]).trim(), "Release 99.0.0");
    assert_eq!(git(&clone, &["rev-parse", "v99.0.0^{commit}"]), git(&clone, &["rev-parse", "HEAD"]));
    assert_eq!(git(&clone, &["rev-parse", "HEAD~1"]), head_before);
    let files = git(&clone, &["show", "--name-only", "--format=", "HEAD"]);
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    assert_eq!(files, ["CHANGELOG.md", "Cargo.lock", "Cargo.toml"]);
    // Nothing left under Unreleased: a second release is refused.
    assert!(dist::release(&clone, "99.0.1", "2026-11-28").unwrap_err().to_string().contains("empty"));
}

// ------------------------------------------------------- config + systemd

#[test]
fn example_config_passes_config_check_with_and_without_the_stream_sources() {
    let path = root().join("deploy/ingestd.toml");
    let config = Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("deploy/ingestd.toml: {e}"));
    assert_eq!(config.auth.mode, ingestd::config::AuthMode::ApiKey);
    assert_eq!(config.server.bind, defaults().server.bind);
    // With the commented-out stream URLs switched on.
    let text = read("deploy/ingestd.toml");
    let enabled =
        text.replace("# url = \"nats://", "url = \"nats://").replace("# url = \"redis://", "url = \"redis://");
    assert_ne!(enabled, text, "the example config shows the stream URLs (commented out)");
    let tmp = tempfile::tempdir().unwrap();
    let with_sources = tmp.path().join("ingestd.toml");
    std::fs::write(&with_sources, enabled).unwrap();
    assert_config_passes("deploy/ingestd.toml with the stream URLs", Some(&with_sources), &[]);
}

/// `[Section]` → (key, value) in order; repeated keys stay repeated.
fn parse_unit(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "line {}: keep unit lines unwrapped", n + 1);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert!(!sections.contains_key(name), "section [{name}] twice");
            sections.insert(name.to_owned(), Vec::new());
            current = Some(name.to_owned());
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        let key = key.trim();
        assert!(!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric()), "line {}: key {key:?}", n + 1);
        let section = current.as_ref().unwrap_or_else(|| panic!("line {}: outside a section", n + 1));
        sections.get_mut(section).unwrap().push((key.to_owned(), value.trim().to_owned()));
    }
    sections
}

#[test]
fn systemd_unit_parses_is_hardened_and_matches_the_example_config() {
    let unit = parse_unit(&read("deploy/systemd/ingestd.service"));
    assert_eq!(unit.keys().collect::<Vec<_>>(), ["Install", "Service", "Unit"]);
    let service = &unit["Service"];
    let get = |key: &str| -> &str {
        let values: Vec<&str> = service.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect();
        assert_eq!(values.len(), 1, "[Service] {key}= once expected, found {values:?}");
        values[0]
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("SystemCallArchitectures", "native"),
        ("KillSignal", "SIGTERM"),
        ("RestartPreventExitStatus", "64"),
        ("Type", "exec"),
    ] {
        assert_eq!(get(key), value, "[Service] {key}");
    }
    assert!(service.iter().any(|(k, v)| k == "SystemCallFilter" && v == "@system-service"));
    // The stop timeout leaves room for the graceful drain.
    let timeout: u64 = get("TimeoutStopSec").parse().unwrap();
    let example = Config::load(Some(&root().join("deploy/ingestd.toml")), &[]).unwrap();
    assert!(
        timeout > example.server.shutdown_grace_secs && timeout > defaults().server.shutdown_grace_secs,
        "TimeoutStopSec={timeout} must exceed server.shutdown_grace_secs"
    );
    // ExecStart reads the config from ConfigurationDirectory; the SQLite
    // database lives in StateDirectory, the only writable place.
    let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
    let config_dir = format!("/etc/{}/", get("ConfigurationDirectory"));
    assert_eq!(exec[0], "/usr/local/bin/ingestd");
    let config_arg = exec.iter().position(|a| *a == "--config").map(|i| exec[i + 1]).expect("ExecStart --config");
    assert!(config_arg.starts_with(&config_dir), "{config_arg} is outside {config_dir}");
    assert_eq!(exec.last(), Some(&"serve"));
    let state_dir = format!("/var/lib/{}/", get("StateDirectory"));
    assert!(example.database.url.starts_with(&format!("sqlite://{state_dir}")), "{}", example.database.url);
    assert_eq!(format!("{}/", get("WorkingDirectory")), state_dir);
    assert_eq!(unit["Install"], [("WantedBy".to_owned(), "multi-user.target".to_owned())]);
}

// ------------------------------------------------------------------ YAML

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    assert!(files.len() >= 8, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            !docs.is_empty() && docs.iter().all(|d| d.as_hash().is_some()),
            "{}: a mapping expected",
            file.display()
        );
    }
}

// ---------------------------------------------------------- Docker + compose

/// Dockerfile instructions, continuation lines joined: (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (instr, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((instr.to_ascii_uppercase(), args.trim().to_owned()));
                pending.clear();
            }
        }
    }
    out
}

/// A JSON exec-form array (`["a", "b"]`), or a panic naming the instruction.
fn exec_form(what: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("{what} must be exec form (a JSON array, no shell): {args}"))
}

#[test]
fn dockerfile_is_multi_stage_cached_non_root_with_healthcheck_and_no_shell_wrapper() {
    let instrs = dockerfile();
    let stages: Vec<usize> = instrs.iter().enumerate().filter(|(_, (i, _))| i == "FROM").map(|(n, _)| n).collect();
    assert!(stages.len() >= 2, "multi-stage expected");
    let runtime = &instrs[*stages.last().unwrap()..];
    let build_start = instrs.iter().position(|(i, a)| i == "FROM" && a.ends_with(" AS build")).expect("a build stage");
    let build = &instrs[build_start..*stages.last().unwrap()];
    // The dependency layer comes before the sources.
    let cook = build.iter().position(|(i, a)| i == "RUN" && a.contains("cargo chef cook --release")).expect("cook");
    let copy_all = build.iter().position(|(i, a)| i == "COPY" && a == ". .").expect("COPY . .");
    let cargo_build = build.iter().position(|(i, a)| i == "RUN" && a.contains("cargo build --release")).expect("build");
    assert!(cook < copy_all && copy_all < cargo_build, "cook, then sources, then the build");
    let last = |name: &str| runtime.iter().rev().find(|(i, _)| i == name).map(|(_, a)| a.as_str());
    let user = last("USER").expect("runtime USER");
    assert!(!["0", "root", "0:0"].contains(&user), "runs as root");
    assert!(user.split(':').next().unwrap().parse::<u32>().is_ok_and(|uid| uid > 0), "numeric non-root USER");
    let entry = exec_form("ENTRYPOINT", last("ENTRYPOINT").expect("ENTRYPOINT"));
    assert_eq!(entry, ["/usr/local/bin/ingestd"]);
    assert_eq!(exec_form("CMD", last("CMD").expect("CMD")), ["serve"]);
    assert_eq!(last("STOPSIGNAL"), Some("SIGTERM"));
    assert_eq!(last("EXPOSE"), Some(default_port().to_string().as_str()));
    let health = last("HEALTHCHECK").expect("HEALTHCHECK");
    let (_, cmd) = health.split_once("CMD ").expect("HEALTHCHECK … CMD");
    assert_eq!(exec_form("HEALTHCHECK CMD", cmd), ["/usr/local/bin/ingestd", "health"]);
    assert!(runtime.iter().any(|(i, a)| i == "COPY" && a.ends_with(" /usr/local/bin/ingestd")));
    // The environment the image sets is a valid configuration.
    let env: Vec<(String, String)> = runtime
        .iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, a)| a.split_whitespace().map(|kv| kv.split_once('=').expect("ENV k=v")))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(!env.is_empty());
    Config::load(None, &env).unwrap_or_else(|e| panic!("the image's ENV: {e}"));
    // The build context keeps what the build needs.
    let ignore = read("deploy/Dockerfile.dockerignore");
    for needed in ["Cargo.toml", "Cargo.lock", "crates", "migrations", "xtask", "tests"] {
        assert!(!ignore.lines().any(|l| l.trim().trim_end_matches('/') == needed), "{needed} is ignored");
    }
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "target/ belongs out of the build context");
}

fn env_of(service: &Yaml) -> Vec<(String, String)> {
    let env = &service["environment"];
    match env {
        Yaml::Hash(h) => h.iter().map(|(k, v)| (str_of(k), str_of(v))).collect(),
        Yaml::Array(a) => a
            .iter()
            .map(|kv| {
                let kv = str_of(kv);
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Yaml::BadValue => Vec::new(),
        other => panic!("environment: {other:?}"),
    }
}

#[test]
fn compose_runs_ingestd_with_healthy_postgres_redis_and_nats() {
    let compose = one_yaml("deploy/compose.yml");
    let services = &compose["services"];
    let ingestd = &services["ingestd"];
    for name in ["postgres", "redis", "nats"] {
        assert!(services[name]["healthcheck"]["test"].as_vec().is_some(), "{name} has no healthcheck");
        assert_eq!(
            ingestd["depends_on"][name]["condition"].as_str(),
            Some("service_healthy"),
            "ingestd waits for {name} to be healthy"
        );
    }
    assert_eq!(ingestd["build"]["dockerfile"].as_str(), Some("deploy/Dockerfile"));
    let health: Vec<String> = ingestd["healthcheck"]["test"].as_vec().unwrap().iter().map(str_of).collect();
    assert_eq!(health, ["CMD", "/usr/local/bin/ingestd", "health"]);
    let ports: Vec<String> = ingestd["ports"].as_vec().unwrap().iter().map(str_of).collect();
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{}", default_port()))), "{ports:?}");
    let grace = compose_secs(ingestd["stop_grace_period"].as_str().expect("stop_grace_period"));
    assert!(grace > defaults().server.shutdown_grace_secs, "stop_grace_period {grace}s ≤ shutdown grace");

    let env = env_of(ingestd);
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{k} unset"));
    assert_eq!(var("INGESTD_RATE_LIMIT__BACKEND"), "redis");
    assert!(var("REDIS_URL").starts_with("redis://redis:"), "the Redis source and limiter use the redis service");
    assert!(var("NATS_URL").starts_with("nats://nats:"), "the NATS source uses the nats service");
    // DATABASE_URL names the postgres service with its credentials.
    let pg = env_of(&services["postgres"]);
    let pg_var = |k: &str| pg.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(
        var("DATABASE_URL"),
        format!(
            "postgres://{}:{}@postgres:5432/{}",
            pg_var("POSTGRES_USER"),
            pg_var("POSTGRES_PASSWORD"),
            pg_var("POSTGRES_DB")
        )
    );
    let nats_cmd: Vec<String> = services["nats"]["command"].as_vec().unwrap().iter().map(str_of).collect();
    assert!(nats_cmd.iter().any(|a| a == "--jetstream" || a == "-js"), "JetStream is on");
    // The database keeps its data in a declared volume.
    let volumes: Vec<String> = services["postgres"]["volumes"].as_vec().unwrap().iter().map(str_of).collect();
    let pg_volume = volumes.iter().find(|v| v.ends_with(":/var/lib/postgresql/data")).expect("a postgres data volume");
    let volume_name = pg_volume.split(':').next().unwrap();
    assert!(!compose["volumes"][volume_name].is_badvalue(), "volume {volume_name} is not declared");

    assert_config_passes("the environment compose.yml gives ingestd", None, &env);
}

#[test]
fn compose_test_file_publishes_the_ports_xtask_test_compose_uses() {
    let compose = one_yaml("deploy/compose.test.yml");
    let services = &compose["services"];
    let urls: BTreeMap<&str, &str> = crate::Compose::ENV.iter().copied().collect();
    for (name, var, container_port) in [
        ("postgres", "INGESTD_TEST_POSTGRES_URL", 5432),
        ("redis", "INGESTD_TEST_REDIS_URL", 6379),
        ("nats", "INGESTD_TEST_NATS_URL", 4222),
    ] {
        let service = &services[name];
        assert!(service["healthcheck"]["test"].as_vec().is_some(), "{name}: `up --wait` needs a healthcheck");
        let ports: Vec<String> = service["ports"].as_vec().unwrap().iter().map(str_of).collect();
        let url = urls[var];
        let host_port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
        assert!(
            ports.contains(&format!("127.0.0.1:{host_port}:{container_port}")),
            "{name}: {ports:?} does not publish {url}"
        );
    }
    let nats_cmd: Vec<String> = services["nats"]["command"].as_vec().unwrap().iter().map(str_of).collect();
    assert!(nats_cmd.iter().any(|a| a == "--jetstream"));
}

/// A compose `command` as its words: a list as it is, a string split on whitespace.
fn command_of(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::Array(a) => a.iter().map(str_of).collect(),
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::BadValue => Vec::new(),
        other => panic!("command: {other:?}"),
    }
}

/// The word after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// `depends_on` as (service, condition); the list form means `service_started`.
fn depends_on(service: &Yaml) -> Vec<(String, String)> {
    match &service["depends_on"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| (str_of(k), v["condition"].as_str().unwrap_or("service_started").to_owned()))
            .collect(),
        Yaml::Array(a) => a.iter().map(|s| (str_of(s), "service_started".to_owned())).collect(),
        Yaml::BadValue => Vec::new(),
        other => panic!("depends_on: {other:?}"),
    }
}

fn condition<'a>(deps: &'a [(String, String)], target: &str) -> Option<&'a str> {
    deps.iter().find(|(t, _)| t == target).map(|(_, c)| c.as_str())
}

/// A service's `volumes` as (source, target), short or long syntax.
fn volumes_of(service: &Yaml) -> Vec<(String, String)> {
    let Some(volumes) = service["volumes"].as_vec() else { return Vec::new() };
    volumes
        .iter()
        .map(|v| match v {
            Yaml::Hash(_) => (str_of(&v["source"]), str_of(&v["target"])),
            short => {
                let short = str_of(short);
                let mut parts = short.split(':');
                let source = parts.next().unwrap().to_owned();
                let target = parts.next().unwrap_or_else(|| panic!("volume {short:?} has no target")).to_owned();
                (source, target)
            }
        })
        .collect()
}

/// The named volume (not a bind mount) mounted at `target` in `name`.
fn named_volume_at(compose: &Yaml, name: &str, target: &str) -> String {
    let (source, _) = volumes_of(&compose["services"][name])
        .into_iter()
        .find(|(_, t)| t == target)
        .unwrap_or_else(|| panic!("{name}: no volume at {target}"));
    assert!(!source.starts_with('.') && !source.starts_with('/'), "{name}: {source} at {target} is a bind mount");
    source
}

fn env_var(env: &[(String, String)], key: &str) -> String {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{key} unset"))
}

/// nginx directives as (enclosing blocks, words), comments dropped.
fn nginx_directives(text: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let uncommented: Vec<&str> = text.lines().map(|l| l.split('#').next().unwrap()).collect();
    for c in uncommented.join("\n").chars() {
        if c.is_whitespace() || matches!(c, ';' | '{' | '}') {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(c);
        }
        match c {
            ';' => out.push((blocks.clone(), std::mem::take(&mut words))),
            '{' => blocks.push(std::mem::take(&mut words).join(" ")),
            '}' => {
                assert!(words.is_empty(), "nginx.conf: a directive without `;` before a closing brace: {words:?}");
                blocks.pop().expect("nginx.conf: a closing brace too many");
            }
            _ => {}
        }
    }
    assert!(blocks.is_empty() && words.is_empty() && word.is_empty(), "nginx.conf: unterminated {blocks:?} {words:?}");
    out
}

/// Every string scalar of a YAML tree, keys included.
fn yaml_strings(y: &Yaml, out: &mut Vec<String>) {
    match y {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(a) => a.iter().for_each(|v| yaml_strings(v, out)),
        Yaml::Hash(h) => {
            for (k, v) in h.iter() {
                yaml_strings(k, out);
                yaml_strings(v, out);
            }
        }
        _ => {}
    }
}

/// An nginx size ("16m", "512k", "1048576") in bytes.
fn nginx_bytes(s: &str) -> usize {
    let lower = s.to_ascii_lowercase();
    let (digits, unit) = [('k', 1usize << 10), ('m', 1 << 20), ('g', 1 << 30)]
        .iter()
        .find_map(|(suffix, unit)| lower.strip_suffix(*suffix).map(|d| (d, *unit)))
        .unwrap_or((lower.as_str(), 1));
    digits.parse::<usize>().unwrap_or_else(|_| panic!("nginx size {s:?}")) * unit
}

#[test]
fn compose_cluster_runs_three_ingestd_behind_a_proxy_on_clustered_brokers() {
    let path = "deploy/compose.cluster.yml";
    let compose = one_yaml(path);
    // Compose interpolates `$NAME` and `${NAME}` in every value: a shell's own `$` must be written `$$`.
    let mut strings = Vec::new();
    yaml_strings(&compose, &mut strings);
    for s in &strings {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' {
                assert!(matches!(bytes.get(i + 1), Some(b'$' | b'{')), "{path}: a lone `$` in {s:?}");
                i += 1;
            }
            i += 1;
        }
    }
    let base = one_yaml("deploy/compose.yml");
    let base_ingestd = &base["services"]["ingestd"];
    assert!(compose["name"].as_str().is_some(), "a project name of its own");
    assert_ne!(compose["name"], base["name"], "the same project name as compose.yml would share its volumes");
    let svc = &compose["services"];
    let names: Vec<String> = svc.as_hash().expect("services").keys().map(str_of).collect();
    let with_image = |prefix: &str| -> Vec<String> {
        names
            .iter()
            .filter(|n| svc[n.as_str()]["image"].as_str().is_some_and(|i| i.starts_with(prefix)))
            .cloned()
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Every dependency is a service; every named volume is declared, every bind-mounted file exists.
    for name in &names {
        let service = &svc[name.as_str()];
        for (target, _) in depends_on(service) {
            assert!(names.contains(&target), "{name} depends on {target}, which is not a service");
        }
        for (source, target) in volumes_of(service) {
            if source.starts_with('.') || source.starts_with('/') {
                assert!(root().join("deploy").join(&source).exists(), "{name}: {source} (at {target}) does not exist");
            } else {
                assert!(!compose["volumes"][source.as_str()].is_badvalue(), "{name}: volume {source} is not declared");
            }
        }
    }

    // NATS: three JetStream nodes, one cluster, every node routed to every other.
    let nats = with_image("nats:");
    assert_eq!(nats.len(), 3, "three NATS nodes expected: {nats:?}");
    let mut nats_addrs = Vec::new();
    let mut cluster_names = Vec::new();
    let mut server_names = Vec::new();
    for name in &nats {
        let node = &svc[name.as_str()];
        let args = command_of(node);
        assert!(args.iter().any(|a| a == "--jetstream" || a == "-js"), "{name}: JetStream is off");
        let arg = |flag: &str| flag_value(&args, flag).unwrap_or_else(|| panic!("{name}: no {flag}")).to_owned();
        cluster_names.push(arg("--cluster_name"));
        server_names.push(arg("--server_name"));
        let cluster_port = arg("--cluster").rsplit(':').next().unwrap().to_owned();
        let routed: Vec<String> = arg("--routes")
            .split(',')
            .map(|route| {
                let route = route.trim();
                let addr = route.strip_prefix("nats://").unwrap_or_else(|| panic!("{name}: route {route}"));
                let (host, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("{name}: route {route} has no port"));
                assert_eq!(port, cluster_port, "{name}: route {route} is not the cluster port");
                host.to_owned()
            })
            .collect();
        assert_eq!(sorted(routed), sorted(nats.clone()), "{name}: --routes must name every NATS node");
        let store = flag_value(&args, "--store_dir").or(flag_value(&args, "-sd")).expect("--store_dir");
        named_volume_at(&compose, name, store);
        assert!(node["healthcheck"]["test"].as_vec().is_some(), "{name} has no healthcheck");
        let client_port = flag_value(&args, "--port").or(flag_value(&args, "-p")).unwrap_or("4222");
        nats_addrs.push(format!("{name}:{client_port}"));
    }
    assert!(cluster_names.iter().all(|c| *c == cluster_names[0]), "one cluster name: {cluster_names:?}");
    let mut unique = server_names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), server_names.len(), "every NATS node needs its own --server_name: {server_names:?}");

    // Redis Cluster: six or more nodes, and one service that forms the cluster once.
    let redis_nodes: Vec<String> = with_image("redis:")
        .into_iter()
        .filter(|n| flag_value(&command_of(&svc[n.as_str()]), "--cluster-enabled") == Some("yes"))
        .collect();
    assert!(redis_nodes.len() >= 6, "3 masters with a replica each need 6 nodes: {redis_nodes:?}");
    let mut redis_addrs = Vec::new();
    for name in &redis_nodes {
        let node = &svc[name.as_str()];
        let args = command_of(node);
        assert_eq!(args.first().map(String::as_str), Some("redis-server"), "{name}");
        assert_eq!(flag_value(&args, "--appendonly"), Some("yes"), "{name}: no append-only file");
        assert!(flag_value(&args, "--cluster-config-file").is_some(), "{name}: --cluster-config-file");
        // nodes.conf and the append-only file: the image's working directory.
        named_volume_at(&compose, name, "/data");
        let health: Vec<String> =
            node["healthcheck"]["test"].as_vec().expect("healthcheck").iter().map(str_of).collect();
        assert!(health.iter().any(|w| w.contains("redis-cli")) && health.iter().any(|w| w.contains("ping")), "{name}");
        redis_addrs.push(format!("{name}:{}", flag_value(&args, "--port").unwrap_or("6379")));
    }
    let inits: Vec<&String> =
        names.iter().filter(|n| command_of(&svc[n.as_str()]).join(" ").contains("--cluster create")).collect();
    assert_eq!(inits.len(), 1, "one service creates the Redis Cluster: {inits:?}");
    let init_name = inits[0].clone();
    let init = &svc[init_name.as_str()];
    assert_eq!(init["restart"].as_str(), Some("no"), "{init_name} runs once");
    let script = command_of(init).join(" ");
    let create_at = script.find("--cluster create").unwrap();
    let create: Vec<&str> = script[create_at..].lines().next().unwrap().split_whitespace().collect();
    let created: Vec<String> =
        create[2..].iter().take_while(|a| !a.starts_with('-')).map(|a| (*a).to_owned()).collect();
    assert_eq!(sorted(created), sorted(redis_addrs.clone()), "the cluster is created from every Redis node");
    let replicas = create.iter().position(|a| *a == "--cluster-replicas").expect("--cluster-replicas");
    assert_eq!(create.get(replicas + 1), Some(&"1"), "one replica per master");
    assert!(create.contains(&"--cluster-yes"), "nobody answers the prompt in a container");
    assert!(
        script[..create_at].lines().any(|l| l.trim_start().starts_with("if ") && l.contains("cluster_state:ok")),
        "{init_name}: a formed cluster must be detected before creating one (a second `up`)"
    );
    let init_deps = depends_on(init);
    for node in &redis_nodes {
        assert_eq!(condition(&init_deps, node), Some("service_healthy"), "{init_name} waits for {node}");
    }

    // ingestd: three replicas of compose.yml's service.
    let postgres = with_image("postgres:");
    assert_eq!(postgres.len(), 1, "{postgres:?}");
    let pg = env_of(&svc[postgres[0].as_str()]);
    named_volume_at(&compose, &postgres[0], "/var/lib/postgresql/data");
    let ingestd = with_image(base_ingestd["image"].as_str().unwrap());
    assert_eq!(ingestd.len(), 3, "three ingestd replicas expected: {ingestd:?}");
    let mut envs = Vec::new();
    for name in &ingestd {
        let node = &svc[name.as_str()];
        assert_eq!(node["build"], base_ingestd["build"], "{name}: not compose.yml's build");
        assert_eq!(node["healthcheck"]["test"], base_ingestd["healthcheck"]["test"], "{name}: healthcheck");
        assert!(node["ports"].is_badvalue(), "{name}: only the proxy publishes a port");
        let env = env_of(node);
        assert_config_passes(&format!("the environment compose.cluster.yml gives {name}"), None, &env);
        let config = Config::load(None, &env).unwrap();
        let grace = compose_secs(node["stop_grace_period"].as_str().expect("stop_grace_period"));
        assert!(
            grace > config.server.shutdown_grace_secs && grace > defaults().server.shutdown_grace_secs,
            "{name}: stop_grace_period {grace}s ≤ shutdown grace"
        );
        assert_eq!(config.rate_limit.backend, ingestd::config::RateLimitBackend::Redis, "{name}");
        assert_eq!(config.log.format, ingestd::config::LogFormat::Json, "{name}");
        assert_eq!(config.nats.stream_replicas, nats.len(), "{name}: the stream is replicated on every NATS node");
        assert!(config.redis.consumer.name.is_empty(), "{name}: replicas sharing a Redis consumer name");
        assert_eq!(
            env_var(&env, "DATABASE_URL"),
            format!(
                "postgres://{}:{}@{}:5432/{}",
                env_var(&pg, "POSTGRES_USER"),
                env_var(&pg, "POSTGRES_PASSWORD"),
                postgres[0],
                env_var(&pg, "POSTGRES_DB")
            ),
            "{name}"
        );
        // Seeds: the first host, then every `node=`.
        let url = &config.redis.url;
        let rest = url
            .strip_prefix("redis-cluster://")
            .unwrap_or_else(|| panic!("{name}: REDIS_URL {url} is not redis-cluster://"));
        let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut seeds = vec![first.trim_end_matches('/').rsplit('@').next().unwrap().to_owned()];
        seeds.extend(query.split('&').filter_map(|kv| kv.strip_prefix("node=")).map(str::to_owned));
        assert!(
            seeds.len() >= 2,
            "{name}: with one seed node alone, ingestd cannot find the cluster while that node is down: {seeds:?}"
        );
        for seed in &seeds {
            assert!(
                redis_addrs.contains(seed),
                "{name}: seed {seed} is none of the Redis Cluster nodes {redis_addrs:?}"
            );
        }
        let servers: Vec<String> = config
            .nats
            .url
            .split(',')
            .map(|u| {
                let addr = u.trim().strip_prefix("nats://").unwrap_or_else(|| panic!("{name}: NATS_URL {u}"));
                addr.rsplit('@').next().unwrap().to_owned()
            })
            .collect();
        assert_eq!(sorted(servers), sorted(nats_addrs.clone()), "{name}: NATS_URL must list every NATS node");
        let deps = depends_on(node);
        assert_eq!(condition(&deps, &postgres[0]), Some("service_healthy"), "{name} waits for PostgreSQL");
        assert_eq!(
            condition(&deps, &init_name),
            Some("service_completed_successfully"),
            "{name} starts once the Redis Cluster is formed"
        );
        for n in &nats {
            assert_eq!(condition(&deps, n), Some("service_healthy"), "{name} waits for {n}");
        }
        envs.push(sorted_env(env));
    }
    assert!(envs.iter().all(|e| *e == envs[0]), "the replicas' environments differ");

    // The proxy: the only published port, nginx in front of the three replicas.
    let published: Vec<&String> = names.iter().filter(|n| svc[n.as_str()]["ports"].as_vec().is_some()).collect();
    assert_eq!(published.len(), 1, "only the proxy publishes ports: {published:?}");
    let proxy_name = published[0].clone();
    let proxy = &svc[proxy_name.as_str()];
    assert!(proxy["image"].as_str().is_some_and(|i| i.starts_with("nginx:")), "{proxy_name}: nginx expected");
    assert!(proxy["healthcheck"]["test"].as_vec().is_some(), "{proxy_name} has no healthcheck");
    let proxy_deps = depends_on(proxy);
    for name in &ingestd {
        assert!(condition(&proxy_deps, name).is_some(), "{proxy_name} starts without {name}");
    }
    let (conf_source, _) = volumes_of(proxy)
        .into_iter()
        .find(|(_, t)| t == "/etc/nginx/nginx.conf")
        .expect("the proxy mounts its nginx.conf");
    let conf_path = root().join("deploy").join(&conf_source);
    let conf = std::fs::read_to_string(&conf_path).unwrap_or_else(|e| panic!("{}: {e}", conf_path.display()));
    let directives = nginx_directives(&conf);
    let all = |name: &str| -> Vec<(Vec<String>, Vec<String>)> {
        directives.iter().filter(|(_, w)| w.first().is_some_and(|d| d == name)).cloned().collect()
    };
    let one = |name: &str| -> Vec<String> {
        let found = all(name);
        assert_eq!(found.len(), 1, "nginx.conf: one {name} expected, found {found:?}");
        found[0].1[1..].to_vec()
    };
    let pass = one("proxy_pass");
    let upstream = pass[0].strip_prefix("http://").expect("proxy_pass http://…");
    let members: Vec<(String, String)> = all("server")
        .into_iter()
        .filter(|(blocks, _)| blocks.last().is_some_and(|b| *b == format!("upstream {upstream}")))
        .map(|(_, words)| {
            let (host, port) = words[1].rsplit_once(':').unwrap_or_else(|| panic!("upstream server {words:?}"));
            (host.to_owned(), port.to_owned())
        })
        .collect();
    let hosts: Vec<String> = members.iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(sorted(hosts), sorted(ingestd.clone()), "the upstream {upstream} must be the ingestd replicas");
    for (host, port) in &members {
        assert_eq!(*port, default_port().to_string(), "upstream {host}: not ingestd's port");
    }
    let retry = one("proxy_next_upstream");
    for when in ["error", "timeout", "http_502", "http_503"] {
        assert!(retry.iter().any(|w| w == when), "proxy_next_upstream lacks {when}: {retry:?}");
    }
    let body_limit = nginx_bytes(&one("client_max_body_size")[0]);
    assert!(
        body_limit == 0 || body_limit >= defaults().server.max_body_bytes,
        "client_max_body_size {body_limit} refuses bodies ingestd accepts"
    );
    let read_timeout = all("proxy_read_timeout").first().map_or(60, |(_, w)| compose_secs(&w[1]));
    assert!(read_timeout > defaults().server.request_timeout_secs, "nginx times out before ingestd answers");
    let listen = one("listen");
    let listen_port = listen[0].rsplit(':').next().unwrap();
    let ports: Vec<String> = proxy["ports"].as_vec().unwrap().iter().map(str_of).collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{listen_port}"))),
        "{ports:?} does not reach listen {listen_port}"
    );
}

fn sorted_env(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.sort();
    env
}

// ------------------------------------------------------------ Kubernetes

fn by_kind(docs: &[(String, Yaml)], kind: &str) -> Yaml {
    docs.iter()
        .find(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn k8s_manifests_match_the_config_defaults() {
    let kustomization = one_yaml("deploy/k8s/kustomization.yaml");
    let resources: Vec<String> = kustomization["resources"].as_vec().unwrap().iter().map(str_of).collect();
    let docs: Vec<(String, Yaml)> = resources
        .iter()
        .flat_map(|r| yaml(&format!("deploy/k8s/{r}")).into_iter().map(move |d| (r.clone(), d)))
        .collect();
    for (file, doc) in &docs {
        assert!(doc["apiVersion"].as_str().is_some() && doc["kind"].as_str().is_some(), "{file}");
        assert!(doc["metadata"]["name"].as_str().is_some(), "{file}: metadata.name");
    }
    let deployment = by_kind(&docs, "Deployment");
    let service = by_kind(&docs, "Service");
    let pdb = by_kind(&docs, "PodDisruptionBudget");
    let configmap = by_kind(&docs, "ConfigMap");
    let secret = one_yaml("deploy/k8s/secret.example.yaml");
    assert_eq!(secret["kind"].as_str(), Some("Secret"));
    assert!(!resources.iter().any(|r| r.contains("secret")), "the Secret is a template, not applied as is");

    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_hash().unwrap();
    for (what, selector) in [
        ("Deployment", &deployment["spec"]["selector"]["matchLabels"]),
        ("Service", &service["spec"]["selector"]),
        ("PodDisruptionBudget", &pdb["spec"]["selector"]["matchLabels"]),
    ] {
        for (k, v) in selector.as_hash().unwrap_or_else(|| panic!("{what} selector")) {
            assert_eq!(labels.get(k), Some(v), "{what} selects {k:?}={v:?}, which the pod lacks");
        }
    }
    let containers = pod["spec"]["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let ports = c["ports"].as_vec().unwrap();
    let http = ports.iter().find(|p| p["name"].as_str() == Some("http")).expect("a port named http");
    assert_eq!(http["containerPort"].as_i64(), Some(default_port()));
    assert_eq!(service["spec"]["ports"][0]["targetPort"].as_str(), Some("http"));
    for (probe, path) in
        [("livenessProbe", "/health"), ("readinessProbe", "/health/ready"), ("startupProbe", "/health")]
    {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("http"), "{probe}");
    }
    for resource in ["cpu", "memory"] {
        assert!(!c["resources"]["requests"][resource].is_badvalue(), "resources.requests.{resource}");
    }
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let uid = pod["spec"]["securityContext"]["runAsUser"].as_i64().unwrap();
    let image_user = dockerfile().into_iter().rev().find(|(i, _)| i == "USER").unwrap().1;
    assert_eq!(image_user.split(':').next().unwrap(), uid.to_string(), "the image's USER");

    // The config file: mounted where --config points, valid, and its grace
    // (plus the preStop pause) ends before the kubelet's SIGKILL.
    let args: Vec<String> = c["args"].as_vec().unwrap().iter().map(str_of).collect();
    let config_path = &args[args.iter().position(|a| a == "--config").expect("--config") + 1];
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("--config lies in a volume mount");
    let volume = pod["spec"]["volumes"].as_vec().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["configMap"]["name"].as_str(), configmap["metadata"]["name"].as_str());
    let key = Path::new(config_path).file_name().unwrap().to_str().unwrap();
    let config_text = configmap["data"][key].as_str().unwrap_or_else(|| panic!("ConfigMap has no {key}"));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(key);
    std::fs::write(&file, config_text).unwrap();
    // Its values; validity is checked below with the Secret's variables (backend = "redis" needs REDIS_URL).
    let config: Config = toml::from_str(config_text).unwrap_or_else(|e| panic!("the ConfigMap's {key}: {e}"));
    assert_eq!(config.server.bind.rsplit(':').next().unwrap(), default_port().to_string());
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().unwrap_or(0);
    let drain = i64::try_from(config.server.shutdown_grace_secs).unwrap();
    assert!(grace > pre_stop + drain, "terminationGracePeriodSeconds {grace} ≤ preStop {pre_stop} + grace {drain}");
    assert!(grace > i64::try_from(defaults().server.shutdown_grace_secs).unwrap());

    // With the Secret's variables, as the pod sees them.
    assert_eq!(c["envFrom"][0]["secretRef"]["name"].as_str(), secret["metadata"]["name"].as_str());
    let env: Vec<(String, String)> =
        secret["stringData"].as_hash().unwrap().iter().map(|(k, v)| (str_of(k), str_of(v))).collect();
    assert!(env.iter().any(|(k, _)| k == "DATABASE_URL"));
    assert_config_passes("the ConfigMap with the Secret template's variables", Some(&file), &env);
}

//! `cargo xtask dist`: the release tarball, and `cargo xtask release
//! <version>`: version bump, CHANGELOG, commit and tag (nothing is published).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// The files of the tarball besides the binary: (path in the repository, name in the archive).
pub const DIST_FILES: &[(&str, &str)] = &[
    ("README.md", "README.md"),
    ("LICENSE", "LICENSE"),
    ("CHANGELOG.md", "CHANGELOG.md"),
    ("deploy/ingestd.toml", "ingestd.toml"),
    ("deploy/systemd/ingestd.service", "ingestd.service"),
];

/// One file of the archive.
pub struct Entry {
    pub source: PathBuf,
    pub name: String,
    pub executable: bool,
}

/// The entries for `binary` plus [`DIST_FILES`] from `root`.
pub fn entries(root: &Path, binary: &Path) -> Vec<Entry> {
    let mut entries = vec![Entry { source: binary.to_path_buf(), name: "ingestd".into(), executable: true }];
    entries.extend(DIST_FILES.iter().map(|(path, name)| Entry {
        source: root.join(path),
        name: (*name).to_owned(),
        executable: false,
    }));
    entries
}

/// `ingestd-<version>-<target>`: the archive's name and its top directory.
pub fn package_name(version: &str, target: &str) -> String {
    format!("ingestd-{version}-{target}")
}

/// Writes `<out_dir>/<name>.tar.gz` (every entry under `<name>/`, owner
/// root, mode 0755 or 0644, modification time `mtime`, so the same inputs
/// give the same bytes) and `<name>.tar.gz.sha256` in the `sha256sum` format.
/// Returns both paths.
pub fn pack(out_dir: &Path, name: &str, entries: &[Entry], mtime: u64) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let tarball = out_dir.join(format!("{name}.tar.gz"));
    let file = File::create(&tarball).with_context(|| format!("create {}", tarball.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    let mut dir = header(0o755, mtime, 0);
    dir.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut dir, format!("{name}/"), std::io::empty()).context("add the top directory")?;
    for entry in entries {
        let data = std::fs::read(&entry.source).with_context(|| format!("read {}", entry.source.display()))?;
        let mut h = header(if entry.executable { 0o755 } else { 0o644 }, mtime, data.len() as u64);
        tar.append_data(&mut h, format!("{name}/{}", entry.name), data.as_slice())
            .with_context(|| format!("add {}", entry.name))?;
    }
    tar.into_inner().context("finish the tar stream")?.finish().context("finish the gzip stream")?.sync_all()?;

    let digest = sha256_hex(&std::fs::read(&tarball)?);
    let checksum = out_dir.join(format!("{name}.tar.gz.sha256"));
    let file_name = tarball.file_name().and_then(|n| n.to_str()).context("tarball name")?;
    std::fs::write(&checksum, format!("{digest}  {file_name}\n"))
        .with_context(|| format!("write {}", checksum.display()))?;
    Ok((tarball, checksum))
}

fn header(mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    // Names are informational; extracting as a user gives the files to that user.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// `cargo xtask dist`: a stripped release build of `ingestd` for the host,
/// packed into `<target dir>/dist/`.
pub fn dist(root: &Path) -> Result<()> {
    let version = workspace_version(root)?;
    let target = host_target()?;
    // Strip at link time; the same release profile otherwise (one build cache).
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "ingestd"])
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .status()
        .context("run cargo build")?;
    ensure!(status.success(), "cargo build --release -p ingestd failed");
    let target_dir = target_dir(root)?;
    let binary = target_dir.join("release").join(format!("ingestd{}", std::env::consts::EXE_SUFFIX));
    let out = Command::new(&binary).arg("--version").output().context("run ingestd --version")?;
    let shown = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(shown.starts_with(&format!("ingestd {version} (")), "`ingestd --version` says {shown:?}, not {version}");
    let name = package_name(&version, &target);
    let (tarball, checksum) = pack(&target_dir.join("dist"), &name, &entries(root, &binary), commit_time(root))?;
    println!("{shown}\n{}\n{}", tarball.display(), checksum.display());
    Ok(())
}

/// `[workspace.package] version` of `root/Cargo.toml`.
pub fn workspace_version(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).context("read Cargo.toml")?;
    let manifest: toml::Table = text.parse().context("parse Cargo.toml")?;
    manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("Cargo.toml has no [workspace.package] version")
}

fn host_target() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .context("rustc -vV names no host")
}

pub(crate) fn target_dir(root: &Path) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("run cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse cargo metadata")?;
    meta["target_directory"].as_str().map(PathBuf::from).context("cargo metadata has no target_directory")
}

/// The time of HEAD's commit (reproducible archives), or now outside git.
fn commit_time(root: &Path) -> u64 {
    git_output(root, &["log", "-1", "--format=%ct"]).ok().and_then(|t| t.trim().parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    })
}

fn git_output(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").args(args).current_dir(root).output().context("run git")?;
    ensure!(out.status.success(), "git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git(root: &Path, args: &[&str]) -> Result<()> {
    git_output(root, args).map(drop)
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre.release` part.
pub fn valid_version(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n.len() == 1 || !n.starts_with('0')))
        && pre.is_none_or(|p| {
            !p.is_empty()
                && p.split('.').all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

/// `cargo xtask release <version>` in the repository at `root`: bumps
/// `[workspace.package] version` (and the workspace's entries in
/// Cargo.lock), moves the `## Unreleased` notes under `## <version> (<date>)`,
/// commits and tags `v<version>`. Refuses a dirty tree, an existing tag and
/// an empty `## Unreleased`. Publishes nothing.
pub fn release(root: &Path, version: &str, date: &str) -> Result<()> {
    ensure!(valid_version(version), "{version:?} is not a version such as 1.2.3 or 1.2.3-rc.1");
    let dirty = git_output(root, &["status", "--porcelain"])?;
    ensure!(dirty.trim().is_empty(), "the working tree has uncommitted changes:\n{dirty}");
    let tag = format!("v{version}");
    ensure!(git_output(root, &["tag", "--list", &tag])?.trim().is_empty(), "tag {tag} exists already");
    let old = workspace_version(root)?;
    ensure!(old != version, "the workspace version is {version} already");

    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)?;
    std::fs::write(&manifest_path, bump_manifest(&manifest, version)?)?;
    let changelog_path = root.join("CHANGELOG.md");
    let changelog = std::fs::read_to_string(&changelog_path).context("read CHANGELOG.md")?;
    std::fs::write(&changelog_path, release_changelog(&changelog, version, date)?)?;
    // The workspace members' entries in Cargo.lock follow the new version.
    let status = Command::new("cargo")
        .args(["update", "--workspace", "--offline"])
        .current_dir(root)
        .status()
        .context("run cargo update --workspace")?;
    ensure!(status.success(), "cargo update --workspace failed");

    git(root, &["add", "Cargo.toml", "Cargo.lock", "CHANGELOG.md"])?;
    git(root, &["commit", "-q", "-m", &format!("Release {version}")])?;
    git(root, &["tag", "-a", &tag, "-m", &format!("ingestd {version}")])?;
    println!("released {old} → {version}: commit and tag {tag} created; push them when ready");
    Ok(())
}

/// Replaces the `version = "…"` line of the `[workspace.package]` table.
pub fn bump_manifest(manifest: &str, version: &str) -> Result<String> {
    let mut section = "";
    let mut done = false;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed;
        }
        if !done && section == "[workspace.package]" && trimmed.starts_with("version") && trimmed.contains('=') {
            out.push_str(&format!("version = \"{version}\"\n"));
            done = true;
        } else {
            out.push_str(line);
        }
    }
    ensure!(done, "Cargo.toml has no version in [workspace.package]");
    Ok(out)
}

/// `## Unreleased` keeps its heading, now empty; its notes move under `## <version> (<date>)`.
pub fn release_changelog(changelog: &str, version: &str, date: &str) -> Result<String> {
    let heading = "## Unreleased\n";
    let Some(start) = changelog.find(heading) else { bail!("CHANGELOG.md has no \"## Unreleased\" section") };
    let body_start = start + heading.len();
    let body_end = changelog[body_start..].find("\n## ").map_or(changelog.len(), |i| body_start + i + 1);
    let notes = changelog[body_start..body_end].trim();
    ensure!(!notes.is_empty(), "\"## Unreleased\" in CHANGELOG.md is empty: nothing to release");
    Ok(format!(
        "{}{heading}\n## {version} ({date})\n\n{notes}\n{}{}",
        &changelog[..start],
        if body_end < changelog.len() { "\n" } else { "" },
        &changelog[body_end..]
    ))
}

/// Today in UTC as YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    civil_date((secs / 86_400) as i64)
}

/// Days since 1970-01-01 → YYYY-MM-DD (the proleptic Gregorian calendar).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

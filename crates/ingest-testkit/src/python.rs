//! A Python with the OpenTelemetry SDK and its OTLP/HTTP exporter, for the
//! tests that export spans to ingestd the way instrumented applications do.
//!
//! Installed from PyPI into a venv under `target/tools/` on first use (under
//! a file lock: nextest runs each test in its own process), like
//! `cargo xtask api-fuzz` installs schemathesis. `INGESTD_TEST_OTEL_PYTHON`
//! names an interpreter that already has the packages. A machine without
//! `python3 -m venv` or without PyPI fails the test with a message naming
//! what is missing; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SDK and exporter version installed (they are released together).
pub const OTEL_PYTHON_SDK: &str = "1.45.2";
pub const OTEL_PYTHON_ENV: &str = "INGESTD_TEST_OTEL_PYTHON";

/// The interpreter to run export scripts with.
pub fn otel_python() -> PathBuf {
    if let Ok(python) = std::env::var(OTEL_PYTHON_ENV) {
        return python.into();
    }
    let dir = target_dir().join("tools").join(format!("otel-python-{OTEL_PYTHON_SDK}"));
    let python = dir.join("bin").join("python");
    let ready = dir.join(".installed");
    if ready.exists() {
        return python;
    }
    std::fs::create_dir_all(dir.parent().unwrap()).expect("create target/tools");
    let lock = std::fs::File::create(dir.with_extension("lock")).expect("create the venv's lock file");
    lock.lock().expect("lock the venv's lock file");
    if ready.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let venv = Command::new("python3").arg("-m").arg("venv").arg(&dir).status();
    assert!(
        venv.is_ok_and(|s| s.success()),
        "the OTLP tests need python3 with venv to install the OpenTelemetry SDK \
         (Debian/Ubuntu: apt-get install python3-venv), or {OTEL_PYTHON_ENV} naming a python that has \
         opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http {OTEL_PYTHON_SDK}"
    );
    let pip = Command::new(dir.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("opentelemetry-sdk=={OTEL_PYTHON_SDK}"))
        .arg(format!("opentelemetry-exporter-otlp-proto-http=={OTEL_PYTHON_SDK}"))
        .status();
    if !pip.is_ok_and(|s| s.success()) {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("`pip install opentelemetry-sdk=={OTEL_PYTHON_SDK} …` failed (PyPI must be reachable)");
    }
    std::fs::write(&ready, OTEL_PYTHON_SDK).expect("mark the venv installed");
    python
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => dir.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

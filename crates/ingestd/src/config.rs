//! The service configuration (SPEC §7): built-in defaults ← `ingestd.toml`
//! (or `--config FILE`) ← environment. This is the only place that reads
//! files or the environment; each crate owns the plain struct of its section.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use broker::RetryConfig;
pub use ingest_http::HttpConfig;
pub use ingest_nats::NatsConfig;
pub use ingest_redis::RedisConsumerConfig;
pub use model::ValidationConfig;
pub use ratelimit::{FailMode, PolicyConfig, PolicyProblem, RateLimitBackend, RateLimitConfig};
pub use storage::{DatabaseConfig, WriterConfig};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: HttpConfig,
    pub database: DatabaseConfig,
    pub writer: WriterConfig,
    pub validation: ValidationConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub retry: RetryConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every `/v1/…` and `/admin/…` request presents an API key (SPEC §3).
    #[default]
    ApiKey,
    /// No authentication (local development); logged as a warning at every start.
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `REDIS_URL`; used by the Redis Streams source and the Redis rate limiter.
    pub url: String,
    pub consumer: RedisConsumerConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Invalid configuration: names the key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The environment variable naming the configuration file (as `-c` does).
pub const CONFIG_ENV: &str = "INGESTD_CONFIG";

/// Environment names of the original design, and where they land; the
/// `INGESTD_…` name of the same setting wins over them.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("BIND_ADDR", "server.bind"),
    ("NATS_URL", "nats.url"),
    ("NATS_SUBJECT", "nats.subject"),
    ("REDIS_URL", "redis.url"),
    ("REDIS_STREAM_KEY", "redis.consumer.stream_key"),
];

impl Config {
    /// Loads defaults ← `file` (or `ingestd.toml` when present) ← the environment `env`.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None if Path::new("ingestd.toml").exists() => figment = figment.merge(Toml::file("ingestd.toml")),
            None => {}
        }
        // Environment pairs are passed in (tests pass their own); each is
        // merged at its key, remembering the variable for error messages.
        // The original design's names first, then `INGESTD_…`, so that a
        // prefixed name wins over its legacy one whatever the order of the
        // process environment.
        let mut origins: Vec<(String, String)> = Vec::new();
        let legacy = env.iter().filter_map(|(name, value)| {
            let (_, key) = LEGACY_ENV.iter().find(|(legacy, _)| legacy == name)?;
            Some((name, (*key).to_owned(), figment::value::Value::from(value.clone())))
        });
        let prefixed = env.iter().filter_map(|(name, value)| {
            // `INGESTD_TEST_*` belongs to the test suite (service URLs),
            // `INGESTD_CONFIG` names the file (`-c`): neither is a setting.
            if name.starts_with("INGESTD_TEST_") || name == CONFIG_ENV {
                return None;
            }
            let rest = name.strip_prefix("INGESTD_")?;
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let value = match TEXT_SETTINGS.contains(&key.as_str()) {
                true => figment::value::Value::from(value.clone()),
                false => parse_env_value(value),
            };
            Some((name, key, value))
        });
        for (name, key, parsed) in legacy.chain(prefixed) {
            figment = figment.merge(Serialized::global(&key, parsed));
            origins.push((key, name.clone()));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(e, &origins)))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads from the process environment.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load(file, &env)
    }

    /// Rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        /// Ten years: far beyond any clock skew, far below the end of time.
        const MAX_FUTURE_SKEW_SECS: u64 = 315_576_000;
        let err = |key: &str, msg: String| Err(ConfigError(format!("invalid configuration: {key}: {msg}")));
        if self.server.bind.parse::<SocketAddr>().is_err() {
            return err("server.bind", format!("{:?} is not an address such as \"0.0.0.0:8080\"", self.server.bind));
        }
        if self.server.max_batch_size == 0 {
            return err("server.max_batch_size", "must be at least 1".into());
        }
        if self.server.max_body_bytes < 1024 {
            return err("server.max_body_bytes", "must be at least 1024".into());
        }
        // Durations are added to clock readings; one that cannot be added
        // (or a zero that times out everything) cannot work.
        const DAY: u64 = 86_400;
        for (key, secs, max) in [
            ("server.request_timeout_secs", self.server.request_timeout_secs, DAY),
            ("server.shutdown_grace_secs", self.server.shutdown_grace_secs, DAY),
            ("server.header_read_timeout_secs", self.server.header_read_timeout_secs, 3_600),
        ] {
            if secs == 0 || secs > max {
                return err(key, format!("must be between 1 and {max} seconds, found {secs}"));
            }
        }
        for (key, ms, max) in [
            ("writer.linger_ms", self.writer.linger_ms, 60_000),
            ("database.busy_timeout_ms", self.database.busy_timeout_ms, 3_600_000),
        ] {
            if ms > max {
                return err(key, format!("must be at most {max} ms, found {ms}"));
            }
        }
        if self.server.max_concurrent_requests == 0 {
            return err("server.max_concurrent_requests", "must be at least 1".into());
        }
        if self.validation.max_future_skew_secs > MAX_FUTURE_SKEW_SECS {
            return err(
                "validation.max_future_skew_secs",
                format!(
                    "must be at most {MAX_FUTURE_SKEW_SECS} (10 years), found {}",
                    self.validation.max_future_skew_secs
                ),
            );
        }
        for origin in &self.server.cors_origins {
            if !valid_origin(origin) {
                return err("server.cors_origins", format!("{origin:?} is not a valid origin"));
            }
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return err("database.url", format!("{:?} must start with sqlite: or postgres://", mask_url(url)));
        }
        if self.writer.queue_capacity == 0 || self.writer.max_batch_rows == 0 {
            return err("writer", "queue_capacity and max_batch_rows must be at least 1".into());
        }
        if let Err(problem) = self.rate_limit.default.policy() {
            return err("rate_limit.default", problem.to_string());
        }
        if let Err(e) = self.rate_limit.org_policies() {
            return Err(ConfigError(format!("invalid configuration: rate_limit.{e}")));
        }
        if self.rate_limit.enabled && self.rate_limit.backend == RateLimitBackend::Redis && self.redis.url.is_empty() {
            return err("rate_limit.backend", "\"redis\" needs redis.url (REDIS_URL)".into());
        }
        if self.rate_limit.redis_timeout_ms == 0 {
            return err("rate_limit.redis_timeout_ms", "must be at least 1".into());
        }
        if self.nats.enabled() {
            self.nats.validate().map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
        }
        self.retry.validate().map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
        if !self.redis.url.is_empty() {
            if !REDIS_SCHEMES.iter().any(|scheme| self.redis.url.starts_with(scheme)) {
                return err(
                    "redis.url",
                    format!(
                        "{:?} must start with redis:// or rediss:// (one server), or redis-cluster:// or \
                         rediss-cluster:// (a Redis Cluster: first node, then ?node=host:port&node=…)",
                        mask_url(&self.redis.url)
                    ),
                );
            }
            if self.redis.consumer.enabled {
                self.redis.consumer.validate().map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with passwords in URLs and the
    /// NATS token, password and NKey seed masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.database.url = mask_url(&masked.database.url);
        masked.nats.url = mask_url(&masked.nats.url);
        for secret in [&mut masked.nats.token, &mut masked.nats.password, &mut masked.nats.nkey_seed] {
            if secret.is_some() {
                *secret = Some("***".to_owned());
            }
        }
        masked.redis.url = mask_url(&masked.redis.url);
        if masked.rate_limit.default.is_empty() {
            masked.rate_limit.default.per_minute = Some(ratelimit::DEFAULT_PER_MINUTE);
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn valid_origin(origin: &str) -> bool {
    (origin.starts_with("http://") || origin.starts_with("https://")) && origin.bytes().all(|b| b.is_ascii_graphic())
}

/// What `redis.url` may start with: one server (`redis`, `rediss` for TLS) or
/// a Redis Cluster (fred's `redis-cluster://first:port?node=host:port&…`).
const REDIS_SCHEMES: &[&str] = &["redis://", "rediss://", "redis-cluster://", "rediss-cluster://"];

/// Settings an environment variable gives as text whatever it looks like: a
/// password of digits is not a number.
const TEXT_SETTINGS: &[&str] = &["nats.token", "nats.user", "nats.password", "nats.nkey_seed"];

/// Settings whose value an error message never shows.
const SECRET_SETTINGS: &[&str] = &["nats.token", "nats.password", "nats.nkey_seed"];

/// An environment value as TOML would read it (`10`, `true`, `["a"]`), else the string itself.
fn parse_env_value(value: &str) -> figment::value::Value {
    value.parse().unwrap_or_else(|_| figment::value::Value::from(value.to_owned()))
}

/// `invalid configuration: server.max_batch_size (INGESTD_SERVER__MAX_BATCH_SIZE): invalid type: …`
fn describe(e: figment::Error, origins: &[(String, String)]) -> String {
    let mut key = e.path.join(".");
    if let figment::error::Kind::UnknownField(field, _) = &e.kind
        && e.path.last() != Some(field)
    {
        key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
    }
    let mut out = String::from("invalid configuration: ");
    if !key.is_empty() {
        out.push_str(&key);
        if let Some((_, var)) = origins.iter().rev().find(|(k, _)| *k == key) {
            out.push_str(&format!(" (environment variable {var})"));
        } else if let Some(source) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            out.push_str(&format!(" (in {source})"));
        }
        out.push_str(": ");
    }
    match &e.kind {
        figment::error::Kind::UnknownField(field, _) => out.push_str(&format!("unknown setting `{field}`")),
        figment::error::Kind::InvalidType(_, expected) if SECRET_SETTINGS.contains(&key.as_str()) => {
            out.push_str(&format!("invalid type: expected {expected} (the value is a secret: not shown)"));
        }
        kind => out.push_str(&kind.to_string()),
    }
    out
}

pub use model::mask_url;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratelimit::Policy;

    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(None, &env)
    }

    #[test]
    fn nats_secrets_from_the_environment_are_text_and_never_shown() {
        let c = load(&[("INGESTD_NATS__USER", "1234"), ("INGESTD_NATS__PASSWORD", "12345678")]).unwrap();
        assert_eq!((c.nats.user.as_deref(), c.nats.password.as_deref()), (Some("1234"), Some("12345678")));
        let c = load(&[("INGESTD_NATS__TOKEN", "true")]).unwrap();
        assert_eq!(c.nats.token.as_deref(), Some("true"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ingestd.toml");
        std::fs::write(&file, "[nats]\npassword = 987654321\n").unwrap();
        let e = Config::load(Some(&file), &[]).unwrap_err().to_string();
        assert!(e.contains("nats.password") && !e.contains("987654321"), "{e}");
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = load(&[]).unwrap();
        assert_eq!(c.server.bind, "0.0.0.0:8080");
        assert_eq!(c.server.max_body_bytes, 10_485_760);
        assert_eq!(c.server.max_batch_size, 1000);
        assert_eq!(c.database.url, "sqlite://cost-ops.db?mode=rwc");
        assert_eq!(c.writer, WriterConfig { queue_capacity: 10_000, max_batch_rows: 5_000, linger_ms: 0 });
        assert_eq!(c.validation.max_future_skew_secs, 300);
        assert_eq!(c.nats.subject, "llm.usage");
        assert_eq!(c.redis.consumer.max_deliveries, 5);
        assert!(c.rate_limit.enabled);
        assert_eq!(c.rate_limit.default.policy().unwrap(), Policy::per_minute(60_000).unwrap());
        assert!(c.to_masked_toml().contains("per_minute = 60000"));
    }

    #[test]
    fn rate_limit_policies_from_file_and_environment() {
        let c = load(&[
            ("INGESTD_RATE_LIMIT__DEFAULT__PER_HOUR", "3600"),
            ("INGESTD_RATE_LIMIT__ORGS__ACME__MAX_REQUESTS", "10"),
            ("INGESTD_RATE_LIMIT__ORGS__ACME__WINDOW_SECS", "1"),
            ("INGESTD_RATE_LIMIT__ORGS__ACME__BURST_SIZE", "5"),
            ("INGESTD_RATE_LIMIT__FAIL_MODE", "closed"),
        ])
        .unwrap();
        assert_eq!(c.rate_limit.default.policy().unwrap(), Policy::per_hour(3600).unwrap());
        let acme = c.rate_limit.orgs["acme"].policy().unwrap();
        assert_eq!(acme, Policy::new(10, Duration::from_secs(1), 5).unwrap());
        assert_eq!(acme.capacity(), 15);
        assert_eq!(c.rate_limit.fail_mode, FailMode::Closed);
    }

    #[test]
    fn nats_url_enables_the_nats_source() {
        assert!(!load(&[]).unwrap().nats.enabled());
        let c = load(&[
            ("NATS_URL", "nats://u:pw@127.0.0.1:4222"),
            ("NATS_SUBJECT", "usage.in"),
            ("INGESTD_NATS__BACKOFF_SECS", "[1, 5]"),
        ])
        .unwrap();
        assert!(c.nats.enabled());
        assert_eq!(
            (c.nats.subject.as_str(), c.nats.stream.as_str(), c.nats.fetch_batch),
            ("usage.in", "LLM_USAGE", 1000)
        );
        assert_eq!(c.nats.backoff_secs, [1, 5]);
        assert!(c.to_masked_toml().contains("nats://u:***@127.0.0.1:4222"));
    }

    #[test]
    fn config_check_masks_a_nats_token() {
        // `nats://TOKEN@host` is token auth: the whole user info is the secret.
        let c = load(&[("NATS_URL", "nats://s3cr3t-token@127.0.0.1:4222"), ("REDIS_URL", "redis://:redis-pw@h:6379")])
            .unwrap();
        let shown = c.to_masked_toml();
        assert!(shown.contains("nats://***@127.0.0.1:4222"), "{shown}");
        assert!(shown.contains("redis://***@h:6379"), "{shown}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("redis-pw"), "{shown}");
    }

    #[test]
    fn test_suite_and_build_script_variables_are_not_settings() {
        // `cargo run` exports the build script's `rustc-env` variables to the
        // binary: one named INGESTD_* made every `cargo run` exit 64.
        let script = include_str!("../build.rs");
        let exported: Vec<&str> = script
            .lines()
            .filter_map(|l| l.split("cargo:rustc-env=").nth(1))
            .filter_map(|rest| rest.split('=').next())
            .collect();
        assert!(!exported.is_empty(), "the build script exports the commit");
        let mut env: Vec<(String, String)> = exported.iter().map(|n| (n.to_string(), "x".into())).collect();
        env.push(("INGESTD_TEST_POSTGRES_URL".into(), "postgres://postgres@127.0.0.1/postgres".into()));
        assert_eq!(Config::load(None, &env).map_err(|e| e.0), Ok(Config::default()));
        let typo = [("INGESTD_SERVER__BND".to_owned(), "x".to_owned())];
        assert!(Config::load(None, &typo).is_err(), "other unknown INGESTD_ names are still refused");
    }

    #[test]
    fn prefixed_names_win_over_legacy_ones_in_either_order() {
        let legacy = ("DATABASE_URL", "postgres://legacy/x");
        let prefixed = ("INGESTD_DATABASE__URL", "postgres://prefixed/x");
        for env in [[legacy, prefixed], [prefixed, legacy]] {
            assert_eq!(load(&env).unwrap().database.url, "postgres://prefixed/x", "{env:?}");
        }
        let c = load(&[("BIND_ADDR", "127.0.0.1:1"), ("INGESTD_SERVER__BIND", "127.0.0.1:2")]).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:2");
        let c = load(&[("INGESTD_SERVER__BIND", "127.0.0.1:2"), ("BIND_ADDR", "127.0.0.1:1")]).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:2");
        // The variable naming the file is not a setting.
        assert!(load(&[("INGESTD_CONFIG", "/etc/ingestd.toml")]).is_ok());
    }

    #[test]
    fn legacy_and_prefixed_environment() {
        let c = load(&[
            ("DATABASE_URL", "postgres://u:pw@db/x"),
            ("BIND_ADDR", "127.0.0.1:9000"),
            ("INGESTD_SERVER__MAX_BATCH_SIZE", "50"),
            ("INGESTD_WRITER__LINGER_MS", "0"),
            ("INGESTD_LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(c.database.url, "postgres://u:pw@db/x");
        assert_eq!(c.server.bind, "127.0.0.1:9000");
        assert_eq!(c.server.max_batch_size, 50);
        assert_eq!(c.writer.linger_ms, 0);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.to_masked_toml().contains("postgres://u:***@db/x"));
        assert!(!c.to_masked_toml().contains("pw"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("INGESTD_SERVER__MAX_BATCH_SIZE", "lots")], "server.max_batch_size"),
            (
                &[("INGESTD_SERVER__NO_SUCH", "1")],
                "server.no_such (environment variable INGESTD_SERVER__NO_SUCH): unknown setting",
            ),
            (&[("INGESTD_BENCH_SECS", "1")], "bench_secs (environment variable INGESTD_BENCH_SECS)"),
            (&[("BIND_ADDR", "nowhere")], "server.bind"),
            (&[("DATABASE_URL", "mysql://x")], "database.url"),
            (&[("INGESTD_LOG__FORMAT", "xml")], "log.format"),
            (&[("INGESTD_SERVER__MAX_BATCH_SIZE", "0")], "server.max_batch_size"),
            (&[("INGESTD_SERVER__REQUEST_TIMEOUT_SECS", "0")], "server.request_timeout_secs"),
            (&[("INGESTD_SERVER__REQUEST_TIMEOUT_SECS", "18446744073709551615")], "server.request_timeout_secs"),
            (&[("INGESTD_SERVER__SHUTDOWN_GRACE_SECS", "0")], "server.shutdown_grace_secs"),
            (&[("INGESTD_SERVER__HEADER_READ_TIMEOUT_SECS", "0")], "server.header_read_timeout_secs"),
            (&[("INGESTD_SERVER__MAX_CONCURRENT_REQUESTS", "0")], "server.max_concurrent_requests"),
            (&[("INGESTD_WRITER__LINGER_MS", "18446744073709551615")], "writer.linger_ms"),
            (&[("INGESTD_DATABASE__BUSY_TIMEOUT_MS", "18446744073709551615")], "database.busy_timeout_ms"),
            (
                &[("NATS_URL", "nats://127.0.0.1:4222"), ("INGESTD_NATS__ACK_WAIT_SECS", "18446744073709551615")],
                "nats.ack_wait_secs",
            ),
            (
                &[("INGESTD_VALIDATION__MAX_FUTURE_SKEW_SECS", "18446744073709551615")],
                "validation.max_future_skew_secs",
            ),
            (&[("NATS_URL", "nats://127.0.0.1:4222"), ("INGESTD_NATS__MAX_DELIVERIES", "0")], "nats.max_deliveries"),
            (&[("NATS_URL", "nats://127.0.0.1:4222"), ("INGESTD_NATS__FETCH_BATCH", "0")], "nats.fetch_batch"),
            (&[("NATS_URL", "nats://127.0.0.1:4222"), ("NATS_SUBJECT", "a..b")], "nats.subject"),
            (&[("INGESTD_NATS__NO_SUCH", "1")], "nats.no_such"),
            (&[("REDIS_URL", "http://127.0.0.1:6379")], "redis.url"),
            (
                &[("REDIS_URL", "redis://127.0.0.1:6379"), ("INGESTD_REDIS__CONSUMER__READ_BATCH", "0")],
                "redis.consumer.read_batch",
            ),
            (&[("INGESTD_RETRY__BACKOFF_MULTIPLIER", "0.5")], "retry.backoff_multiplier"),
            (&[("INGESTD_RATE_LIMIT__BACKEND", "etcd")], "rate_limit.backend"),
            (&[("INGESTD_RATE_LIMIT__BACKEND", "redis")], "rate_limit.backend: \"redis\" needs redis.url"),
            (&[("INGESTD_RATE_LIMIT__FAIL_MODE", "maybe")], "rate_limit.fail_mode"),
            (
                &[("INGESTD_RATE_LIMIT__DEFAULT__PER_MINUTE", "5"), ("INGESTD_RATE_LIMIT__DEFAULT__PER_HOUR", "5")],
                "rate_limit.default: set one of per_minute and per_hour",
            ),
            (&[("INGESTD_RATE_LIMIT__DEFAULT__PER_MINUTE", "0")], "rate_limit.default: "),
            (&[("INGESTD_RATE_LIMIT__DEFAULT__WINDOW_SECS", "60")], "max_requests and window_secs go together"),
            (
                &[
                    ("INGESTD_RATE_LIMIT__ORGS__ACME__PER_DAY", "10"),
                    ("INGESTD_RATE_LIMIT__ORGS__ACME__BURST_SIZE", "1"),
                ],
                "rate_limit.orgs.\"acme\": burst_size goes with max_requests",
            ),
        ];
        for (env, key) in cases {
            let e = load(env).unwrap_err().to_string();
            assert!(e.contains(key), "{env:?}: {e}");
        }
    }

    #[test]
    fn redis_url_enables_the_redis_source() {
        let c = load(&[("REDIS_URL", "redis://127.0.0.1:6379"), ("REDIS_STREAM_KEY", "events")]).unwrap();
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        assert!(c.redis.consumer.enabled);
        assert_eq!(c.redis.consumer.stream_key, "events");
        assert_eq!((c.redis.consumer.read_batch, c.redis.consumer.claim_idle_secs), (1000, 60));
    }

    #[test]
    fn redis_url_names_one_server_or_a_cluster() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://h:6380",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "rediss-cluster://:pw@h:7000",
        ] {
            load(&[("REDIS_URL", url)]).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        // Checked whether it feeds the stream source or only the limiter.
        for env in [
            &[("REDIS_URL", "http://h:6379")][..],
            &[("REDIS_URL", "h:6379"), ("INGESTD_REDIS__CONSUMER__ENABLED", "false")],
            &[("REDIS_URL", "redis+cluster://:pw@h:7000"), ("INGESTD_RATE_LIMIT__BACKEND", "redis")],
        ] {
            let e = load(env).unwrap_err().to_string();
            assert!(e.contains("redis.url") && e.contains("redis-cluster://"), "{env:?}: {e}");
            assert!(!e.contains(":pw@"), "{e}");
        }
    }

    #[test]
    fn config_file_layers_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingestd.toml");
        std::fs::write(&path, "[server]\nmax_batch_size = 10\nbind = \"127.0.0.1:1\"\n[writer]\nlinger_ms = 7\n")
            .unwrap();
        let env = vec![("BIND_ADDR".to_owned(), "127.0.0.1:2".to_owned())];
        let c = Config::load(Some(&path), &env).unwrap();
        assert_eq!((c.server.max_batch_size, c.server.bind.as_str(), c.writer.linger_ms), (10, "127.0.0.1:2", 7));
        let e = Config::load(Some(&dir.path().join("missing.toml")), &[]).unwrap_err();
        assert!(e.to_string().contains("missing.toml"));
    }
}

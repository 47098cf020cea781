use serde::{Deserialize, Serialize};

/// `[nats]` (SPEC §5, §7): the JetStream source. Enabled when `url` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `NATS_URL`; setting it enables the NATS source.
    pub url: String,
    /// `NATS_SUBJECT`: the stream's subject when ingestd creates the stream,
    /// and the consumer's filter.
    pub subject: String,
    pub stream: String,
    /// Replicas of the stream when ingestd creates it (1–5; 3 on a
    /// three-node JetStream cluster survives the loss of one node). An
    /// existing stream is used as it is, with a warning when it differs.
    pub stream_replicas: usize,
    /// The durable pull consumer; processes naming the same one share the work.
    pub consumer: String,
    /// Messages fetched (and committed together) at a time.
    pub fetch_batch: usize,
    /// Fetch loops on the durable consumer in this process, each fetching,
    /// committing and acking on its own: while one loop's batch commits,
    /// the others fetch, decode and ack. They behave as that many processes
    /// sharing the consumer would.
    pub fetchers: usize,
    /// Seconds the server waits for an ack before redelivering (used when
    /// ingestd creates the consumer; long commits send progress acks).
    pub ack_wait_secs: u64,
    /// Deliveries before the server gives a message up; -1 = unlimited. Keep
    /// it unlimited: a storage outage must never exhaust deliveries.
    pub max_deliver: i64,
    /// Deliveries after which a message held by a source task that died is
    /// tried alone, and dead-lettered (then termed) if the task dies again
    /// under it (SPEC §5, `broker::Quarantine`). Unlike `max_deliver`, not
    /// the server's limit.
    pub max_deliveries: u64,
    /// Redelivery delays after an ack timeout, in seconds; empty = `ack_wait_secs`.
    pub backoff_secs: Vec<u64>,
    /// How long one fetch waits for messages when the stream is empty.
    pub idle_wait_ms: u64,
    /// Token authentication (also `nats://TOKEN@host`).
    pub token: Option<String>,
    /// User and password authentication (also `nats://user:password@host`).
    pub user: Option<String>,
    pub password: Option<String>,
    /// A `.creds` file (a user JWT and its NKey seed), as `nsc` writes them:
    /// decentralized authentication, how most production NATS is secured.
    pub credentials_file: Option<std::path::PathBuf>,
    /// An NKey user seed (`SU…`): NKey authentication without a JWT.
    pub nkey_seed: Option<String>,
    /// PEM file of the certificate authorities to trust for TLS (instead of
    /// the system's roots); `tls://` URLs, or a server that requires TLS.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for servers that verify clients (mTLS).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Insist on TLS even where the URL is `nats://`.
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: String::new(),
            subject: "llm.usage".into(),
            stream: "LLM_USAGE".into(),
            stream_replicas: 1,
            consumer: "ingestd".into(),
            fetch_batch: 1000,
            fetchers: 4,
            ack_wait_secs: 30,
            max_deliver: -1,
            max_deliveries: 5,
            backoff_secs: Vec::new(),
            idle_wait_ms: 1000,
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            nkey_seed: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }
}

impl NatsConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The servers of `url` (a comma-separated list), without their user
    /// info: [`connect_options`](Self::connect_options) took the credentials
    /// out, and async-nats would only log them.
    pub fn servers(&self) -> std::io::Result<Vec<async_nats::ServerAddr>> {
        self.url
            .split(',')
            .map(|u| {
                let mut url = u.trim().parse::<async_nats::ServerAddr>()?.into_inner();
                let _ = url.set_username("");
                let _ = url.set_password(None);
                async_nats::ServerAddr::from_url(url)
            })
            .collect()
    }

    /// The connection options these settings ask for: authentication and
    /// TLS (async-nats reads the `.creds` file here).
    pub async fn connect_options(&self) -> std::io::Result<async_nats::ConnectOptions> {
        let mut options = match (&self.credentials_file, &self.nkey_seed) {
            (Some(path), _) => async_nats::ConnectOptions::with_credentials_file(path).await?,
            (None, Some(seed)) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            (None, None) => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        // async-nats ignores a URL's user info; other NATS clients take
        // `nats://user:password@host` and `nats://token@host`, so do we
        // (the first URL of the list that has some), unless a setting above
        // names the credentials.
        let explicit =
            [self.token.is_some(), self.user.is_some(), self.credentials_file.is_some(), self.nkey_seed.is_some()];
        let with_user = self
            .url
            .split(',')
            .filter_map(|u| u.trim().parse::<async_nats::ServerAddr>().ok())
            .find(|a| a.username().is_some());
        if !explicit.contains(&true)
            && let Some(addr) = with_user
            && let Some(user) = addr.username()
        {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            options = match addr.password() {
                Some(password) => options.user_and_password(decode(user), decode(password)),
                None => options.token(decode(user)),
            };
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options.require_tls(self.tls_required))
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let err = |key: &str, msg: &str| Err(format!("nats.{key}: {msg}"));
        if !valid_subject(&self.subject) {
            return err("subject", "must be a NATS subject such as \"llm.usage\" (tokens separated by dots)");
        }
        if !valid_name(&self.stream) {
            return err("stream", "must be a non-empty name without spaces, '.', '*', '>', '/' or '\\'");
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return err("stream_replicas", "must be between 1 and 5 (JetStream's limit)");
        }
        if !valid_name(&self.consumer) {
            return err("consumer", "must be a non-empty name without spaces, '.', '*', '>', '/' or '\\'");
        }
        if !(1..=100_000).contains(&self.fetch_batch) {
            return err("fetch_batch", "must be between 1 and 100000");
        }
        if !(1..=64).contains(&self.fetchers) {
            return err("fetchers", "must be between 1 and 64");
        }
        if !(1..=86_400).contains(&self.ack_wait_secs) {
            return err("ack_wait_secs", "must be between 1 and 86400");
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return err("max_deliver", "must be -1 (unlimited) or at least 1");
        }
        if self.max_deliveries == 0 {
            return err("max_deliveries", "must be at least 1");
        }
        if self.backoff_secs.contains(&0) {
            return err("backoff_secs", "every delay must be at least 1 second");
        }
        if self.max_deliver > 0 && self.backoff_secs.len() as i64 >= self.max_deliver {
            return err("backoff_secs", "must have fewer entries than nats.max_deliver");
        }
        if !(10..=600_000).contains(&self.idle_wait_ms) {
            return err("idle_wait_ms", "must be between 10 and 600000");
        }
        let ways =
            [self.token.is_some(), self.user.is_some(), self.credentials_file.is_some(), self.nkey_seed.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return err("token", "set one of token, user/password, credentials_file or nkey_seed");
        }
        if self.user.is_some() != self.password.is_some() {
            return err("password", "user and password go together");
        }
        if let Some(seed) = &self.nkey_seed
            && (!seed.starts_with("SU") || nkeys::KeyPair::from_seed(seed).is_err())
        {
            return err("nkey_seed", "must be an NKey user seed (SU…, as `nk -gen user` prints)");
        }
        if self.enabled() && self.servers().is_err() {
            return err("url", "must be a NATS URL (nats://host:4222, tls://…), or several separated by commas");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return err("tls_key_file", "tls_cert_file and tls_key_file go together");
        }
        let files = [
            ("credentials_file", &self.credentials_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(format!("nats.{key}: {} is not a readable file", path.display()));
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|t| !t.is_empty() && !t.chars().any(char::is_whitespace))
        && subject.split('.').enumerate().all(|(i, t)| t != ">" || i == subject.split('.').count() - 1)
}

/// Whether a stream listening on `pattern` (which may hold `*` and a final
/// `>`) receives messages published on `subject`.
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_key() {
        assert!(NatsConfig::default().validate().is_ok());
        type Edit = fn(&mut NatsConfig);
        let cases: &[(Edit, &str)] = &[
            (|c| c.subject = "llm..usage".into(), "nats.subject"),
            (|c| c.subject = "a.>.b".into(), "nats.subject"),
            (|c| c.stream = "LLM.USAGE".into(), "nats.stream"),
            (|c| c.consumer = String::new(), "nats.consumer"),
            (|c| c.fetch_batch = 0, "nats.fetch_batch"),
            (|c| c.stream_replicas = 0, "nats.stream_replicas"),
            (|c| c.stream_replicas = 6, "nats.stream_replicas"),
            (|c| c.fetchers = 0, "nats.fetchers"),
            (|c| c.fetchers = 65, "nats.fetchers"),
            (|c| c.ack_wait_secs = 0, "nats.ack_wait_secs"),
            (|c| c.max_deliver = 0, "nats.max_deliver"),
            (|c| c.max_deliveries = 0, "nats.max_deliveries"),
            (|c| c.backoff_secs = vec![1, 0], "nats.backoff_secs"),
            (
                |c| {
                    c.max_deliver = 2;
                    c.backoff_secs = vec![1, 2];
                },
                "nats.backoff_secs",
            ),
            (|c| c.idle_wait_ms = 1, "nats.idle_wait_ms"),
            (
                |c| {
                    c.token = Some("t".into());
                    c.nkey_seed = Some("SUAB".into());
                },
                "nats.token",
            ),
            (|c| c.user = Some("u".into()), "nats.password"),
            (|c| c.nkey_seed = Some("UAB".into()), "nats.nkey_seed"),
            (|c| c.nkey_seed = Some("SUnotaseed".into()), "nats.nkey_seed"),
            (|c| c.url = "http://127.0.0.1:4222".into(), "nats.url"),
            (|c| c.tls_cert_file = Some("/etc/hostname".into()), "nats.tls_key_file"),
            (|c| c.tls_ca_file = Some("/no/such/ca.pem".into()), "nats.tls_ca_file"),
            (|c| c.credentials_file = Some("/no/such/user.creds".into()), "nats.credentials_file"),
        ];
        for (edit, key) in cases {
            let mut c = NatsConfig::default();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn servers_lose_their_user_info() {
        let c = NatsConfig { url: "nats://u:p%40ss@a:4222, tls://b:4223".into(), ..NatsConfig::default() };
        let servers: Vec<String> = c.servers().unwrap().into_iter().map(|s| s.into_inner().to_string()).collect();
        assert_eq!(servers, ["nats://a:4222", "tls://b:4223"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn subject_patterns() {
        let check = |pattern, subject, expected| {
            assert_eq!(subject_matches(pattern, subject), expected, "{pattern} ~ {subject}")
        };
        check("llm.usage", "llm.usage", true);
        check("llm.*", "llm.usage", true);
        check("llm.>", "llm.usage", true);
        check(">", "llm.usage", true);
        check("llm.*", "llm.usage.x", false);
        check("llm.usage.x", "llm.usage", false);
        check("other", "llm.usage", false);
    }
}

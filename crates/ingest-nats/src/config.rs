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
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: String::new(),
            subject: "llm.usage".into(),
            stream: "LLM_USAGE".into(),
            consumer: "ingestd".into(),
            fetch_batch: 1000,
            fetchers: 4,
            ack_wait_secs: 30,
            max_deliver: -1,
            max_deliveries: 5,
            backoff_secs: Vec::new(),
            idle_wait_ms: 1000,
        }
    }
}

impl NatsConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
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
        ];
        for (edit, key) in cases {
            let mut c = NatsConfig::default();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
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

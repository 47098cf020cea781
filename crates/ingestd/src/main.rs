//! `ingestd`: see `ingestd --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ingestd::{App, Config};

#[derive(Parser)]
#[command(
    name = "ingestd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILD_GIT_COMMIT"), ")"),
    about = "Ingests LLM usage records over HTTP and stores them durably")]
struct Cli {
    /// Configuration file (default: ./ingestd.toml when present).
    #[arg(short = 'c', long, global = true, value_name = "FILE", env = ingestd::config::CONFIG_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve {
        /// Do not apply migrations at start, whatever database.auto_migrate says.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Dead letters of the stream sources: list them, replay them once fixed.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Remove usage records older than an age (a dry run unless --execute).
    /// PostgreSQL drops whole monthly partitions; SQLite deletes in batches.
    Retention {
        /// Records that occurred more than this long ago: 400d, 36h, 90m.
        #[arg(long, value_name = "AGE")]
        older_than: ingestd::retention::Age,
        /// Remove them (without it: only count what would be removed).
        #[arg(long)]
        execute: bool,
        /// Also rebuild the rollups up to the cutoff from the rows left
        /// (by default they are kept, so summaries of removed ranges work).
        #[arg(long)]
        with_rollups: bool,
        /// Print only the final summary, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prices (SPEC §9): import a catalog version, show what is in force,
    /// re-price stored rows.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Rollups (SPEC §10), the sums summaries are answered from.
    Rollups {
        #[command(subcommand)]
        command: RollupsCommand,
    },
    /// API keys: create, list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Ask the running service on server.bind for GET /health; exit 0 when it
    /// answers 200 (a container HEALTHCHECK without curl or a shell).
    Health,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective settings (secrets masked).
    Check,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once, as the last line.
    Create {
        /// A key that writes only this organization's records.
        #[arg(long, value_name = "ORG", required_unless_present_any = ["service", "admin"])]
        org: Option<String>,
        /// A key that writes for any organization (a trusted gateway).
        #[arg(long, conflicts_with_all = ["org", "admin"])]
        service: bool,
        /// A key for the admin API (/admin/v1/…).
        #[arg(long, conflicts_with_all = ["org", "service"])]
        admin: bool,
        /// A note for people (shown by `keys list`).
        #[arg(long)]
        label: Option<String>,
        /// Also create a signing secret: requests with this key must then be
        /// signed (Standard Webhooks).
        #[arg(long)]
        signing_secret: bool,
        /// What the key may do with usage: `write` (ingestion; the
        /// default), `read` (the read endpoints) or `read,write`. Admin keys
        /// may do everything.
        #[arg(long, value_name = "LIST", default_value = "write", value_parser = parse_permissions)]
        permissions: auth::Permissions,
    },
    /// List keys (never their secrets).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; every running ingestd refuses it within 5 seconds.
    Revoke { id: uuid::Uuid },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Add a LiteLLM price file (model_prices_and_context_window.json) as a
    /// new catalog version: only changed prices get new rows, in force from
    /// --effective-from; stored records keep their cost until `rerate`.
    Import {
        file: PathBuf,
        /// When the new prices take effect (default: now); after every
        /// stored version's. RFC 3339 or a UTC date.
        #[arg(long, value_name = "TIME", value_parser = ingestd::prices::parse_time)]
        effective_from: Option<time::OffsetDateTime>,
        /// The version's name (default: import-<effective-from>).
        #[arg(long)]
        version: Option<String>,
        /// Print only the summary, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The prices in force (now, or --at): the catalog's, or an organization's own.
    List {
        #[arg(long, value_name = "TIME", value_parser = ingestd::prices::parse_time)]
        at: Option<time::OffsetDateTime>,
        /// Only this catalog provider (LiteLLM's name: openai, vertex_ai-language-models, …).
        #[arg(long)]
        provider: Option<String>,
        /// This organization's own prices instead of the catalog's.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Every price of a model, past and future: MODEL is a catalog key, or
    /// with --provider a model name matched as a record's.
    Show {
        model: String,
        /// Match MODEL as a record of this provider is matched.
        #[arg(long)]
        provider: Option<String>,
        /// The record's model.version, with --provider.
        #[arg(long, requires = "provider")]
        model_version: Option<String>,
        /// Also this organization's own prices for MODEL.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Price stored rows again with the prices in force when each occurred
    /// (after an import or an organization price that back-dates). Safe
    /// while ingestion runs; a second run changes nothing.
    Rerate {
        #[arg(long, value_name = "TIME", value_parser = ingestd::prices::parse_time)]
        from: time::OffsetDateTime,
        #[arg(long, value_name = "TIME", value_parser = ingestd::prices::parse_time)]
        to: time::OffsetDateTime,
        /// Only this organization's rows.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// Rows per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        /// Print only the summary, as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RollupsCommand {
    /// Recompute the rollups of the hours in [--from, --to) (widened to
    /// whole hours; both optional: every hour) from the stored rows.
    Rebuild {
        #[arg(long, value_name = "TIME", value_parser = ingestd::prices::parse_time)]
        from: Option<time::OffsetDateTime>,
        #[arg(long, value_name = "TIME", value_parser = ingestd::prices::parse_time)]
        to: Option<time::OffsetDateTime>,
        /// Print only the summary, as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters (open ones unless --all), oldest first.
    List {
        #[command(flatten)]
        select: DlqSelect,
        /// Include letters already replayed.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line, payload included.
        #[arg(long)]
        json: bool,
    },
    /// Re-submit open dead letters; those whose records are now all stored are marked replayed.
    Replay {
        #[command(flatten)]
        select: DlqSelect,
    },
}

#[derive(clap::Args)]
struct DlqSelect {
    /// Only letters from this source.
    #[arg(long, value_parser = ["nats", "redis"])]
    source: Option<String>,
    /// Only these letters (repeatable).
    #[arg(long = "id")]
    ids: Vec<uuid::Uuid>,
}

impl DlqSelect {
    fn filter(&self, include_replayed: bool, limit: Option<u64>) -> storage::DeadLetterFilter {
        storage::DeadLetterFilter {
            source: self
                .source
                .as_deref()
                .map(|s| if s == "nats" { model::Source::Nats } else { model::Source::Redis }),
            ids: self.ids.clone(),
            include_replayed,
            limit,
        }
    }
}

/// EX_USAGE: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::from_env(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ingestd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Config { command: ConfigCommand::Check }) = &cli.command {
        #[allow(clippy::print_stdout)]
        {
            println!("# configuration is valid\n{}", config.to_masked_toml());
        }
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Health) = &cli.command {
        return match health(&config.server.bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ingestd: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let telemetry = ingestd::init_logging(config.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ingestd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate) => {
                let store = storage::Store::connect(&config.database).await?;
                store.migrate().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::Serve { no_migrate }) => {
                if no_migrate {
                    config.database.auto_migrate = false;
                }
                serve(config).await
            }
            None => serve(config).await,
            Some(Command::Dlq { command: DlqCommand::List { select, all, limit, json } }) => {
                let out = ingestd::dlq::list(&config, &select.filter(all, limit), json).await?;
                #[allow(clippy::print_stdout)]
                {
                    println!("{out}");
                }
                Ok(())
            }
            Some(Command::Dlq { command: DlqCommand::Replay { select } }) => {
                let s = ingestd::dlq::replay(&config, &select.filter(false, None)).await?;
                #[allow(clippy::print_stdout)]
                {
                    println!(
                        "replayed {} dead letter(s) ({} records stored, {} already stored); {} still invalid",
                        s.replayed, s.accepted, s.duplicates, s.still_invalid
                    );
                }
                Ok(())
            }
            Some(Command::Retention { older_than, execute, with_rollups, json }) => {
                let summary = ingestd::retention::run(&config, older_than, execute, with_rollups, json).await?;
                #[allow(clippy::print_stdout)]
                {
                    println!("{summary}");
                }
                Ok(())
            }
            Some(Command::Keys { command }) => keys(&config, command).await,
            Some(Command::Rollups { command: RollupsCommand::Rebuild { from, to, json } }) => {
                let summary = ingestd::rollups::rebuild_rollups(&config, from, to, json).await?;
                #[allow(clippy::print_stdout)]
                {
                    println!("{summary}");
                }
                Ok(())
            }
            Some(Command::Prices { command }) => {
                use ingestd::prices;
                let out = match command {
                    PricesCommand::Import { file, effective_from, version, json } => {
                        prices::import(&config, &file, effective_from, version, json).await?
                    }
                    PricesCommand::List { at, provider, org, json } => {
                        prices::list(&config, at, provider.as_deref(), org.as_deref(), json).await?
                    }
                    PricesCommand::Show { model, provider, model_version, org, json } => {
                        prices::show(
                            &config,
                            &model,
                            provider.as_deref(),
                            model_version.as_deref(),
                            org.as_deref(),
                            json,
                        )
                        .await?
                    }
                    PricesCommand::Rerate { from, to, org, batch, json } => {
                        prices::rerate(&config, from, to, org.as_deref(), batch, json).await?
                    }
                };
                #[allow(clippy::print_stdout)]
                {
                    println!("{out}");
                }
                Ok(())
            }
            Some(Command::Config { .. } | Command::Health) => Ok(()),
        }
    });
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ingestd failed");
            eprintln!("ingestd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.auth.mode == ingestd::config::AuthMode::None {
        tracing::warn!(
            "auth.mode = \"none\": anyone who can reach this port can write records for any organization; the admin API is off"
        );
    }
    let bind = config.server.bind.clone();
    let listener =
        tokio::net::TcpListener::bind(&bind).await.map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let mut app = App::build(config).await?;
    if let Some(first) = app.take_first_key() {
        // Printed, never logged: logs are kept and shipped.
        #[allow(clippy::print_stdout)]
        {
            println!(
                "ingestd: first start, no API keys: created a service key (shown once; keep it, more with `ingestd keys create`). Send it as `Authorization: Bearer <key>`:\n{}",
                first.key
            );
        }
        tracing::info!(key_id = %first.row.id, "created the first API key (a service key); it was printed on stdout");
    }
    app.run(listener, ingestd::shutdown_signal()).await
}

/// An RFC 3339 time to whole seconds, for the table (`2026-11-27T08:24:47Z`).
fn seconds(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(head) => format!("{head}Z"),
        None => rfc3339.to_owned(),
    }
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = storage::Store::connect(&config.database).await?;
    let pending = store.pending_migrations().await?;
    anyhow::ensure!(
        pending.is_empty(),
        "the database needs migrations ({}); run `ingestd migrate`",
        pending.join(", ")
    );
    let keys = ingestd::keys::Keys::new(store, std::sync::Arc::new(auth::KeyRing::new()));
    #[allow(clippy::print_stdout)]
    match command {
        KeysCommand::Create { org, service, admin, label, signing_secret, permissions } => {
            let scope = match (service, admin) {
                (true, _) => auth::Scope::Service,
                (_, true) => auth::Scope::Admin,
                _ => auth::Scope::Org,
            };
            let new = keys.create(scope, org, label, signing_secret, permissions).await?;
            let whom = match &new.row.organization_id {
                Some(org) => format!(" for organization {org:?}"),
                None => String::new(),
            };
            println!(
                "created {scope} key {}{whom} that may {}; the key is shown once, below",
                new.row.id,
                permissions.as_str().replace(',', " and ")
            );
            if let Some(secret) = &new.signing_secret {
                println!("signing secret (shown once; requests must be signed with it): {}", secret.expose());
            }
            println!("{}", new.key);
        }
        KeysCommand::List { json } => {
            let rows = keys.list(true).await?;
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(&ingestd::keys::key_view(row))?);
                }
            } else {
                println!(
                    "{:<36}  {:<7}  {:<10}  {:<20}  {:<20}  {:<20}  LABEL",
                    "ID", "SCOPE", "PERMISSION", "ORGANIZATION", "CREATED", "REVOKED"
                );
                for row in &rows {
                    let v = ingestd::keys::key_view(row);
                    let mut label = v.label.unwrap_or_default();
                    if v.signed {
                        label.push_str(" [signed]");
                    }
                    println!(
                        "{:<36}  {:<7}  {:<10}  {:<20}  {:<20}  {:<20}  {}",
                        v.id,
                        v.scope,
                        v.permissions.join(","),
                        v.organization_id.unwrap_or_else(|| "-".into()),
                        seconds(&v.created_at),
                        v.revoked_at.as_deref().map_or_else(|| "-".into(), seconds),
                        label.trim()
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(keys.revoke(id).await?, "no active key {id} (unknown, or revoked already)");
            println!("revoked key {id}; running ingestd processes refuse it within 5 seconds");
        }
    }
    Ok(())
}

/// `GET /health` over plain HTTP/1.0 on the configured address (a wildcard
/// address is asked on loopback); Ok when the status is 200.
fn health(bind: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::time::Duration;

    let mut addr: SocketAddr = bind.parse().map_err(|e| format!("server.bind {bind:?}: {e}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..len]);
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{addr}/health answered {status_line:?}")),
    }
}

/// `--permissions read,write`.
fn parse_permissions(s: &str) -> Result<auth::Permissions, String> {
    auth::Permissions::parse(s).ok_or_else(|| format!("{s:?}: expected read, write or read,write"))
}

//! Subcommands: `serve`, `demo`, `check`, `explain`, `test`, `audit`, `approvals`, `clients`,
//! `keys`, `keygen`, `probe` (and the hidden `emulator`).
//!
//! Exit codes: 0 on success; 1 with a one-line reason on failure; 2 for usage errors (clap).

mod api_client;
mod approvals;
mod deferred;
mod demo;
mod keys;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::audit;
use crate::classify::Classifier;
use crate::config::Config;
use crate::credentials::UpstreamKey;
use crate::guards::Protection;
use crate::policy::explain;
use crate::server::{shutdown_signal, Gateway};
use crate::telemetry;

/// tl-gateway: a policy-enforcing, auditing gateway in front of the TwelveLabs API.
#[derive(Debug, Parser)]
#[command(name = "tl-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Serve {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an embedded TwelveLabs emulator and a gateway with two demo clients
    /// (uses the real API instead when TWELVELABS_API_KEY is set).
    Demo {
        /// Client-facing listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin_listen: SocketAddr,
        /// Serve HTTPS with a throwaway CA and certificate (and a client certificate that
        /// identifies a third demo client).
        #[arg(long)]
        tls: bool,
    },
    /// Validate a configuration file and exit.
    Check {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show how a request is classified and why policy allows or denies it
    /// (exit 0 allow, 3 deny, 2 rejected before policy, 4 requires approval).
    Explain {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The configured client id to evaluate as.
        #[arg(long)]
        client: String,
        /// HTTP method, exactly as sent (e.g. DELETE).
        method: String,
        /// Request target, e.g. '/v1.3/assets/ID?force=true'.
        target: String,
    },
    /// Check a table of expected decisions (allow | approval | deny | reject); non-zero exit on
    /// any mismatch.
    Test {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The cases file.
        cases: PathBuf,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List, show, approve, deny or cancel approvals on a running gateway (your key from
    /// TL_GATEWAY_KEY or --key-file).
    Approvals {
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// List, show or cancel deferred calls (the undo window) on a running gateway (your key from
    /// TL_GATEWAY_KEY or --key-file).
    Deferred {
        #[command(subcommand)]
        command: deferred::DeferredCommand,
    },
    /// List, show, create, disable or enable clients on a running gateway (your key from
    /// TL_GATEWAY_KEY or --key-file; managing others needs a role in keys.admin_roles).
    Clients {
        #[command(subcommand)]
        command: keys::ClientsCommand,
    },
    /// Issue, revoke or rotate personal keys on a running gateway; a new key is printed once,
    /// alone on stdout.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Print a new random client key (once) and its YAML entry.
    Keygen {
        /// Client id.
        #[arg(long)]
        id: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',', default_value = "member")]
        roles: Vec<String>,
        /// A label for the key (e.g. laptop-2027): prints a `keys:` entry.
        #[arg(long)]
        label: Option<String>,
        /// When the key expires: a duration from now (90d) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
    },
    /// GET a URL and exit 0 on a 2xx answer (container health checks without curl).
    Probe {
        /// e.g. http://127.0.0.1:9464/healthz
        url: String,
    },
    /// Run only the TwelveLabs emulator (for benchmarks and local experiments).
    #[command(hide = true)]
    Emulator {
        /// Listener.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The API key the emulator accepts.
        #[arg(long)]
        api_key: String,
        /// Also load the demo data set.
        #[arg(long)]
        seed: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every record's hash, the chain and seq continuity; exit non-zero naming the first bad
    /// line. Give rotated files oldest first and the live file last, or only the live file to
    /// include its rotated siblings automatically.
    Verify {
        /// Audit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Accept a chain that starts after seq 1 (older files pruned).
        #[arg(long)]
        partial: bool,
    },
    /// Print the records that match every given filter.
    Search {
        /// Audit files (as for verify).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Client id.
        #[arg(long)]
        client: Option<String>,
        /// Route id, e.g. assets.delete.
        #[arg(long)]
        operation: Option<String>,
        /// A resource id (any path parameter), e.g. an asset id.
        #[arg(long)]
        resource: Option<String>,
        /// A request id.
        #[arg(long)]
        request_id: Option<String>,
        /// From this time (RFC 3339 or a prefix such as 2026-11-30).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339 or a prefix).
        #[arg(long)]
        until: Option<String>,
        /// Print the matching JSON lines instead of a summary per record.
        #[arg(long)]
        json: bool,
    },
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Pure commands run without a runtime and choose their own exit codes.
    match &cli.command {
        Command::Explain {
            config,
            client,
            method,
            target,
        } => return explain_command(config, client, method, target),
        Command::Test { config, cases } => return test_command(config, cases),
        Command::Audit { command } => return audit_command(command),
        _ => {}
    }
    // One thread for acceptor, admin listener, reloads and signals: `serve` runs its client
    // connections on the serving workers (`server.worker_threads`, see `workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the async runtime: {error}")),
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("tl-gateway: {message}");
    ExitCode::FAILURE
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => serve(&config).await,
        Command::Demo {
            listen,
            admin_listen,
            tls,
        } => demo::demo(listen, admin_listen, tls).await,
        Command::Check { config } => check(&config).await,
        Command::Explain { .. } | Command::Test { .. } | Command::Audit { .. } => {
            Err("handled without a runtime".into())
        }
        Command::Keygen {
            id,
            roles,
            label,
            expires,
        } => keys::keygen(&id, &roles, label.as_deref(), expires.as_deref()),
        Command::Emulator {
            listen,
            api_key,
            seed,
        } => demo::emulator(listen, api_key, seed).await,
        Command::Probe { url } => probe(&url).await,
        Command::Approvals { command } => approvals::run(command).await,
        Command::Deferred { command } => deferred::run(command).await,
        Command::Clients { command } => keys::run_clients(command).await,
        Command::Keys { command } => keys::run_keys(command).await,
    }
}

async fn serve(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let traces = telemetry::init_with_traces(config.logging.format, config.telemetry.otlp.as_ref())
        .map_err(|e| e.to_string())?;
    let key = UpstreamKey::load(&config.upstream.key_source).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let gateway = Gateway::bind(&config, key)
        .await
        .map_err(|e| e.to_string())?
        .reload_from(path.to_owned());
    gateway
        .metrics()
        .register_external(traces.dropped_counter());
    let served = gateway
        .run(shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"));
    // The last spans (the drained requests') go out before the process ends.
    traces.shutdown(std::time::Duration::from_secs(5)).await;
    served
}

fn explain_command(config: &Path, client: &str, method: &str, target: &str) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    let principal = match explain::principal_for(&config.clients, client) {
        Ok(p) => p,
        Err(error) => return fail(error.to_string()),
    };
    let classifier = Classifier::new(config.classify.clone());
    match explain::explain(
        &classifier,
        &config.compiled_policy,
        &Protection::new(&config.protected),
        &principal,
        method,
        target,
    ) {
        Ok((verdict, account)) => {
            print!("{account}");
            ExitCode::from(verdict.exit_code())
        }
        Err(error) => fail(error.to_string()),
    }
}

fn expand_audit_files(files: &[PathBuf]) -> Vec<PathBuf> {
    match files {
        [live] => audit::verify::chain_files(live),
        many => many.to_vec(),
    }
}

fn audit_command(command: &AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { files, partial } => {
            let files = expand_audit_files(files);
            match audit::verify::verify(&files, *partial) {
                Ok(verified) => {
                    let range = verified
                        .seq_range
                        .map_or("no records".to_owned(), |(a, b)| format!("seq {a}..={b}"));
                    println!(
                        "ok: {} record(s) in {} file(s), {range}, chain intact{}",
                        verified.records,
                        files.len(),
                        if verified.starts_at_genesis {
                            " from the first record"
                        } else {
                            " (partial: from the first record given)"
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(broken) => fail(format!("audit chain broken at {broken}")),
            }
        }
        AuditCommand::Search {
            files,
            client,
            operation,
            resource,
            request_id,
            since,
            until,
            json,
        } => {
            let filter = audit::verify::Filter {
                client: client.clone(),
                operation: operation.clone(),
                resource: resource.clone(),
                request_id: request_id.clone(),
                since: since.clone(),
                until: until.clone(),
            };
            match audit::verify::search(&expand_audit_files(files), &filter, *json) {
                Ok((out, count)) => {
                    print!("{out}");
                    if !json {
                        eprintln!("{count} record(s)");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => fail(error),
            }
        }
    }
}

fn test_command(config: &Path, cases: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    let classifier = Classifier::new(config.classify.clone());
    match explain::run_cases(
        &classifier,
        &config.compiled_policy,
        &Protection::new(&config.protected),
        &config.clients,
        cases,
    ) {
        Ok((report, _, 0)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Ok((report, _, failures)) => {
            print!("{report}");
            fail(format!(
                "{failures} case(s) did not match their expectation"
            ))
        }
        Err(error) => fail(error),
    }
}

pub(crate) fn addr(result: std::io::Result<SocketAddr>) -> String {
    result.map_or_else(|e| format!("<{e}>"), |a| a.to_string())
}

async fn check(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    println!(
        "{}: ok — {} client(s), {} policy rule(s), upstream {}",
        path.display(),
        config.clients.len(),
        config.policy.rules.len(),
        config.upstream.origin
    );
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    // The key may legitimately be absent where the config is reviewed; say so without failing.
    if let Err(error) = UpstreamKey::load(&config.upstream.key_source) {
        println!("warning: {error}");
    }
    // The certificate must load as `serve` would: the pair matches, it has not expired.
    if let Some(tls) = &config.tls {
        let loaded = crate::tls::check(tls)?;
        let expires =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(loaded.not_after.max(0) as u64);
        println!(
            "tls: {} (serial {}, names {}) expires {}",
            tls.cert_file.display(),
            loaded.serial,
            loaded.names.join(", "),
            crate::units::rfc3339(expires)
        );
        if loaded.not_after - now_unix() < 14 * 86_400 {
            println!("warning: the TLS certificate expires within 14 days");
        }
    }
    if let crate::state::StateSettings::Redis(redis) = &config.state {
        redis_eviction_check(redis).await;
    }
    let now = std::time::SystemTime::now();
    for client in &config.clients {
        for key in &client.keys {
            match key.expires {
                Some(at) if at <= now => println!(
                    "warning: key '{}' of client {} expired at {}",
                    key.label,
                    client.id,
                    crate::units::rfc3339(at)
                ),
                Some(at) if at <= now + std::time::Duration::from_secs(7 * 86_400) => println!(
                    "warning: key '{}' of client {} expires at {} (within 7 days)",
                    key.label,
                    client.id,
                    crate::units::rfc3339(at)
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Limit state must never be evicted: ask the configured Redis its `maxmemory-policy` (briefly;
/// `check` also runs where the server cannot be reached, which is not an error).
async fn redis_eviction_check(redis: &crate::state::RedisSettings) {
    let where_ = crate::state::redacted(&redis.url);
    let asked =
        crate::state::redis::eviction_policy(&redis.url, std::time::Duration::from_secs(2)).await;
    match asked {
        Ok(Some(policy)) if crate::state::redis::evicts(&policy) => println!(
            "warning: state.redis ({where_}): {}",
            crate::state::redis::eviction_warning(&policy)
        ),
        Ok(Some(policy)) => println!("state: {where_} maxmemory-policy {policy}"),
        Ok(None) => println!(
            "note: state.redis ({where_}) does not say its maxmemory-policy (CONFIG disabled): make sure it is noeviction"
        ),
        Err(error) => println!(
            "note: state.redis ({where_}) could not be asked its maxmemory-policy ({error}); it must be noeviction"
        ),
    }
}

use crate::units::now_secs as now_unix;

pub use self::demo::private_temp_dir;
pub use crate::auth::new_client_key;

async fn probe(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let client: hyper_util::client::legacy::Client<_, crate::body::GatewayBody> =
        crate::outbound::client(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let request = http::Request::get(uri)
        .body(crate::body::empty())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), client.request(request))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {}", response.status()))
    }
}

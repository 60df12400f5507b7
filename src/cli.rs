//! Subcommands: `serve`, `demo`, `check`, `explain`, `test`, `audit`, `approvals`, `clients`,
//! `keys`, `keygen`, `probe` (and the hidden `emulator`).
//!
//! Exit codes: 0 on success; 1 with a one-line reason on failure; 2 for usage errors (clap).

mod api_client;
mod approvals;
mod keys;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rand::distr::{Alphanumeric, SampleString};

use crate::audit;
use crate::auth::key_digest_hex;
use crate::classify::Classifier;
use crate::config::Config;
use crate::credentials::KeySource;
use crate::credentials::UpstreamKey;
use crate::emulator::Emulator;
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
        } => demo(listen, admin_listen, tls).await,
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
        } => emulator(listen, api_key, seed).await,
        Command::Probe { url } => probe(&url).await,
        Command::Approvals { command } => approvals::run(command).await,
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

fn addr(result: std::io::Result<SocketAddr>) -> String {
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

fn listen_port(gateway: &Gateway) -> u16 {
    gateway.local_addr().map_or(0, |a| a.port())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub use crate::auth::new_client_key;

async fn probe(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let client: hyper_util::client::legacy::Client<_, crate::body::GatewayBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
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

async fn emulator(listen: SocketAddr, api_key: String, seed: bool) -> Result<(), String> {
    telemetry::init(Default::default());
    let emulator = Emulator::new(api_key);
    if seed {
        emulator.seed_demo();
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!(
        "emulator listening on http://{}",
        addr(listener.local_addr())
    );
    emulator
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("emulator failed: {e}"))
}

/// A new directory under the system's temporary directory, randomly named and created 0700, so
/// another local user can neither predict it nor pre-create it (as a symlink, say).
pub fn private_temp_dir(prefix: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let mut last_error = None;
    for _ in 0..8 {
        let name = format!(
            "{prefix}-{}",
            Alphanumeric.sample_string(&mut rand::rng(), 16)
        );
        let dir = base.join(name);
        // `create` (not `create_all`) fails if anything, a symlink included, already has the name.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free name")))
}

/// What the demo's configuration is made of.
struct DemoSetup<'a> {
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: &'a str,
    key_env: &'a str,
    alice: &'a str,
    bob: &'a str,
    carol: &'a str,
    audit: &'a Path,
    tls: Option<&'a crate::tls::demo::DemoPki>,
}

/// YAML for the demo gateway; keeps the demo on the same configuration path as `serve`.
fn demo_config(setup: &DemoSetup<'_>) -> String {
    let DemoSetup {
        listen,
        admin,
        upstream,
        key_env,
        alice,
        bob,
        carol,
        audit,
        tls,
    } = *setup;
    let (tls, svc) = match tls {
        None => (String::new(), String::new()),
        Some(pki) => (
            format!(
                "tls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n",
                pki.cert.display(),
                pki.key.display(),
                pki.ca.display()
            ),
            // A service identified by its client certificate instead of a key.
            format!("  - id: reporting\n    roles: [member]\n    cert_subject: \"CN={DEMO_CLIENT_CN}\"\n"),
        ),
    };
    format!(
        r#"listen: "{listen}"
admin_listen: "{admin}"
upstream:
  url: {upstream}
  api_key_env: {key_env}
clients:
  - id: alice
    roles: [admin]
    key_sha256: {alice}
  - id: bob
    roles: [member]
    key_sha256: {bob}
  - id: carol
    roles: [admin]
    key_sha256: {carol}
{svc}policy:
  default: allow
  rules:
    - id: force-delete-two-person
      match:
        method: DELETE
        path: /v1.3/assets/{{asset_id}}
        query: {{ force: true }}
      allow_roles: [admin, member]
      message: Force-deleting an asset unlinks it from every index and entity.
      approval:
        approver_roles: [admin]
audit:
  path: {audit}
store:
  backend: sqlite
  sqlite:
    path: {store}
{tls}"#,
        audit = audit.display(),
        store = audit.with_file_name("store.db").display(),
        alice = key_digest_hex(alice),
        bob = key_digest_hex(bob),
        carol = key_digest_hex(carol),
    )
}

/// The common name of the demo's client certificate (`demo --tls`).
const DEMO_CLIENT_CN: &str = "reporting.demo.internal";

async fn demo(listen: SocketAddr, admin_listen: SocketAddr, tls: bool) -> Result<(), String> {
    telemetry::init(Default::default());
    let alice = new_client_key();
    let bob = new_client_key();
    let carol = new_client_key();
    let real_key = std::env::var("TWELVELABS_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());

    let (upstream_url, upstream_key, emulator, seeded) = match real_key {
        Some(key) => (
            "https://api.twelvelabs.io".to_owned(),
            UpstreamKey::fixed(&key).map_err(|e| e.to_string())?,
            None,
            None,
        ),
        None => {
            let key = new_client_key().replace("tlgw_", "tlk_");
            let emulator = Emulator::new(key.clone());
            let seeded = emulator.seed_demo();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot start the emulator: {e}"))?;
            let url = format!("http://{}", addr(listener.local_addr()));
            let running = emulator.clone();
            tokio::spawn(async move {
                if let Err(error) = running.serve(listener, std::future::pending()).await {
                    tracing::error!(%error, "emulator stopped");
                }
            });
            (
                url,
                UpstreamKey::fixed(&key).map_err(|e| e.to_string())?,
                Some(emulator),
                Some(seeded),
            )
        }
    };
    // A fresh audit log (and throwaway certificates) per demo run, outside the working directory.
    let dir = private_temp_dir("tl-gateway-demo")
        .map_err(|e| format!("cannot create the demo's directory: {e}"))?;
    let audit_path = dir.join("audit.jsonl");
    let pki = if tls {
        Some(crate::tls::demo::write(&dir, DEMO_CLIENT_CN)?)
    } else {
        None
    };
    let yaml = demo_config(&DemoSetup {
        listen,
        admin: admin_listen,
        upstream: &upstream_url,
        key_env: "TWELVELABS_API_KEY",
        alice: &alice,
        bob: &bob,
        carol: &carol,
        audit: &audit_path,
        tls: pki.as_ref(),
    });
    let config = Config::parse(Path::new("<demo>"), &yaml).map_err(|e| e.to_string())?;
    debug_assert!(matches!(config.upstream.key_source, KeySource::Env(_)));
    let gateway = Gateway::bind(&config, upstream_key)
        .await
        .map_err(|e| e.to_string())?;
    let scheme = if pki.is_some() { "https" } else { "http" };
    let base = match &pki {
        // The certificate names localhost; a loopback listener is reached by that name.
        Some(_) if listen.ip().is_loopback() => {
            format!("https://localhost:{}", listen_port(&gateway))
        }
        _ => format!("{scheme}://{}", addr(gateway.local_addr())),
    };
    let curl = match &pki {
        Some(pki) => format!("curl --cacert {}", pki.ca.display()),
        None => "curl".to_owned(),
    };
    let admin = format!("http://{}", addr(gateway.admin_addr()));

    println!("tl-gateway demo");
    match &emulator {
        Some(_) => println!("  upstream: embedded TwelveLabs emulator at {upstream_url}"),
        None => {
            println!("  upstream: {upstream_url} (TWELVELABS_API_KEY is set: real API, real data)")
        }
    }
    println!("  gateway:  {base}/v1.3");
    println!("  page:     {base}/tl-gateway/ui/  (approvals; sign in with a key below)");
    println!("  admin:    {admin}/readyz  {admin}/metrics");
    println!(
        "  audit:    {}  (tl-gateway audit verify {})",
        audit_path.display(),
        audit_path.display()
    );
    println!(
        "  store:    {}  (SQLite: approvals, clients and keys issued through the API)",
        audit_path.with_file_name("store.db").display()
    );
    println!();
    println!("  client  role    key");
    println!("  alice   admin   {alice}");
    println!("  bob     member  {bob}");
    println!("  carol   admin   {carol}");
    if let Some(seeded) = &seeded {
        println!();
        println!(
            "  demo data: asset {} is referenced by {} indexed asset(s); asset {} is unreferenced",
            seeded.referenced_asset_id,
            seeded.indexed_asset_ids.len(),
            seeded.unreferenced_asset_id
        );
    }
    println!();
    println!("  try:");
    println!("    {curl} -s {base}/v1.3/assets -H 'x-api-key: {bob}'");
    println!("    {curl} -s -i {base}/v1.3/assets -H 'x-api-key: not-a-valid-key'");
    if let Some(seeded) = &seeded {
        println!(
            "    {curl} -s -i -X DELETE '{base}/v1.3/assets/{}' -H 'x-api-key: {bob}'",
            seeded.referenced_asset_id
        );
        println!(
            "    {curl} -s -i -X DELETE '{base}/v1.3/assets/{}?force=true' -H 'x-api-key: {bob}'",
            seeded.referenced_asset_id
        );
        println!(
            "    # → 403 approval_required: open the page as alice or carol, approve, re-send"
        );
    }
    if let Some(pki) = &pki {
        println!(
            "    {curl} -s {base}/v1.3/assets --cert {} --key {}    # as 'reporting', by its certificate",
            pki.client_cert.display(),
            pki.client_key.display()
        );
    }
    println!();
    println!("  python (pip install twelvelabs==1.3.6):");
    match &pki {
        None => {
            println!("    from twelvelabs import TwelveLabs");
            println!("    client = TwelveLabs(api_key=\"{bob}\", base_url=\"{base}/v1.3\")");
        }
        Some(pki) => {
            println!("    import httpx, ssl");
            println!("    from twelvelabs import TwelveLabs");
            println!(
                "    trust = ssl.create_default_context(cafile=\"{}\")",
                pki.ca.display()
            );
            println!("    client = TwelveLabs(api_key=\"{bob}\", base_url=\"{base}/v1.3\", httpx_client=httpx.Client(verify=trust))");
        }
    }
    println!("    print([asset.id for asset in client.assets.list()])");
    println!();
    println!("  Press Ctrl-C to stop.");
    gateway
        .run(shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))
}

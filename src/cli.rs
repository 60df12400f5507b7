//! Subcommands: `serve`, `demo`, `check`, `explain`, `test`, `audit`, `approvals`, `keygen`,
//! `probe` (and the hidden `emulator`).
//!
//! Exit codes: 0 on success; 1 with a one-line reason on failure; 2 for usage errors (clap).

mod approvals;

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
use crate::ids::{ClientId, Role};
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
    /// Print a new random client key (once) and its YAML entry.
    Keygen {
        /// Client id.
        #[arg(long)]
        id: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',', default_value = "member")]
        roles: Vec<String>,
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
        } => demo(listen, admin_listen).await,
        Command::Check { config } => check(&config),
        Command::Explain { .. } | Command::Test { .. } | Command::Audit { .. } => {
            Err("handled without a runtime".into())
        }
        Command::Keygen { id, roles } => keygen(&id, &roles),
        Command::Emulator {
            listen,
            api_key,
            seed,
        } => emulator(listen, api_key, seed).await,
        Command::Probe { url } => probe(&url).await,
        Command::Approvals { command } => approvals::run(command).await,
    }
}

async fn serve(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    telemetry::init(config.logging.format);
    let key = UpstreamKey::load(&config.upstream.key_source).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let gateway = Gateway::bind(&config, key)
        .await
        .map_err(|e| e.to_string())?
        .reload_from(path.to_owned());
    gateway
        .run(shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))
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

fn check(path: &Path) -> Result<(), String> {
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
    Ok(())
}

/// A fresh random client key: `tlgw_` and 40 alphanumerics (≈ 238 bits).
pub fn new_client_key() -> String {
    format!("tlgw_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

fn keygen(id: &str, roles: &[String]) -> Result<(), String> {
    let id: ClientId = id.parse()?;
    let roles = roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<Vec<_>, _>>()?;
    let key = new_client_key();
    let roles = roles
        .iter()
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    println!("# Personal key for {id}: hand it over once; the gateway stores only its digest.");
    println!("{key}");
    println!();
    println!("# Add under `clients:` in the gateway configuration:");
    println!("  - id: {id}");
    println!("    roles: [{roles}]");
    println!("    key_sha256: {}", key_digest_hex(&key));
    Ok(())
}

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

/// YAML for the demo gateway; keeps the demo on the same configuration path as `serve`.
fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: &str,
    key_env: &str,
    alice: &str,
    bob: &str,
    audit: &Path,
) -> String {
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
policy:
  default: allow
  rules:
    - id: force-delete-admins-only
      match:
        method: DELETE
        path: /v1.3/assets/{{asset_id}}
        query: {{ force: true }}
      allow_roles: [admin]
      message: Force-deleting an asset unlinks it from every index and entity; ask an admin.
audit:
  path: {audit}
"#,
        audit = audit.display(),
        alice = key_digest_hex(alice),
        bob = key_digest_hex(bob),
    )
}

async fn demo(listen: SocketAddr, admin_listen: SocketAddr) -> Result<(), String> {
    telemetry::init(Default::default());
    let alice = new_client_key();
    let bob = new_client_key();
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
    // A fresh audit log per demo run, outside the working directory.
    let audit_path = private_temp_dir("tl-gateway-demo")
        .map_err(|e| format!("cannot create the demo's audit directory: {e}"))?
        .join("audit.jsonl");
    let yaml = demo_config(
        listen,
        admin_listen,
        &upstream_url,
        "TWELVELABS_API_KEY",
        &alice,
        &bob,
        &audit_path,
    );
    let config = Config::parse(Path::new("<demo>"), &yaml).map_err(|e| e.to_string())?;
    debug_assert!(matches!(config.upstream.key_source, KeySource::Env(_)));
    let gateway = Gateway::bind(&config, upstream_key)
        .await
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}", addr(gateway.local_addr()));
    let admin = format!("http://{}", addr(gateway.admin_addr()));

    println!("tl-gateway demo");
    match &emulator {
        Some(_) => println!("  upstream: embedded TwelveLabs emulator at {upstream_url}"),
        None => {
            println!("  upstream: {upstream_url} (TWELVELABS_API_KEY is set: real API, real data)")
        }
    }
    println!("  gateway:  {base}/v1.3");
    println!("  admin:    {admin}/readyz  {admin}/metrics");
    println!(
        "  audit:    {}  (tl-gateway audit verify {})",
        audit_path.display(),
        audit_path.display()
    );
    println!();
    println!("  client  role    key");
    println!("  alice   admin   {alice}");
    println!("  bob     member  {bob}");
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
    println!("    curl -s {base}/v1.3/assets -H 'x-api-key: {bob}'");
    println!("    curl -s -i {base}/v1.3/assets -H 'x-api-key: not-a-valid-key'");
    if let Some(seeded) = &seeded {
        println!(
            "    curl -s -i -X DELETE '{base}/v1.3/assets/{}' -H 'x-api-key: {bob}'",
            seeded.referenced_asset_id
        );
    }
    println!();
    println!("  python (pip install twelvelabs==1.3.6):");
    println!("    from twelvelabs import TwelveLabs");
    println!("    client = TwelveLabs(api_key=\"{bob}\", base_url=\"{base}/v1.3\")");
    println!("    print([asset.id for asset in client.assets.list()])");
    println!();
    println!("  Press Ctrl-C to stop.");
    gateway
        .run(shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))
}

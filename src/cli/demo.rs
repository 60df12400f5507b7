//! `tl-gateway demo` and `tl-gateway emulator`: the gateway in front of the embedded TwelveLabs
//! emulator (or the real API when `TWELVELABS_API_KEY` is set), with throwaway keys, audit log and
//! store, on the same configuration path as `serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rand::distr::{Alphanumeric, SampleString};

use super::addr;
use crate::auth::{key_digest_hex, new_client_key};
use crate::config::Config;
use crate::credentials::{KeySource, UpstreamKey};
use crate::emulator::Emulator;
use crate::server::{shutdown_signal, Gateway};
use crate::telemetry;

fn listen_port(gateway: &Gateway) -> u16 {
    gateway.local_addr().map_or(0, |a| a.port())
}

pub(super) async fn emulator(
    listen: SocketAddr,
    api_key: String,
    seed: bool,
) -> Result<(), String> {
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

pub(super) async fn demo(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    tls: bool,
) -> Result<(), String> {
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

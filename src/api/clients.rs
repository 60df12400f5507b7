//! The keys API: clients and keys issued, rotated and revoked at runtime (docs/architecture.md,
//! "Keys at runtime").
//!
//! | route id | request | answer |
//! |---|---|---|
//! | `gateway.clients.list` | `GET /tl-gateway/v1/clients` | `{"clients": [...]}` (YAML and store clients; never a key or its digest) |
//! | `gateway.clients.create` | `POST /tl-gateway/v1/clients` `{"id","roles"}` | 201 the client; 409 `client_exists`; 400 `parameter_invalid` |
//! | `gateway.clients.retrieve` | `GET /tl-gateway/v1/clients/{id}` | the client; 404 `client_not_found` |
//! | `gateway.clients.update` | `PATCH /tl-gateway/v1/clients/{id}` `{"roles"?,"disabled"?}` | 200 the client; 409 `client_read_only` for a YAML client |
//! | `gateway.keys.issue` | `POST /tl-gateway/v1/clients/{id}/keys` `{"label"?,"expires"?}` | 201 `{"key","label","expires"}`, the key shown this once |
//! | `gateway.keys.revoke` | `DELETE /tl-gateway/v1/clients/{id}/keys/{label}` | 200 the client |
//! | `gateway.keys.rotate` | `POST /tl-gateway/v1/me/keys` `{"label"?,"expires"?,"retire_presented_after"?,"replaces"?}` | 201 a new key; the presented one (signed in on the page: the one `replaces` names) expires after the overlap (default 24h) |
//!
//! Managing others needs a role in `keys.admin_roles` (else 403 `policy_denied`); a client may
//! read itself and revoke its own keys.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Deserialize;

use super::{json, ApiSettings};
use crate::auth::{ClientSettings, Credential, Principal};
use crate::error::GatewayError;
use crate::ids::{ClientId, Role, RuleId};
use crate::keys::new_key;
use crate::keys::records::{now_ms, StoredClient, StoredKey};
use crate::units::{parse_duration, rfc3339};

/// The body of `POST /clients`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// The body of `PATCH /clients/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    roles: Option<Vec<String>>,
    disabled: Option<bool>,
}

/// The body of `POST /clients/{id}/keys` and `POST /me/keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    label: Option<String>,
    expires: Option<String>,
    retire_presented_after: Option<String>,
    /// `POST /me/keys` from a signed-in session (no key presented): the label of the key to
    /// replace.
    replaces: Option<String>,
}

fn is_admin(settings: &ApiSettings, caller: &Principal) -> bool {
    caller
        .roles
        .iter()
        .any(|r| settings.keys.admin_roles.contains(r))
}

/// 403 `policy_denied` unless the caller may manage others.
pub fn require_admin(settings: &ApiSettings, caller: &Principal) -> Result<(), GatewayError> {
    if is_admin(settings, caller) {
        return Ok(());
    }
    Err(GatewayError::PolicyDenied {
        rule: RuleId::builtin("keys.admin_roles"),
        message: Some(
            format!(
                "managing clients and keys needs one of the roles [{}]",
                role_list(&settings.keys.admin_roles)
            )
            .into(),
        ),
    })
}

/// `a, b, c`: roles as a message names them.
pub fn role_list(roles: &[Role]) -> String {
    roles
        .iter()
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn time_of_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// How a YAML client is shown.
pub fn config_view(client: &ClientSettings) -> serde_json::Value {
    let now = SystemTime::now();
    let keys: Vec<serde_json::Value> = client
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "label": k.label,
                "created_at": null,
                "created_by": null,
                "expires": k.expires.map(rfc3339),
                "last_used": null,
                "state": if k.expires.is_some_and(|at| at <= now) { "expired" } else { "active" },
            })
        })
        .collect();
    serde_json::json!({
        "id": client.id.as_str(),
        "roles": client.roles.iter().map(Role::as_str).collect::<Vec<_>>(),
        "source": "config",
        "disabled": false,
        "keys": keys,
    })
}

/// How a store client is shown (never a key or its digest).
pub fn store_view(
    client: &StoredClient,
    used: &std::collections::BTreeMap<String, u64>,
) -> serde_json::Value {
    let now = now_ms();
    let keys: Vec<serde_json::Value> = client
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "label": k.label,
                "created_at": k.created_at,
                "created_by": k.created_by,
                "expires": k.expires_ms.map(time_of_ms),
                "last_used": used.get(&k.label).map(|s| rfc3339(UNIX_EPOCH + Duration::from_secs(*s))),
                "state": k.state(now),
                "revoked_at": k.revoked_at,
            })
        })
        .collect();
    serde_json::json!({
        "id": client.id,
        "roles": client.roles,
        "source": "store",
        "disabled": client.disabled,
        "created_at": client.created_at,
        "created_by": client.created_by,
        "keys": keys,
    })
}

/// `GET /clients`.
pub async fn list(
    settings: &ApiSettings,
    caller: &Principal,
) -> Result<http::Response<crate::body::GatewayBody>, GatewayError> {
    require_admin(settings, caller)?;
    let mut clients: Vec<serde_json::Value> = settings
        .keyring
        .config_clients()
        .iter()
        .map(config_view)
        .collect();
    let stored = settings.keyring.stored_clients().await?;
    let used_keys: Vec<String> = stored
        .iter()
        .map(|c| crate::keys::records::used_key(&c.id))
        .collect();
    let used = settings
        .keyring
        .store()
        .get_many(&used_keys)
        .await
        .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
    for (client, used) in stored.iter().zip(used) {
        let used = used
            .and_then(|raw| serde_json::from_str(&raw).ok())
            .unwrap_or_default();
        clients.push(store_view(client, &used));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "clients": clients }),
    ))
}

/// A client by id (YAML first), as shown.
pub async fn view_of(settings: &ApiSettings, id: &str) -> Result<serde_json::Value, GatewayError> {
    if let Some(client) = settings
        .keyring
        .config_clients()
        .iter()
        .find(|c| c.id.as_str() == id)
    {
        return Ok(config_view(client));
    }
    match settings.keyring.stored_client(id).await? {
        Some((client, used)) => Ok(store_view(&client, &used)),
        None => Err(GatewayError::ClientNotFound(id.to_owned())),
    }
}

/// Roles from a request, each one an admin may grant.
fn grantable(settings: &ApiSettings, roles: &[String]) -> Result<Vec<Role>, GatewayError> {
    roles
        .iter()
        .map(|name| {
            let role: Role = name
                .parse()
                .map_err(|e: String| GatewayError::ParameterInvalid(e))?;
            if !settings.keys.assignable_roles.contains(&role) {
                return Err(GatewayError::ParameterInvalid(format!(
                    "role {name:?} cannot be granted (keys.assignable_roles: [{}])",
                    role_list(&settings.keys.assignable_roles)
                )));
            }
            Ok(role)
        })
        .collect()
}

/// `POST /clients`.
pub async fn create(
    settings: &ApiSettings,
    caller: &Principal,
    body: CreateBody,
) -> Result<serde_json::Value, GatewayError> {
    require_admin(settings, caller)?;
    let id = body.id.ok_or_else(|| {
        GatewayError::ParameterInvalid("give the client's id: {\"id\", \"roles\"}".into())
    })?;
    let id: ClientId = id.parse().map_err(GatewayError::ParameterInvalid)?;
    let roles = grantable(settings, &body.roles)?;
    let client = settings.keyring.create_client(&id, &roles, caller).await?;
    Ok(store_view(&client, &Default::default()))
}

/// `PATCH /clients/{id}`.
pub async fn update(
    settings: &ApiSettings,
    caller: &Principal,
    id: &str,
    body: UpdateBody,
) -> Result<serde_json::Value, GatewayError> {
    require_admin(settings, caller)?;
    let roles = body
        .roles
        .as_deref()
        .map(|r| grantable(settings, r))
        .transpose()?;
    let disabled = body.disabled;
    let (client, _) = settings
        .keyring
        .update_client(
            id,
            caller,
            |_| match disabled {
                Some(true) => ("client_disabled", None),
                Some(false) if roles.is_none() => ("client_enabled", None),
                _ => ("client_updated", None),
            },
            |client| {
                if let Some(roles) = &roles {
                    client.roles = roles.iter().map(|r| r.as_str().to_owned()).collect();
                }
                if let Some(disabled) = disabled {
                    client.disabled = disabled;
                }
                Ok(())
            },
        )
        .await?;
    let used = crate::keys::records::last_used(settings.keyring.store(), id)
        .await
        .unwrap_or_default();
    Ok(store_view(&client, &used))
}

/// When a key asked to expire at `expires` (RFC 3339 or a duration) expires, capped by
/// `keys.max_ttl`; no expiry asked: the cap.
fn expiry(settings: &ApiSettings, expires: Option<&str>) -> Result<u64, GatewayError> {
    let now = now_ms();
    let cap = now + settings.keys.max_ttl.as_millis() as u64;
    let Some(text) = expires else {
        return Ok(cap);
    };
    let at = match parse_duration(text) {
        Ok(after) => now + after.as_millis() as u64,
        Err(_) => humantime::parse_rfc3339(text)
            .map_err(|_| {
                GatewayError::ParameterInvalid(format!(
                    "expires {text:?} is neither an RFC 3339 time (2027-03-01T00:00:00Z) nor a duration (90d)"
                ))
            })?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    if at <= now {
        return Err(GatewayError::ParameterInvalid(format!(
            "expires {text:?} is not in the future"
        )));
    }
    Ok(at.min(cap))
}

/// A label for a new key: the one asked for (plain, unused), or `key-YYYYMMDD-xxxx`.
fn label_for(client: &StoredClient, asked: Option<&str>) -> Result<String, GatewayError> {
    let label = match asked {
        Some(label) => {
            if !crate::routes::valid_param(label) || label.len() > 64 {
                return Err(GatewayError::ParameterInvalid(
                    "a key label is 1-64 characters of A-Z a-z 0-9 . _ ~ -".into(),
                ));
            }
            label.to_owned()
        }
        None => format!(
            "key-{}-{:04x}",
            &rfc3339(SystemTime::now())[..10].replace('-', ""),
            rand::random::<u16>()
        ),
    };
    if client.keys.iter().any(|k| k.label == label) {
        return Err(GatewayError::ParameterInvalid(format!(
            "client {} already has a key labelled {label:?}",
            client.id
        )));
    }
    Ok(label)
}

/// `POST /clients/{id}/keys`.
pub async fn issue(
    settings: &ApiSettings,
    caller: &Principal,
    id: &str,
    body: KeyBody,
) -> Result<serde_json::Value, GatewayError> {
    require_admin(settings, caller)?;
    if body.retire_presented_after.is_some() || body.replaces.is_some() {
        return Err(GatewayError::ParameterInvalid(
            "retire_presented_after and replaces are for POST /tl-gateway/v1/me/keys".into(),
        ));
    }
    let expires = expiry(settings, body.expires.as_deref())?;
    let (client, (key, label)) = settings
        .keyring
        .update_client(
            id,
            caller,
            |client| {
                (
                    "key_issued",
                    client.keys.last().map(|k: &StoredKey| k.label.clone()),
                )
            },
            |client| {
                let label = label_for(client, body.label.as_deref())?;
                let (key, stored) = new_key(label.clone(), caller.client.as_str(), Some(expires));
                client.keys.push(stored);
                Ok((key, label))
            },
        )
        .await?;
    let _ = client;
    Ok(serde_json::json!({ "key": key, "label": label, "expires": time_of_ms(expires) }))
}

/// `DELETE /clients/{id}/keys/{label}`: admins, or the client itself.
pub async fn revoke(
    settings: &ApiSettings,
    caller: &Principal,
    id: &str,
    label: &str,
) -> Result<serde_json::Value, GatewayError> {
    if caller.client.as_str() != id {
        require_admin(settings, caller)?;
    }
    let at = rfc3339(SystemTime::now());
    let (client, _) = settings
        .keyring
        .update_client(
            id,
            caller,
            |_| ("key_revoked", Some(label.to_owned())),
            |client| {
                let key = client
                    .keys
                    .iter_mut()
                    .find(|k| k.label == label)
                    .ok_or_else(|| {
                        GatewayError::ParameterInvalid(format!(
                            "client {id} has no key labelled {label:?}"
                        ))
                    })?;
                if key.revoked_at.is_none() {
                    key.revoked_at = Some(at.clone());
                    key.revoked_by = Some(caller.client.as_str().to_owned());
                }
                Ok(())
            },
        )
        .await?;
    Ok(store_view(&client, &Default::default()))
}

/// `POST /me/keys`: a store client rotates its own key.
pub async fn rotate(
    settings: &ApiSettings,
    caller: &Principal,
    body: KeyBody,
) -> Result<serde_json::Value, GatewayError> {
    let presented = match (&caller.credential, body.replaces.as_deref()) {
        (Some(Credential::Key { label }), None) => label.to_string(),
        (Some(Credential::Key { label }), Some(named)) if **label == *named => label.to_string(),
        (Some(Credential::Key { .. }), Some(_)) => {
            return Err(GatewayError::ParameterInvalid(
                "a call with a key rotates that key: leave out replaces".into(),
            ))
        }
        // A person signed in on the page names which of their keys to replace.
        (Some(Credential::Oidc { .. }), Some(named)) => named.to_owned(),
        _ => {
            return Err(GatewayError::ParameterInvalid(
                "rotation replaces the key that makes the call: send it in x-api-key (signed in on the page: name it in replaces)".into(),
            ))
        }
    };
    let expires = expiry(settings, body.expires.as_deref())?;
    let overlap = match body.retire_presented_after.as_deref() {
        None => Duration::from_secs(86_400),
        Some(text) => parse_duration(text)
            .map_err(|e| GatewayError::ParameterInvalid(format!("retire_presented_after: {e}")))?,
    };
    let retire_at = now_ms() + overlap.as_millis() as u64;
    let id = caller.client.as_str();
    let (_, (key, label, retired)) = settings
        .keyring
        .update_client(
            id,
            caller,
            |client| {
                (
                    "key_rotated",
                    client.keys.last().map(|k: &StoredKey| k.label.clone()),
                )
            },
            |client| {
                let label = label_for(client, body.label.as_deref())?;
                let old = client
                    .keys
                    .iter_mut()
                    .find(|k| k.label == presented)
                    .ok_or_else(|| GatewayError::ClientReadOnly(id.to_owned()))?;
                let retired = old.expires_ms.map_or(retire_at, |at| at.min(retire_at));
                old.expires_ms = Some(retired);
                let (key, stored) = new_key(label.clone(), id, Some(expires));
                client.keys.push(stored);
                Ok((key, label, retired))
            },
        )
        .await?;
    Ok(serde_json::json!({
        "key": key,
        "label": label,
        "expires": time_of_ms(expires),
        "retires": { "label": presented, "at": time_of_ms(retired) },
    }))
}

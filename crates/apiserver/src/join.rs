//! Joining nodes, k3s-style: `dari server` writes `DIR/node-token` = `<sha256 of the CA>::<secret>`.
//! An agent fetches `/cacerts` (public), refuses a CA whose hash differs from the token's, then
//! POSTs to [`JOIN_PATH`] with `Authorization: Bearer <secret>` and receives its client
//! certificate (CN=system:node:NAME, O=system:nodes) and a serving certificate for its address.
//!
//! The same endpoint serves agents started with `--kubeconfig` (no token) that need the serving
//! certificate of their streaming endpoint: instead of the bearer secret, a verified client
//! certificate of `system:masters`, or of the node itself (`system:node:NAME` for nodeName NAME,
//! renewal), is accepted.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};

/// The join endpoint.
pub const JOIN_PATH: &str = "/v1-dari/node-certs";

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the caller (bearer secret, or `user`'s client certificate: see the module docs) and
/// issues the node's certificates.
pub fn issue(pki: &dari_pki::Pki, secret: &str, authorization: &str, user: Option<&dari_pki::UserInfo>, body: &[u8]) -> ApiResult<Value> {
    let given = authorization.strip_prefix("Bearer ");
    let secret_ok = given.is_some_and(|g| !secret.is_empty() && constant_time_eq(g.as_bytes(), secret.as_bytes()));
    if !secret_ok && (given.is_some() || user.is_none()) {
        return Err(ApiError::unauthorized());
    }
    let req: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("join request: {e}")))?;
    let node = req.get("nodeName").and_then(Value::as_str).unwrap_or("");
    if node.is_empty() || !dari_api::validation::dns1123_subdomain_errors(node).is_empty() {
        return Err(ApiError::bad_request(format!("join request: nodeName {node:?} is not a valid node name")));
    }
    if !secret_ok {
        if let Some(u) = user {
            let admin = u.groups.iter().any(|g| g == dari_pki::GROUP_MASTERS);
            let itself = u.name == format!("system:node:{node}");
            if !admin && !itself {
                return Err(ApiError::forbidden(format!("user {:?} may not request the certificates of node {node}", u.name)));
            }
        }
    }
    let ip = req.get("nodeIP").and_then(Value::as_str).unwrap_or("");
    let (client_cert, client_key) = pki
        .issue_client_cert(&format!("system:node:{node}"), &["system:nodes"], 365)
        .map_err(|e| ApiError::internal(format!("issuing the client certificate of {node}: {e}")))?;
    let mut sans = vec![node];
    if !ip.is_empty() {
        sans.push(ip);
    }
    let (serving_cert, serving_key) =
        pki.issue_serving_cert(node, &sans).map_err(|e| ApiError::internal(format!("issuing the serving certificate of {node}: {e}")))?;
    tracing::info!(node, ip, "node joined: certificates issued");
    Ok(json!({
        "ca": pki.ca_pem(),
        "clientCert": client_cert, "clientKey": client_key,
        "servingCert": serving_cert, "servingKey": serving_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

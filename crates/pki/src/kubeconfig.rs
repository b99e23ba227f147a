//! kubeconfig files with embedded credentials, as `kubectl` reads them.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

use crate::fsutil::{write_atomic, FileMode};
use crate::PkiError;

/// Name of the single context written by [`write_kubeconfig`].
pub const CONTEXT_NAME: &str = "default";

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<'a, Cluster<'a>>>,
    contexts: Vec<Named<'a, Context<'a>>>,
    current_context: &'a str,
    preferences: Preferences,
    users: Vec<Named<'a, User>>,
}

#[derive(Serialize)]
struct Preferences {}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct Cluster<'a> {
    cluster: ClusterBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterBody<'a> {
    certificate_authority_data: String,
    server: &'a str,
}

#[derive(Serialize)]
struct Context<'a> {
    context: ContextBody<'a>,
}

#[derive(Serialize)]
struct ContextBody<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct User {
    user: UserBody,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserBody {
    client_certificate_data: String,
    client_key_data: String,
}

/// Renders a kubeconfig (YAML) with one cluster, one user and one context named `default`
/// (the current context). PEMs are embedded base64-encoded, as `kubectl` expects.
pub fn render_kubeconfig(
    server_url: &str,
    cluster_name: &str,
    user: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<String, serde_yaml::Error> {
    let cfg = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: cluster_name,
            body: Cluster {
                cluster: ClusterBody {
                    certificate_authority_data: STANDARD.encode(ca_pem),
                    server: server_url,
                },
            },
        }],
        contexts: vec![Named {
            name: CONTEXT_NAME,
            body: Context {
                context: ContextBody {
                    cluster: cluster_name,
                    user,
                },
            },
        }],
        current_context: CONTEXT_NAME,
        preferences: Preferences {},
        users: vec![Named {
            name: user,
            body: User {
                user: UserBody {
                    client_certificate_data: STANDARD.encode(cert_pem),
                    client_key_data: STANDARD.encode(key_pem),
                },
            },
        }],
    };
    serde_yaml::to_string(&cfg)
}

/// Writes [`render_kubeconfig`]'s output to `path` (mode 0600, atomically, creating the parent
/// directory).
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    cluster_name: &str,
    user: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), PkiError> {
    let yaml = render_kubeconfig(server_url, cluster_name, user, ca_pem, cert_pem, key_pem)
        .map_err(|source| PkiError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PkiError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    write_atomic(path, yaml.as_bytes(), FileMode::Secret)
}

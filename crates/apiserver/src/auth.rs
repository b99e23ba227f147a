//! Authentication and authorization.
//!
//! Authentication is by x509 client certificate (CN = user, O = groups), verified against the
//! cluster CA during the TLS handshake; anonymous requests get 401 except health and version.
//! Authorization goes through [`Authorizer`], so RBAC can slot in: today every authenticated
//! user may do everything (RBAC objects are stored, not yet enforced).

pub use dari_pki::UserInfo;

/// What a request wants to do.
#[derive(Clone, Debug)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// API group.
    pub group: &'static str,
    /// Plural resource.
    pub resource: &'static str,
    /// Subresource.
    pub subresource: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: Option<String>,
}

/// Decides whether a user may perform a request.
pub trait Authorizer: Send + Sync {
    /// True when allowed.
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> bool;
}

/// Allows every authenticated user (the stand-in until RBAC is enforced).
pub struct AllowAuthenticated;

impl Authorizer for AllowAuthenticated {
    fn authorize(&self, user: &UserInfo, _attrs: &Attributes) -> bool {
        !user.name.is_empty()
    }
}

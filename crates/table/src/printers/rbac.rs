//! RBAC binding printers. (Roles and cluster roles have no printer upstream; they get the
//! default NAME / CREATED AT table, see `generic`.)

use serde_json::Value;

use super::{wide, Column, Ctx, Printer, Row, AGE, NAME};
use crate::json::{arr_at, str_at};

fn columns(what: &'static str) -> Vec<Column> {
    let (users, groups, sas) = match what {
        "roleBinding" => (
            "Users in the roleBinding",
            "Groups in the roleBinding",
            "ServiceAccounts in the roleBinding",
        ),
        _ => (
            "Users in the clusterRoleBinding",
            "Groups in the clusterRoleBinding",
            "ServiceAccounts in the clusterRoleBinding",
        ),
    };
    vec![
        NAME,
        super::col("Role", "string", "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable."),
        AGE,
        wide("Users", "string", users),
        wide("Groups", "string", groups),
        wide("ServiceAccounts", "string", sas),
    ]
}

/// `printRoleBinding` / `printClusterRoleBinding`: ROLE "Kind/name"; subjects split by
/// `rbac.SubjectsStrings` and joined by ", ".
fn binding_row(b: &Value, ctx: &Ctx<'_>) -> Row {
    let role = format!(
        "{}/{}",
        str_at(b, &["roleRef", "kind"]),
        str_at(b, &["roleRef", "name"])
    );
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let mut sas = Vec::new();
    for s in arr_at(b, &["subjects"]) {
        let name = str_at(s, &["name"]);
        match str_at(s, &["kind"]) {
            "ServiceAccount" => sas.push(format!("{}/{name}", str_at(s, &["namespace"]))),
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            _ => {}
        }
    }
    Row::new(vec![
        Value::from(str_at(b, &["metadata", "name"])),
        Value::from(role),
        ctx.age(b),
        Value::from(users.join(", ")),
        Value::from(groups.join(", ")),
        Value::from(sas.join(", ")),
    ])
}

pub(crate) const ROLEBINDINGS: Printer = Printer {
    columns: || columns("roleBinding"),
    row: binding_row,
};

pub(crate) const CLUSTERROLEBINDINGS: Printer = Printer {
    columns: || columns("clusterRoleBinding"),
    row: binding_row,
};

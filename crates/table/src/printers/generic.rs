//! Leases, and the tables for resources without a printer of their own.

use chrono::SecondsFormat;
use serde_json::Value;

use super::{col, Column, Printer, Row, AGE, CREATION_DOC, NAME};
use crate::json::{opt_str_at, str_at, time_at};

pub(crate) const LEASES: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Holder", "string", "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field."),
            AGE,
        ]
    },
    row: |lease, ctx| {
        Row::new(vec![
            Value::from(str_at(lease, &["metadata", "name"])),
            Value::from(opt_str_at(lease, &["spec", "holderIdentity"]).unwrap_or("")),
            ctx.age(lease),
        ])
    },
};

/// kube-apiserver's `rest.NewDefaultTableConvertor` (built-ins without a printer, e.g. roles and
/// clusterroles): NAME and CREATED AT, the creation time in RFC3339 UTC.
pub(crate) const CREATED_AT: Printer = Printer {
    columns: || -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                format: "",
                description: CREATION_DOC,
                priority: 0,
            },
        ]
    },
    row: |obj, _ctx| {
        // Go formats the zero time as 0001-01-01T00:00:00Z.
        let created = time_at(obj, &["metadata", "creationTimestamp"]).map_or_else(
            || "0001-01-01T00:00:00Z".to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        Row::new(vec![
            Value::from(str_at(obj, &["metadata", "name"])),
            Value::from(created),
        ])
    },
};

/// Anything else: NAME and AGE, as apiextensions-apiserver shows a CRD without printer columns
/// (its Age column has type "date" and a HumanDuration cell).
pub(crate) const NAME_AGE: Printer = Printer {
    columns: || {
        vec![
            NAME,
            Column {
                kind: "date",
                ..AGE
            },
        ]
    },
    row: |obj, ctx| {
        Row::new(vec![
            Value::from(str_at(obj, &["metadata", "name"])),
            ctx.age(obj),
        ])
    },
};

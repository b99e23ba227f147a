//! dari-api: what the Kubernetes API *is*, without any I/O.
//!
//! Objects are handled as `serde_json::Value` (as kube-apiserver's unstructured path does), so the
//! server stores and serves exactly what clients sent, plus defaults.
//!
//! Start from [`registry`] (every resource dari serves: group, version, kind, plural, scope,
//! subresources and storage prefix), then:
//! - [`selector`]: label and field selectors;
//! - [`defaults`]: defaulting as upstream for the fields users see;
//! - [`validation`]: field errors (`Invalid`, 422) with per-field causes;
//! - [`patch`]: JSON patch, JSON merge patch and strategic merge patch (merge keys from [`openapi`]);
//! - [`openapi`]: the Kubernetes v1.32 OpenAPI v2 document dari serves to kubectl.

pub mod defaults;
pub mod openapi;
pub mod patch;
pub mod registry;
pub mod selector;
pub mod validation;

pub use registry::{Resource, Scope, RESOURCES};

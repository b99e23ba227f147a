//! Networking printers: endpointslices, ingresses, ingressclasses, networkpolicies.

use serde_json::Value;

use super::core::load_balancer_ingress;
use super::{col, list_with_more, Column, Printer, Row, AGE, NAME};
use crate::json::{arr_at, get, opt_int_at, opt_str_at, present, str_at};
use crate::selector::format_label_selector;

fn name(obj: &Value) -> Value {
    Value::from(str_at(obj, &["metadata", "name"]))
}

pub(crate) const ENDPOINTSLICES: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("AddressType", "string", "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name."),
            col("Ports", "string", "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. When ports is empty, it indicates that there are no defined ports. When a port is defined with a nil port value, it indicates \"all ports\". Each slice may include a maximum of 100 ports."),
            col("Endpoints", "string", "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints."),
            AGE,
        ]
    },
    row: |slice, ctx| {
        const MAX: usize = 3;
        // formatDiscoveryPorts: the port number, else its name, else "*".
        let ports: Vec<String> = arr_at(slice, &["ports"])
            .iter()
            .map(
                |p| match (opt_int_at(p, &["port"]), opt_str_at(p, &["name"])) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => "*".to_string(),
                },
            )
            .collect();
        // formatDiscoveryEndpoints: every address of every endpoint, ready or not.
        let addresses: Vec<String> = arr_at(slice, &["endpoints"])
            .iter()
            .flat_map(|e| arr_at(e, &["addresses"]))
            .map(|a| a.as_str().unwrap_or("").to_string())
            .collect();
        Row::new(vec![
            name(slice),
            Value::from(str_at(slice, &["addressType"])),
            Value::from(list_with_more(&ports, ports.len(), MAX)),
            Value::from(list_with_more(&addresses, addresses.len(), MAX)),
            ctx.age(slice),
        ])
    },
};

/// `formatHosts`: up to 3 non-empty rule hosts, "*" when none, " + N more..." past 3 rules.
fn format_hosts(rules: &[Value]) -> String {
    const MAX: usize = 3;
    let mut list: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        if list.len() == MAX {
            more = true;
        }
        let host = str_at(rule, &["host"]);
        if !more && !host.is_empty() {
            list.push(host);
        }
    }
    if list.is_empty() {
        return "*".to_string();
    }
    let ret = list.join(",");
    if more {
        return format!("{ret} + {} more...", rules.len() - MAX);
    }
    ret
}

pub(crate) const INGRESSES: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Class", "string", "The name of the IngressClass resource that should be used for additional configuration"),
            col("Hosts", "string", "Hosts that incoming requests are matched against before the ingress rule"),
            col("Address", "string", "Address is a list containing ingress points for the load-balancer"),
            col("Ports", "string", "Ports of TLS configurations that open"),
            AGE,
        ]
    },
    row: |ing, ctx| {
        let class = opt_str_at(ing, &["spec", "ingressClassName"]).unwrap_or("<none>");
        let ports = if arr_at(ing, &["spec", "tls"]).is_empty() {
            "80"
        } else {
            "80, 443"
        };
        Row::new(vec![
            name(ing),
            Value::from(class),
            Value::from(format_hosts(arr_at(ing, &["spec", "rules"]))),
            Value::from(load_balancer_ingress(ing)),
            Value::from(ports),
            ctx.age(ing),
        ])
    },
};

pub(crate) const INGRESSCLASSES: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col(
                "Controller",
                "string",
                "Controller that is responsible for handling this class",
            ),
            col(
                "Parameters",
                "string",
                "A reference to a resource with additional parameters",
            ),
            AGE,
        ]
    },
    row: |class, ctx| {
        let parameters = match get(class, &["spec", "parameters"]) {
            None => "<none>".to_string(),
            Some(p) => {
                let mut s = str_at(p, &["kind"]).to_string();
                if present(p, &["apiGroup"]) {
                    s = format!("{s}.{}", str_at(p, &["apiGroup"]));
                }
                format!("{s}/{}", str_at(p, &["name"]))
            }
        };
        Row::new(vec![
            name(class),
            Value::from(str_at(class, &["spec", "controller"])),
            Value::from(parameters),
            ctx.age(class),
        ])
    },
};

pub(crate) const NETWORKPOLICIES: Printer = Printer {
    columns: || -> Vec<Column> {
        vec![
            NAME,
            col("Pod-Selector", "string", "podSelector selects the pods to which this NetworkPolicy object applies. The array of rules is applied to any pods selected by this field. An empty selector matches all pods in this namespace. Multiple network policy objects can select the same set of pods. In this case, the ingress rules for each are combined additively. This field is optional. If it is not specified, it defaults to an empty selector."),
            AGE,
        ]
    },
    row: |np, ctx| {
        // FormatLabelSelector(&spec.podSelector): the field is a struct, never nil, so an
        // absent selector is the empty one.
        let empty = Value::Object(Default::default());
        let selector = get(np, &["spec", "podSelector"]).unwrap_or(&empty);
        Row::new(vec![
            name(np),
            Value::from(format_label_selector(Some(selector))),
            ctx.age(np),
        ])
    },
};

//! Unit tests: creation, reuse, SAN re-issue, corruption errors, identities.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use x509_parser::prelude::*;

use super::*;

fn opts(sans: &[&str]) -> PkiOptions {
    PkiOptions {
        sans: sans.iter().map(|s| s.to_string()).collect(),
        service_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        hostname: "pi-one".into(),
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    // Independent of the crate's own PEM decoding: x509-parser's PEM reader.
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

fn sans_of(pem: &str) -> BTreeSet<String> {
    let der = der_of(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let ext = cert
        .subject_alternative_name()
        .unwrap()
        .expect("no SAN extension");
    ext.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
            }
            GeneralName::IPAddress(b) => {
                IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn subject_of(pem: &str) -> (Vec<String>, Vec<String>) {
    let der = der_of(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let o = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    (cn, o)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_everything_with_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let p = pki.paths();
    assert_eq!(p.dir, tmp.path().join("pki"));
    assert_eq!(mode(&p.dir), 0o700);
    for key in [&p.ca_key, &p.server_key, &p.admin_key] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }
    for crt in [&p.ca_crt, &p.server_crt, &p.admin_crt] {
        assert_eq!(mode(crt), 0o644, "{}", crt.display());
    }
    assert_eq!(std::fs::read_to_string(&p.ca_crt).unwrap(), pki.ca_pem());
    assert_eq!(
        std::fs::read_to_string(&p.admin_key).unwrap(),
        pki.admin_cert().key_pem
    );
}

#[test]
fn ca_is_a_ten_year_ca_named_dari_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let der = der_of(pki.ca_pem());
    let (_, ca) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(subject_of(pki.ca_pem()).0, vec!["dari-ca"]);
    assert_eq!(ca.subject(), ca.issuer());
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign());
    let lifetime = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
    let days = lifetime / 86_400;
    assert!((3650..=3651).contains(&days), "CA lifetime {days} days");
    ca.verify_signature(None).unwrap();
}

#[test]
fn server_cert_has_all_sans_and_server_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(
        tmp.path(),
        &opts(&["192.168.1.50", "api.example.com", "fd00::1"]),
    )
    .unwrap();
    let got = sans_of(&pki.server_cert().cert_pem);
    let want: BTreeSet<String> = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.1",
        "pi-one",
        "192.168.1.50",
        "api.example.com",
        "fd00::1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);

    let der = der_of(&pki.server_cert().cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let ca_der = der_of(pki.ca_pem());
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
}

#[test]
fn admin_cert_is_admin_system_masters() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    assert_eq!(
        subject_of(&pki.admin_cert().cert_pem),
        (vec!["admin".to_owned()], vec!["system:masters".to_owned()])
    );
    let user = identity_from_cert(&der_of(&pki.admin_cert().cert_pem)).unwrap();
    assert_eq!(
        user,
        UserInfo {
            name: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()]
        }
    );
}

#[test]
fn restart_reuses_everything_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(&["10.0.0.5"]);
    let a = Pki::load_or_create(tmp.path(), &o).unwrap();
    let files = |p: &PkiPaths| {
        [
            &p.ca_crt,
            &p.ca_key,
            &p.server_crt,
            &p.server_key,
            &p.admin_crt,
            &p.admin_key,
        ]
        .map(|f| std::fs::read(f).unwrap())
    };
    let before = files(a.paths());
    let b = Pki::load_or_create(tmp.path(), &o).unwrap();
    assert_eq!(files(b.paths()), before);
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.ca_hash(), b.ca_hash());
    assert_eq!(a.server_cert().cert_pem, b.server_cert().cert_pem);
    assert_eq!(a.server_cert().key_pem, b.server_cert().key_pem);
    assert_eq!(a.admin_cert().cert_pem, b.admin_cert().cert_pem);
    // A SAN that is already present (differently cased, duplicated) does not re-issue.
    let c =
        Pki::load_or_create(tmp.path(), &opts(&["10.0.0.5", "LOCALHOST", "kubernetes"])).unwrap();
    assert_eq!(a.server_cert().cert_pem, c.server_cert().cert_pem);
}

#[test]
fn new_tls_san_reissues_only_the_server_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Pki::load_or_create(tmp.path(), &opts(&["10.0.0.5"])).unwrap();
    let b = Pki::load_or_create(tmp.path(), &opts(&["10.0.0.5", "dari.lan"])).unwrap();
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.admin_cert().cert_pem, b.admin_cert().cert_pem);
    assert_ne!(a.server_cert().cert_pem, b.server_cert().cert_pem);
    assert_ne!(a.server_cert().key_pem, b.server_cert().key_pem);
    let sans = sans_of(&b.server_cert().cert_pem);
    assert!(
        sans.contains("dari.lan") && sans.contains("10.0.0.5"),
        "{sans:?}"
    );
    // The re-issued cert is what is on disk now, and is signed by the same CA.
    assert_eq!(
        std::fs::read_to_string(&b.paths().server_crt).unwrap(),
        b.server_cert().cert_pem
    );
    let c = Pki::load_or_create(tmp.path(), &opts(&["10.0.0.5", "dari.lan"])).unwrap();
    assert_eq!(b.server_cert().cert_pem, c.server_cert().cert_pem);
}

#[test]
fn issue_client_cert_sets_cn_orgs_and_validity() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let (cert, key) = pki
        .issue_client_cert("system:node:pi1", &["system:nodes"], 30)
        .unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let der = der_of(&cert);
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let days = (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 30, "1h backdate must not add a day");
    assert_eq!(
        identity_from_cert(&der).unwrap(),
        UserInfo {
            name: "system:node:pi1".into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()]
        }
    );
    let (cert, _) = pki.issue_client_cert("controller", &["a", "b"], 1).unwrap();
    assert_eq!(
        identity_from_cert(&der_of(&cert)).unwrap().groups,
        ["a", "b", "system:authenticated"]
    );
    let (cert, _) = pki.issue_client_cert("dup", &["a", "a", "b"], 1).unwrap();
    assert_eq!(subject_of(&cert).1, ["a", "b"]);
    assert!(matches!(
        pki.issue_client_cert("many", &["a", "b", "c"], 1),
        Err(PkiError::TooManyOrganizations { count: 3, .. })
    ));
    let (cert, _) = pki
        .issue_client_cert("x", &["system:authenticated"], 1)
        .unwrap();
    assert_eq!(
        identity_from_cert(&der_of(&cert)).unwrap().groups,
        ["system:authenticated"]
    );
}

#[test]
fn issue_serving_cert_has_given_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let (cert, _) = pki
        .issue_serving_cert("pi1", &["10.42.0.7", "pi1", "etcd.local"])
        .unwrap();
    assert_eq!(
        sans_of(&cert),
        ["10.42.0.7", "pi1", "etcd.local"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(subject_of(&cert).0, vec!["pi1"]);
    assert!(matches!(
        pki.issue_serving_cert("x", &["not a name"]),
        Err(PkiError::InvalidSan { san, .. }) if san == "not a name"
    ));
}

#[test]
fn invalid_tls_san_is_rejected_before_touching_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Pki::load_or_create(tmp.path(), &opts(&["bad_name!"])).unwrap_err();
    assert!(
        matches!(&err, PkiError::InvalidSan { san, .. } if san == "bad_name!"),
        "{err}"
    );
    assert!(!tmp.path().join("pki").exists());
    // Wildcards are accepted.
    Pki::load_or_create(tmp.path(), &opts(&["*.dari.lan"])).unwrap();
}

#[test]
fn identity_from_cert_requires_cn_and_valid_der() {
    assert!(matches!(
        identity_from_cert(b"garbage"),
        Err(PkiError::InvalidInput { .. })
    ));
    // A certificate with only an O and no CN.
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "o");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    assert!(matches!(
        identity_from_cert(cert.der()),
        Err(PkiError::NoCommonName)
    ));
    assert_eq!(peer_identity_from_chain(None).unwrap(), None);
}

#[test]
fn ca_hash_is_sha256_of_ca_der() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let h = pki.ca_hash();
    let hex = h.strip_prefix("sha256:").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(hex
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(h, ca_hash_der(&der_of(pki.ca_pem())));
    // Known vector: sha256("") .
    assert_eq!(
        ca_hash_der(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

// ---- damaged directories: every error names the path ----

fn damaged(setup: impl FnOnce(&PkiPaths)) -> (tempfile::TempDir, PkiError) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    setup(pki.paths());
    let err = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    (tmp, err)
}

fn assert_names(err: &PkiError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{msg:?} does not name {}",
        path.display()
    );
}

#[test]
fn missing_ca_key_is_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::remove_file(&paths.ca_key).unwrap();
        p = Some(paths.ca_key.clone());
    });
    assert!(matches!(err, PkiError::Missing { .. }));
    assert_names(&err, &p.unwrap());
}

#[test]
fn missing_ca_cert_is_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::remove_file(&paths.ca_crt).unwrap();
        p = Some(paths.ca_crt.clone());
    });
    assert!(matches!(err, PkiError::Missing { .. }));
    assert_names(&err, &p.unwrap());
}

#[test]
fn lost_ca_with_leaves_present_is_an_error_not_a_new_ca() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::remove_file(&paths.ca_crt).unwrap();
        std::fs::remove_file(&paths.ca_key).unwrap();
        p = Some(paths.clone());
    });
    let p = p.unwrap();
    assert!(matches!(err, PkiError::Missing { .. }));
    assert_names(&err, &p.ca_crt);
    assert!(!p.ca_crt.exists(), "must not create a new CA");
}

#[test]
fn corrupt_ca_cert_is_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::write(
            &paths.ca_crt,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        p = Some(paths.ca_crt.clone());
    });
    assert!(
        matches!(
            err,
            PkiError::Corrupt {
                what: "certificate",
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &p.unwrap());
}

#[test]
fn corrupt_server_key_is_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::write(&paths.server_key, "not a key").unwrap();
        p = Some(paths.server_key.clone());
    });
    assert!(
        matches!(
            err,
            PkiError::Corrupt {
                what: "private key",
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &p.unwrap());
}

#[test]
fn half_a_leaf_pair_is_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::remove_file(&paths.admin_key).unwrap();
        p = Some(paths.admin_key.clone());
    });
    assert!(matches!(err, PkiError::Missing { .. }));
    assert_names(&err, &p.unwrap());
}

#[test]
fn swapped_keys_are_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::copy(&paths.admin_key, &paths.server_key).unwrap();
        p = Some(paths.server_key.clone());
    });
    assert!(matches!(err, PkiError::Inconsistent { .. }), "{err:?}");
    assert_names(&err, &p.unwrap());
}

#[test]
fn leaf_from_another_ca_is_an_error() {
    let other = tempfile::tempdir().unwrap();
    let foreign = Pki::load_or_create(other.path(), &opts(&[])).unwrap();
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::copy(&foreign.paths().server_crt, &paths.server_crt).unwrap();
        std::fs::copy(&foreign.paths().server_key, &paths.server_key).unwrap();
        p = Some(paths.server_crt.clone());
    });
    assert!(matches!(err, PkiError::Inconsistent { .. }), "{err:?}");
    assert_names(&err, &p.unwrap());
}

#[test]
fn ca_cert_that_is_not_a_ca_is_an_error() {
    let mut p = None;
    let (_t, err) = damaged(|paths| {
        std::fs::copy(&paths.admin_crt, &paths.ca_crt).unwrap();
        std::fs::copy(&paths.admin_key, &paths.ca_key).unwrap();
        p = Some(paths.ca_crt.clone());
    });
    assert!(matches!(err, PkiError::Inconsistent { .. }), "{err:?}");
    assert_names(&err, &p.unwrap());
}

#[test]
fn deleted_leaf_pair_is_reissued_with_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    std::fs::remove_file(&a.paths().admin_crt).unwrap();
    std::fs::remove_file(&a.paths().admin_key).unwrap();
    let b = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.server_cert().cert_pem, b.server_cert().cert_pem);
    assert_ne!(a.admin_cert().cert_pem, b.admin_cert().cert_pem);
    assert_eq!(
        identity_from_cert(&der_of(&b.admin_cert().cert_pem))
            .unwrap()
            .name,
        "admin"
    );
}

#[test]
fn openssl_verifies_the_chain() {
    // An independent implementation checks what we issue. openssl is in Debian's base set;
    // if it is missing this fails rather than skips.
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let p = pki.paths();
    for (leaf, purpose) in [(&p.server_crt, "sslserver"), (&p.admin_crt, "sslclient")] {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(&p.ca_crt)
            .arg(leaf)
            .output()
            .expect("running openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl verify {}: {}{}",
            leaf.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kubeconfig_renders_expected_structure() {
    let yaml = render_kubeconfig(
        "https://127.0.0.1:6443",
        "dari",
        "admin",
        "CA",
        "CERT",
        "KEY",
    )
    .unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "Config");
    assert_eq!(v["current-context"], "default");
    assert_eq!(v["clusters"][0]["name"], "dari");
    assert_eq!(
        v["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    assert_eq!(
        v["clusters"][0]["cluster"]["certificate-authority-data"],
        "Q0E="
    );
    assert_eq!(v["contexts"][0]["name"], "default");
    assert_eq!(v["contexts"][0]["context"]["cluster"], "dari");
    assert_eq!(v["contexts"][0]["context"]["user"], "admin");
    assert_eq!(v["users"][0]["name"], "admin");
    assert_eq!(v["users"][0]["user"]["client-certificate-data"], "Q0VSVA==");
    assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
}

#[test]
fn pki_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pki>();
    check::<PkiError>();
}

//! `ponte pki dev`: the development PKI as a newcomer runs it — every file written, keys private,
//! a second run into the same directory refused unless forced. (What the certificates are worth
//! in a TLS handshake is tested in `ponte-access`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ponte_integration_tests::Stack;

#[test]
fn pki_dev_writes_the_ca_certificates_token_keys_and_policy_once() {
    let stack = Stack::new("pki");
    let out = stack.dir.path().join("pki");
    let out_arg = out.display().to_string();
    let (ok, stdout, stderr) = stack.ponte(&["pki", "dev", "--out", &out_arg]);
    assert!(ok.success(), "{stdout}{stderr}");
    for file in [
        "ca.pem",
        "server.pem",
        "education.pem",
        "health.pem",
        "assistance.pem",
        "federal.pem",
        "state-sp.pem",
        "municipality-3550308.pem",
        "operator.pem",
        "jwks.json",
        "policy.toml",
    ] {
        assert!(
            out.join(file).is_file(),
            "{file} missing; output:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("urn:ponte:principal:education"),
        "the output names each client's principal:\n{stdout}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca-key.pem", "server-key.pem", "token-signing-key.pem"] {
            let mode = std::fs::metadata(out.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    let ca = std::fs::read(out.join("ca.pem")).unwrap();

    let (again, _, stderr) = stack.ponte(&["pki", "dev", "--out", &out_arg]);
    assert!(!again.success());
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        ca,
        "nothing replaced"
    );

    let (forced, stdout, stderr) = stack.ponte(&["pki", "dev", "--out", &out_arg, "--force"]);
    assert!(forced.success(), "{stdout}{stderr}");
    assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), ca, "a new CA");
}

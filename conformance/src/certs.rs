//! Certificates for TLS tests, made with `openssl` (on PATH; `scripts/test` installs it): a CA,
//! and a server certificate for 127.0.0.1 and localhost that the CA signed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl` with `args` in `dir`; fails with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl on PATH (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir`: `<name>.pem` (its certificate, which this answers) and `<name>.key`.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    let subject = format!("/CN=oncely test {name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", &subject,
            "-keyout", &key, "-out", &cert,
        ],
    );
    dir.join(cert)
}

/// A server's certificate and key in `dir` (`<name>.pem`, `<name>.key`), for 127.0.0.1 and
/// localhost, signed by the CA `ca` that [`make_ca`] made in `dir`: `(certificate, key)`.
pub fn make_server_certificate(dir: &Path, ca: &str, name: &str) -> (PathBuf, PathBuf) {
    make_certificate_for(dir, ca, name, "IP:127.0.0.1,DNS:localhost")
}

/// As [`make_server_certificate`], for the names `alt_names` alone (openssl's
/// `subjectAltName` syntax, e.g. `IP:127.0.0.1`): a test of a name that does not match.
pub fn make_certificate_for(
    dir: &Path,
    ca: &str,
    name: &str,
    alt_names: &str,
) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(dir.join(&ext), format!("subjectAltName={alt_names}\n"))
        .expect("extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    (dir.join(cert), dir.join(key))
}

//! Every configuration under `examples/` validates with the real binary (`smartproxy
//! validate`), with throwaway certificates where a TLS example names files under `certs/`.

use std::process::Command;

use smartproxy_tests::*;

#[test]
fn every_example_validates() {
    let dir = workspace_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the examples are there: {files:?}");
    // The TLS examples name certs/example.com.{pem,key} and certs/internal-ca.pem relative to
    // the working directory.
    let pki = Pki::new();
    let leaf = pki.leaf("example.com", &["example.com", "www.example.com", "api.example.com"]);
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&leaf.cert, certs.join("example.com.pem")).unwrap();
    std::fs::copy(&leaf.key, certs.join("example.com.key")).unwrap();
    std::fs::copy(&pki.ca_pem, certs.join("internal-ca.pem")).unwrap();
    for f in &files {
        let out = Command::new(smartproxy_bin())
            .args(["validate", "-c"])
            .arg(f)
            .current_dir(work.path())
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // The timeouts table of the routes, then OK (the last line).
        assert!(
            out.status.success() && stdout.lines().last() == Some("OK"),
            "{}: {stdout}{stderr}",
            f.display()
        );
        assert!(stderr.is_empty(), "{}: no warnings expected: {stderr}", f.display());
    }
}

//! The command line: --version, validate (OK, or every error with its line and key), the
//! embedded demo, JSON configs.

use std::process::Command;

use smartproxy_tests::*;

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(smartproxy_bin()).args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_prints_the_package_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert!(
        out.contains("smartproxy")
            && out.contains(env!("CARGO_PKG_VERSION").split('.').next().unwrap()),
        "{out}"
    );
}

#[test]
fn validate_ok() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.toml"),
        "[[routes]]\nname = \"a\"\nmatch = { ports = [8080] }\naction = { type = \"forward\", targets = [{ host = \"127.0.0.1\", port = 9000 }] }\n",
    )
    .unwrap();
    let (code, out, err) = run(&["validate", "-c", "ok.toml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim_end().ends_with("OK"), "{out}");
}

#[test]
fn validate_reports_every_error_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"proxy_ips = ["10.0.0.0/33"]

[[routes]]
name = "a"
match = { ports = [0] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }

[[routes]]
name = "b"
match = { ports = [8081] }
action = { type = "forward", targets = [] }
"#;
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let (code, out, err) = run(&["validate", "-c", "bad.toml"], dir.path());
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    // `file:line: key path: message`, one line per error, every error.
    assert!(all.contains("bad.toml: 3 configuration errors"), "{all}");
    assert!(all.contains("bad.toml:1: proxy_ips[0]: "), "{all}");
    assert!(all.contains("bad.toml:5: routes[0].match.ports[0]: "), "{all}");
    assert!(all.contains("bad.toml:11: routes[1].action.targets: "), "{all}");

    // A syntax or type error names its line too.
    std::fs::write(
        dir.path().join("typo.toml"),
        "[[routes]]\nname = \"a\"\nmatch = { portz = [1] }\n",
    )
    .unwrap();
    let (code, out, err) = run(&["validate", "-c", "typo.toml"], dir.path());
    let all = format!("{out}{err}");
    assert_eq!(code, 1);
    assert!(all.contains("typo.toml:3: routes[0].match.portz: unknown field `portz`"), "{all}");
}

#[test]
fn json_config_runs() {
    let backend = Backend::echo();
    let (_p, [port]) = Proxy::start_on_with("json", &[], |[port]| {
        format!(
            r#"{{ "bind": ["127.0.0.1"], "routes": [ {{ "name": "j", "match": {{ "ports": [{port}] }}, "action": {{ "type": "forward", "targets": [{{ "host": "127.0.0.1", "port": {} }}] }} }} ] }}"#,
            backend.port()
        )
    });
    let mut s = connect(port);
    assert_eq!(echo_roundtrip(&mut s, b"json").unwrap(), b"json");
}

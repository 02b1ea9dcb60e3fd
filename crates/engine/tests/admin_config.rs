//! `[admin]` token and exposure rules, `watch_config`, and the redacted configuration dump.

use smartproxy_engine::{Config, Format, REDACTED};

fn parse(text: &str) -> Result<Config, String> {
    Config::from_str(text, Format::Toml).map_err(|e| e.to_string())
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token_or_an_explicit_opt_out() {
    let e = parse("workers = 1\n\n[admin]\nlisten = \"0.0.0.0:9900\"\n").unwrap_err();
    assert!(e.contains("line 4: admin.listen: `0.0.0.0:9900` is not a loopback address"), "{e}");
    assert!(e.contains("token_file") && e.contains("allow_unauthenticated = true"), "{e}");
    let e = parse("[admin]\nlisten = \"[::]:9900\"\n").unwrap_err();
    assert!(e.contains("admin.listen"), "{e}");

    let c = parse("[admin]\nlisten = \"0.0.0.0:9900\"\nallow_unauthenticated = true\n").unwrap();
    let a = c.admin.as_ref().unwrap();
    assert!(a.allow_unauthenticated && a.token.is_none());
    // Loopback needs nothing.
    for l in ["127.0.0.1:9900", "127.0.0.2:0", "[::1]:9900"] {
        parse(&format!("[admin]\nlisten = \"{l}\"\n")).unwrap();
    }
}

#[test]
fn the_token_file_is_read_at_load_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("token");
    std::fs::write(&good, "  0123456789abcdef0123456789abcdef\n").unwrap();
    let text = format!(
        "watch_config = true\n[admin]\nlisten = \"0.0.0.0:9900\"\ntoken_file = \"{}\"\n",
        good.display()
    );
    let c = parse(&text).unwrap();
    assert!(c.watch_config);
    let a = c.admin.as_ref().unwrap();
    assert_eq!(a.token.as_ref().unwrap().expose(), "0123456789abcdef0123456789abcdef");
    assert_eq!(format!("{:?}", a.token), "Some(AdminToken(<redacted>))");

    let cases = [
        ("missing", None, "cannot read"),
        ("empty", Some("\n"), "is empty"),
        ("short", Some("abc"), "use at least 16"),
        ("spaces", Some("0123456789 abcdef0123"), "one word"),
    ];
    for (name, content, want) in cases {
        let p = dir.path().join(name);
        if let Some(c) = content {
            std::fs::write(&p, c).unwrap();
        }
        let text =
            format!("[admin]\nlisten = \"127.0.0.1:9900\"\ntoken_file = \"{}\"\n", p.display());
        let e = parse(&text).unwrap_err();
        assert!(e.contains("line 3: admin.token_file:") && e.contains(want), "{name}: {e}");
    }
}

#[test]
fn the_effective_configuration_redacts_secrets_and_keeps_paths() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-t0ken-0123456789").unwrap();
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:9900"
token_file = "{}"

[[routes]]
name = "api"
match = {{ ports = [8080], headers = {{ "X-Api-Key" = "match-secret" }} }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9000 }}], http = {{ request_headers = {{ set = {{ "Authorization" = "Bearer upstream-secret", "X-Route" = "{{routeName}}" }} }} }} }}
"#,
        token.display()
    );
    let c = parse(&text).unwrap();
    let v = c.to_redacted_json();
    let s = v.to_string();
    for secret in ["s3cr3t-t0ken", "upstream-secret", "match-secret"] {
        assert!(!s.contains(secret), "{secret} leaked: {s}");
    }
    assert_eq!(v["admin"]["token_file"], token.display().to_string());
    assert!(v["admin"].get("token").is_none());
    assert!(s.contains(REDACTED));
    // Defaults are filled in and other values kept.
    assert_eq!(v["defaults"]["connect_timeout"], "10s");
    assert!(s.contains("{routeName}"), "{s}");
}

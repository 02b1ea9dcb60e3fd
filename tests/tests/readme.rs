//! The README's reference lists agree with the code they describe.

use smartproxy_metrics::RefuseReason;

/// The README's table under "Refusal reasons" names every refusal reason that logs and
/// metrics use, once each, and nothing else.
#[test]
fn readme_lists_every_refusal_reason_once() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the workspace README");
    let start = readme.find("### Refusal reasons").expect("a \"Refusal reasons\" section");
    let section = &readme[start..];
    let section = &section[..section[5..].find("\n#").map_or(section.len(), |e| e + 5)];
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| *name != "reason")
        .collect();
    let expected: Vec<&str> = RefuseReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(listed, expected, "README refusal table vs RefuseReason::ALL (same order)");
}

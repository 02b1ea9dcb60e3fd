//! `smartproxy completions SHELL` and `smartproxy man`: the generated scripts complete the real
//! commands (bash runs the script), and the manual page renders with man(1).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smartproxy"))
}

fn stdout_of(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "smartproxy {args:?}: {out:?}");
    assert!(out.stderr.is_empty(), "smartproxy {args:?} wrote to stderr: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `tool` (which must be installed: `cargo xtask deps` installs it) with `stdin`.
fn run_tool(tool: &str, args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{tool}` is needed by this test and could not start: {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// What bash offers after `smartproxy WORDS...` (the last word is the one being completed).
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "{script}\nCOMP_WORDS=(smartproxy {words})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n_smartproxy smartproxy '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len(),
        cur = words.last().copied().unwrap_or(""),
        prev = if words.len() >= 2 { words[words.len() - 2] } else { "smartproxy" },
    );
    let out = run_tool("bash", &["--norc", "--noprofile", "-s"], &[], &program);
    assert!(out.status.success(), "bash failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn bash_completion_offers_the_commands_and_their_options() {
    let script = stdout_of(&["completions", "bash"]);
    assert!(script.contains("complete -F _smartproxy"), "{script}");
    let words = bash_complete(&script, &[""]);
    for cmd in ["run", "validate", "completions", "man"] {
        assert!(words.iter().any(|w| w == cmd), "`smartproxy <TAB>` lacks {cmd}: {words:?}");
    }
    let words = bash_complete(&script, &["run", "--"]);
    assert!(words.iter().any(|w| w == "--config"), "`smartproxy run --<TAB>`: {words:?}");
    assert!(words.iter().any(|w| w == "--log-format"), "global options too: {words:?}");
    let words = bash_complete(&script, &["completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(words.iter().any(|w| w == shell), "`completions <TAB>` lacks {shell}: {words:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef smartproxy"), "{zsh}");
    let fish = stdout_of(&["completions", "fish"]);
    for cmd in ["run", "validate", "completions", "man"] {
        assert!(zsh.contains(&format!("'{cmd}:")), "zsh lacks {cmd}");
        assert!(fish.contains(&format!("-a \"{cmd}\"")), "fish lacks {cmd}:\n{fish}");
    }
    assert!(fish.contains("complete -c smartproxy"), "{fish}");
    assert!(fish.contains("-l config"), "fish lacks --config:\n{fish}");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"), "{out:?}");
}

#[test]
fn man_page_has_its_sections_and_renders_with_man() {
    let page = stdout_of(&["man"]);
    assert!(page.contains("\n.TH SMARTPROXY 1 "), "{page}");
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "\"EXIT STATUS\"",
        "SIGNALS",
        "ENVIRONMENT",
        "\"SEE ALSO\"",
        "VERSION",
    ] {
        assert!(page.contains(&format!("\n.SH {section}\n")), "no {section} section:\n{page}");
    }
    // man(1) from man-db, formatting with groff; warnings (-ww) would show on stderr.
    let out = run_tool(
        "man",
        &["--warnings=all", "-l", "-"],
        &[("MANWIDTH", "100"), ("MANPAGER", "cat"), ("PAGER", "cat"), ("MAN_KEEP_FORMATTING", "")],
        &page,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man failed: {errors}");
    assert!(errors.trim().is_empty(), "groff warnings:\n{errors}");
    // man may hyphenate or justify; compare with runs of spaces collapsed.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "smartproxy - a reverse proxy",
        "smartproxy run -c <FILE>",
        "smartproxy validate -c <FILE>",
        "smartproxy completions <SHELL>",
        "-c, --config <FILE>",
        "--log-format <LOG_FORMAT>",
        "64 usage error",
        "SIGHUP",
        "RUST_LOG",
        concat!("v", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(text.contains(expected), "the rendered page lacks `{expected}`:\n{text}");
    }
}

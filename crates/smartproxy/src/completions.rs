//! `smartproxy completions SHELL` and `smartproxy man`: shell completion scripts and the manual
//! page, generated from the clap definitions in `cli.rs`, so they cannot drift from the parser.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Arg, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use crate::cli::Cli;

/// The clap command with the name it is installed under.
fn command() -> clap::Command {
    let mut cmd = Cli::command().bin_name("smartproxy");
    cmd.build();
    cmd
}

/// Prints the completion script for `shell` on stdout.
pub(crate) fn print_completions(shell: Shell) -> ExitCode {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), "smartproxy", &mut out);
    write_stdout(&out)
}

/// Prints the manual page (roff, section 1) on stdout.
pub(crate) fn print_man() -> ExitCode {
    let mut out = Vec::new();
    match render_man(&mut out) {
        Ok(()) => write_stdout(&out),
        Err(e) => {
            crate::logs::say(format_args!("smartproxy: cannot render the manual page: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    #[allow(clippy::print_stdout)] // The command's output.
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::logs::say(format_args!("smartproxy: cannot write to stdout: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// The whole manual page: clap_mangen's title, NAME, SYNOPSIS, DESCRIPTION and OPTIONS (the
/// global options), then every command with its own options on the same page (no separate
/// smartproxy-run(1) pages to install), exit status, signals, environment and version.
pub(crate) fn render_man(out: &mut dyn Write) -> io::Result<()> {
    let cmd = command();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let man = Man::new(cmd.clone())
        .title("SMARTPROXY")
        .manual("smartproxy manual")
        .source(format!("smartproxy {version}"));
    man.render_title(out)?;
    // NAME: "smartproxy - what it is" (the about text starts with the name already).
    let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
    let about = about.strip_prefix("smartproxy: ").unwrap_or(&about);
    let mut name = Roff::new();
    name.control("SH", ["NAME"]);
    name.text([roman(format!("smartproxy - {about}"))]);
    name.to_writer(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let mut usage = vec![bold(format!("smartproxy {}", sub.get_name()))];
        for arg in own_args(sub) {
            usage.push(roman(" "));
            usage.extend(arg_synopsis(arg, true));
        }
        roff.control("TP", []);
        roff.text(usage);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        let args: Vec<&Arg> = own_args(sub).collect();
        if !args.is_empty() {
            roff.control("RS", []);
            for arg in args {
                roff.control("TP", []);
                roff.text(arg_synopsis(arg, false));
                let mut help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                if !help.is_empty() && !help.ends_with('.') {
                    help.push('.');
                }
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_owned())
                    .collect();
                if !values.is_empty() {
                    help.push_str(&format!(" One of: {}.", values.join(", ")));
                }
                roff.text([roman(help)]);
            }
            roff.control("RE", []);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "success, also after a graceful stop on SIGTERM or SIGINT"),
        ("1", "invalid configuration, or the proxy could not start"),
        ("64", "usage error (unknown option, missing argument)"),
    ] {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["SIGNALS"]);
    for (signal, meaning) in [
        (
            "SIGHUP",
            "re-read the configuration file and swap it in; a bad file is refused, logged, \
             and the old configuration stays (the same as POST /reload on the admin API)",
        ),
        (
            "SIGTERM, SIGINT",
            "stop accepting, let open connections finish for defaults.shutdown_grace \
             (30 s by default), close the rest, remove the kernel forwarding (nftables) \
             rules and exit 0",
        ),
    ] {
        roff.control("TP", []);
        roff.text([bold(signal)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([bold("RUST_LOG")]);
    roff.text([roman(
        "log filter (e.g. info,smartproxy_engine=debug); wins over --log-level when set",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(format!(
        "The configuration keys and the admin API: the README at {}",
        env!("CARGO_PKG_REPOSITORY")
    ))]);
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// A command's own arguments: not the global ones propagated from the top, not --help.
fn own_args(sub: &clap::Command) -> impl Iterator<Item = &Arg> {
    sub.get_arguments().filter(|a| !a.is_global_set() && !a.is_hide_set() && a.get_id() != "help")
}

/// `-c, --config <FILE>` (or `-c <FILE>` when `short`, for a usage line) or `<SHELL>` in roff.
fn arg_synopsis(arg: &Arg, short: bool) -> Vec<clap_mangen::roff::Inline> {
    let mut parts = Vec::new();
    if let Some(s) = arg.get_short() {
        parts.push(bold(format!("-{s}")));
    }
    if let Some(l) = arg.get_long().filter(|_| !(short && arg.get_short().is_some())) {
        if !parts.is_empty() {
            parts.push(roman(", "));
        }
        parts.push(bold(format!("--{l}")));
    }
    let names: Vec<String> = arg
        .get_value_names()
        .map(|n| n.iter().map(ToString::to_string).collect())
        .unwrap_or_else(|| vec![arg.get_id().as_str().to_uppercase()]);
    if arg.get_num_args().is_some_and(|n| n.takes_values()) || arg.is_positional() {
        if !parts.is_empty() {
            parts.push(roman(" "));
        }
        parts.push(italic(format!("<{}>", names.join(" "))));
    }
    parts
}

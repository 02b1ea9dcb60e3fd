//! `smartproxy-nftables`: the crate's manager on the command line, for operators debugging
//! kernel-forwarded routes and for the crate's own process tests.
//!
//! ```text
//! smartproxy-nftables check ROUTES.json     the problems of the routes, or OK
//! smartproxy-nftables print ROUTES.json     the nft JSON batch that creates the table
//! smartproxy-nftables run ROUTES.json       clean up a stale table, apply, print "applied",
//!                                           re-read and apply on SIGHUP, remove on SIGTERM/SIGINT
//! smartproxy-nftables status                the table as applied (JSON)
//! smartproxy-nftables cleanup               delete a table left behind by a crash
//! options: --table NAME (default smartproxy), --netns NAME (run nft in that namespace)
//! ```
//!
//! ROUTES.json is a JSON array of routes (the crate's `NftRoute`).
#![allow(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use smartproxy_nftables::{Error, Manager, Nft, NftRoute, Ruleset, TABLE, check};

const USAGE: &str = "usage: smartproxy-nftables [--table NAME] [--netns NAME] \
                     check|print|run ROUTES.json | status | cleanup";

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smartproxy-nftables: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    table: String,
    nft: Nft,
    command: String,
    file: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut table = TABLE.to_owned();
    let mut nft = Nft::new();
    let mut rest = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--table" => table = it.next().ok_or("--table needs a name")?,
            "--netns" => nft = Nft::in_netns(&it.next().ok_or("--netns needs a name")?),
            "-h" | "--help" => return Err(USAGE.into()),
            _ => rest.push(a),
        }
    }
    let mut rest = rest.into_iter();
    let command = rest.next().ok_or(USAGE)?;
    let file = rest.next();
    if rest.next().is_some() {
        return Err(USAGE.into());
    }
    Ok(Args { table, nft, command, file })
}

fn read_routes(file: Option<&str>) -> Result<Vec<NftRoute>, String> {
    let file = file.ok_or(USAGE)?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))
}

fn build(file: Option<&str>) -> Result<Ruleset, String> {
    Ruleset::build(&read_routes(file)?).map_err(|e| e.to_string())
}

fn real_main() -> Result<ExitCode, String> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(usage) => {
            eprintln!("{usage}");
            return Ok(ExitCode::from(64));
        }
    };
    let file = args.file.as_deref();
    let manager = Manager::with_table(args.nft, args.table.clone());
    let err = |e: Error| e.to_string();
    match args.command.as_str() {
        "check" => {
            let problems = check(&read_routes(file)?);
            if problems.is_empty() {
                println!("OK");
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                println!("{p}");
            }
            Ok(ExitCode::FAILURE)
        }
        "print" => {
            println!("{:#}", build(file)?.to_nft_json(&args.table));
            Ok(ExitCode::SUCCESS)
        }
        "status" => {
            println!("{:#}", manager.status_json().map_err(err)?);
            Ok(ExitCode::SUCCESS)
        }
        "cleanup" => {
            let removed = manager.cleanup_stale().map_err(err)?;
            println!("{}", if removed { "removed" } else { "no table" });
            Ok(ExitCode::SUCCESS)
        }
        "run" => run(&manager, file),
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

fn run(manager: &Manager, file: Option<&str>) -> Result<ExitCode, String> {
    let ruleset = build(file)?;
    // Signals first: a SIGTERM right after "applied" must find the handler in place.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| e.to_string())?;
    if manager.cleanup_stale().map_err(|e| e.to_string())? {
        println!("removed a stale table");
    }
    manager.apply(&ruleset).map_err(|e| e.to_string())?;
    println!("applied {} route(s) to table inet {}", ruleset.routes().len(), manager.table());
    for signal in signals.forever() {
        if signal == SIGHUP {
            match build(file).and_then(|r| manager.apply(&r).map_err(|e| e.to_string())) {
                Ok(()) => println!("reloaded"),
                Err(e) => eprintln!("smartproxy-nftables: reload refused, old rules stay: {e}"),
            }
            continue;
        }
        break;
    }
    manager.remove().map_err(|e| e.to_string())?;
    println!("removed table inet {}", manager.table());
    Ok(ExitCode::SUCCESS)
}

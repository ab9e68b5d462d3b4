//! `drover`: Drover's admin API from a terminal, and `drover serve`, which runs the control
//! plane and a data plane in one process. This file parses arguments, builds the runtime,
//! dispatches, and turns every failure into one line on stderr and exit code 1 (clap exits
//! with 2 on usage errors).

mod client;
mod commands;
mod output;
mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::client::GlobalArgs;
use crate::commands::{audit, cap, key, limit, module, price, provider, route, status, tenant, usage};

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "Drover LLM gateway: run it (`drover serve`) and manage it through the control plane's admin API",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; `serve`'s flags outweigh every other command's"
)]
enum Command {
    /// Run the control plane and one data plane in one process, with a SQLite database (--db).
    Serve(serve::ServeArgs),
    /// Upstream providers: add, list, remove.
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// Routes from public model names to provider models: set, list, remove.
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Model prices, USD per million tokens: set, list, remove.
    #[command(subcommand)]
    Price(price::PriceCommand),
    /// Gateway modules: list, enable, disable.
    #[command(subcommand)]
    Module(module::ModuleCommand),
    /// Tenants, who virtual keys belong to: create, list, update, suspend, resume, delete.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Virtual keys: create (the secret is shown once), list, revoke, rotate.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Rate limits of tenants and keys (requests and tokens per minute, concurrency): set, list,
    /// remove.
    #[command(subcommand)]
    Limit(limit::LimitCommand),
    /// Spend caps of tenants and keys, in USD per day, month or in total: set, list, remove.
    #[command(subcommand)]
    Cap(cap::CapCommand),
    /// Policy version and the data planes connected, with the version each serves.
    Status(status::StatusArgs),
    /// Requests, tokens and cost from the usage ledger, filtered and grouped, with a total.
    Usage(usage::UsageArgs),
    /// Admin identities with their own tokens and roles: create (the token is shown once), list,
    /// revoke.
    #[command(subcommand)]
    Admin(commands::admin::AdminCommand),
    /// The hash-chained audit log of admin calls: tail (and follow), export, verify, anchor.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Serve(args) => serve(args, global),
        Command::Provider(c) => admin(provider::run(c, global)),
        Command::Route(c) => admin(route::run(c, global)),
        Command::Price(c) => admin(price::run(c, global)),
        Command::Module(c) => admin(module::run(c, global)),
        Command::Tenant(c) => admin(tenant::run(c, global)),
        Command::Key(c) => admin(key::run(c, global)),
        Command::Limit(c) => admin(limit::run(c, global)),
        Command::Cap(c) => admin(cap::run(c, global)),
        Command::Status(c) => admin(status::run(c, global)),
        Command::Usage(c) => admin(usage::run(c, global)),
        Command::Admin(c) => admin(commands::admin::run(c, global)),
        Command::Audit(c) => admin(audit::run(c, global)),
    }
}

/// The error and its causes on one line, `outer: inner`. A cause whose text its parent's
/// message already includes is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    output::printable(&line)
}

/// Runs one admin command: a single call, so a single-threaded runtime.
fn admin(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command)
}

/// Runs both planes until Ctrl-C or SIGTERM, on a multi-threaded runtime.
fn serve(args: serve::ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let options = args.into_options(global, |name| std::env::var(name).ok())?;
    drover_proto::process::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(drover_proto::process::cancel_on_signal(shutdown.clone()));
        serve::run(options, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use drover_proto::model::Secret;

    use super::*;

    pub(crate) fn parse(argv: &[&str]) -> Cli {
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(e) => panic!("{argv:?} should parse: {e}"),
        }
    }

    /// The usage error clap prints for `argv`; asserts it is one (exit code 2).
    pub(crate) fn parse_err(argv: &[&str]) -> String {
        match Cli::try_parse_from(argv) {
            Ok(cli) => panic!("{argv:?} should not parse: {cli:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let cli = parse(&[
            "drover",
            "--server",
            "http://cp:1",
            "--token",
            "t",
            "--db",
            "x.db",
            "status",
        ]);
        assert_eq!(cli.global.server, "http://cp:1");
        assert_eq!(cli.global.token, Some(Secret::new("t")));
        assert_eq!(cli.global.db, std::path::PathBuf::from("x.db"));
        let cli = parse(&[
            "drover",
            "provider",
            "list",
            "--server",
            "http://cp:2",
            "--db",
            "y.db",
        ]);
        assert_eq!(cli.global.server, "http://cp:2");
        assert_eq!(cli.global.db, std::path::PathBuf::from("y.db"));
    }

    #[test]
    fn errors_print_on_one_line_without_repeating_causes() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let err = anyhow::Error::new(io()).context("binding gRPC on 127.0.0.1:1: Address already in use");
        assert_eq!(
            one_line(&err.context("starting the control plane")),
            "starting the control plane: binding gRPC on 127.0.0.1:1: Address already in use"
        );
        let err = anyhow::Error::new(io()).context("cannot listen\non 127.0.0.1:2");
        assert_eq!(
            one_line(&err),
            "cannot listen on 127.0.0.1:2: Address already in use"
        );
    }

    #[test]
    fn unknown_commands_are_usage_errors() {
        parse_err(&["drover"]);
        parse_err(&["drover", "frobnicate"]);
        parse_err(&["drover", "provider"]);
        parse_err(&["drover", "provider", "list", "--yaml"]);
    }
}

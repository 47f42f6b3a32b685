//! The `fjord` command line: `serve` runs the platform; the other commands scaffold, build,
//! deploy and manage functions against a gateway (fjord's, or any OpenFaaS-compatible one for
//! the API commands).

// `builder` and `templates` are public for tests/templates_contract.rs, which checks the
// templates in the layout `fjord build` makes, with this very code.
pub mod builder;
pub mod cli;
mod client;
mod commands;
mod config;
pub(crate) mod dockerfile;
mod error;
mod image;
pub mod templates;
mod watchdog;

use std::process::ExitCode;

use clap::Parser;

pub use error::CliError;

use cli::{Cli, Command};

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(f: F) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(e.to_string()))?
        .block_on(f)
}

/// Runs the command line; the binary's `main` only calls this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    use commands::{functions as fx, stack};
    let result = match cli.command {
        Command::Serve(a) => commands::serve::run(*a),
        Command::New(a) => stack::new(&a),
        Command::Build(a) => stack::build(&a),
        Command::Push {
            stack: s,
            image,
            registry,
            sign,
            gateway,
        } => block_on(stack::push(&s, image, &registry, &sign, &gateway)),
        Command::Watchdog => watchdog::run(),
        Command::Deploy(a) => block_on(stack::deploy(&a)),
        Command::Up(a) => block_on(stack::up(&a)),
        Command::Invoke(a) => block_on(fx::invoke(&a)),
        Command::List {
            verbose,
            json,
            namespace,
            gateway,
        } => block_on(fx::list(&gateway, namespace.as_deref(), verbose, json)),
        Command::Describe {
            name,
            namespace,
            json,
            gateway,
        } => block_on(fx::describe(&gateway, &name, namespace.as_deref(), json)),
        Command::Remove {
            names,
            namespace,
            stack: s,
            gateway,
        } => block_on(stack::remove(&names, namespace.as_deref(), &s, &gateway)),
        Command::Logs {
            name,
            namespace,
            follow,
            since,
            tail,
            gateway,
        } => block_on(fx::logs(
            &gateway,
            &name,
            namespace.as_deref(),
            follow,
            since,
            tail,
        )),
        Command::Scale {
            name,
            count,
            replicas,
            namespace,
            gateway,
        } => block_on(fx::scale(
            &gateway,
            &name,
            namespace.as_deref(),
            // clap requires exactly one of them.
            count.or(replicas).unwrap_or_default(),
        )),
        Command::Login {
            username,
            password,
            password_stdin,
            gateway,
        } => block_on(fx::login(&gateway, &username, password, password_stdin)),
        Command::Token { action, gateway } => block_on(fx::token(&gateway, action)),
        Command::Version { gateway } => block_on(fx::version(&gateway)),
        Command::Calls { action, gateway } => block_on(fx::calls(&gateway, action)),
        Command::Secret { action, gateway } => block_on(commands::secrets::run(&gateway, action)),
        Command::Namespace { action, gateway } => {
            block_on(commands::namespaces::run(&gateway, action))
        }
        Command::Images { action, gateway } => {
            block_on(commands::functions::images(&gateway, action))
        }
        Command::Key { action } => commands::trust::key(action),
        Command::Sign(a) => block_on(commands::trust::sign(&a)),
        Command::Trust { action, gateway } => block_on(commands::trust::run(&gateway, action)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

//! `fjord-bench`: the benchmark runner (`run`, which calls each of `scenarios::*` in turn and
//! hands their figures to `report`), its load generator (`load`) and its own http-mode
//! function (`function`). `scripts/bench` is the one command that uses them. Shared by the
//! scenarios: `fixtures` (fjord serve, nginx, the deployments), `measure` (a load with CPU
//! accounting, the cold-start loop), `stats`, and `figure` (one line of the report).

mod ab;
mod figure;
mod fixtures;
mod function;
mod load;
mod measure;
mod procs;
mod report;
mod run;
mod scenarios;
mod stats;
mod wrk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fjord-bench",
    version,
    about = "Benchmarks for fjord (use scripts/bench)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every scenario and write docs/BENCHMARKS.md and the JSON results
    Run {
        /// Short measurements (under 2 minutes) for day-to-day use
        #[arg(long)]
        quick: bool,
        /// The fjord binary to benchmark
        #[arg(long)]
        fjord: PathBuf,
        /// nginx binary for the reverse-proxy baseline
        #[arg(long, default_value = "/usr/sbin/nginx")]
        nginx: PathBuf,
        #[arg(long, default_value = "docs/BENCHMARKS.md")]
        out: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.json")]
        json: PathBuf,
        /// The command line recorded in the report
        #[arg(long, default_value = "scripts/bench")]
        command_line: String,
        /// Run one scenario alone and print its figures, without writing the report
        /// (`async`, `tls`, `fork`, `scale`, `templates`, or `ab`: this binary against --baseline-fjord);
        /// `containers` (root) also rewrites its own section of the report
        #[arg(long)]
        only: Option<String>,
        /// With `--only ab`: the fjord binary to compare with (e.g. built from the previous
        /// commit), started alternately with --fjord in the same run
        #[arg(long)]
        baseline_fjord: Option<PathBuf>,
    },
    /// Closed-loop load against one URL (http://HOST:PORT/PATH), printing throughput and latency
    Load {
        url: String,
        #[arg(short = 'c', long, default_value_t = 16)]
        connections: usize,
        #[arg(short = 'd', long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// POST this body instead of GET
        #[arg(long)]
        body: Option<String>,
    },
    /// Serve as an http-mode function on $PORT (used by the benchmark's deployments)
    Function,
    /// Exit at once (the bare process-start baseline)
    Noop,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Function => function::serve(),
        Command::Noop => Ok(()),
        Command::Load {
            url,
            connections,
            duration,
            body,
        } => block_on(async move {
            let mut target = load::Target::from_url(&url).await?;
            if let Some(body) = body {
                target = target.with_body(bytes::Bytes::from(body));
            }
            let r = load::run(&target, connections, Duration::from_millis(500), duration).await?;
            println!("{}", r.summary());
            if let Some(e) = r.first_error {
                println!("first error: {e}");
            }
            Ok(())
        }),
        Command::Run {
            quick,
            fjord,
            nginx,
            out,
            json,
            command_line,
            only,
            baseline_fjord,
        } => block_on(run::run(run::Options {
            quick,
            fjord,
            nginx,
            out_md: out,
            out_json: json,
            command: command_line,
            only,
            baseline_fjord,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

//! The scenarios of the report, one module each (or per group). Each takes the run's
//! [`Bench`] (options, timings, the figures and CPU lines gathered so far) and the gateway
//! to measure, deploys what it needs, and pushes its figures in the report's order.

pub mod async_queue;
pub mod cold_start;
pub mod connectors;
pub mod containers;
pub mod footprint;
pub mod fork;
pub mod scale;
pub mod soak;
pub mod templates;
pub mod tls;
pub mod ui;
pub mod warm_http;

use anyhow::Context;

use crate::figure::{CpuUse, Figure};
use crate::measure::Timing;
use crate::run::Options;

/// What one run carries from scenario to scenario.
pub struct Bench<'o> {
    pub opts: &'o Options,
    /// This binary: it is also the benchmark's function (`fjord-bench function`).
    pub bench_bin: String,
    pub timing: Timing,
    pub figures: Vec<Figure>,
    pub cpu: Vec<CpuUse>,
}

impl<'o> Bench<'o> {
    pub fn new(opts: &'o Options) -> anyhow::Result<Self> {
        let bench_bin = std::env::current_exe()?
            .to_str()
            .context("bench path is not UTF-8")?
            .to_string();
        Ok(Self {
            opts,
            bench_bin,
            timing: Timing::new(opts.quick),
            figures: Vec::new(),
            cpu: Vec::new(),
        })
    }

    pub fn quick(&self) -> bool {
        self.opts.quick
    }

    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }
}

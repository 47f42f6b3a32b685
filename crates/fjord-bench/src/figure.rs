//! One figure of the report (a line of the results table and of the JSON `rows`), and the
//! CPU-use lines beside it.

use serde::Serialize;

/// One line of the results table: a measured value, optionally against a baseline taken in
/// the same run and a target. Built with [`Figure::new`] and the chained setters.
#[derive(Debug, Serialize, PartialEq)]
pub struct Figure {
    pub scenario: String,
    pub figure: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<String>,
    pub baseline_value: Option<f64>,
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
    pub note: Option<String>,
}

impl Figure {
    pub fn new(scenario: &str, figure: &str, value: f64, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            unit: unit.into(),
            baseline: None,
            baseline_value: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
        }
    }

    /// The baseline and its value; the ratio value / baseline when the baseline is not 0.
    pub fn baseline(mut self, what: &str, v: f64) -> Self {
        self.baseline = Some(what.into());
        self.baseline_value = Some(v);
        if v != 0.0 {
            self.ratio = Some(self.value / v);
        }
        self
    }

    pub fn target(mut self, t: &str, met: bool) -> Self {
        self.target = Some(t.into());
        self.met = Some(met);
        self
    }

    /// A target only where it applies (e.g. the embedded queue's, not NATS's).
    pub fn target_when(self, applies: bool, t: &str, met: bool) -> Self {
        if applies { self.target(t, met) } else { self }
    }

    pub fn note(mut self, n: &str) -> Self {
        self.note = Some(n.into());
        self
    }

    /// The one-line form `--only` prints instead of writing the report.
    pub fn summary_line(&self) -> String {
        format!(
            "{} — {}: {:.1} {} (baseline {:?}, ratio {:?}, target {:?} met {:?}) {}",
            self.scenario,
            self.figure,
            self.value,
            self.unit,
            self.baseline_value,
            self.ratio,
            self.target,
            self.met,
            self.note.as_deref().unwrap_or("")
        )
    }
}

/// A CPU-use line: who used how much of the machine during one measurement.
#[derive(Debug, Serialize, PartialEq)]
pub struct CpuUse {
    pub measurement: String,
    pub gateway_pct: f64,
    pub replica_pct: f64,
    pub proxy_pct: f64,
    pub loadgen_pct: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_figure_has_no_baseline_target_or_note() {
        let f = Figure::new("s", "f", 1.5, "ms");
        assert_eq!(
            (
                f.baseline,
                f.baseline_value,
                f.ratio,
                f.target,
                f.met,
                f.note
            ),
            (None, None, None, None, None, None)
        );
    }

    #[test]
    fn baseline_sets_the_ratio_value_over_baseline() {
        let f = Figure::new("s", "f", 30.0, "ms").baseline("bare start", 10.0);
        assert_eq!(f.baseline.as_deref(), Some("bare start"));
        assert_eq!(f.baseline_value, Some(10.0));
        assert_eq!(f.ratio, Some(3.0));
    }

    #[test]
    fn a_zero_baseline_has_no_ratio() {
        let f = Figure::new("s", "f", 30.0, "ms").baseline("nothing", 0.0);
        assert_eq!(f.baseline_value, Some(0.0));
        assert_eq!(f.ratio, None);
    }

    #[test]
    fn target_records_whether_it_was_met() {
        let f = Figure::new("s", "f", 3.0, "ms").target("≤ 2 ms", false);
        assert_eq!(f.target.as_deref(), Some("≤ 2 ms"));
        assert_eq!(f.met, Some(false));
    }

    #[test]
    fn target_when_adds_the_target_only_where_it_applies() {
        let on = Figure::new("s", "f", 1.0, "").target_when(true, "0", true);
        let off = Figure::new("s", "f", 1.0, "").target_when(false, "0", true);
        assert_eq!((on.target.as_deref(), on.met), (Some("0"), Some(true)));
        assert_eq!((off.target, off.met), (None, None));
    }

    #[test]
    fn summary_line_shape() {
        let f = Figure::new("fork", "end-to-end p50", 1.234, "ms")
            .baseline("spawn", 0.5)
            .target("≤ 2 ms p50", true)
            .note("p99 2 ms");
        assert_eq!(
            f.summary_line(),
            "fork — end-to-end p50: 1.2 ms (baseline Some(0.5), ratio Some(2.468), \
             target Some(\"≤ 2 ms p50\") met Some(true)) p99 2 ms"
        );
        assert_eq!(
            Figure::new("s", "f", 2.0, "").summary_line(),
            "s — f: 2.0  (baseline None, ratio None, target None met None) "
        );
    }

    #[test]
    fn json_field_names_are_the_report_s() {
        let v = serde_json::to_value(Figure::new("s", "f", 1.0, "ms").baseline("b", 2.0)).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        let mut want = [
            "scenario",
            "figure",
            "value",
            "unit",
            "baseline",
            "baseline_value",
            "ratio",
            "target",
            "met",
            "note",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["target"], serde_json::Value::Null);
    }
}

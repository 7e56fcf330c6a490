//! The benchmark's results: one row per figure with its limit and ratio, printed as a table and
//! written as JSON together with the machine and the run's parameters.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

/// The unit of a figure, which also decides how it is printed.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    MessagesPerSecond,
    Seconds,
    Milliseconds,
    Mebibytes,
    Microseconds,
    Nanoseconds,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::MessagesPerSecond => "msg/s",
            Unit::Seconds => "s",
            Unit::Milliseconds => "ms",
            Unit::Mebibytes => "MiB",
            Unit::Microseconds => "µs",
            Unit::Nanoseconds => "ns",
        }
    }

    fn format(self, value: f64) -> String {
        let number = match self {
            Unit::MessagesPerSecond => group_thousands(value.round() as u64),
            Unit::Seconds => format!("{value:.3}"),
            Unit::Milliseconds | Unit::Microseconds | Unit::Nanoseconds => {
                if value < 10.0 {
                    format!("{value:.2}")
                } else {
                    format!("{value:.1}")
                }
            }
            Unit::Mebibytes => format!("{value:.1}"),
        };
        format!("{number} {}", self.suffix())
    }
}

fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// One measured figure. `ratio` is `value / limit`. Whether a high or a low ratio is good
/// depends on the figure, and `target` states which.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub stage: &'static str,
    pub figure: String,
    pub value: f64,
    pub unit: Unit,
    pub limit: Option<f64>,
    /// Name of the limit, e.g. `min(a, b)`.
    pub limit_name: Option<String>,
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(stage: &'static str, figure: impl Into<String>, value: f64, unit: Unit) -> Row {
        Row {
            stage,
            figure: figure.into(),
            value,
            unit,
            limit: None,
            limit_name: None,
            ratio: None,
            target: None,
            met: None,
        }
    }

    /// Sets the limit the figure is compared with, in the figure's unit, and the ratio.
    pub fn limit(mut self, name: impl Into<String>, limit: f64) -> Row {
        self.limit = Some(limit);
        self.limit_name = Some(name.into());
        self.ratio = (limit != 0.0).then(|| self.value / limit);
        self
    }

    /// Sets the target and whether this run met it.
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }
}

const HEADER: [&str; 8] = ["stage", "figure", "value", "limit", "limit is", "ratio", "target", "result"];

/// Formats a row's cells in [`HEADER`] order.
fn cells(row: &Row) -> [String; 8] {
    [
        row.stage.to_owned(),
        row.figure.clone(),
        row.unit.format(row.value),
        row.limit.map(|limit| row.unit.format(limit)).unwrap_or_default(),
        row.limit_name.clone().unwrap_or_default(),
        row.ratio.map(|ratio| format!("{ratio:.2}x")).unwrap_or_default(),
        row.target.clone().unwrap_or_default(),
        match row.met {
            Some(true) => "met".to_owned(),
            Some(false) => "MISSED".to_owned(),
            None => String::new(),
        },
    ]
}

/// Formats the rows as a Markdown table, for `BENCHMARKS.md`.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut text = format!("| {} |\n", HEADER.join(" | "));
    text.push_str("|---|---|--:|--:|---|--:|---|---|\n");
    for row in rows {
        text.push_str(&format!("| {} |\n", cells(row).join(" | ")));
    }
    text
}

/// Prints the rows as an aligned table on standard output.
pub fn print_table(rows: &[Row]) {
    let table: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let mut widths = HEADER.map(str::len);
    for row in &table {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Numbers are right-aligned so that their digits line up.
    let right_aligned = [false, false, true, true, false, true, false, false];
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (index, cell) in cells.iter().enumerate() {
            let pad = widths[index] - cell.chars().count();
            if right_aligned[index] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
            text.push_str("  ");
        }
        text.trim_end().to_owned()
    };
    println!("{}", line(&HEADER.map(str::to_owned)));
    println!("{}", "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    let mut previous_stage = "";
    for (row, row_cells) in rows.iter().zip(&table) {
        if !previous_stage.is_empty() && row.stage != previous_stage {
            println!();
        }
        previous_stage = row.stage;
        println!("{}", line(row_cells));
    }
}

/// The machine the run was taken on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_total_mib: u64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_total_mib = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(String::new, |(_, model)| model.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Machine { cores, memory_total_mib, cpu_model, kernel }
    }
}

/// Reads the 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs a short command and returns its trimmed standard output, or an empty string.
pub fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The JSON results file.
#[derive(Debug, Serialize)]
pub struct Document {
    pub command: String,
    /// UTC start time, ISO 8601.
    pub started_at: String,
    pub duration_s: f64,
    pub git_commit: String,
    pub build_profile: &'static str,
    pub machine: Machine,
    pub load_average_at_start: String,
    pub load_average_at_end: String,
    pub rows: Vec<Row>,
    /// Per-stage measurements behind the rows: raw samples, CPU time, parameters.
    pub details: BTreeMap<String, Value>,
}

impl Document {
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("creating {} failed: {error}", parent.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|error| format!("serializing the results: {error}"))?;
        std::fs::write(path, text + "\n").map_err(|error| format!("writing {} failed: {error}", path.display()))
    }
}

//! The results: one column of named metrics per server, and the markdown table that puts them
//! side by side with their ratio (or lists one alone).

use std::fmt::Write;

/// One measured value.
#[derive(Clone, Debug)]
pub enum Value {
    /// A number and how many decimals to print.
    Num(f64, usize),
    /// Something that is not a number (a close code, a count of closed sockets).
    Text(String),
}

impl Value {
    pub fn num(v: f64, decimals: usize) -> Value {
        Value::Num(v, decimals)
    }

    fn show(&self) -> String {
        match self {
            Value::Num(v, d) => format!("{v:.d$}", d = *d),
            Value::Text(t) => t.clone(),
        }
    }
}

/// One server's metrics, in the order they were measured, and its scenario failures.
#[derive(Default)]
pub struct Column {
    pub metrics: Vec<(String, Value)>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Column {
    pub fn put(&mut self, name: &str, value: Value) {
        self.metrics.push((name.to_string(), value));
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// The markdown table: one row per metric, one column per server (or configuration), then the
/// ratio second ÷ first (`reference ÷ Rust`; `defaults ÷ safety off`).
pub fn table(columns: &[(&str, &Column)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, column) in columns {
        for (name, _) in &column.metrics {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let mut out = String::new();
    let headings: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let _ = writeln!(out, "| metric | {} | ratio |", headings.join(" | "));
    let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(columns.len()));
    for name in names {
        let cells: Vec<Option<&Value>> = columns.iter().map(|(_, c)| c.get(name)).collect();
        let shown: Vec<String> = cells
            .iter()
            .map(|v| v.map(Value::show).unwrap_or_else(|| "—".into()))
            .collect();
        let ratio = match (cells.first(), cells.get(1)) {
            (Some(Some(Value::Num(a, _))), Some(Some(Value::Num(b, _)))) if *a > 0.0 => {
                format!("{:.2}", b / a)
            }
            _ => "—".into(),
        };
        let _ = writeln!(out, "| {name} | {} | {ratio} |", shown.join(" | "));
    }
    out
}

/// One column and no ratio (the clustered rows, which have no reference to compare with).
pub fn list(heading: &str, column: &Column) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| metric | {heading} |");
    let _ = writeln!(out, "|---|---:|");
    for (name, value) in &column.metrics {
        let _ = writeln!(out, "| {name} | {} |", value.show());
    }
    out
}

/// A part of the report of its own (the safety and clustered rows): its markdown, and what
/// failed.
pub struct Section {
    pub text: String,
    pub failures: Vec<String>,
}

impl Section {
    /// A section that could not be measured at all.
    pub fn failed(title: &str, failures: Vec<String>) -> Section {
        Section {
            text: format!("### {title}\n\nnot measured.\n"),
            failures,
        }
    }
}

//! The results: one column of named metrics per server, and the markdown table that puts them
//! side by side with their ratio.

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

/// The markdown table: one row per metric, one column per server, then `reference ÷ Rust`.
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

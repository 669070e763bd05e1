//! The load generator: `cargo bench --bench relay` measures stranger-relay and the Node + ws
//! reference server side by side, each a child process on loopback with every limit raised,
//! and prints one markdown table, then the Rust server with its safety defaults against
//! `POW_MAX_BITS=0 REPORTS=off` (`-- safety` alone) and three nodes on one Redis (`-- cluster`
//! alone); `-- soak` churns ten thousand sessions through every path and
//! fails on a leak; `-- growth` measures memory per session from 1 000 sessions to what the
//! open-file limit allows; `-- --smoke` runs the table's scenarios and a soak small against
//! the Rust server and checks correctness (and leaks) only.
//!
//! Scenarios (each in its own module): idle sockets and sockets in rooms (memory per
//! connection), chat at two rates (CPU per relayed message, latency), churn (matches per second,
//! CPU per match), slow readers (peak memory, what happens to them, the other rooms' latency),
//! soak (every path of a session, then nothing left behind), growth (per-session cost against
//! the crowd's size, repeated bursts), safety (the cost of the safety defaults), cluster
//! (cross-node chat and churn, Redis commands per message and per match). CPU and memory are read from outside the server, in
//! `/proc`.

#[path = "relay/chat.rs"]
mod chat;
#[path = "relay/churn.rs"]
mod churn;
#[path = "relay/client.rs"]
mod client;
#[path = "relay/cluster.rs"]
mod cluster;
#[path = "relay/cpus.rs"]
mod cpus;
#[path = "relay/growth.rs"]
mod growth;
#[path = "relay/idle.rs"]
mod idle;
#[path = "relay/options.rs"]
mod options;
#[path = "relay/procfs.rs"]
mod procfs;
#[path = "relay/report.rs"]
mod report;
#[path = "relay/safety.rs"]
mod safety;
#[path = "relay/server.rs"]
mod server;
#[path = "relay/slow_reader.rs"]
mod slow_reader;
#[path = "relay/soak.rs"]
mod soak;

use std::future::Future;
use std::process::ExitCode;
use std::time::Instant;

use options::{Options, Scenario};
use report::{Column, Section};
use server::{Kind, Server};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("relay bench: {e}");
            return ExitCode::from(2);
        }
    };
    // The soft open-file limit up to the hard one; the servers (children) inherit it.
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("relay bench: cannot raise the open-file limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let largest = match options.scenario {
        Scenario::Growth if !options.smoke => options
            .growth
            .sizes
            .iter()
            .map(|size| size.resolve(nofile))
            .chain([options.growth.burst_sessions])
            .max()
            .unwrap_or(0),
        _ => options.idle,
    };
    let needed = largest as u64 + 500;
    if nofile < needed {
        eprintln!(
            "relay bench: {largest} sockets need {needed} open files; the hard limit is {nofile} \
             (raise it, or pass --idle, --growth, --burst-sessions)"
        );
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let args = args.into_iter().filter(|a| a != "--bench").collect();
    runtime.block_on(async move {
        match (options.smoke, options.scenario) {
            (true, _) => smoke(options).await,
            (false, Scenario::Table) => full(options, args, nofile).await,
            (false, Scenario::Soak) => soak_alone(options).await,
            (false, Scenario::Growth) => growth_alone(options, args, nofile).await,
            (false, Scenario::Safety | Scenario::Cluster) => section_alone(options, args).await,
        }
    })
}

/// Every scenario against the Rust server, small; correctness (and, for the soak, leaks) only.
/// `-- --smoke soak`: the small soak alone.
async fn smoke(options: Options) -> ExitCode {
    let (ticks, _) = procfs::clock_ticks_per_sec();
    let started = Instant::now();
    let mut measured = match options.scenario {
        Scenario::Soak | Scenario::Safety | Scenario::Cluster => Measured::default(),
        Scenario::Table | Scenario::Growth => measure(Kind::Rust, &options, ticks).await,
    };
    for section in sections(&options, ticks).await {
        print!("{}", section.text);
        if section.failures.is_empty() {
            measured.passed += 1;
        }
        measured.column.failures.extend(section.failures);
    }
    if !matches!(options.scenario, Scenario::Safety | Scenario::Cluster) {
        eprintln!("== rust: soak");
        let soaked = soak::run(options.soak, ticks).await;
        print!("{}", soaked.text);
        if soaked.failures.is_empty() {
            measured.passed += 1;
        }
        measured
            .column
            .failures
            .extend(soaked.failures.into_iter().map(|f| format!("soak: {f}")));
    }
    let failed = measured.column.failures.len();
    let passed = measured.passed;
    for failure in &measured.column.failures {
        println!("FAILED {failure}");
    }
    println!(
        "smoke ({:.0} s): every scenario against the Rust server, small, correctness only; a \
         soak of {} connections checked for leaks",
        started.elapsed().as_secs_f64(),
        options.soak.round_sessions * (options.soak.rounds + 1)
    );
    println!("smoke: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Both servers, full size; the table.
async fn full(options: Options, args: Vec<String>, nofile: u64) -> ExitCode {
    let started = Instant::now();
    let machine = procfs::Machine::describe();
    let load_before = procfs::load_average();
    let (ticks, assumed) = procfs::clock_ticks_per_sec();
    let mut columns: Vec<(Kind, Measured)> = Vec::new();
    for &kind in &options.servers {
        if kind == Kind::Node
            && let Err(e) = server::npm_ci_if_needed()
        {
            let mut measured = Measured::default();
            measured.column.failures.push(e);
            columns.push((kind, measured));
            continue;
        }
        columns.push((kind, measure(kind, &options, ticks).await));
    }
    let sections = if options.servers.contains(&Kind::Rust) {
        sections(&options, ticks).await
    } else {
        Vec::new()
    };
    let load_after = procfs::load_average();

    let mut out = String::new();
    let command = if args.is_empty() {
        "cargo bench --bench relay".to_string()
    } else {
        format!("cargo bench --bench relay -- {}", args.join(" "))
    };
    let node_version = procfs::run("node", &["--version"]).unwrap_or_else(|| "?".into());
    let ws_version =
        std::fs::read_to_string(server::node_dir().join("node_modules/ws/package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into());
    out += "## stranger-relay benchmark\n\n";
    out += &format!("- date: {}\n", machine.date);
    out += &format!("- command: `{command}`\n");
    out += &format!(
        "- machine: nproc {}, {} MiB memory, {}, {}\n",
        machine.cpus, machine.mem_total_mib, machine.cpu_model, machine.kernel
    );
    out += &format!(
        "- load average (1/5/15 min) before: {load_before}; after: {load_after} (other work on the machine shows here)\n"
    );
    out += &format!(
        "- servers: stranger-relay release build; reference: Node {node_version} + ws {ws_version}; \
         each alone, a child process on 127.0.0.1, with every limit raised ({})\n",
        server::ENVIRONMENT
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    out += &format!(
        "- measured from outside: CPU = utime+stime of /proc/PID/stat at {ticks} ticks/s ({}), \
         RSS = VmRSS of /proc/PID/status; load generator: one tokio process (same machine, \
         loopback), open-file limit {nofile}\n",
        if assumed {
            "getconf CLK_TCK unavailable: 100 assumed"
        } else {
            "from getconf CLK_TCK"
        }
    );
    out += &format!("- run time: {:.0} s\n\n", started.elapsed().as_secs_f64());
    let table_columns: Vec<(&str, &Column)> = columns
        .iter()
        .map(|(kind, m)| (kind.column(), &m.column))
        .collect();
    out += &report::table(&table_columns);
    out += "\nratio = reference ÷ stranger-relay (above 1: the reference uses more of it, or \
            delivers more of it).\n\n";
    out += "Notes:\n";
    out += "- Chat texts are 64 characters; each side is paced by a tokio interval with \
            MissedTickBehavior::Burst (a late sender catches up), first ticks spread over one \
            period; latency is from just before the write to the partner's read, in the same \
            process. CPU per message and per match is the server's CPU over the run divided by \
            what was delivered.\n";
    out += "- KiB per connection = (RSS with the sockets open − RSS after a warm-up with none) ÷ N; \
            a V8 heap is collected when V8 decides, so the Node figure includes garbage not yet \
            collected.\n";
    out += "- Each server runs twice: one process for idle, chat and churn, a fresh one (started \
            and warmed up alike) for the slow readers, so that their peak RSS is their own and \
            not the high-water mark of ten thousand idle sockets.\n";
    out += "- Client and server share the machine's cores: when the load generator's CPU plus the \
            server's approaches nproc × 100 %, the machine, not the server, bounds the rate.\n";
    let mut failed = false;
    for (kind, measured) in &columns {
        for note in &measured.column.notes {
            out += &format!("- {}: {note}\n", kind.column());
        }
        for failure in &measured.column.failures {
            out += &format!("- FAILED, {}: {failure}\n", kind.column());
            failed = true;
        }
    }
    for section in &sections {
        out += &format!("\n{}", section.text);
        for failure in &section.failures {
            out += &format!("- FAILED: {failure}\n");
            failed = true;
        }
    }
    print!("{out}");
    let copy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
    if std::fs::create_dir_all(&copy).is_ok() {
        let _ = std::fs::write(copy.join("bench.md"), &out);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The safety rows (defaults against `POW_MAX_BITS=0 REPORTS=off`) and the clustered rows, as
/// the scenario asks (the table and the smoke run have both).
async fn sections(options: &Options, ticks: u64) -> Vec<Section> {
    let mut out = Vec::new();
    if options.scenario != Scenario::Cluster && options.scenario != Scenario::Soak {
        out.push(safety::run(&options.safety, ticks).await);
    }
    if options.scenario != Scenario::Safety && options.scenario != Scenario::Soak {
        out.push(cluster::run(&options.cluster, ticks).await);
    }
    out
}

/// `-- safety`, `-- cluster`: that section alone, printed and copied to
/// `test-output/<scenario>.md`.
async fn section_alone(options: Options, args: Vec<String>) -> ExitCode {
    let (ticks, _) = procfs::clock_ticks_per_sec();
    let machine = procfs::Machine::describe();
    let name = if options.scenario == Scenario::Safety {
        "safety"
    } else {
        "cluster"
    };
    let mut out = format!(
        "## stranger-relay {name}\n\n- date: {}\n- command: `cargo bench --bench relay -- {}`\n- \
         machine: nproc {}, {} MiB memory, {}, {}\n- load average before: {}\n",
        machine.date,
        args.join(" "),
        machine.cpus,
        machine.mem_total_mib,
        machine.cpu_model,
        machine.kernel,
        procfs::load_average()
    );
    let mut passed = true;
    for section in sections(&options, ticks).await {
        out += &format!("- load average after: {}\n\n", procfs::load_average());
        out += &section.text;
        for failure in &section.failures {
            out += &format!("- FAILED: {failure}\n");
            passed = false;
        }
    }
    finish(&out, &format!("{name}.md"), passed)
}

/// `-- soak`: the soak alone, printed and copied to `test-output/soak.md`.
async fn soak_alone(options: Options) -> ExitCode {
    let (ticks, _) = procfs::clock_ticks_per_sec();
    let machine = procfs::Machine::describe();
    let mut out = format!(
        "## stranger-relay soak\n\n- date: {}\n- command: `cargo bench --bench relay -- soak`\n- \
         machine: nproc {}, {} MiB memory, {}, {}\n- load average before: {}\n\n",
        machine.date,
        machine.cpus,
        machine.mem_total_mib,
        machine.cpu_model,
        machine.kernel,
        procfs::load_average()
    );
    let soaked = soak::run(options.soak, ticks).await;
    out += &soaked.text;
    for failure in &soaked.failures {
        out += &format!("- FAILED: {failure}\n");
    }
    out += &format!(
        "\nsoak: {}\n",
        if soaked.failures.is_empty() {
            "passed"
        } else {
            "FAILED"
        }
    );
    finish(&out, "soak.md", soaked.failures.is_empty())
}

/// `-- growth`: memory against the crowd's size, printed and copied to `test-output/growth.md`.
async fn growth_alone(options: Options, args: Vec<String>, nofile: u64) -> ExitCode {
    let (ticks, _) = procfs::clock_ticks_per_sec();
    let machine = procfs::Machine::describe();
    for &kind in &options.servers {
        if kind == Kind::Node
            && let Err(e) = server::npm_ci_if_needed()
        {
            eprintln!("relay bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut out = format!(
        "## stranger-relay growth\n\n- date: {}\n- command: `cargo bench --bench relay -- {}`\n- \
         machine: nproc {}, {} MiB memory, {}, {}\n- load average before: {}\n",
        machine.date,
        args.join(" "),
        machine.cpus,
        machine.mem_total_mib,
        machine.cpu_model,
        machine.kernel,
        procfs::load_average()
    );
    let grown = growth::run(&options.growth, &options.servers, nofile, ticks).await;
    out += &format!("- load average after: {}\n\n", procfs::load_average());
    out += &grown.text;
    for failure in &grown.failures {
        out += &format!("- FAILED: {failure}\n");
    }
    finish(&out, "growth.md", grown.failures.is_empty())
}

/// Prints `out`, copies it to `test-output/<file>`, and exits with success when `passed`.
fn finish(out: &str, file: &str, passed: bool) -> ExitCode {
    print!("{out}");
    let copy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
    if std::fs::create_dir_all(&copy).is_ok() {
        let _ = std::fs::write(copy.join(file), out);
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What one server gave: its column and how many scenarios passed.
#[derive(Default)]
struct Measured {
    column: Column,
    passed: usize,
}

/// Runs scenarios one after the other, logging each and counting passes and failures.
struct Tally {
    server: &'static str,
    passed: usize,
    failures: Vec<String>,
}

impl Tally {
    async fn step<T>(
        &mut self,
        scenario: &str,
        run: impl Future<Output = Result<T, String>>,
    ) -> Option<T> {
        let started = Instant::now();
        eprintln!("== {}: {scenario}", self.server);
        let outcome = run.await;
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(value) => {
                self.passed += 1;
                eprintln!("   {} {scenario}: ok ({took:.1} s)", self.server);
                Some(value)
            }
            Err(e) => {
                eprintln!("   {} {scenario}: FAILED ({took:.1} s): {e}", self.server);
                self.failures.push(format!("{scenario}: {e}"));
                None
            }
        }
    }
}

/// Starts one server, runs every scenario against it, stops it. The slow-reader scenario gets a
/// fresh process of the same server: a process's RSS rarely shrinks, so after ten thousand idle
/// sockets the peak of the slow-reader scenario would be hidden under the earlier high-water mark.
async fn measure(kind: Kind, options: &Options, ticks: u64) -> Measured {
    let mut column = Column::default();
    let mut tally = Tally {
        server: kind.short(),
        passed: 0,
        failures: Vec::new(),
    };
    if let Some(server) = start(kind, options, ticks, &mut tally).await {
        let idle = idle::run(&server, options.idle, options.settle, &mut column);
        tally.step("idle", idle).await;
        for load in &options.chat {
            let chat = chat::measure(&server, *load, ticks, &mut column);
            tally.step(&format!("chat {}", load.label()), chat).await;
        }
        let churn = churn::run(
            &server,
            options.churn_workers,
            options.churn_secs,
            ticks,
            &mut column,
        );
        if let Some(churned) = tally.step("churn", churn).await {
            let cores = procfs::Machine::describe().cpus as f64 * 100.0;
            let client = churned.client.percent_of_core();
            let srv = churned.server.percent_of_core();
            if client > 90.0 || client + srv > 0.9 * cores {
                column.notes.push(format!(
                    "churn: {:.0} matches; the load generator used {client:.0} % of a core and \
                     the server {srv:.0} % ({cores:.0} % in all on this machine): the machine \
                     bounds the match rate, not the server alone",
                    churned.matches
                ));
            }
            if kind == Kind::Node && srv > 95.0 {
                column.notes.push(format!(
                    "churn: the reference used {srv:.0} % of a core: its one JavaScript thread \
                     (the event loop) is saturated, so this is its ceiling on one process"
                ));
            }
        }
        stop(server, &mut tally, &mut column).await;
    }
    if let Some(server) = start(kind, options, ticks, &mut tally).await {
        let strict = kind == Kind::Rust;
        let slow = slow_reader::run(&server, options.slow, strict, ticks, &mut column);
        tally.step("slow reader", slow).await;
        stop(server, &mut tally, &mut column).await;
    }
    column.failures.extend(tally.failures);
    Measured {
        column,
        passed: tally.passed,
    }
}

/// Starts the server and warms it up; `None` (a failure recorded) if it would not start.
async fn start(kind: Kind, options: &Options, ticks: u64, tally: &mut Tally) -> Option<Server> {
    let server = tally.step("start", Server::start(kind)).await?;
    let warm = warm_up(&server, options.warm_up_rooms, ticks);
    tally.step("warm-up", warm).await;
    Some(server)
}

/// SIGTERM; a failure if it had to be killed, a note if it exited other than with 0.
async fn stop(server: Server, tally: &mut Tally, column: &mut Column) {
    match tally.step("stop", server.stop()).await {
        Some(status) if status.contains("exit status: 0") => {}
        Some(status) => column
            .notes
            .push(format!("exited with {status} after SIGTERM")),
        None => {}
    }
}

/// A few rooms chat briefly, so that the baseline is taken from a server that has served.
pub async fn warm_up(server: &Server, rooms: usize, ticks: u64) -> Result<(), String> {
    let open = chat::open_rooms(server, "w", rooms).await?;
    let load = chat::Load {
        rooms,
        rate: 20.0,
        secs: 1.0,
    };
    chat::run(open, load, server.pid, ticks).await.check()?;
    server.wait_empty().await
}

//! The command line: which servers, how big each scenario is, and the smoke mode's small sizes.

use std::time::Duration;

use crate::chat::Load;
use crate::cluster;
use crate::growth::{self, Size};
use crate::safety;
use crate::server::Kind;
use crate::slow_reader;
use crate::soak;

pub const USAGE: &str = "\
cargo bench --bench relay [-- [soak|growth|safety|cluster] OPTIONS]

  (no scenario)           the table: idle, chat, churn, slow readers, both servers; then the
                          safety and clustered rows (~5 min)
  safety                  the Rust server with the safety defaults against POW_MAX_BITS=0
                          REPORTS=off: churn, alternating, and a chat (~1.5 min)
  cluster                 3 nodes on one redis-server: cross-node chat, churn, Redis commands
                          (~1 min)
  soak                    10 000 sessions churned through every path after a 70 s warm-up,
                          then a leak check (~3 min)
  growth                  memory per session at 1 000 ... 19 000 sessions, and repeated bursts
                          (~6 min with both servers)
  --smoke                 the Rust server only, small, correctness only, the table's scenarios,
                          safety on and off, a 3-node cluster and a soak of 1 000 sessions
                          (about a minute)
  --server rust|node|both which servers to measure [both]
  --idle N                idle sockets [10000]
  --chat ROOMSxRATE,...   chat configurations, rate per side per second [1000x5,100x200]
  --chat-secs T           seconds of each chat configuration [15]
  --churn-workers W       churn workers [50]
  --churn-secs T          seconds of churn [15]
  --slow-rooms N          rooms whose one side stops reading [20]
  --slow-normal ROOMSxRATE  normal rooms beside them [200x5]
  --slow-secs T           seconds the normal rooms chat beside the slow readers [20]
  --slow-baseline-secs T  seconds of the same normal rooms alone [10]
  --soak-sessions N       soak: connections per round [2000]
  --soak-rounds K         soak: measured rounds after the warm-up [5]
  --growth N,N,...,max    growth: sizes; max = what the open-file limit allows [1000,5000,10000,max]
  --bursts K              growth: bursts against one server [5]
  --burst-sessions N      growth: sessions per burst [10000]
";

/// Which scenarios run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The side-by-side table (the default).
    Table,
    Soak,
    Growth,
    Safety,
    Cluster,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub smoke: bool,
    pub scenario: Scenario,
    pub servers: Vec<Kind>,
    pub idle: usize,
    pub chat: Vec<Load>,
    pub churn_workers: usize,
    pub churn_secs: f64,
    pub slow: slow_reader::Config,
    /// Pause before an RSS reading, for the server to settle.
    pub settle: Duration,
    pub warm_up_rooms: usize,
    pub soak: soak::Config,
    pub growth: growth::Config,
    pub safety: safety::Config,
    pub cluster: cluster::Config,
}

impl Options {
    fn full() -> Options {
        Options {
            smoke: false,
            scenario: Scenario::Table,
            servers: vec![Kind::Rust, Kind::Node],
            idle: 10_000,
            chat: vec![load(1000, 5.0, 15.0), load(100, 200.0, 15.0)],
            churn_workers: 50,
            churn_secs: 15.0,
            slow: slow_reader::Config {
                slow_rooms: 20,
                normal: load(200, 5.0, 20.0),
                baseline_secs: 10.0,
            },
            settle: Duration::from_secs(2),
            warm_up_rooms: 200,
            soak: soak::Config {
                round_sessions: 2000,
                rounds: 5,
                warm_up: Duration::from_secs(70),
                settle: Duration::from_secs(2),
            },
            growth: growth::Config {
                sizes: vec![
                    Size::Sessions(1000),
                    Size::Sessions(5000),
                    Size::Sessions(10_000),
                    Size::Max,
                ],
                bursts: 5,
                burst_sessions: 10_000,
                settle: Duration::from_secs(2),
                warm_up_rooms: 200,
            },
            safety: safety::Config::full(),
            cluster: cluster::Config::full(),
        }
    }

    fn smoke() -> Options {
        Options {
            smoke: true,
            scenario: Scenario::Table,
            servers: vec![Kind::Rust],
            idle: 300,
            chat: vec![load(50, 5.0, 2.0), load(10, 50.0, 2.0)],
            churn_workers: 10,
            churn_secs: 2.0,
            slow: slow_reader::Config {
                slow_rooms: 2,
                normal: load(20, 5.0, 8.0),
                baseline_secs: 2.0,
            },
            settle: Duration::from_millis(300),
            warm_up_rooms: 20,
            soak: soak::Config {
                round_sessions: 200,
                rounds: 5,
                warm_up: Duration::ZERO,
                settle: Duration::from_millis(500),
            },
            growth: Options::full().growth,
            safety: safety::Config::smoke(),
            cluster: cluster::Config::smoke(),
        }
    }

    /// Parses the arguments after `--` (cargo adds `--bench`, ignored). `Ok(None)`: `--help`.
    pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let mut o = if args.iter().any(|a| a == "--smoke") {
            Options::smoke()
        } else {
            Options::full()
        };
        let mut chat_secs = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--bench" | "--smoke" => {}
                "soak" => o.scenario = Scenario::Soak,
                "growth" => o.scenario = Scenario::Growth,
                "safety" => o.scenario = Scenario::Safety,
                "cluster" => o.scenario = Scenario::Cluster,
                "--soak-sessions" => o.soak.round_sessions = number(arg, &value()?)?,
                "--soak-rounds" => o.soak.rounds = number(arg, &value()?)?,
                "--growth" => {
                    o.growth.sizes = value()?
                        .split(',')
                        .map(|v| match v {
                            "max" => Ok(Size::Max),
                            n => number(arg, n).map(Size::Sessions),
                        })
                        .collect::<Result<_, _>>()?
                }
                "--bursts" => o.growth.bursts = number(arg, &value()?)?,
                "--burst-sessions" => o.growth.burst_sessions = number(arg, &value()?)?,
                "--help" | "-h" => return Ok(None),
                "--server" => {
                    o.servers = match value()?.as_str() {
                        "rust" => vec![Kind::Rust],
                        "node" => vec![Kind::Node],
                        "both" => vec![Kind::Rust, Kind::Node],
                        other => return Err(format!("--server {other}: rust, node or both")),
                    }
                }
                "--idle" => o.idle = number(arg, &value()?)?,
                "--chat" => {
                    o.chat = value()?
                        .split(',')
                        .map(|c| rooms_x_rate(arg, c, 15.0))
                        .collect::<Result<_, _>>()?
                }
                "--chat-secs" => chat_secs = Some(number(arg, &value()?)?),
                "--churn-workers" => o.churn_workers = number(arg, &value()?)?,
                "--churn-secs" => o.churn_secs = number(arg, &value()?)?,
                "--slow-rooms" => o.slow.slow_rooms = number(arg, &value()?)?,
                "--slow-normal" => {
                    o.slow.normal = rooms_x_rate(arg, &value()?, o.slow.normal.secs)?
                }
                "--slow-secs" => o.slow.normal.secs = number(arg, &value()?)?,
                "--slow-baseline-secs" => o.slow.baseline_secs = number(arg, &value()?)?,
                other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
            }
        }
        if let Some(secs) = chat_secs {
            for c in &mut o.chat {
                c.secs = secs;
            }
        }
        if o.idle < 2 || o.churn_workers < 2 || o.slow.slow_rooms < 1 {
            return Err("--idle and --churn-workers need at least 2, --slow-rooms 1".into());
        }
        Ok(Some(o))
    }
}

fn load(rooms: usize, rate: f64, secs: f64) -> Load {
    Load { rooms, rate, secs }
}

fn number<T: std::str::FromStr + PartialOrd + Default>(flag: &str, v: &str) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("{flag} {v}: a number greater than 0")),
    }
}

/// `1000x5`.
fn rooms_x_rate(flag: &str, v: &str, secs: f64) -> Result<Load, String> {
    let (rooms, rate) = v
        .split_once('x')
        .ok_or_else(|| format!("{flag} {v}: ROOMSxRATE, e.g. 1000x5"))?;
    Ok(load(number(flag, rooms)?, number(flag, rate)?, secs))
}

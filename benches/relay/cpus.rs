//! CPU of several processes over one window: the nodes of a cluster and their Redis, measured
//! together (each from `/proc/PID/stat`, as [`CpuWindow`] does for one).

use crate::procfs::{CpuUsed, CpuWindow};

/// One [`CpuWindow`] per process, started together.
pub struct Cpus {
    windows: Vec<CpuWindow>,
}

impl Cpus {
    pub fn start(pids: &[u32], ticks: u64) -> Result<Cpus, String> {
        let windows = pids
            .iter()
            .map(|&pid| CpuWindow::start(Some(pid), ticks))
            .collect::<Result<_, _>>()?;
        Ok(Cpus { windows })
    }

    /// What each process used, in the order of the pids.
    pub fn stop(&self) -> Result<Vec<CpuUsed>, String> {
        self.windows.iter().map(CpuWindow::stop).collect()
    }
}

/// The CPU of several processes added up, over the longest of their windows.
pub fn total(used: &[CpuUsed]) -> CpuUsed {
    CpuUsed {
        cpu_secs: used.iter().map(|u| u.cpu_secs).sum(),
        wall_secs: used.iter().map(|u| u.wall_secs).fold(0.0, f64::max),
    }
}

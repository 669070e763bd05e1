//! The guards: per-session allowances and strikes, per-address connection rate and caps, and
//! where the client address comes from.
//!
//! Rate limits are governor's (GCRA, one atomic per check); open-connection counts are a
//! `DashMap` per address and one atomic in all, released by a guard when the session ends.
//!
//! Every WebSocket session holds one file descriptor, so the process's open-file limit is a
//! connection limit too: the binary raises its soft limit to the hard one at start-up, and
//! sessions past what the descriptors allow are refused with 1013 like any other server limit,
//! before the accept loop itself runs out.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::HeaderMap;

use crate::config::Config;
use crate::metrics::RefusedReason;

/// Strikes a session may take in a burst before the next one closes it with 1008.
pub const STRIKE_BURST: u32 = 20;
/// Strikes given back per second.
pub const STRIKE_REFILL_PER_SEC: f64 = 1.0;

/// A quota of `per_second` with bursts of `burst`. A rate of 0 (or one so small that it would
/// overflow governor's nanosecond arithmetic) never refills: bursts only.
pub fn quota(per_second: f64, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    let never = Duration::from_nanos(u64::MAX / 4 / u64::from(burst.get()));
    let period = if per_second > 0.0 {
        Duration::from_secs_f64((1.0 / per_second).min(never.as_secs_f64()))
    } else {
        never
    };
    let period = period.max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("period is non-zero")
        .allow_burst(burst)
}

/// One session's allowances (PROTOCOL.md "Limits") and its strike account ("Abuse").
#[derive(Debug)]
pub struct SessionAllowance {
    chat: DefaultDirectRateLimiter,
    control: DefaultDirectRateLimiter,
    strikes: DefaultDirectRateLimiter,
}

/// The clock every limiter reads. `RateLimiter::direct` makes a new quanta clock per limiter,
/// and making one probes the CPU with CPUID, which traps to the hypervisor on a virtual
/// machine: tens of microseconds, three times per session (the largest cost of a new session
/// in the profile). One clock made at start-up and cloned (a copy of its calibration) costs
/// nothing.
pub type Clock = governor::clock::DefaultClock;

impl SessionAllowance {
    pub fn new(config: &Config, clock: &Clock) -> SessionAllowance {
        let limiter = |quota| RateLimiter::direct_with_clock(quota, clock.clone());
        SessionAllowance {
            chat: limiter(quota(config.msg_rate, config.msg_burst)),
            control: limiter(quota(config.control_rate, config.control_burst)),
            strikes: limiter(quota(STRIKE_REFILL_PER_SEC, STRIKE_BURST)),
        }
    }

    /// Charges one `msg`/`typing`; false when over the allowance.
    pub fn chat(&self) -> bool {
        self.chat.check().is_ok()
    }

    /// Charges one `find`/`skip`/`stop`; false when over the allowance.
    pub fn control(&self) -> bool {
        self.control.check().is_ok()
    }

    /// Records a strike; false when the session is out of strikes and must be closed.
    pub fn strike(&self) -> bool {
        self.strikes.check().is_ok()
    }
}

/// Descriptors kept back from WebSocket sessions: stdio, the listener, the runtime's own, the
/// accept loop's spare, `/proc` reads, plain HTTP requests (health checks, metric scrapes) and
/// sockets finishing their lingering close. 64 covers a few dozen of those at once; an unused
/// descriptor costs nothing.
pub const FD_RESERVE: u64 = 64;

/// Raises this process's soft open-file limit to its hard limit (as Go's runtime and nginx do)
/// and returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The soft open-file limit in force, if the platform has one.
pub fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _hard)| soft)
}

/// The most WebSocket sessions `open_files` descriptors allow, after [`FD_RESERVE`].
pub fn descriptor_cap(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX)
}

/// Connection admission: rate per address, open connections per address and in all.
#[derive(Debug)]
pub struct ConnectionLimits {
    rate: DefaultKeyedRateLimiter<IpAddr>,
    per_address: DashMap<IpAddr, usize>,
    open: AtomicUsize,
    /// 0: no limit.
    max_per_address: usize,
    /// 0: no limit.
    max_total: usize,
}

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl ConnectionLimits {
    pub fn new(config: &Config) -> ConnectionLimits {
        ConnectionLimits {
            rate: RateLimiter::keyed(quota(config.conn_rate_per_min / 60.0, config.conn_burst)),
            per_address: DashMap::new(),
            open: AtomicUsize::new(0),
            max_per_address: config.max_conns_per_ip,
            max_total: config.max_conns,
        }
    }

    /// Lowers the cap on open connections to `cap`; a configured 0 (no limit) takes `cap`.
    pub fn cap_total(mut self, cap: usize) -> ConnectionLimits {
        self.max_total = match self.max_total {
            0 => cap,
            configured => configured.min(cap),
        };
        self
    }

    /// The cap on open connections in force (0: none).
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Admits a WebSocket connection from `address`, or says which limit refuses it. The caps
    /// are checked before the rate, so a refused attempt does not use up the address's rate.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPermit, RefusedReason> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_total != 0 && open > self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(RefusedReason::ServerLimit);
        }
        let refusal = {
            let mut count = self.per_address.entry(address).or_insert(0);
            if self.max_per_address != 0 && *count >= self.max_per_address {
                Some(RefusedReason::AddressLimit)
            } else if self.rate.check_key(&address).is_err() {
                Some(RefusedReason::RateLimit)
            } else {
                *count += 1;
                None
            }
        };
        if let Some(reason) = refusal {
            self.release_address(address);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(reason);
        }
        Ok(ConnectionPermit {
            limits: self.clone(),
            address,
        })
    }

    /// Forgets addresses whose rate state is back to full; called now and then.
    pub fn forget_idle_addresses(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }

    /// Drops the per-address entry when it counts no connection.
    fn release_address(&self, address: IpAddr) {
        self.per_address.remove_if(&address, |_, count| *count == 0);
    }
}

impl ConnectionPermit {
    /// The client address the connection was admitted for.
    pub fn address(&self) -> IpAddr {
        self.address
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(mut count) = self.limits.per_address.get_mut(&self.address) {
            *count -= 1;
        }
        self.limits.release_address(self.address);
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request named no valid client address in the trusted proxy header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingClientAddress;

/// The client address of a request: from `trusted_header` when one is configured (exactly one
/// header holding one IP address, no port, no list), from the socket otherwise.
pub fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted_header: Option<&str>,
) -> Result<IpAddr, MissingClientAddress> {
    let Some(name) = trusted_header else {
        return Ok(peer.ip().to_canonical());
    };
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(MissingClientAddress);
    };
    let text = value.to_str().map_err(|_| MissingClientAddress)?;
    let address: IpAddr = text.trim().parse().map_err(|_| MissingClientAddress)?;
    Ok(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn config() -> Config {
        Config {
            max_conns_per_ip: 2,
            conn_burst: 3,
            max_conns: 0,
            ..Config::default()
        }
    }

    #[test]
    fn descriptor_cap_lowers_the_total_cap_and_never_raises_it() {
        assert_eq!(descriptor_cap(20_000), 20_000 - FD_RESERVE as usize);
        assert_eq!(descriptor_cap(10), 1, "a tiny limit still lets one in");
        let unlimited = ConnectionLimits::new(&config()).cap_total(500);
        assert_eq!(unlimited.max_total(), 500, "MAX_CONNS=0 takes the cap");
        let configured = ConnectionLimits::new(&Config {
            max_conns: 100,
            ..config()
        });
        assert_eq!(configured.cap_total(500).max_total(), 100);
        let too_high = ConnectionLimits::new(&Config {
            max_conns: 1000,
            ..config()
        });
        assert_eq!(too_high.cap_total(500).max_total(), 500);
    }

    #[test]
    fn address_cap_then_release() {
        let limits = Arc::new(ConnectionLimits::new(&config()));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).unwrap_err(), RefusedReason::AddressLimit);
        assert!(
            limits.admit("10.0.0.2".parse().unwrap()).is_ok(),
            "other addresses unaffected"
        );
        drop(a);
        let _c = limits.admit(ip).unwrap();
        // Burst of 3 used: the next is over the rate even with a free place.
        drop(_c);
        assert_eq!(limits.admit(ip).unwrap_err(), RefusedReason::RateLimit);
    }

    #[test]
    fn zero_rate_is_bursts_only_and_zero_cap_is_no_cap() {
        let config = Config {
            conn_rate_per_min: 0.0,
            conn_burst: 2,
            max_conns_per_ip: 0,
            ..Config::default()
        };
        let limits = Arc::new(ConnectionLimits::new(&config));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let _a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).unwrap_err(), RefusedReason::RateLimit);
        // Huge bursts with a zero rate do not overflow.
        let limiter = RateLimiter::direct(quota(0.0, u32::MAX));
        assert!(limiter.check().is_ok());
        let limiter = RateLimiter::direct(quota(1e-300, 100_000));
        assert!(limiter.check().is_ok());
    }

    #[test]
    fn server_cap() {
        let config = Config {
            max_conns: 1,
            ..config()
        };
        let limits = Arc::new(ConnectionLimits::new(&config));
        let _a = limits.admit("10.0.0.1".parse().unwrap()).unwrap();
        let refused = limits.admit("10.0.0.2".parse().unwrap()).unwrap_err();
        assert_eq!(refused, RefusedReason::ServerLimit);
    }

    #[test]
    fn entries_are_removed_when_empty() {
        let limits = Arc::new(ConnectionLimits::new(&config()));
        let permit = limits.admit("10.0.0.1".parse().unwrap()).unwrap();
        drop(permit);
        assert!(limits.per_address.is_empty());
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn client_address_rules() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("fly-client-ip", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            client_address(peer, &headers, None),
            Ok(peer.ip()),
            "header ignored"
        );
        let trusted = Some("Fly-Client-IP");
        assert_eq!(
            client_address(peer, &headers, trusted),
            Ok("203.0.113.9".parse().unwrap())
        );
        for bad in ["203.0.113.9:80", "1.2.3.4, 5.6.7.8", "", "nope", "[::1]"] {
            headers.insert("fly-client-ip", HeaderValue::from_static(bad));
            assert_eq!(
                client_address(peer, &headers, trusted),
                Err(MissingClientAddress),
                "{bad}"
            );
        }
        headers.insert("fly-client-ip", HeaderValue::from_static("2001:db8::1"));
        headers.append("fly-client-ip", HeaderValue::from_static("2001:db8::2"));
        assert_eq!(
            client_address(peer, &headers, trusted),
            Err(MissingClientAddress)
        );
        assert_eq!(
            client_address(peer, &HeaderMap::new(), trusted),
            Err(MissingClientAddress)
        );
    }
}

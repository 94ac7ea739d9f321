//! The per-frontend counters (`SVCLB_STATS`, a per-CPU array indexed by frontend id): what
//! the TC programs saw of each frontend's traffic from clients. The agent sums the CPUs and
//! exports them as Prometheus counters; a frontend id starts from zero when it is handed to a
//! new frontend.

/// Value of the `SVCLB_STATS` map, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    /// Packets from clients to the frontend that passed its source ranges.
    pub packets: u64,
    /// Their bytes (the whole frame, as the device got it).
    pub bytes: u64,
    /// New flows given a backend.
    pub new_flows: u64,
    /// New flows refused (TCP RST, ICMP unreachable) or dropped for want of a backend.
    pub refused: u64,
}
const _: () = assert!(size_of::<FrontendStats>() == 32);

impl FrontendStats {
    /// The sum of two CPUs' counters.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_flows: self.new_flows.wrapping_add(other.new_flows),
            refused: self.refused.wrapping_add(other.refused),
        }
    }
}

/// Value of the `SVCLB_XDP_STATS` map (key: the uplink's ifindex), per CPU: what the XDP
/// program did with the uplink's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Packets the XDP program translated and sent out itself (`XDP_TX`, `XDP_REDIRECT`).
    pub finished: u64,
    /// Packets passed on to the stack (and the TC program).
    pub passed: u64,
    /// Packets dropped before an skb existed: refused by a frontend's source ranges, or for a
    /// Local-policy frontend without local endpoints.
    pub dropped: u64,
}
const _: () = assert!(size_of::<XdpStats>() == 24);

impl XdpStats {
    /// The sum of two CPUs' counters.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            finished: self.finished.wrapping_add(other.finished),
            passed: self.passed.wrapping_add(other.passed),
            dropped: self.dropped.wrapping_add(other.dropped),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::FrontendStats {}
    unsafe impl aya::Pod for super::XdpStats {}
}

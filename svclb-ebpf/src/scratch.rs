//! Per-packet state kept off the 512-byte BPF stack, in a per-CPU area shared by the TC and
//! XDP programs. They never run at once on a CPU: both run in softirq context, and for one
//! packet XDP returns before TC starts.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use svclb_common::{Backend, CtEntry, L3Addr, ServiceValue};

use crate::{forward::Route, parse::Packet, quote::Quote, select};

pub struct Scratch {
    pub pkt: Packet,
    pub svc: ServiceValue,
    pub picked: Picked,
    /// The source a new flow is SNATed to: this node's address, or the service loopback.
    pub source: L3Addr,
    /// The route XDP sends a packet on (looked up before it rewrites).
    pub route: Route,
    pub quote: Quote,
}

/// The backend chosen for a new flow, and the conntrack entry that records the flow (built
/// here: 88 bytes more on a new flow's stack would pass the limit).
pub struct Picked {
    pub id: u32,
    pub backend: Backend,
    pub now: u64,
    pub entry: CtEntry,
}

#[btf_map]
static SVCLB_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// This CPU's scratch area.
#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    let scratch = SVCLB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else runs on it until the program returns (see the
    // module docs).
    Some(unsafe { &mut *scratch })
}

impl Scratch {
    /// Picks the backend of a new flow of `svc` into `picked` (a subprogram of its own);
    /// `false` when the frontend has none.
    #[inline(never)]
    pub fn pick(&mut self) -> bool {
        match select::pick(&self.svc, &self.pkt, self.picked.now) {
            Some((id, backend)) => {
                self.picked.id = id;
                self.picked.backend = backend;
                true
            }
            None => false,
        }
    }
}

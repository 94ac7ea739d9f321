//! The sweep program: deletes the conntrack entries the agent names (in the frame it runs the
//! program on with BPF_PROG_TEST_RUN), each only if the key still holds the flow the agent
//! saw and, unless asked to delete the entry whatever its state, that flow is still over
//! (then with the flow's other direction). The agent finds candidates by walking the map,
//! which is a snapshot; checking here, next to the delete, keeps a flow that took the key
//! over since (a reused SNAT port, a revived tuple) from being cut off.

use aya_ebpf::programs::TcContext;
use svclb_common::{
    SweepItem,
    conntrack::{SWEEP_BATCH, SWEEP_ENTRY, SWEEP_HEADER, flow_ended, partner},
    events::LRU_CT,
};

use crate::{
    conntrack::now_ns,
    maps::{SVCLB_CT, lru_remove},
};

/// Runs over the items of the frame; returns how many entries went.
pub fn run(ctx: &TcContext) -> i32 {
    let now = now_ns();
    let mut deleted = 0;
    for i in 0..SWEEP_BATCH {
        let Ok(item) = ctx.load::<SweepItem>(SWEEP_HEADER + i * size_of::<SweepItem>()) else {
            break;
        };
        deleted += one(&item, now);
    }
    deleted
}

#[inline(never)]
fn one(item: &SweepItem, now: u64) -> i32 {
    let Some(entry) = SVCLB_CT.get_ptr(&item.key) else {
        return 0;
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let entry = unsafe { &*entry };
    if entry.created_ns != item.created_ns {
        return 0;
    }
    let mut deleted = 0;
    // An entry asked for alone goes alone (see `SWEEP_ENTRY`).
    if item.mode != SWEEP_ENTRY {
        let other_key = partner(&item.key, entry);
        // SAFETY: as above.
        let other = SVCLB_CT
            .get_ptr(&other_key)
            .map(|p| unsafe { &*p })
            .filter(|o| o.created_ns == entry.created_ns);
        if !flow_ended(entry, other, item.key.proto, now) {
            return 0;
        }
        if other.is_some() && lru_remove(&SVCLB_CT, LRU_CT, &other_key) {
            deleted += 1;
        }
    }
    if lru_remove(&SVCLB_CT, LRU_CT, &item.key) {
        deleted += 1;
    }
    deleted
}

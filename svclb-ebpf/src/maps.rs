//! The maps of the datapath. All are pinned by name under the agent's `--bpffs-dir` and carry
//! BTF, so `bpftool map dump pinned DIR/NAME` prints named fields.

use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap},
    macros::btf_map,
};
use svclb_common::{
    Backend, CtEntry, CtKey, ServiceKey, ServiceValue, SlotKey,
    limits::{BACKENDS_MAX, CT_MAX, SERVICES_MAX, SLOTS_MAX},
};

#[btf_map(pin_by_name)]
pub static SVCLB_SERVICES: HashMap<ServiceKey, ServiceValue, SERVICES_MAX> = HashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_BACKENDS: HashMap<u32, Backend, BACKENDS_MAX> = HashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_SLOTS: HashMap<SlotKey, u32, SLOTS_MAX> = HashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_CT: LruHashMap<CtKey, CtEntry, CT_MAX> = LruHashMap::new();

//! Upgrades that change the maps: pins left by an older build with other sizes, types or
//! layouts are migrated in place by the load (see `svclb::kernel::migrate`), instead of
//! failing it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use svclb::{entries::Capacity, kernel::loader};
use svclb_common::{
    AffinityValue, CtEntry, CtKey, ServiceKey, ServiceValue,
    limits::{MAP_AFFINITY, MAP_CT, MAP_SERVICES},
};
use svclb_tests::require_root;

/// A conntrack value of the older build: the current one without its last field.
const OLD_CT_VALUE: usize = size_of::<CtEntry>() - 8;

/// A scratch pin directory on the bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Result<Self> {
        let dir = Path::new(svclb_common::host::BPFFS_ROOT)
            .join(svclb_tests::sweep::scratch_name("fixture-upgrade"));
        svclb_common::host::prepare_bpffs(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = svclb::kernel::pins::cleanup(&self.0);
    }
}

fn ct_key(i: u8) -> CtKey {
    CtKey {
        saddr: svclb_common::addr::v4([10, 244, 1, i]),
        daddr: svclb_common::addr::v4([10, 96, 0, 10]),
        sport_be: u16::from(i).to_be(),
        dport_be: 80u16.to_be(),
        proto: 6,
        family: svclb_common::FAMILY_V4,
        dir: svclb_common::CT_DIR_FORWARD,
        _pad: 0,
    }
}

/// An older value: recognizable bytes, none of them zero.
fn old_ct_value(i: u8) -> [u8; OLD_CT_VALUE] {
    std::array::from_fn(|at| i.wrapping_mul(31).wrapping_add(at as u8) | 1)
}

fn service_key(i: u8) -> ServiceKey {
    ServiceKey {
        addr: svclb_common::addr::v4([10, 96, 0, i]),
        port_be: 80u16.to_be(),
        proto: 6,
        family: svclb_common::FAMILY_V4,
        scope: 0,
        _pad: [0; 3],
    }
}

/// Pins what an older build left: a conntrack map of another type and a shorter value, a
/// services map of another size, and an affinity map whose key was different.
fn pin_older_build(dir: &Path) -> Result<()> {
    let mut ct = HashMap::<MapData, CtKey, [u8; OLD_CT_VALUE]>::create(1024, 0)?;
    for i in 1..=3 {
        ct.insert(&ct_key(i), &old_ct_value(i), 0)?;
    }
    ct.pin(dir.join(MAP_CT))?;
    let mut services = HashMap::<MapData, ServiceKey, ServiceValue>::create(128, 0)?;
    for i in 1..=2 {
        let value = ServiceValue {
            id: u32::from(i),
            count: 1,
            flags: 0,
            affinity_timeout_s: 0,
            maglev_size: 0,
            _pad: 0,
        };
        services.insert(&service_key(i), &value, 0)?;
    }
    services.pin(dir.join(MAP_SERVICES))?;
    let mut affinity = HashMap::<MapData, [u8; 28], AffinityValue>::create(64, 0)?;
    let value = AffinityValue {
        backend_id: 1,
        _pad: 0,
        last_ns: 1,
    };
    affinity.insert(&[7; 28], &value, 0)?;
    affinity.pin(dir.join(MAP_AFFINITY))?;
    Ok(())
}

fn pinned(dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("map {name}"))?;
    Ok(Map::from_map_data(data)?)
}

fn conntrack(dir: &Path) -> Result<HashMap<MapData, CtKey, CtEntry>> {
    Ok(HashMap::try_from(pinned(dir, MAP_CT)?)?)
}

fn aside_pins(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(svclb::kernel::migrate::ASIDE) {
            out.push(name);
        }
    }
    Ok(out)
}

#[test]
#[ignore = "needs root"]
fn pins_of_an_older_build_are_migrated_and_keep_their_flows() -> Result<()> {
    require_root()?;
    let dir = PinDir::new()?;
    pin_older_build(&dir.0)?;

    let (ebpf, migration) = loader::load(&dir.0, &Capacity::DEFAULT)?;
    assert_eq!(
        migration.len(),
        3,
        "conntrack, services and affinity migrated"
    );
    // Conntrack: every flow carried over, each value zero-extended to the new layout.
    let ct = conntrack(&dir.0)?;
    for i in 1..=3 {
        let entry = ct.get(&ct_key(i), 0).with_context(|| format!("flow {i}"))?;
        // SAFETY: a CtEntry is plain bytes.
        let bytes: [u8; size_of::<CtEntry>()] = unsafe { std::mem::transmute(entry) };
        assert_eq!(bytes[..OLD_CT_VALUE], old_ct_value(i), "flow {i}");
        assert!(bytes[OLD_CT_VALUE..].iter().all(|b| *b == 0), "flow {i}");
    }
    assert_eq!(ct.keys().count(), 3);
    // Services: both frontends, in a map of the new size.
    let services: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(pinned(&dir.0, MAP_SERVICES)?)?;
    assert_eq!(services.get(&service_key(2), 0)?.id, 2);
    assert_eq!(services.keys().count(), 2);
    // Affinity: its key changed, which has no migration: a fresh, empty map.
    let affinity = pinned(&dir.0, MAP_AFFINITY)?;
    let affinity: aya::maps::HashMap<_, svclb_common::AffinityKey, AffinityValue> =
        HashMap::try_from(affinity)?;
    assert_eq!(affinity.keys().count(), 0);

    assert_eq!(aside_pins(&dir.0)?.len(), 3, "the old maps wait for finish");
    migration.finish()?;
    assert_eq!(aside_pins(&dir.0)?, Vec::<String>::new());
    drop(ebpf);

    // The next start finds every map as it defines it: nothing to migrate, flows kept.
    let (_ebpf, migration) = loader::load(&dir.0, &Capacity::DEFAULT)?;
    assert!(
        migration.is_empty(),
        "{} maps migrated again",
        migration.len()
    );
    let ct = conntrack(&dir.0)?;
    assert_eq!(ct.keys().count(), 3);
    Ok(())
}

/// A migration cut short (the agent killed after moving the old pins aside) is done again
/// by the next start, from the old maps.
#[test]
#[ignore = "needs root"]
fn an_interrupted_migration_is_done_again() -> Result<()> {
    require_root()?;
    let dir = PinDir::new()?;
    pin_older_build(&dir.0)?;
    let (ebpf, migration) = loader::load(&dir.0, &Capacity::DEFAULT)?;
    assert_eq!(migration.len(), 3);
    // Killed before `finish`: the old pins stay aside, and the new maps hold what was carried.
    drop((ebpf, migration));
    let (_ebpf, migration) = loader::load(&dir.0, &Capacity::DEFAULT)?;
    assert_eq!(migration.len(), 3, "taken up again");
    let ct = conntrack(&dir.0)?;
    assert_eq!(ct.keys().count(), 3);
    migration.finish()?;
    assert_eq!(aside_pins(&dir.0)?, Vec::<String>::new());
    Ok(())
}

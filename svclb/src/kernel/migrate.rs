//! Pinned maps that a new build defines differently (another size, type or flags, or a value
//! that grew) are migrated in place, so an upgrade keeps its flows instead of failing to load.
//!
//! Before the object is loaded, each such pin is moved aside (`<name>-migrating`); the loader
//! then makes the map afresh, and [`Migration::carry`] copies the old entries into it before
//! the agent reads its state. The old programs stay attached to the old maps meanwhile, so
//! they go on serving, and may add entries: once the new programs are attached,
//! [`Migration::finish`] copies again the entries that are not there yet, then removes the old
//! pins. A migration that was cut short (the agent killed) is found by its `-migrating` pin
//! and done again.
//!
//! What is carried over:
//! - the flow maps (conntrack, affinity, fragments, socket reverse map) and the frontend maps
//!   (services, slots, backends, source ranges), entry by entry. A map made smaller keeps
//!   what fits (an LRU map its most recent entries), and what is lost is logged;
//! - a value that grew, following `svclb_common`'s ABI rule (fields are only ever appended,
//!   and an appended field's zero keeps the old behaviour): old values are zero-extended;
//! - nothing of a map whose key changed or whose value shrank: that breaks the rule, and is
//!   logged as lost.
//!
//! Counters start again from zero (Prometheus takes a counter reset), the Maglev tables are
//! rebuilt by the first sync, and the configuration and XDP ports are written at every start.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, MapInfo};
use nix::errno::Errno;
use svclb_common::limits::{
    MAP_AFFINITY, MAP_BACKENDS, MAP_CT, MAP_FRAGS, MAP_SERVICES, MAP_SLOTS, MAP_SOCK_REVERSE,
    MAP_SOURCE_RANGES,
};
use tracing::{info, warn};

use super::{object::OBJECT, raw};

/// The suffix of a pin moved aside for its migration (bpffs refuses names with dots).
pub const ASIDE: &str = "-migrating";

/// The maps whose entries are carried over (see the module docs for the others).
const CARRIED: [&str; 8] = [
    MAP_CT,
    MAP_AFFINITY,
    MAP_FRAGS,
    MAP_SOCK_REVERSE,
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_SOURCE_RANGES,
];

/// What the kernel says a map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Def {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Def {
    fn of(info: &MapInfo) -> Result<Self> {
        Ok(Self {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: comparable_flags(info.map_flags()),
        })
    }

    /// `old -> new` for the log: what changed.
    fn change(&self, new: &Self) -> String {
        let mut out = Vec::new();
        let fields = [
            ("type", self.map_type, new.map_type),
            ("key size", self.key_size, new.key_size),
            ("value size", self.value_size, new.value_size),
            ("entries", self.max_entries, new.max_entries),
            ("flags", self.flags, new.flags),
        ];
        for (what, old, new) in fields {
            if old != new {
                out.push(format!("{what} {old} -> {new}"));
            }
        }
        out.join(", ")
    }
}

/// Flags as compared: without the descriptor's access modes (the map's info reports the
/// pinning descriptor's) nor the one the kernel adds to device maps.
fn comparable_flags(flags: u32) -> u32 {
    const BPF_F_RDONLY: u32 = 1 << 3;
    const BPF_F_WRONLY: u32 = 1 << 4;
    const BPF_F_RDONLY_PROG: u32 = 1 << 7;
    flags & !(BPF_F_RDONLY | BPF_F_WRONLY | BPF_F_RDONLY_PROG)
}

/// The pinned maps of the datapath object as the loader makes them, with `sizes`
/// (`max_entries` overrides by map name).
pub fn expected(sizes: &[(&str, u32)]) -> Result<BTreeMap<String, Def>> {
    let object = aya_obj::Object::parse(OBJECT).context("parsing the datapath object")?;
    let mut out = BTreeMap::new();
    for (name, map) in &object.maps {
        if map.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let max_entries = sizes
            .iter()
            .find(|(n, _)| n == name)
            .map_or(map.max_entries(), |(_, size)| *size);
        let def = Def {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries,
            flags: comparable_flags(map.map_flags()),
        };
        out.insert(name.clone(), def);
    }
    Ok(out)
}

/// An old map moved aside.
struct Old {
    name: String,
    map: MapData,
    def: Def,
    aside: PathBuf,
}

/// The maps being migrated (none, mostly).
#[derive(Default)]
pub struct Migration {
    old: Vec<Old>,
    pin_dir: PathBuf,
}

/// Moves aside every pin in `pin_dir` that `expected` defines differently, and takes up the
/// pins an interrupted migration left aside.
pub fn prepare(pin_dir: &Path, expected: &BTreeMap<String, Def>) -> Result<Migration> {
    let mut migration = Migration {
        old: Vec::new(),
        pin_dir: pin_dir.to_path_buf(),
    };
    for (name, def) in expected {
        let pin = pin_dir.join(name);
        let aside = pin_dir.join(format!("{name}{ASIDE}"));
        if !aside.exists() {
            let Ok(info) = MapInfo::from_pin(&pin) else {
                continue;
            };
            let found = Def::of(&info).with_context(|| format!("map {}", pin.display()))?;
            if found == *def {
                continue;
            }
            info!("map {name}: {}; migrating it", found.change(def));
            fs::rename(&pin, &aside).with_context(|| format!("moving {} aside", pin.display()))?;
        } else if pin.exists() {
            // The interrupted run's new map: made again (and filled again) from the old one.
            fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        }
        let map =
            MapData::from_pin(&aside).with_context(|| format!("opening {}", aside.display()))?;
        let def_old = Def::of(&map.info()?)?;
        migration.old.push(Old {
            name: name.clone(),
            map,
            def: def_old,
            aside,
        });
    }
    Ok(migration)
}

impl Migration {
    /// Copies the old maps' entries into the new ones (pinned by the load since
    /// [`prepare`]), overwriting.
    pub fn carry(&self) -> Result<()> {
        for old in &self.old {
            let outcome = self.copy(old, Overwrite::Yes)?;
            outcome.log(&old.name);
        }
        Ok(())
    }

    /// Copies what the old programs added since [`Migration::carry`] (entries the new maps do
    /// not have), then removes the old pins. Call once the new programs are attached.
    pub fn finish(self) -> Result<()> {
        for old in &self.old {
            let outcome = self.copy(old, Overwrite::No)?;
            if outcome.copied > 0 {
                info!(
                    "map {}: {} entries added by the old programs meanwhile carried over",
                    old.name, outcome.copied
                );
            }
            fs::remove_file(&old.aside)
                .with_context(|| format!("removing {}", old.aside.display()))?;
        }
        Ok(())
    }

    /// How many maps are migrated.
    pub fn len(&self) -> usize {
        self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.old.is_empty()
    }

    fn copy(&self, old: &Old, overwrite: Overwrite) -> Result<Copied> {
        if !CARRIED.contains(&old.name.as_str()) {
            return Ok(Copied::default());
        }
        let pin = self.pin_dir.join(&old.name);
        let new = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let new_def = Def::of(&new.info()?)?;
        if new_def.key_size != old.def.key_size || new_def.value_size < old.def.value_size {
            return Ok(Copied {
                refused: Some(old.def.change(&new_def)),
                ..Copied::default()
            });
        }
        copy_entries(
            old.map.fd().as_fd(),
            &old.def,
            new.fd().as_fd(),
            &new_def,
            overwrite,
        )
        .with_context(|| format!("carrying the entries of map {} over", old.name))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Overwrite {
    Yes,
    No,
}

/// What one copy did.
#[derive(Debug, Default)]
struct Copied {
    copied: usize,
    /// Entries the new map had no room for.
    lost: usize,
    /// Why nothing was carried over (the layout changed against the rule).
    refused: Option<String>,
}

impl Copied {
    fn log(&self, name: &str) {
        if let Some(change) = &self.refused {
            warn!(
                "map {name}: its entries are not carried over ({change}: a key that changed or \
                 a value that shrank has no migration)"
            );
        } else if self.lost > 0 {
            warn!(
                "map {name}: {} entries carried over, {} did not fit the new size",
                self.copied, self.lost
            );
        } else {
            info!("map {name}: {} entries carried over", self.copied);
        }
    }
}

/// Copies every entry of `old` into `new`, zero-extending each value (each CPU's, in a
/// per-CPU map) to the new value size.
fn copy_entries(
    old: BorrowedFd<'_>,
    old_def: &Def,
    new: BorrowedFd<'_>,
    new_def: &Def,
    overwrite: Overwrite,
) -> Result<Copied> {
    let slots = if raw::per_cpu(old_def.map_type) {
        raw::possible_cpus()?
    } else {
        1
    };
    let (old_stride, new_stride) = (
        raw::stride(old_def.value_size, slots),
        raw::stride(new_def.value_size, slots),
    );
    let mut value = vec![0u8; old_stride * slots];
    let mut widened = vec![0u8; new_stride * slots];
    let mut out = Copied::default();
    let flags = match overwrite {
        Overwrite::Yes => raw::BPF_ANY,
        Overwrite::No => raw::BPF_NOEXIST,
    };
    // The old programs may delete entries meanwhile, which can send the walk back to the
    // start: it stops after twice the map's capacity.
    let walk = raw::keys(old, old_def.key_size as usize).take(2 * old_def.max_entries as usize);
    for key in walk {
        let key = key?;
        if !raw::lookup(old, &key, &mut value)? {
            continue;
        }
        for slot in 0..slots {
            let from = &value[slot * old_stride..][..old_def.value_size as usize];
            let to = &mut widened[slot * new_stride..][..new_stride];
            to.fill(0);
            to[..from.len()].copy_from_slice(from);
        }
        match raw::update(new, &key, &widened, flags) {
            Ok(()) => out.copied += 1,
            Err(Errno::EEXIST) => {}
            Err(Errno::E2BIG | Errno::ENOMEM) => out.lost += 1,
            Err(err) => return Err(err).context("writing an entry"),
        }
    }
    Ok(out)
}

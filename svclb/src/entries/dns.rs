//! DNS records -> `SVCLB_DNS` entries (see `svclb_common::dns`): each name and query type's
//! reply, encoded here once for the question in lowercase, and the zone's entry with the SOA
//! of its negative answers.
//!
//! What a name gets, besides its records:
//! - a name under `svc.<zone>` (a Service, an endpoint, a port's SRV name, a namespace that
//!   has a Service, `svc.<zone>` itself): NODATA for the other query types, with the zone's SOA;
//! - a namespace's name and `svc.<zone>`: NXDOMAIN for TXT (CoreDNS's reply);
//! - an ExternalName Service's name: its CNAME; the other types pass to the cluster's DNS
//!   server, which follows the CNAME;
//! - SRV replies carry their targets' addresses in the additional section.
//!
//! Names not in the table: NXDOMAIN under `svc.<zone>`, passed on elsewhere (see the
//! datapath).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result, bail, ensure};
use hickory_proto::{
    op::{Header, Query},
    rr::{
        Name, RData, Record as Rr, RecordType,
        rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT},
    },
    serialize::binary::{BinEncodable as _, BinEncoder},
};
use svclb_common::dns::{
    DNS_EDNS_MESSAGE, DNS_F_CUT, DNS_F_PASS, DNS_NAME_MAX, DNS_SECTIONS_MAX, DNS_SERVERS,
    DNS_SMALL_MESSAGE, DNS_SOA_MAX, DnsAnswer, DnsCut, DnsKey, DnsZone, QTYPE_NAME, RCODE_NOERROR,
    RCODE_NXDOMAIN,
};

use super::l3;
use crate::plan::dns::{Rdata, Record, TTL};

/// The SOA of negative answers: CoreDNS's (`ns.dns.<zone>`, `hostmaster.<zone>`, 7200, 1800,
/// 86400, the TTL as minimum and as the record's TTL).
const SOA_TIMES: (i32, i32, i32) = (7200, 1800, 86_400);
/// The OPT record a reply may need room for.
const OPT_LEN: usize = 11;
/// The DNS header.
const HEADER_LEN: usize = 12;

/// The cluster domain's settings for the encoder.
pub struct Zone {
    name: Name,
    /// `svc.<zone>`.
    svc: Name,
    soa: Rr,
}

impl Zone {
    /// `domain` (`cluster.local`), and the SOA serial negative answers carry.
    pub fn new(domain: &str, serial: u32) -> Result<Self> {
        let name = fqdn(domain).with_context(|| format!("cluster domain {domain:?}"))?;
        let svc = fqdn(&format!("svc.{domain}"))?;
        let mname = fqdn(&format!("ns.dns.{domain}"))?;
        let rname = fqdn(&format!("hostmaster.{domain}"))?;
        let (refresh, retry, expire) = SOA_TIMES;
        let soa = SOA::new(mname, rname, serial, refresh, retry, expire, TTL);
        let soa = Rr::from_rdata(name.clone(), TTL.min(300), RData::SOA(soa));
        Ok(Self { name, svc, soa })
    }

    /// The responder's settings: the cluster DNS addresses it answers for (and the host's
    /// network namespace, whose sockets it does not see), the zone's name,
    /// and its SOA encoded for a question that is the zone, the three names in it pointing at
    /// the question (see `DnsZone`).
    pub fn entry(&self, servers: &[IpAddr], host_netns: u64) -> Result<DnsZone> {
        ensure!(
            servers.len() <= DNS_SERVERS,
            "{} cluster DNS addresses: at most {DNS_SERVERS}",
            servers.len()
        );
        let encoded = encode(
            &self.name,
            RecordType::SOA,
            &[],
            std::slice::from_ref(&self.soa),
            &[],
        )?;
        let soa = &encoded.bytes;
        ensure!(
            soa.len() <= DNS_SOA_MAX,
            "the SOA takes {} bytes",
            soa.len()
        );
        // The owner; after type, class, TTL and length, mname's `ns.dns` and its zone, then
        // rname's `hostmaster` and its zone.
        let pointers = [0, 12 + 7, 12 + 7 + 2 + 11];
        for at in pointers {
            ensure!(
                soa[at..at + 2] == [0xc0, HEADER_LEN as u8],
                "the SOA's names do not point at the question: {soa:02x?}"
            );
        }
        let mut entry = DnsZone {
            host_netns,
            servers: [[0; 16]; DNS_SERVERS],
            server_families: [0; DNS_SERVERS],
            _pad: [0; 2],
            len: 0,
            soa_len: soa.len() as u16,
            soa_pointers: pointers.map(|p| p as u16),
            _pad2: 0,
            name: [0; DNS_NAME_MAX + 1],
            soa: [0; DNS_SOA_MAX],
            _pad3: [0; 6],
        };
        for (i, server) in servers.iter().enumerate() {
            (entry.servers[i], entry.server_families[i]) = l3(*server);
        }
        let wire = wire_name(&self.name)?;
        entry.len = wire.len() as u16;
        entry.name[..wire.len()].copy_from_slice(&wire);
        entry.soa[..soa.len()].copy_from_slice(soa);
        Ok(entry)
    }
}

/// The entries of `records` (all of the zone's, as `plan::dns::records` gives them). A record
/// whose name cannot be a DNS name (too long) is left out, named in the error list.
pub fn table(records: &[Record], zone: &Zone) -> (BTreeMap<DnsKey, DnsAnswer>, Vec<String>) {
    let mut names: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in records {
        names.entry(&record.name).or_default().push(record);
    }
    let of = |name: &str| names.get(name).cloned().unwrap_or_default();
    let delta = Table::default().update(names.keys().copied(), &of, zone);
    (delta.put, delta.refused)
}

/// The records of a name (none: it has none), as `plan::dns::Records::of` gives them.
pub type RecordsOf<'a> = dyn Fn(&str) -> Vec<&'a Record> + 'a;

/// The zone's entries, kept from one update to the next: an update encodes only the names it
/// is told changed (`plan::dns::Records::update` says which), so a sync costs what changed,
/// not the whole zone (encoding 70,000 entries for 10,000 Services takes about 0.3 s).
#[derive(Default)]
pub struct Table {
    /// The query types of each name's entries, and the namespace it is under.
    names: BTreeMap<String, (Vec<u16>, Option<Name>)>,
    /// The namespaces, each with the number of names under it; `svc.<zone>` is always one.
    namespaces: BTreeMap<Name, usize>,
}

/// The entries an update changed.
#[derive(Debug, Default)]
pub struct Delta {
    /// New or changed entries (every entry, from an empty table).
    pub put: BTreeMap<DnsKey, DnsAnswer>,
    /// Entries no name has any more.
    pub gone: BTreeSet<DnsKey>,
    /// The names newly refused (too long for DNS), each with why; the DNS service answers
    /// them.
    pub refused: Vec<String>,
}

impl Table {
    /// Encodes the names in `changed` again from their records (`of`); a name without
    /// records loses its entries.
    pub fn update<'a>(
        &mut self,
        changed: impl IntoIterator<Item = &'a str>,
        of: &RecordsOf<'_>,
        zone: &Zone,
    ) -> Delta {
        let mut delta = Delta::default();
        let mut namespaces = BTreeSet::new();
        if self.namespaces.is_empty() {
            self.namespaces.insert(zone.svc.clone(), 1);
            namespaces.insert(zone.svc.clone());
        }
        for name in changed {
            let records = of(name);
            let new =
                (!records.is_empty()).then(|| encode_name(name, &records, of, zone, &mut delta));
            let old = match &new {
                Some(new) => self.names.insert(name.to_owned(), new.clone()),
                None => self.names.remove(name),
            };
            let kept = new
                .as_ref()
                .map_or(&[][..], |(qtypes, _)| qtypes.as_slice());
            if let Some((qtypes, _)) = &old {
                gone(name, qtypes, kept, &mut delta);
            }
            let (old_ns, new_ns) = (old.and_then(|o| o.1), new.and_then(|n| n.1));
            if old_ns != new_ns {
                self.count_namespace(old_ns, false, &mut namespaces);
                self.count_namespace(new_ns, true, &mut namespaces);
            }
        }
        for ns in namespaces {
            if !self.namespaces.contains_key(&ns) {
                for qtype in [QTYPE_NAME, u16::from(RecordType::TXT)] {
                    delta.gone.extend(key(&ns, qtype));
                }
            } else if let Err(err) = namespace_entries(&ns, zone, &mut delta.put) {
                delta.refused.push(format!("DNS name {ns}: {err:#}"));
            }
        }
        delta
    }

    /// Counts a name under namespace `ns` in or out; a namespace that comes or goes is put in
    /// `changed`.
    fn count_namespace(&mut self, ns: Option<Name>, add: bool, changed: &mut BTreeSet<Name>) {
        let Some(ns) = ns else {
            return;
        };
        let n = self.namespaces.entry(ns.clone()).or_insert(0);
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        if *n == 0 {
            self.namespaces.remove(&ns);
            changed.insert(ns);
        } else if add && *n == 1 {
            changed.insert(ns);
        }
    }
}

/// Encodes name `name`'s entries into `delta.put`: their query types, and the namespace the
/// name is under.
fn encode_name(
    name: &str,
    records: &[&Record],
    of: &RecordsOf<'_>,
    zone: &Zone,
    delta: &mut Delta,
) -> (Vec<u16>, Option<Name>) {
    let mut out = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    if let Err(err) = name_entries(name, records, of, zone, &mut out, &mut namespaces) {
        delta.refused.push(format!("DNS name {name}: {err:#}"));
        // Not NXDOMAIN: the DNS service answers it.
        if let Ok(key) = fqdn(name).and_then(|owner| key(&owner, QTYPE_NAME)) {
            out.insert(key, pass(&owner_or_root(name)));
        }
    }
    let qtypes = out.keys().map(|key| key.qtype).collect();
    delta.put.extend(out);
    (qtypes, namespaces.pop_first())
}

/// The entries name `name` had (query types `old`) and has no more (`kept`).
fn gone(name: &str, old: &[u16], kept: &[u16], delta: &mut Delta) {
    let Ok(owner) = fqdn(name) else {
        // Its pass entry was the root's: no name has it.
        return;
    };
    for qtype in old.iter().filter(|q| !kept.contains(q)) {
        delta.gone.extend(key(&owner, *qtype));
    }
}

/// The entries of one name.
fn name_entries(
    name: &str,
    records: &[&Record],
    all: &RecordsOf<'_>,
    zone: &Zone,
    out: &mut BTreeMap<DnsKey, DnsAnswer>,
    namespaces: &mut BTreeSet<Name>,
) -> Result<()> {
    let owner = fqdn(name)?;
    let mut by_type: BTreeMap<RecordType, Vec<Rr>> = BTreeMap::new();
    for record in records {
        let rr = rr(&owner, record)?;
        by_type.entry(rr.record_type()).or_default().push(rr);
    }
    for (qtype, answers) in &by_type {
        let glue = if *qtype == RecordType::SRV {
            glue(answers, all)?
        } else {
            Vec::new()
        };
        let encoded = encode(&owner, *qtype, answers, &[], &glue)?;
        out.insert(
            key(&owner, u16::from(*qtype))?,
            answer(RCODE_NOERROR, 0, &encoded, &owner),
        );
    }
    if !zone.svc.zone_of(&owner) || owner == zone.svc {
        return Ok(());
    }
    // `<...>.<ns>.svc.<zone>`: the namespace exists.
    let depth = zone.svc.num_labels() + 1;
    namespaces.insert(owner.trim_to(usize::from(depth)));
    if by_type.contains_key(&RecordType::CNAME) {
        out.insert(key(&owner, QTYPE_NAME)?, pass(&owner));
        return Ok(());
    }
    // SRV of a Service's own name or an endpoint's: CoreDNS answers every port, named or not;
    // the DNS service does that.
    let below_svc = owner.num_labels() - zone.svc.num_labels();
    if matches!(below_svc, 2 | 3) && !by_type.contains_key(&RecordType::SRV) {
        out.insert(key(&owner, u16::from(RecordType::SRV))?, pass(&owner));
    }
    negative(&owner, QTYPE_NAME, RCODE_NOERROR, zone, out)
}

/// An entry that sends the query on to the DNS service.
fn pass(name: &Name) -> DnsAnswer {
    DnsAnswer {
        flags: DNS_F_PASS,
        ..answer(RCODE_NOERROR, 0, &Encoded::default(), name)
    }
}

/// `name` as a name, or the root when it is none (for [`pass`], whose sections are empty).
fn owner_or_root(name: &str) -> Name {
    fqdn(name).unwrap_or_else(|_| Name::root())
}

/// A namespace's (or `svc.<zone>`'s) entries: NODATA, and NXDOMAIN for TXT.
fn namespace_entries(
    name: &Name,
    zone: &Zone,
    out: &mut BTreeMap<DnsKey, DnsAnswer>,
) -> Result<()> {
    negative(name, QTYPE_NAME, RCODE_NOERROR, zone, out)?;
    negative(name, u16::from(RecordType::TXT), RCODE_NXDOMAIN, zone, out)
}

/// A reply without records: `rcode`, and the zone's SOA.
fn negative(
    name: &Name,
    qtype: u16,
    rcode: u8,
    zone: &Zone,
    out: &mut BTreeMap<DnsKey, DnsAnswer>,
) -> Result<()> {
    let encoded = encode(
        name,
        RecordType::from(qtype),
        &[],
        std::slice::from_ref(&zone.soa),
        &[],
    )?;
    out.insert(key(name, qtype)?, answer(rcode, 0, &encoded, name));
    Ok(())
}

/// The addresses of the SRV records' targets.
fn glue(srv: &[Rr], all: &RecordsOf<'_>) -> Result<Vec<Rr>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for record in srv {
        let RData::SRV(srv) = record.data() else {
            continue;
        };
        let target = srv.target().to_ascii().trim_end_matches('.').to_owned();
        if !seen.insert(target.clone()) {
            continue;
        }
        for record in all(&target) {
            if matches!(record.rdata, Rdata::A { .. } | Rdata::Aaaa { .. }) {
                out.push(rr(srv.target(), record)?);
            }
        }
    }
    Ok(out)
}

/// A plan record as a resource record owned by `owner`.
fn rr(owner: &Name, record: &Record) -> Result<Rr> {
    let data = match &record.rdata {
        Rdata::A { address } => RData::A(A(*address)),
        Rdata::Aaaa { address } => RData::AAAA(AAAA(*address)),
        Rdata::Cname { target } => RData::CNAME(CNAME(fqdn(target)?)),
        Rdata::Ptr { target } => RData::PTR(PTR(fqdn(target)?)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, fqdn(target)?)),
        Rdata::Txt { text } => RData::TXT(TXT::new(vec![text.clone()])),
    };
    Ok(Rr::from_rdata(owner.clone(), record.ttl, data))
}

/// A reply's sections after the question, and where each record ends in them.
#[derive(Default)]
struct Encoded {
    bytes: Vec<u8>,
    /// Per record, in order: its section (0 answer, 1 authority, 2 additional) and the end
    /// of its bytes.
    ends: Vec<(usize, usize)>,
}

/// Encodes a reply to `name`/`qtype` as a whole message, and keeps what follows the question.
fn encode(
    name: &Name,
    qtype: RecordType,
    answers: &[Rr],
    authorities: &[Rr],
    additionals: &[Rr],
) -> Result<Encoded> {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    Header::new().emit(&mut encoder)?;
    Query::query(name.clone(), qtype).emit(&mut encoder)?;
    let start = encoder.offset();
    let mut ends = Vec::new();
    for (section, records) in [answers, authorities, additionals].iter().enumerate() {
        for record in *records {
            emit(record, &mut encoder)?;
            ends.push((section, encoder.offset() - start));
        }
    }
    Ok(Encoded {
        bytes: buf[start..].to_vec(),
        ends,
    })
}

/// Emits `record`; an SRV record's target uncompressed, as RFC 2782 has it (hickory
/// compresses every name it is not told to write in canonical form).
fn emit(record: &Rr, encoder: &mut BinEncoder<'_>) -> Result<()> {
    if record.record_type() != RecordType::SRV {
        record.emit(encoder)?;
        return Ok(());
    }
    record.name().emit(encoder)?;
    record.record_type().emit(encoder)?;
    record.dns_class().emit(encoder)?;
    encoder.emit_u32(record.ttl())?;
    let place = encoder.place::<u16>()?;
    encoder.set_canonical_names(true);
    let data = record.data().emit(encoder);
    encoder.set_canonical_names(false);
    data?;
    let len = u16::try_from(encoder.len_since_place(&place))?;
    place.replace(encoder, len)?;
    Ok(())
}

/// The records of `encoded` that end within `room` bytes, as a cut.
fn cut(encoded: &Encoded, room: usize) -> DnsCut {
    let mut out = DnsCut::default();
    for (section, end) in &encoded.ends {
        if *end > room {
            break;
        }
        out.len = *end as u16;
        match section {
            0 => out.answers += 1,
            1 => out.authorities += 1,
            _ => out.additionals += 1,
        }
    }
    out
}

/// The entry of a reply `rcode` with the sections of `encoded`, to a question `name`.
fn answer(rcode: u8, flags: u8, encoded: &Encoded, name: &Name) -> DnsAnswer {
    let question = name_len(name) + 4;
    // The whole reply: what fits the entry and the largest message the datapath sends.
    let whole = cut(
        encoded,
        DNS_SECTIONS_MAX.min(DNS_EDNS_MESSAGE.saturating_sub(HEADER_LEN + question + OPT_LEN)),
    );
    let small = cut(
        encoded,
        DNS_SMALL_MESSAGE.saturating_sub(HEADER_LEN + question + OPT_LEN),
    );
    let mut entry = DnsAnswer {
        rcode,
        flags,
        _pad: [0; 6],
        whole,
        small,
        data: [0; DNS_SECTIONS_MAX],
    };
    if usize::from(whole.len) < encoded.bytes.len() {
        entry.flags |= DNS_F_CUT;
    }
    entry.data[..usize::from(whole.len)].copy_from_slice(&encoded.bytes[..usize::from(whole.len)]);
    entry
}

/// A name from its text, fully qualified.
fn fqdn(text: &str) -> Result<Name> {
    let mut name = Name::from_ascii(text.trim_end_matches('.'))?;
    name.set_fqdn(true);
    ensure!(
        name_len(&name) <= DNS_NAME_MAX,
        "longer than {DNS_NAME_MAX} bytes"
    );
    Ok(name)
}

/// A name's length in wire format, the final zero byte included.
fn name_len(name: &Name) -> usize {
    name.iter().map(|label| label.len() + 1).sum::<usize>() + 1
}

/// A name in lowercase wire format.
fn wire_name(name: &Name) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(name_len(name));
    for label in name.iter() {
        let Ok(len) = u8::try_from(label.len()) else {
            bail!("a label longer than 255 bytes");
        };
        out.push(len);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    Ok(out)
}

/// The key of `name` and `qtype`.
pub fn key(name: &Name, qtype: u16) -> Result<DnsKey> {
    let wire = wire_name(name)?;
    ensure!(
        wire.len() <= DNS_NAME_MAX,
        "longer than {DNS_NAME_MAX} bytes"
    );
    let mut key = DnsKey {
        qtype,
        len: wire.len() as u16,
        name: [0; DNS_NAME_MAX + 1],
    };
    key.name[..wire.len()].copy_from_slice(&wire);
    Ok(key)
}

#[cfg(test)]
#[path = "tests/dns_tests.rs"]
mod tests;

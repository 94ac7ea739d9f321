//! The saturation benchmark's two-port traffic generator and null forwarder
//! (`svclb-ebpf/src/bin/trafficgen.rs`): the frames it makes are valid and of the flows it
//! claims, whatever the node did to the frame on its way round; it takes only frames of its
//! template's length, and only while it may circulate; and once the frames circulate, every
//! frame it sends is either received at its sink or counted as dropped on the way, and most
//! of them were not sent from user space.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Result, ensure};
use svclb_tests::{
    family::TestPacket,
    netns::{ifindex, in_netns, ip, ip_in, sysctl_in},
    packet::{PacketSpec, TCP_SYN, verify_checksums},
    packet6::{Packet6, l4_checksum_ok},
    require_root, sweep,
};

use crate::common::{
    fixture::FixtureNs,
    trafficgen::{Generator, Redirect, Seeder, Template, XDP_DROP, tx_dropped, wire_tester},
};

const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x64];

/// Source address (as u128) and port of a frame.
fn source(frame: &[u8], ipv6: bool) -> (u128, u16) {
    if ipv6 {
        let addr = <[u8; 16]>::try_from(&frame[22..38]).expect("16 bytes");
        (
            u128::from_be_bytes(addr),
            u16::from_be_bytes([frame[54], frame[55]]),
        )
    } else {
        let addr = <[u8; 4]>::try_from(&frame[26..30]).expect("4 bytes");
        (
            u128::from(u32::from_be_bytes(addr)),
            u16::from_be_bytes([frame[34], frame[35]]),
        )
    }
}

fn checksums_ok(frame: &[u8], ipv6: bool, udp: bool) -> bool {
    if ipv6 {
        l4_checksum_ok(frame)
    } else {
        let c = verify_checksums(frame);
        c.ip_ok && (c.l4_ok || (udp && c.udp_zero))
    }
}

/// The generator's frames for `spec`: `flows` flows (0: new flows), checked frame by frame.
fn frames_of<P: TestPacket>(spec: P, udp: bool, flows: u64) -> Result<()> {
    let template = Template::of(&spec, udp, DST_MAC, SRC_MAC);
    let ipv6 = template.ipv6;
    let mut generator = Generator::load(&template, flows, 0, 0)?;
    let (base_addr, base_port) = source(&template.frame, ipv6);
    // A frame the node rewrote (destination, TTL, checksums) on its way round.
    let mut rewritten = template.frame.clone();
    for byte in &mut rewritten[..template.header_len] {
        *byte = byte.wrapping_add(0x5a);
    }
    for n in 0..6u64 {
        let input = if n % 2 == 0 {
            &template.frame
        } else {
            &rewritten
        };
        let out = generator.run_on(input, 1)?;
        let flow = if flows == 0 { n } else { n % flows };
        ensure!(
            source(&out, ipv6) == (base_addr, base_port + flow as u16),
            "frame {n} of {} is not flow {flow}'s",
            P::FAMILY
        );
        ensure!(checksums_ok(&out, ipv6, udp), "frame {n}: bad checksums");
        let mut expected = template.frame.clone();
        expected[..template.header_len].copy_from_slice(&out[..template.header_len]);
        ensure!(
            out == expected,
            "frame {n} differs from the template beyond its source"
        );
    }
    if flows == 0 {
        // Past 64,512 ports, the next source address.
        generator.run_on(&template.frame, 64_512 - 6)?;
        let out = generator.run_on(&template.frame, 1)?;
        ensure!(
            source(&out, ipv6) == (base_addr + 1, base_port),
            "the 64,513th new flow is not the next address's first"
        );
        ensure!(
            checksums_ok(&out, ipv6, udp),
            "bad checksums on the next address"
        );
    }
    Ok(())
}

/// The generator counts what arrives on its sink (a test run's frame arrives on the
/// namespace's loopback device, ifindex 1), takes only frames of its template's length, and
/// sends on only while it may circulate.
fn filters_and_counts<P: TestPacket>(spec: P, udp: bool) -> Result<()> {
    let template = Template::of(&spec, udp, DST_MAC, SRC_MAC);
    let mut generator = Generator::load(&template, 1, 0, 1)?;
    generator.run_on(&template.frame, 1)?;
    let counts = |g: &Generator| -> Result<(u64, u64)> { Ok((g.received()?, g.generated()?)) };
    ensure!(
        counts(&generator)? == (1, 1),
        "one frame run, not counted once"
    );
    let mut longer = template.frame.clone();
    longer.push(0);
    let (action, _) = generator.verdict(&longer, 1)?;
    ensure!(
        action == XDP_DROP,
        "a frame longer than the template: {action}"
    );
    generator.circulate(None)?;
    let (action, _) = generator.verdict(&template.frame, 1)?;
    ensure!(
        action == XDP_DROP,
        "a frame after circulation stopped: {action}"
    );
    ensure!(
        counts(&generator)? == (2, 1),
        "received and generated: {:?}, not (2, 1)",
        counts(&generator)?
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn the_generator_makes_valid_frames_of_the_flows_it_counts_and_takes_only_its_own() -> Result<()> {
    require_root()?;
    // The flow counter is per CPU: every run on one.
    let mut cpu = nix::sched::CpuSet::new();
    cpu.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu)?;
    let client4 = (Ipv4Addr::new(100, 64, 0, 1), 1024);
    let lb4 = (Ipv4Addr::new(198, 18, 1, 244), 80);
    let client6 = (Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 1), 1024);
    let lb6 = (Ipv6Addr::new(0xfd00, 0x198, 0, 0, 0, 0, 0, 0x1f4), 80);
    frames_of(
        PacketSpec::udp(client4, lb4).with_payload(vec![0; 18]),
        true,
        3,
    )?;
    frames_of(
        PacketSpec::tcp(client4, lb4, TCP_SYN).with_payload(Vec::new()),
        false,
        0,
    )?;
    frames_of(
        Packet6::udp(client6, lb6).with_payload(vec![0; 18]),
        true,
        4,
    )?;
    frames_of(
        Packet6::tcp(client6, lb6, TCP_SYN).with_payload(Vec::new()),
        false,
        0,
    )?;
    filters_and_counts(
        PacketSpec::tcp(client4, lb4, TCP_SYN).with_payload(Vec::new()),
        false,
    )
}

#[test]
#[ignore = "needs root"]
fn circulating_frames_reach_the_sink_or_are_counted_as_dropped() -> Result<()> {
    require_root()?;
    // A tester with two ports and a feed, and a null forwarder between its ports.
    let [tester, middle] =
        ["tg-t", "tg-m"].map(|n| FixtureNs(sweep::scratch_name(&format!("-{n}"))));
    for ns in [&tester, &middle] {
        ip(&["netns", "add", &ns.0])?;
    }
    for (port, peer) in [("tg-gen", "tg-in"), ("tg-sink", "tg-out")] {
        ip_in(
            &tester.0,
            &[
                "link", "add", port, "type", "veth", "peer", "name", peer, "netns", &middle.0,
            ],
        )?;
        // (No IPv6: the devices' own frames would reach the sink's ring and could be dropped
        // there, where the generator's are counted.)
        sysctl_in(
            &middle.0,
            &format!("net.ipv6.conf.{peer}.disable_ipv6"),
            "1",
        )?;
        ip_in(&middle.0, &["link", "set", peer, "up"])?;
    }
    wire_tester(&tester.0, "tg-gen", "tg-sink", "tg-seed", "tg-feed")?;
    let (in_if, out_if) = (ifindex(&middle.0, "tg-in")?, ifindex(&middle.0, "tg-out")?);
    let _forwarder = in_netns(&middle.0, move || Redirect::attach(in_if, out_if))?;
    let spec = PacketSpec::udp(
        (Ipv4Addr::new(100, 64, 0, 1), 1024),
        (Ipv4Addr::new(198, 18, 0, 1), 80),
    );
    let template = Template::of(&spec.with_payload(vec![0; 18]), true, DST_MAC, SRC_MAC);
    let frame = template.frame.clone();
    let [gen_if, sink_if, feed_if, seed_if] =
        ["tg-gen", "tg-sink", "tg-feed", "tg-seed"].map(|dev| ifindex(&tester.0, dev));
    let (gen_if, sink_if, feed_if, seed_if) = (gen_if?, sink_if?, feed_if?, seed_if?);
    let mut generator = in_netns(&tester.0, move || {
        let mut generator = Generator::load(&template, 1024, gen_if, sink_if)?;
        generator.attach(sink_if)?;
        generator.attach(feed_if)?;
        Ok(generator)
    })?;
    let drops = || -> Result<u64> {
        Ok(tx_dropped(&tester.0, "tg-gen")? + tx_dropped(&middle.0, "tg-out")?)
    };
    let dropped_before = drops()?;
    generator.circulate(Some(Duration::from_secs(2)))?;
    let seeder = in_netns(&tester.0, move || {
        Seeder::start(frame, seed_if, 0, Duration::from_secs(2))
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let seeded = seeder.stop()?;
    generator.circulate(None)?;
    let received = generator.settled()?;
    let dropped = drops()? - dropped_before;
    let sent = generator.generated()?;
    ensure!(sent > 100_000, "only {sent} frames generated in 200 ms");
    ensure!(
        received + dropped == sent,
        "{sent} frames sent, {received} received and {dropped} dropped"
    );
    ensure!(received > sent / 10, "{received} of {sent} frames received");
    ensure!(
        seeded < sent / 10,
        "{seeded} of {sent} frames were sent from user space: they did not circulate"
    );
    Ok(())
}

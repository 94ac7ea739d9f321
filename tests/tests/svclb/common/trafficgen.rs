//! The host side of the benchmarks' traffic generator and null forwarder (the programs of
//! `svclb-ebpf/src/bin/trafficgen.rs`).
//!
//! The [`Generator`] works as a traffic generator with two ports: from one device it sends
//! frames to the node, on another (the sink) it receives and counts what the node forwarded,
//! and while [`Generator::circulate`] lets it, it makes each frame it received the next
//! flow's and sends it again. A [`Seeder`] sends a few frames a millisecond from user space
//! into a feed device ([`wire_tester`]), which keeps the loop full: what the node cannot take,
//! its uplink's ring drops, as a NIC's ring would. Every frame reaches the node as a NIC's
//! receive queue would hand it over, an XDP frame on a page of its own, with no socket buffer
//! made for it.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunOptions, Xdp, XdpMode},
};
use svclb::kernel::object::TRAFFICGEN_OBJECT;
use svclb_tests::{family::TestPacket, netns::ip_in};

/// The longest header the generator rewrites (TCP over IPv6 is 74 bytes).
const HEADER_MAX: usize = 80;

/// What the generator sends: a frame of flow 0, whose first `header_len` bytes (Ethernet to
/// the end of the TCP or UDP header) it rewrites for each flow.
pub struct Template {
    pub frame: Vec<u8>,
    pub header_len: usize,
    pub ipv6: bool,
    pub udp: bool,
}

impl Template {
    /// `spec`'s frame (TCP or UDP, without IP options or extension headers) between the given
    /// MAC addresses. It is not padded to Ethernet's minimum: a node that forwards it through
    /// its stack trims the padding, and the generator takes back only frames of the
    /// template's length.
    pub fn of<P: TestPacket>(spec: &P, udp: bool, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Self {
        let mut frame = spec.build();
        frame[0..6].copy_from_slice(&dst_mac);
        frame[6..12].copy_from_slice(&src_mac);
        Self {
            frame,
            header_len: P::L4_AT + if udp { 8 } else { 20 },
            ipv6: P::FAMILY == "IPv6",
            udp,
        }
    }
}

/// The generator, loaded for one template and flow count.
pub struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    /// Loads the generator, sending every frame to device `egress` and counting those that
    /// arrive on device `sink` (0, 0 where it only runs on test frames); `flows` 0 makes
    /// every frame a new flow.
    pub fn load(template: &Template, flows: u64, egress: u32, sink: u32) -> Result<Self> {
        ensure!(
            template.header_len.is_multiple_of(2)
                && template.header_len <= HEADER_MAX
                && template.header_len <= template.frame.len(),
            "a template header of {} bytes (even, at most {HEADER_MAX}, within the frame)",
            template.header_len
        );
        let mut header = [0u16; HEADER_MAX / 2];
        for (i, word) in header.iter_mut().enumerate().take(template.header_len / 2) {
            *word = u16::from_ne_bytes([template.frame[2 * i], template.frame[2 * i + 1]]);
        }
        let header_len = template.header_len as u32;
        let frame_len = u32::try_from(template.frame.len())?;
        let (ipv6, udp) = (u32::from(template.ipv6), u32::from(template.udp));
        let mut ebpf = EbpfLoader::new()
            .override_global("HEADER", &header, true)
            .override_global("HEADER_LEN", &header_len, true)
            .override_global("FRAME_LEN", &frame_len, true)
            .override_global("IPV6", &ipv6, true)
            .override_global("UDP", &udp, true)
            .override_global("FLOWS", &flows, true)
            .override_global("EGRESS", &egress, true)
            .override_global("SINK", &sink, true)
            .load(TRAFFICGEN_OBJECT)
            .context("loading the traffic generator")?;
        program(&mut ebpf, "svclb_gen")?.load()?;
        Ok(Self { ebpf })
    }

    /// The frame the generator's next run makes of `frame` (a template frame, or one the node
    /// rewrote), run `repeat` times (nothing is sent), while it circulates.
    pub fn run_on(&mut self, frame: &[u8], repeat: u32) -> Result<Vec<u8>> {
        self.circulate(Some(Duration::from_secs(60)))?;
        let (action, out) = self.verdict(frame, repeat)?;
        ensure!(action == XDP_REDIRECT, "the generator returned {action}");
        Ok(out)
    }

    /// What the generator does with `frame` (its XDP action) and makes of it, run `repeat`
    /// times (nothing is sent).
    pub fn verdict(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len()];
        let result = program(&mut self.ebpf, "svclb_gen")?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Attaches the generator (native mode) to device `ifindex` of the calling thread's
    /// namespace (the sink, or the feed device of [`wire_tester`]).
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        program(&mut self.ebpf, "svclb_gen")?
            .attach(ifindex, XdpMode::Driver)
            .with_context(|| format!("attaching the generator to device {ifindex} (native XDP)"))?;
        Ok(())
    }

    /// Makes the generator send on what it receives for `limit` at most (`None`: no more).
    /// Sending stops on its own after `limit`, so that a loop outlives no host that died.
    pub fn circulate(&mut self, limit: Option<Duration>) -> Result<()> {
        let until = match limit {
            Some(limit) => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
                (Duration::from(now) + limit).as_nanos() as u64
            }
            None => 0,
        };
        let map = self.ebpf.map_mut("CIRCULATE").context("no map CIRCULATE")?;
        Array::<_, u64>::try_from(map)?.set(0, &until, 0)?;
        Ok(())
    }

    /// Makes the next frame flow `first`'s (of a new-flows run: its source tuple moves on
    /// from there), on every CPU.
    pub fn start_at(&mut self, first: u64) -> Result<()> {
        let map = self.ebpf.map_mut("GENERATED").context("no map GENERATED")?;
        let mut counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?.get() as usize;
        counts.set(0, PerCpuValues::try_from(vec![first; cpus])?, 0)?;
        Ok(())
    }

    /// The flow counters summed over the CPUs (their differences count frames).
    pub fn generated(&self) -> Result<u64> {
        per_cpu_total(&self.ebpf, "GENERATED")
    }

    /// Frames received on the sink so far, on every CPU.
    pub fn received(&self) -> Result<u64> {
        per_cpu_total(&self.ebpf, "RECEIVED")
    }

    /// Waits until the sink's count stops growing (nothing more in flight): the count then.
    pub fn settled(&self) -> Result<u64> {
        let mut last = self.received()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.received()?;
            if now == last {
                return Ok(now);
            }
            ensure!(
                Instant::now() < deadline,
                "the sink still receives 5 s after the generator stopped"
            );
            last = now;
        }
    }
}

/// The tester's devices in namespace `ns`, up and without IPv6 (whose own frames the
/// generator would only drop): its ports `gen_port` and `sink` (made already, their peers in
/// the node), and a new veth pair `seed`-`feed`, which a [`Seeder`] sends into. NAPI (GRO)
/// runs on `sink` and `feed`, where the generator runs.
pub fn wire_tester(ns: &str, gen_port: &str, sink: &str, seed: &str, feed: &str) -> Result<()> {
    ip_in(
        ns,
        &["link", "add", seed, "type", "veth", "peer", "name", feed],
    )?;
    for dev in [gen_port, sink, seed, feed] {
        let key = format!("net.ipv6.conf.{dev}.disable_ipv6");
        svclb_tests::netns::sysctl_in(ns, &key, "1")?;
        ip_in(ns, &["link", "set", dev, "up"])?;
    }
    for dev in [sink, feed] {
        svclb_tests::netns::run_in(ns, "ethtool", &["-K", dev, "gro", "on"])?;
    }
    Ok(())
}

/// A device's transmit drops: a veth counts there the frames its peer's ring had no room for.
pub fn tx_dropped(ns: &str, dev: &str) -> Result<u64> {
    let out = svclb_tests::netns::run("ip", &["-n", ns, "-s", "-j", "link", "show", dev])?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    links[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .with_context(|| format!("no tx drops of {dev} in {ns}"))
}

/// Frames per millisecond a [`Seeder`] sends.
const SEEDED_PER_MS: usize = 32;

/// A thread that sends a frame into the loop, [`SEEDED_PER_MS`] a millisecond.
pub struct Seeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl Seeder {
    /// Sends `frame` out of device `ifindex` of the calling thread's namespace (the seed
    /// device of [`wire_tester`]) from a thread pinned to `cpu`, until stopped or until `limit`
    /// has passed.
    pub fn start(frame: Vec<u8>, ifindex: u32, cpu: usize, limit: Duration) -> Result<Self> {
        let socket = packet_socket(ifindex)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || -> Result<u64> {
            svclb_tests::cpu::pin_self(cpu)?;
            let deadline = Instant::now() + limit;
            let mut sent = 0;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                for _ in 0..SEEDED_PER_MS {
                    send(&socket, &frame)?;
                }
                sent += SEEDED_PER_MS as u64;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(sent)
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread: the frames it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(sent) => sent.context("seeding the loop"),
                Err(_) => bail!("the seeder panicked"),
            },
            None => Ok(0),
        }
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A raw packet socket that sends on device `ifindex` (and receives nothing).
fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    // SAFETY: a plain system call; the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(
        fd >= 0,
        "a packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just made and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all zeros is a valid `sockaddr_ll`.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = i32::try_from(ifindex)?;
    // SAFETY: `addr` is a `sockaddr_ll` of the length given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    ensure!(
        bound == 0,
        "binding a packet socket to device {ifindex}: {}",
        std::io::Error::last_os_error()
    );
    Ok(socket)
}

fn send(socket: &OwnedFd, frame: &[u8]) -> Result<()> {
    // SAFETY: `frame` is valid for its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if sent == frame.len() as isize {
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        // A full device queue or socket buffer: the loop is full enough.
        Some(libc::ENOBUFS | libc::EAGAIN) if sent == -1 => Ok(()),
        _ => bail!("sending a frame: {}", std::io::Error::last_os_error()),
    }
}

/// The null forwarder: a program that sends every frame on untouched, attached in native
/// mode to a device of the calling thread's namespace.
pub struct Redirect {
    _ebpf: Ebpf,
}

impl Redirect {
    /// The forwarder on device `ifindex`, redirecting to device `egress`.
    pub fn attach(ifindex: u32, egress: u32) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global("EGRESS", &egress, true)
            .load(TRAFFICGEN_OBJECT)
            .context("loading the traffic generator's object")?;
        let xdp = program(&mut ebpf, "svclb_redirect")?;
        xdp.load()?;
        xdp.attach(ifindex, XdpMode::Driver).with_context(|| {
            format!("attaching svclb_redirect to device {ifindex} (native XDP)")
        })?;
        Ok(Self { _ebpf: ebpf })
    }
}

pub const XDP_DROP: u32 = 1;
pub const XDP_REDIRECT: u32 = 4;

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

fn per_cpu_total(ebpf: &Ebpf, name: &str) -> Result<u64> {
    let map = ebpf.map(name).with_context(|| format!("no map {name}"))?;
    let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    Ok(counts.get(&0, 0)?.iter().sum())
}

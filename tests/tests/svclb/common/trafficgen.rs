//! The host side of the benchmarks' traffic generator, sink and null forwarder (the programs
//! of `svclb-ebpf/src/bin/trafficgen.rs`).
//!
//! A [`Generator`] puts frames onto a device as a NIC's receive queue would hand them to the
//! node: `BPF_PROG_RUN` in live-frame mode, from the calling thread, so that the thread's CPU
//! does the generating and the device's peer receives the frames through its own NAPI.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use svclb::kernel::object::TRAFFICGEN_OBJECT;
use svclb_tests::family::TestPacket;

/// The longest header the generator rewrites (TCP over IPv6 is 74 bytes).
const HEADER_MAX: usize = 80;
/// Frames per live-mode batch (the kernel's maximum).
const BATCH: u32 = 256;
/// Frames of the call that measures the generator's rate, and the most of any call (about
/// 100 s at 10 Mpps).
const PROBE_FRAMES: u32 = 1 << 16;
const MAX_FRAMES_PER_CALL: u32 = 1 << 30;

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
    /// MAC addresses, padded to Ethernet's minimum of 60 bytes (before the FCS).
    pub fn of<P: TestPacket>(spec: &P, udp: bool, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Self {
        let mut frame = spec.build();
        frame[0..6].copy_from_slice(&dst_mac);
        frame[6..12].copy_from_slice(&src_mac);
        frame.resize(frame.len().max(60), 0);
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
    frame: Vec<u8>,
}

impl Generator {
    /// Loads the generator; `flows` 0 makes every frame a new flow.
    pub fn load(template: &Template, flows: u64) -> Result<Self> {
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
        let (ipv6, udp) = (u32::from(template.ipv6), u32::from(template.udp));
        let mut ebpf = EbpfLoader::new()
            .override_global("HEADER", &header, true)
            .override_global("HEADER_LEN", &header_len, true)
            .override_global("IPV6", &ipv6, true)
            .override_global("UDP", &udp, true)
            .override_global("FLOWS", &flows, true)
            .load(TRAFFICGEN_OBJECT)
            .context("loading the traffic generator")?;
        program(&mut ebpf, "svclb_gen")?.load()?;
        Ok(Self {
            ebpf,
            frame: template.frame.clone(),
        })
    }

    /// The frame the generator's next run makes of `frame` (a template frame, or one the node
    /// rewrote), run `repeat` times (no live mode: nothing is sent).
    pub fn run_on(&mut self, frame: &[u8], repeat: u32) -> Result<Vec<u8>> {
        let mut out = vec![0u8; frame.len()];
        let result = program(&mut self.ebpf, "svclb_gen")?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        ensure!(
            result.return_value == XDP_TX,
            "the generator returned {}",
            result.return_value
        );
        out.truncate(result.data_size_out as usize);
        Ok(out)
    }

    /// Sends frames out of device `ifindex` of the calling thread's namespace for about
    /// `duration`, from the calling thread's CPU. Its peer device must run NAPI (have an XDP
    /// program, or GRO) to take them. The frames generated.
    ///
    /// Each call sets up and tears down a page pool, which waits for an RCU grace period
    /// (tens of ms on a VM, the generator idle): a short call measures the rate, then one
    /// call is sized to fill the rest of `duration`.
    pub fn send_for(&mut self, ifindex: u32, duration: Duration) -> Result<u64> {
        let before = self.generated()?;
        let started = Instant::now();
        let mut frames = PROBE_FRAMES;
        while started.elapsed() < duration {
            let call = Instant::now();
            self.send(ifindex, frames)?;
            let rate = f64::from(frames) / call.elapsed().as_secs_f64().max(1e-6);
            let left = duration.saturating_sub(started.elapsed()).as_secs_f64();
            frames = ((rate * left) as u32).clamp(PROBE_FRAMES, MAX_FRAMES_PER_CALL);
        }
        Ok(self.generated()? - before)
    }

    /// One live-mode call of `frames` frames out of device `ifindex`.
    fn send(&mut self, ifindex: u32, frames: u32) -> Result<()> {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex (the sending device).
        let mut ctx = [0u8; 24];
        let len = u32::try_from(self.frame.len())?;
        ctx[4..8].copy_from_slice(&len.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        program(&mut self.ebpf, "svclb_gen")?
            .test_run(TestRunOptions {
                data_in: Some(&self.frame),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::default()
            })
            .context(
                "sending live frames (BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, Linux 5.18 \
                 or later; some sandboxed kernels refuse it with EPERM)",
            )?;
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
    fn generated(&self) -> Result<u64> {
        per_cpu_total(&self.ebpf, "GENERATED")
    }
}

/// A program that counts and drops every frame (`Sink`) or sends it on untouched
/// (`Redirect`, to the device given), attached in native mode to a device of the calling
/// thread's namespace.
pub struct Attached {
    ebpf: Ebpf,
}

impl Attached {
    /// The sink, on device `ifindex`.
    pub fn sink(ifindex: u32) -> Result<Self> {
        Self::attach(EbpfLoader::new(), "svclb_sink", ifindex)
    }

    /// The null forwarder, on device `ifindex`, redirecting to device `egress`.
    pub fn redirect(ifindex: u32, egress: u32) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.override_global("EGRESS", &egress, true);
        Self::attach(loader, "svclb_redirect", ifindex)
    }

    fn attach(mut loader: EbpfLoader<'_>, name: &str, ifindex: u32) -> Result<Self> {
        let mut ebpf = loader
            .load(TRAFFICGEN_OBJECT)
            .context("loading the traffic generator's object")?;
        let xdp = program(&mut ebpf, name)?;
        xdp.load()?;
        xdp.attach(ifindex, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to device {ifindex} (native XDP)"))?;
        Ok(Self { ebpf })
    }

    /// Frames the sink received so far, on every CPU.
    pub fn received(&self) -> Result<u64> {
        per_cpu_total(&self.ebpf, "RECEIVED")
    }

    /// Waits until the count stops growing (nothing more in flight): the count then.
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

const XDP_TX: u32 = 3;

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

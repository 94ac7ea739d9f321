//! Every integration test of svclb, in one test binary (one link, not one per file): the
//! datapath fixtures (BPF_PROG_TEST_RUN), the lab tests (an agent per node in a cluster of
//! network namespaces), the watch layer and the chart. Tests that need root are
//! `#[ignore = "needs root"]`; `cargo xtask test` runs them, two at a time, as root.

mod common;
mod datapath;
mod datapath_dns;
mod datapath_fragments;
mod datapath_full_maps;
mod datapath_fuzz;
mod datapath_hostile;
mod datapath_sweep;
mod datapath_trafficgen;
mod datapath_upgrade;
mod datapath_v6;
mod helm_chart;
mod kube_watch;
mod lab_agent;
mod lab_apiserver;
mod lab_capabilities;
mod lab_clusterip;
mod lab_conntrack;
mod lab_dns;
mod lab_dns_reference;
mod lab_dualstack;
mod lab_health;
mod lab_northsouth;
mod lab_restart;
mod lab_soak;
mod lab_socket;
mod lab_sweep;
mod lab_xdp;

//! The latency chart: p99 new-connection latency against the number of services, one line per
//! system, drawn with plotters into a PNG (text in DejaVu Sans, from Debian's
//! fonts-dejavu-core, which `cargo xtask bench` installs).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;

use crate::latency::{Row, System};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn latency(rows: &[Row], path: &Path) -> Result<()> {
    let bytes =
        std::fs::read(FONT).with_context(|| format!("reading {FONT} (fonts-dejavu-core)"))?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))?;

    let max_n = rows.iter().map(|r| r.services).max().unwrap_or(1) as f64;
    let max_us = rows
        .iter()
        .map(|r| r.p99_us)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "New-connection latency through a cluster IP (p99)",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((50f64..max_n * 2.0).log_scale(), 0f64..max_us.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("services")
        .y_desc("p99 latency (µs): connect, one request, close")
        .x_labels(4)
        .x_label_formatter(&|n| format!("{n:.0}"))
        .y_label_formatter(&|us| format!("{us:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [BLACK, BLUE, MAGENTA, RED, RGBColor(0, 150, 0)];
    for (system, color) in System::ALL.into_iter().zip(colors) {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.system == system && r.p99_us.is_finite())
            .map(|r| (r.services as f64, r.p99_us))
            .collect();
        let style = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(system.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, style.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}

//! The SVG chart: throughput per workload and delivery latency, one bar per backend.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{si, BackendReport, Measured, Report};
use crate::workloads::Workload;

/// One colour per backend, in table order.
const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

/// A bar group: its label (after the workload's own) and how to read one backend's value.
struct Group {
    workload: Workload,
    label: &'static str,
    value: fn(&BackendReport) -> Option<f64>,
}

impl Group {
    fn label(&self, quick: bool) -> String {
        format!("{} {}", self.workload.label(quick), self.label)
    }
}

fn find(b: &BackendReport, w: Workload) -> Option<&Measured> {
    b.results
        .iter()
        .find(|m| m.workload == w.id() && m.error.is_none())
}

const THROUGHPUT: [Group; 5] = [
    Group {
        workload: Workload::E2e,
        label: "(deltas/s)",
        value: |b| find(b, Workload::E2e)?.rate,
    },
    Group {
        workload: Workload::Replay,
        label: "(events/s)",
        value: |b| find(b, Workload::Replay)?.rate,
    },
    Group {
        workload: Workload::Runs,
        label: "(deltas/s)",
        value: |b| find(b, Workload::Runs)?.rate,
    },
    Group {
        workload: Workload::Concurrent,
        label: "(deltas/s)",
        value: |b| find(b, Workload::Concurrent)?.rate,
    },
    Group {
        workload: Workload::Observers,
        label: "(deliveries/s)",
        value: |b| find(b, Workload::Observers)?.rate,
    },
];

const LATENCY: [Group; 4] = [
    Group {
        workload: Workload::Latency,
        label: "p50",
        value: |b| Some(find(b, Workload::Latency)?.latency?.p50_ms),
    },
    Group {
        workload: Workload::Latency,
        label: "p99",
        value: |b| Some(find(b, Workload::Latency)?.latency?.p99_ms),
    },
    Group {
        workload: Workload::Observers,
        label: "p50",
        value: |b| Some(find(b, Workload::Observers)?.latency?.p50_ms),
    },
    Group {
        workload: Workload::Observers,
        label: "p99",
        value: |b| Some(find(b, Workload::Observers)?.latency?.p99_ms),
    },
];

/// Draw the chart of `report` into `path` (its directory must exist).
pub(crate) fn draw(report: &Report, path: &Path) -> Result<PathBuf, String> {
    let backends: Vec<&BackendReport> = report
        .backends
        .iter()
        .filter(|b| b.skipped.is_none())
        .collect();
    let root = SVGBackend::new(path, (1280, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(480);
    let load = format!(
        "{}{} CPUs, load average {} → {}",
        if report.quick { "--quick, " } else { "" },
        report.machine.cpus,
        report.machine.load_average_start,
        report.machine.load_average_end
    );
    panel(
        &top,
        &format!("durable-bench: throughput per backend (log scale; {load})"),
        "per second",
        &THROUGHPUT,
        &backends,
        report.quick,
    )?;
    panel(
        &bottom,
        "model emission → observer latency at 1 ms pacing (log scale)",
        "milliseconds",
        &LATENCY,
        &backends,
        report.quick,
    )?;
    root.present().map_err(|e| e.to_string())?;
    Ok(path.to_path_buf())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    groups: &[Group],
    backends: &[&BackendReport],
    quick: bool,
) -> Result<(), String> {
    let labels: Vec<String> = groups.iter().map(|g| g.label(quick)).collect();
    let values: Vec<f64> = backends
        .iter()
        .flat_map(|b| groups.iter().filter_map(|g| (g.value)(b)))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    // Headroom above the tallest bar for the legend.
    let hi = values.iter().copied().fold(1.0_f64, f64::max) * 30.0;
    let lo = values.iter().copied().fold(hi, f64::min).max(1e-3) / 2.0;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5..n - 0.5, (lo..hi).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| si(*v, None).trim_end().to_owned())
        .y_desc(unit)
        .draw()
        .map_err(|e| e.to_string())?;
    let width = 0.8 / backends.len().max(1) as f64;
    for (bi, b) in backends.iter().enumerate() {
        let color = COLORS[bi % COLORS.len()];
        chart
            .draw_series(groups.iter().enumerate().filter_map(|(gi, g)| {
                let v = (g.value)(b).filter(|v| *v > 0.0 && v.is_finite())?;
                let x0 = gi as f64 - 0.4 + bi as f64 * width;
                Some(Rectangle::new(
                    [(x0, lo), (x0 + width * 0.9, v)],
                    color.filled(),
                ))
            }))
            .map_err(|e| e.to_string())?
            .label(format!("{} (log: {}, pubsub: {})", b.name, b.log, b.pubsub))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

//! The SVG bar chart of the flex/kernel ratios.

use std::path::Path;

use anyhow::Context;

use super::summary::CellSummary;

/// A horizontal bar chart of the flex/kernel ratios with a line at 1.0.
pub(crate) fn write_svg(path: &Path, cells: &[CellSummary], title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let cells: Vec<&CellSummary> = cells.iter().filter(|c| c.ratio.is_some()).collect();
    let n = cells.len().max(1);
    let height = (80 + 22 * n) as u32;
    let max = cells.iter().filter_map(|c| c.ratio).fold(1.0f64, f64::max);
    let xmax = (max * 1.15).max(1.2);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    // The first cell at the top.
    let row = |i: usize| (n - 1 - i) as i32;
    let labels: Vec<String> = cells.iter().rev().map(|c| c.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..xmax, (0..n as i32).into_segmented())
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("flex / kernel throughput (> 1: flex faster)")
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .draw_series(cells.iter().enumerate().map(|(i, c)| {
            let r = c.ratio.unwrap_or(0.0);
            let color = if r >= 1.0 {
                RGBColor(46, 139, 87)
            } else {
                RGBColor(205, 92, 92)
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row(i))),
                    (r, SegmentValue::Exact(row(i) + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .draw_series(cells.iter().enumerate().map(|(i, c)| {
            Text::new(
                format!("{:.2}x", c.ratio.unwrap_or(0.0)),
                (
                    c.ratio.unwrap_or(0.0) + xmax * 0.005,
                    SegmentValue::CenterOf(row(i)),
                ),
                ("sans-serif", 12)
                    .into_font()
                    .into_text_style(&root)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .draw_series(LineSeries::new(
            [
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(n as i32)),
            ],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

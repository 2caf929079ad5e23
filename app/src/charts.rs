//! Time-series charts rendered on the server as SVG (plotters, no font libraries): one shared
//! look for every dashboard, with the window on the x axis and lifecycle events marked on it.

use crate::components::format_time;
use plotters::prelude::*;

/// One line of a chart: its legend, colour and points `(ms since the epoch, value)`.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: RGBColor,
    pub points: Vec<(i64, f64)>,
}

/// The palette every chart uses, so a colour means the same thing everywhere.
pub const BLUE: RGBColor = RGBColor(37, 99, 235);
pub const GREEN: RGBColor = RGBColor(22, 163, 74);
pub const AMBER: RGBColor = RGBColor(217, 119, 6);
pub const RED: RGBColor = RGBColor(220, 38, 38);
pub const SLATE: RGBColor = RGBColor(100, 116, 139);
pub const VIOLET: RGBColor = RGBColor(124, 58, 237);
pub const CYAN: RGBColor = RGBColor(8, 145, 178);
/// One colour per sink error kind, in `SinkErrorKind::ALL` order, the same on every chart.
pub const ERROR_KIND_COLORS: [RGBColor; 7] = [VIOLET, AMBER, CYAN, RED, SLATE, BLUE, GREEN];
const GRID: RGBColor = RGBColor(226, 232, 240);
const MARKER: RGBColor = RGBColor(148, 163, 184);

/// A line chart over `[from, to]`. Points further apart than `gap_ms` are not joined (the job
/// was not running in between); `markers` are drawn as vertical lines (deployments, restarts).
pub fn line_chart(
    title: &str,
    unit: &str,
    (from, to): (i64, i64),
    gap_ms: i64,
    series: &[Series<'_>],
    markers: &[i64],
) -> String {
    let mut svg = String::new();
    // The error borrows the SVG buffer: turn it into text before giving the buffer back.
    let failed = draw(&mut svg, title, unit, (from, to), gap_ms, series, markers).err().map(|e| e.to_string());
    if let Some(e) = failed {
        // Only a bug in the chart's own geometry gets here; the page shows the other charts.
        tracing::error!(error = %e, chart = title, "Chart could not be drawn.");
        return String::new();
    }
    // Scale with its container (the viewBox keeps the proportions).
    svg.replacen(r#"<svg width="720" height="240""#, r#"<svg width="100%" height="auto""#, 1)
}

fn draw<'a>(
    svg: &'a mut String,
    title: &str,
    unit: &str,
    (from, to): (i64, i64),
    gap_ms: i64,
    series: &[Series<'_>],
    markers: &[i64],
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
    let y_max = if top > 0.0 { top * 1.15 } else { 1.0 };
    let long = to - from > 24 * 3_600_000;
    let root = SVGBackend::with_string(svg, (720, 240)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(26)
        .y_label_area_size(64)
        .build_cartesian_2d(from as f64..to as f64, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(5)
        .max_light_lines(0)
        .bold_line_style(GRID)
        .x_label_formatter(&|t| axis_time(*t as i64, long))
        .y_label_formatter(&|v| axis_value(*v))
        .y_desc(unit)
        .label_style(("sans-serif", 11))
        .draw()?;
    for &m in markers.iter().filter(|m| (from..=to).contains(*m)) {
        let m = m as f64;
        chart.draw_series(std::iter::once(PathElement::new(vec![(m, 0.0), (m, y_max)], MARKER.stroke_width(1))))?;
    }
    for s in series {
        let color = s.color;
        let mut labelled = false;
        for segment in segments(&s.points, gap_ms) {
            let points = segment.iter().map(|&(t, v)| (t as f64, v));
            // A lone sample has no line to draw: show it as a dot.
            let drawn = if segment.len() == 1 {
                chart.draw_series(points.map(|p| Circle::new(p, 3, color.filled())))?
            } else {
                chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?
            };
            if !labelled {
                drawn
                    .label(s.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                labelled = true;
            }
        }
    }
    if series.iter().any(|s| !s.points.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(GRID)
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Runs of points no further apart than `gap_ms`.
fn segments(points: &[(i64, f64)], gap_ms: i64) -> Vec<&[(i64, f64)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].0 - points[i - 1].0 > gap_ms {
            if i > start {
                out.push(&points[start..i]);
            }
            start = i;
        }
    }
    out
}

/// `HH:MM` within a day, `MM-DD HH:MM` beyond (UTC, like the rest of the console).
fn axis_time(ms: i64, long: bool) -> String {
    let full = format_time(ms);
    if long {
        full[5..16].to_owned()
    } else {
        full[11..16].to_owned()
    }
}

/// `1.2k`, `3.4M`, `0.25`: short enough for the axis.
pub fn axis_value(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e3 => format!("{:.1}k", v / 1e3),
        a if a >= 10.0 || a == 0.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_its_title_axes_legend_and_lines() {
        let points = vec![(0, 1.0), (10_000, 3.0), (20_000, 2.0), (90_000, 5.0), (100_000, 4.0)];
        let svg = line_chart(
            "Throughput",
            "events/s",
            (0, 120_000),
            15_000,
            &[Series { label: "delivered", color: GREEN, points }],
            &[50_000],
        );
        assert!(svg.starts_with(r#"<svg width="100%""#), "{svg}");
        assert!(svg.contains("Throughput") && svg.contains("events/s") && svg.contains("delivered"));
        assert!(svg.contains("00:01"), "time axis labelled in HH:MM: {svg}");
        // Two runs of points (a gap of 70 s) are two lines, plus the legend's sample line.
        assert_eq!(svg.matches(r##"stroke="#16A34A" stroke-width="2""##).count(), 3, "{svg}");
        assert_eq!(svg.matches(r##"stroke="#94A3B8""##).count(), 1, "the marker is drawn: {svg}");
    }

    #[test]
    fn a_lone_sample_is_a_dot() {
        let svg = line_chart(
            "Lag",
            "events",
            (0, 60_000),
            15_000,
            &[Series { label: "lag", color: RED, points: vec![(30_000, 2.0)] }],
            &[],
        );
        assert!(svg.contains("<circle"), "{svg}");
    }

    #[test]
    fn segments_split_at_gaps_and_axis_values_stay_short() {
        let p = [(0, 0.0), (10, 0.0), (100, 0.0)];
        assert_eq!(segments(&p, 20).len(), 2);
        assert!(segments(&[], 20).is_empty());
        assert_eq!(axis_value(1500.0), "1.5k");
        assert_eq!(axis_value(2_500_000.0), "2.5M");
        assert_eq!(axis_value(0.25), "0.25");
        assert_eq!(axis_value(42.0), "42");
    }
}

//! The SVG plot of a benchmark run ([`render_svg`]): per-round values of every subject
//! and baseline, per-round ratios with the acceptance line, and the cache-line ping-pong
//! of each round, which says where the two threads sat: rounds on a far vCPU pair (the
//! harness's own split: the largest ping-pong more than twice the smallest, split at
//! their geometric mean) are shaded in every panel.
//!
//! Drawn with `plotters`' SVG backend only; text is left to the SVG viewer's fonts.

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// A run's plot: a title, a caption, panels of per-round series stacked top to bottom,
/// and the ping-pong of each round at the bottom.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    /// First line (the binary and what it measures).
    pub title: String,
    /// Second line (machine, that it is a single run, ...).
    pub caption: String,
    /// Rounds on the x axis: 1 to `rounds`.
    pub rounds: usize,
    /// Cache-line ping-pong round trip of each round, ns (empty: not measured).
    pub ping_pong_ns: Vec<f64>,
    /// The panels, top to bottom; one with nothing measured is left out.
    pub panels: Vec<Panel>,
}

/// One panel: series over the rounds, sharing a y axis.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    /// Drawn above the panel.
    pub title: String,
    /// The y axis's unit.
    pub y_label: String,
    /// The series; values that are not finite are not drawn.
    pub series: Vec<Series>,
    /// Horizontal reference lines (parity, an acceptance target).
    pub lines: Vec<RefLine>,
    /// A logarithmic y axis (for series a hundred times apart), used when the values span
    /// more than about a decade and a half (else the panel stays linear); non-positive
    /// values are not drawn on it.
    pub log_y: bool,
}

/// One subject's (or baseline's) value in each round.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend name.
    pub name: String,
    /// A baseline is drawn dashed.
    pub baseline: bool,
    /// One value per round, round 1 first; NaN where not measured.
    pub values: Vec<f64>,
}

/// A horizontal line across a panel: a ratio's parity or an acceptance target.
#[derive(Clone, Debug)]
pub struct RefLine {
    /// Where, in the panel's unit.
    pub value: f64,
    /// Legend text (for example `need <= 1.2`).
    pub label: String,
}

impl Series {
    /// A subject's series.
    pub fn subject(name: impl Into<String>, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            baseline: false,
            values,
        }
    }

    /// A baseline's series (drawn dashed).
    pub fn baseline(name: impl Into<String>, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            baseline: true,
            values,
        }
    }

    fn points(&self, log_y: bool) -> Vec<(f64, f64)> {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && (!log_y || **v > 0.0))
            .map(|(i, v)| ((i + 1) as f64, *v))
            .collect()
    }
}

impl RefLine {
    /// A line at `value` labelled `label`.
    pub fn new(value: f64, label: impl Into<String>) -> Self {
        Self {
            value,
            label: label.into(),
        }
    }
}

impl Panel {
    /// A panel titled `title` with unit `y_label` and no series yet.
    pub fn new(title: impl Into<String>, y_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            lines: Vec::new(),
            log_y: false,
        }
    }

    /// With a logarithmic y axis.
    #[must_use]
    pub fn log(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// Adds `series`.
    #[must_use]
    pub fn with(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Adds a reference line.
    #[must_use]
    pub fn line(mut self, value: f64, label: impl Into<String>) -> Self {
        self.lines.push(RefLine::new(value, label));
        self
    }

    /// Whether any series has a finite value.
    pub fn has_data(&self) -> bool {
        self.series
            .iter()
            .any(|s| s.values.iter().any(|v| v.is_finite()))
    }
}

/// The split between near and far rounds by ping-pong, as the harnesses judge it: when
/// the largest finite ping-pong is more than twice the smallest, their geometric mean
/// (rounds at or above it sat on a far pair); else `None` (one placement throughout).
pub fn far_split(ping_pong_ns: &[f64]) -> Option<f64> {
    let (lo, hi) = ping_pong_ns
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    (hi > 2.0 * lo).then(|| (lo * hi).sqrt())
}

const WIDTH: u32 = 1100;
const HEADER: u32 = 64;
/// Caption characters per line, and the height a further line adds.
const CAPTION_CHARS: usize = 140;
const CAPTION_LINE: u32 = 18;
const PANEL: u32 = 250;
const PING_PONG_PANEL: u32 = 190;
const LEGEND: u32 = 260;
const FONT: &str = "sans-serif";
/// Series colours, in order (a baseline takes the next colour like a subject).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
/// Reference lines: parity grey, the others [`TARGET_LINE`].
const PARITY: RGBColor = RGBColor(128, 128, 128);
/// The colour of acceptance lines (used for nothing else: the unit test looks for it).
pub const TARGET_LINE: RGBColor = RGBColor(120, 0, 60);
const FAR_BAND: RGBColor = RGBColor(255, 224, 178);
const NEAR_POINT: RGBColor = RGBColor(31, 119, 180);
const FAR_POINT: RGBColor = RGBColor(230, 85, 13);

/// Draws `chart` as an SVG document.
///
/// # Errors
/// When plotters fails to draw (it does not for finite data; the message says what).
pub fn render_svg(chart: &Chart) -> Result<String, String> {
    let panels: Vec<&Panel> = chart.panels.iter().filter(|p| p.has_data()).collect();
    let with_pp = chart.ping_pong_ns.iter().any(|v| v.is_finite());
    let caption = wrap(&chart.caption, CAPTION_CHARS);
    let header = HEADER + CAPTION_LINE * caption.len().saturating_sub(1) as u32;
    let height =
        header + PANEL * panels.len().max(1) as u32 + if with_pp { PING_PONG_PANEL } else { 0 };
    let mut svg = String::new();
    draw(
        chart,
        &caption,
        &panels,
        with_pp,
        &mut svg,
        (header, height),
    )
    .map_err(|e| format!("drawing the plot: {e}"))?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// `text` in lines of at most `width` characters, broken at spaces (a longer word
/// stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

fn draw(
    chart: &Chart,
    caption: &[String],
    panels: &[&Panel],
    with_pp: bool,
    svg: &mut String,
    (header, height): (u32, u32),
) -> DrawResult {
    let root = SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, mut rest) = root.split_vertically(header);
    head.draw_text(
        &chart.title,
        &(FONT, 22).into_font().color(&BLACK),
        (12, 10),
    )?;
    for (line, y) in caption.iter().zip((40..).step_by(CAPTION_LINE as usize)) {
        head.draw_text(line, &(FONT, 14).into_font().color(&BLACK), (12, y))?;
    }
    let split = far_split(&chart.ping_pong_ns);
    let far: Vec<usize> = split.map_or_else(Vec::new, |split| {
        chart
            .ping_pong_ns
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v >= split)
            .map(|(i, _)| i + 1)
            .collect()
    });
    if panels.is_empty() {
        let (area, next) = rest.split_vertically(PANEL);
        area.draw_text(
            "nothing was measured",
            &(FONT, 16).into_font().color(&BLACK),
            (12, 12),
        )?;
        rest = next;
    }
    for panel in panels {
        let (area, next) = rest.split_vertically(PANEL);
        draw_panel(&area, chart.rounds, panel, &far)?;
        rest = next;
    }
    if with_pp {
        draw_ping_pong(&rest, chart, split)?;
    }
    root.present()?;
    Ok(())
}

/// `(lo, hi)` padded by 8% of the span (or of the value, for a flat series).
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    let lo = if lo >= 0.0 {
        (lo - 0.08 * span).max(0.0)
    } else {
        lo - 0.08 * span
    };
    (lo, hi + 0.08 * span)
}

/// A y-axis label: whole numbers from 100 up, else up to three decimals without
/// trailing zeros.
#[allow(clippy::trivially_copy_pass_by_ref)] // the signature plotters' formatters take
fn value_label(v: &f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // the signature plotters' formatters take
fn round_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rounds: usize,
    panel: &Panel,
    far: &[usize],
) -> DrawResult {
    let (plot, legend) = area.split_horizontally(WIDTH - LEGEND);
    let (lo, hi) = y_range(
        panel
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .chain(panel.lines.iter().map(|l| l.value)),
    );
    let x_hi = rounds.max(1) as f64 + 0.5;
    let (log_lo, log_hi) = log_range(panel);
    // Plotters labels a log axis at powers of ten: below ~1.5 decades it would show
    // one label or none, so a narrower panel stays linear.
    let log = panel.log_y && log_hi / log_lo > 40.0;
    let title = if log {
        format!("{} (log scale)", panel.title)
    } else {
        panel.title.clone()
    };
    let mut builder = panel_builder(&plot, &title);
    let legend_entries = if log {
        let (lo, hi) = (log_lo, log_hi);
        let ctx = builder.build_cartesian_2d(0.5..x_hi, (lo..hi).log_scale())?;
        draw_body(ctx, rounds, panel, far, (lo, hi))?
    } else {
        let ctx = builder.build_cartesian_2d(0.5..x_hi, lo..hi)?;
        draw_body(ctx, rounds, panel, far, (lo, hi))?
    };
    draw_legend(&legend, &legend_entries)
}

/// The y range of a log-scale panel: its positive values, a fifth of a decade wider each
/// way.
fn log_range(panel: &Panel) -> (f64, f64) {
    positive_range(
        panel
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .chain(panel.lines.iter().map(|l| l.value)),
    )
}

/// The range of the positive finite `values`, a fifth of a decade wider each way.
fn positive_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() {
        (lo / 1.6, hi * 1.6)
    } else {
        (1.0, 10.0)
    }
}

/// A legend entry: label, style, dashed.
type Entry = (String, ShapeStyle, bool);

/// Draws a panel's bands, mesh, reference lines and series on `ctx` (linear or log y);
/// returns its legend.
fn draw_body<Y>(
    mut ctx: ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    rounds: usize,
    panel: &Panel,
    far: &[usize],
    (lo, hi): (f64, f64),
) -> Result<Vec<Entry>, Box<dyn std::error::Error>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let x_hi = rounds.max(1) as f64 + 0.5;
    ctx.draw_series(far.iter().map(|r| {
        let r = *r as f64;
        Rectangle::new([(r - 0.5, lo), (r + 0.5, hi)], FAR_BAND.filled())
    }))?;
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(rounds.clamp(2, 25))
        .x_label_formatter(&round_label)
        .y_labels(8)
        .y_label_formatter(&value_label)
        .x_desc("round")
        .y_desc(panel.y_label.as_str())
        .label_style((FONT, 12))
        .draw()?;
    let mut entries: Vec<Entry> = Vec::new();
    for (i, line) in panel.lines.iter().enumerate() {
        let colour = if i == 0 && (line.value - 1.0).abs() < f64::EPSILON {
            PARITY
        } else {
            TARGET_LINE
        };
        let style = colour.stroke_width(2);
        ctx.draw_series(LineSeries::new(
            [(0.5, line.value), (x_hi, line.value)],
            style,
        ))?;
        entries.push((line.label.clone(), style, false));
    }
    for (i, series) in panel.series.iter().enumerate() {
        let points = series.points(panel.log_y);
        if points.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let style = colour.stroke_width(2);
        if series.baseline {
            ctx.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?;
        } else {
            ctx.draw_series(LineSeries::new(points.clone(), style))?;
        }
        ctx.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
        let name = if series.baseline {
            format!("{} (baseline)", series.name)
        } else {
            series.name.clone()
        };
        entries.push((name, style, series.baseline));
    }
    if !far.is_empty() {
        entries.push((
            "far vCPU pair (shaded)".to_owned(),
            FAR_BAND.filled().stroke_width(8),
            false,
        ));
    }
    Ok(entries)
}

fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(String, ShapeStyle, bool)],
) -> DrawResult {
    for ((label, style, dashed), y) in entries.iter().zip((40..).step_by(20)) {
        if *dashed {
            area.draw(&PathElement::new([(4, y), (14, y)], *style))?;
            area.draw(&PathElement::new([(20, y), (30, y)], *style))?;
        } else {
            area.draw(&PathElement::new([(4, y), (30, y)], *style))?;
        }
        area.draw_text(label, &(FONT, 13).into_font().color(&BLACK), (36, y - 7))?;
    }
    Ok(())
}

/// A panel's chart builder: its title, and the margins and label areas every panel shares.
fn panel_builder<'a, 'b>(
    plot: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(plot);
    builder
        .caption(title, (FONT, 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(70);
    builder
}

fn draw_ping_pong(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &Chart,
    split: Option<f64>,
) -> DrawResult {
    let (plot, legend) = area.split_horizontally(WIDTH - LEGEND);
    let values = || chart.ping_pong_ns.iter().copied().chain(split);
    let (log_lo, log_hi) = positive_range(values());
    // Near and far differ by ~7x; a machine under load makes it hundreds: then log.
    let log = log_hi / log_lo > 40.0;
    let title = if log {
        "placement: cache-line ping-pong before each round (ns, log scale)"
    } else {
        "placement: cache-line ping-pong before each round (ns)"
    };
    let x_hi = chart.rounds.max(1) as f64 + 0.5;
    let mut builder = panel_builder(&plot, title);
    let entries = if log {
        let ctx = builder.build_cartesian_2d(0.5..x_hi, (log_lo..log_hi).log_scale())?;
        ping_pong_body(ctx, chart, split)?
    } else {
        let (lo, hi) = y_range(values());
        let ctx = builder.build_cartesian_2d(0.5..x_hi, lo..hi)?;
        ping_pong_body(ctx, chart, split)?
    };
    draw_legend(&legend, &entries)
}

/// The ping-pong panel's mesh, split line and points on `ctx` (linear or log y);
/// returns its legend.
fn ping_pong_body<Y>(
    mut ctx: ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    chart: &Chart,
    split: Option<f64>,
) -> Result<Vec<Entry>, Box<dyn std::error::Error>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let x_hi = chart.rounds.max(1) as f64 + 0.5;
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(chart.rounds.clamp(2, 25))
        .x_label_formatter(&round_label)
        .y_labels(8)
        .y_label_formatter(&value_label)
        .x_desc("round")
        .y_desc("ping-pong ns")
        .label_style((FONT, 12))
        .draw()?;
    let mut entries = Vec::new();
    if let Some(split) = split {
        let style = PARITY.stroke_width(1);
        ctx.draw_series(DashedLineSeries::new(
            [(0.5, split), (x_hi, split)],
            6,
            4,
            style,
        ))?;
        entries.push((format!("near/far split {split:.0} ns"), style, true));
    }
    let is_far = |v: f64| split.is_some_and(|s| v >= s);
    ctx.draw_series(
        chart
            .ping_pong_ns
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v > 0.0)
            .map(|(i, v)| {
                let colour = if is_far(*v) { FAR_POINT } else { NEAR_POINT };
                Circle::new(((i + 1) as f64, *v), 4, colour.filled())
            }),
    )?;
    if split.is_some() {
        entries.push((
            "near vCPU pair".to_owned(),
            NEAR_POINT.stroke_width(4),
            false,
        ));
        entries.push(("far vCPU pair".to_owned(), FAR_POINT.stroke_width(4), false));
    } else {
        entries.push((
            "one placement (all within 2x)".to_owned(),
            NEAR_POINT.stroke_width(4),
            false,
        ));
    }
    Ok(entries)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two rounds near, one far; a subject, a baseline, and a ratio panel with parity
    /// and an acceptance line; one series never measured.
    pub(crate) fn sample_chart() -> Chart {
        Chart {
            title: "gyre-bench: sample".into(),
            caption: "test machine, one run".into(),
            rounds: 3,
            ping_pong_ns: vec![60.0, 61.0, 190.0],
            panels: vec![
                Panel::new("round trip p50", "ns")
                    .with(Series::subject("gyre-dedicated", vec![210.0, 220.0, 400.0]))
                    .with(Series::baseline("rtrb", vec![180.0, 185.0, 350.0]))
                    .with(Series::baseline("never-measured", vec![f64::NAN; 3])),
                Panel::new("ratios within each round", "ratio")
                    .line(1.0, "parity")
                    .line(1.2, "need <= 1.2")
                    .with(Series::subject(
                        "p50 / rtrb",
                        vec![210.0 / 180.0, 220.0 / 185.0, f64::NAN],
                    )),
                Panel::new("empty panel", "x").with(Series::subject("nothing", vec![])),
                Panel::new("log panel", "msg/s")
                    .log()
                    .with(Series::subject("wide apart", vec![10.0, 1000.0, 0.0])),
            ],
        }
    }

    fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
        node.attribute(name).unwrap_or_default()
    }

    #[test]
    fn the_svg_is_well_formed_and_names_every_series_and_line() {
        let svg = render_svg(&sample_chart()).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for name in [
            "gyre-bench: sample",
            "test machine, one run",
            "gyre-dedicated",
            "rtrb (baseline)",
            "p50 / rtrb",
            "need <= 1.2",
            "far vCPU pair (shaded)",
            "wide apart",
            "log panel (log scale)",
        ] {
            assert!(texts.contains(&name), "no text `{name}` in {texts:?}");
        }
        // A series never measured has no legend entry; a panel with nothing is left out.
        assert!(!texts.contains(&"never-measured (baseline)"));
        assert!(!texts.contains(&"empty panel"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn the_acceptance_line_is_level_across_the_ratio_panel() {
        let svg = render_svg(&sample_chart()).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let target = "#78003C";
        // The acceptance line: a two-point polyline in the target colour, level.
        let level: Vec<Vec<(i64, i64)>> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && attr(*n, "stroke") == target)
            .map(|n| {
                attr(n, "points")
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect();
        assert!(
            level
                .iter()
                .any(|pts| pts.len() == 2 && pts[0].1 == pts[1].1 && pts[1].0 - pts[0].0 > 500),
            "no level acceptance line across the panel: {level:?}"
        );
        // Both ratios sit below 1.2 in the data, so the points lie below the line
        // (larger y in SVG): the line is where the value says.
        let line_y = level.iter().find(|p| p.len() == 2).unwrap()[0].1 as f64;
        let ratio_points: Vec<f64> = doc
            .descendants()
            .filter(|n| {
                n.has_tag_name("circle")
                    && attr(*n, "fill") == "#1F77B4"
                    && attr(*n, "cy").parse::<f64>().unwrap() > 314.0
                    && attr(*n, "cy").parse::<f64>().unwrap() < 314.0 + 250.0
            })
            .map(|n| attr(n, "cy").parse().unwrap())
            .collect();
        assert_eq!(ratio_points.len(), 2, "two measured ratios drawn");
        assert!(ratio_points.iter().all(|y| *y > line_y));
    }

    #[test]
    fn axis_labels_drop_trailing_zeros() {
        assert_eq!(value_label(&100_000.0), "100000");
        assert_eq!(value_label(&1.02), "1.02");
        assert_eq!(value_label(&10.0), "10");
        assert_eq!(value_label(&0.5), "0.5");
    }

    #[test]
    fn long_captions_wrap_at_spaces() {
        assert_eq!(wrap("one two three", 7), vec!["one two", "three"]);
        assert_eq!(wrap("unbreakable", 4), vec!["unbreakable"]);
    }

    #[test]
    fn far_rounds_are_split_at_the_geometric_mean() {
        assert_eq!(far_split(&[50.0, 60.0, 90.0]), None);
        let split = far_split(&[50.0, f64::NAN, 200.0]).unwrap();
        assert!((split - 100.0).abs() < 1e-9);
    }
}

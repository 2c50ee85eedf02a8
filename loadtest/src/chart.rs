//! Small self-contained SVG charts for the HTML report: lines, steps and dots on linear
//! axes with rounded ticks and a legend. No scripts, no external files.

use std::fmt::Write as _;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Points joined by straight lines.
    Line,
    /// A value held until the next point.
    Step,
    /// Unjoined points.
    Dots,
}

/// One series of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// A CSS colour.
    pub colour: &'static str,
    /// `(x, y)` points, in x order for lines and steps.
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub kind: Kind,
}

/// A chart's title and axis labels.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// Above the plot.
    pub title: &'a str,
    /// Under the x axis.
    pub x: &'a str,
    /// Beside the y axis.
    pub y: &'a str,
}

/// Colours of the series, in order.
pub const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f",
];

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;

/// About five round tick values covering `[low, high]`.
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let span = (high - low).max(1e-9);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut tick = (low / step).ceil() * step;
    let mut out = Vec::new();
    while tick <= high + step * 1e-6 && out.len() < 20 {
        out.push(tick);
        tick += step;
    }
    out
}

fn label(value: f64) -> String {
    if value.abs() < 1e-9 {
        "0".to_owned()
    } else if value.abs() >= 100.0 || value == value.round() {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart as an `<svg>` element; an empty chart says "no data".
pub fn svg(labels: Labels<'_>, series: &[Series]) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11"><text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        escape(labels.title)
    );
    if !x0.is_finite() {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" fill="grey">no data</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return out;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y0 = 0.0;
    if y1 <= y0 {
        y1 = 1.0;
    }
    let y1 = y1 * 1.05;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| TOP + plot_h - (y - y0) / (y1 - y0) * plot_h;
    for tick in ticks(x0, x1) {
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{b:.1}" stroke="#eee"/><text x="{x:.1}" y="{t:.1}" text-anchor="middle">{}</text>"##,
            label(tick),
            x = sx(tick),
            b = TOP + plot_h,
            t = TOP + plot_h + 14.0,
        );
    }
    for tick in ticks(y0, y1) {
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}" stroke="#eee"/><text x="{l:.1}" y="{t:.1}" text-anchor="end">{}</text>"##,
            label(tick),
            y = sy(tick),
            r = LEFT + plot_w,
            l = LEFT - 4.0,
            t = sy(tick) + 4.0,
        );
    }
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        escape(labels.x),
        TOP + plot_h / 2.0,
        escape(labels.y),
    );
    for (index, s) in series.iter().enumerate() {
        match s.kind {
            Kind::Dots => {
                for &(x, y) in &s.points {
                    let _ = write!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{}" fill-opacity="0.7"/>"#,
                        sx(x),
                        sy(y),
                        s.colour
                    );
                }
            }
            Kind::Line | Kind::Step => {
                let mut path = String::new();
                let mut last: Option<f64> = None;
                for &(x, y) in &s.points {
                    let command = if path.is_empty() { 'M' } else { 'L' };
                    if let (Kind::Step, Some(previous)) = (s.kind, last) {
                        let _ = write!(path, "L{:.1},{:.1}", sx(x), sy(previous));
                    }
                    let _ = write!(path, "{command}{:.1},{:.1}", sx(x), sy(y));
                    last = Some(y);
                }
                let _ = write!(
                    out,
                    r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                    s.colour
                );
            }
        }
        let ly = TOP + 10.0 + index as f64 * 16.0;
        let lx = LEFT + plot_w + 10.0;
        let _ = write!(
            out,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            ly - 8.0,
            s.colour,
            lx + 14.0,
            ly + 1.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>");
    out
}

/// The empirical distribution function of `values`: `(value, fraction ≤ value)`.
pub fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(index, value)| (*value, (index + 1) as f64 / n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 0.93);
        assert_eq!(t.first().copied(), Some(0.0));
        assert!(t.last().copied().unwrap_or(0.0) >= 0.8, "{t:?}");
    }

    #[test]
    fn a_chart_names_its_series_and_escapes_text() {
        let svg = svg(
            Labels {
                title: "waits <by lane>",
                x: "min",
                y: "n",
            },
            &[Series {
                name: "short & quick".to_owned(),
                colour: PALETTE[0],
                points: vec![(0.0, 1.0), (1.0, 3.0)],
                kind: Kind::Step,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("waits &lt;by lane&gt;") && svg.contains("short &amp; quick"));
        assert!(svg.contains("<path d=\"M"));
        let empty = super::svg(
            Labels {
                title: "t",
                x: "x",
                y: "y",
            },
            &[],
        );
        assert!(empty.contains("no data"));
    }

    #[test]
    fn cdf_ends_at_one() {
        let points = cdf(&[3.0, 1.0, 2.0]);
        assert_eq!(points, vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
    }
}

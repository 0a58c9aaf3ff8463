//! Small bar charts drawn on the server as inline SVG (no script, no external asset).

use std::fmt::Write as _;

const WIDTH: f64 = 240.0;
const HEIGHT: f64 = 60.0;

/// A bar per value, scaled to the largest; `label` titles the chart for screen readers.
pub fn bars(values: &[f64], label: &str) -> String {
    let label = escape(label);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{label}"><title>{label}</title><line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" class="axis"/>"#
    );
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let slot = WIDTH / values.len().max(1) as f64;
    for (index, value) in values.iter().enumerate() {
        let height = if max > 0.0 {
            (value / max * (HEIGHT - 4.0)).max(if *value > 0.0 { 2.0 } else { 0.0 })
        } else {
            0.0
        };
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{height:.1}"><title>{}</title></rect>"#,
            index as f64 * slot + 1.0,
            HEIGHT - height,
            (slot - 2.0).max(1.0),
            round(*value)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn round(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value() {
        let svg = bars(&[0.0, 2.0, 4.0], "deployments <per> week");
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(r#"height="56.0""#), "{svg}");
        assert!(svg.contains(r#"height="28.0""#), "{svg}");
        assert!(svg.contains("deployments &lt;per&gt; week"));
        assert!(bars(&[], "empty").ends_with("</svg>"));
    }
}

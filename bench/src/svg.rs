//! Plots drawn as plain SVG: horizontal stacked bars with labels. Written by hand
//! so the harness needs no font or C library (a plotting crate's text layout
//! wants system fonts).

use std::fmt::Write as _;

const COLORS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];

/// One bar: a label and its segments (in `unit`), stacked left to right.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub segments: Vec<f64>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal stacked bar chart; `segments` names the segments (the legend).
pub fn stacked_bars(title: &str, unit: &str, segments: &[&str], bars: &[Bar]) -> String {
    let (left, width, row, top) = (260.0, 520.0, 28.0, 60.0);
    let total = |b: &Bar| {
        b.segments
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .sum::<f64>()
    };
    let max = bars.iter().map(total).fold(0.0_f64, f64::max).max(1e-9);
    let height = top + row * bars.len() as f64 + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 120.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut x = 10.0;
    for (i, name) in segments.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="43">{}</text>"#,
            COLORS[i % COLORS.len()],
            x + 16.0,
            escape(name)
        );
        x += 24.0 + 7.0 * name.chars().count() as f64;
    }
    for (r, bar) in bars.iter().enumerate() {
        let y = top + row * r as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 17.0,
            escape(&bar.label)
        );
        let mut at = left;
        for (i, v) in bar.segments.iter().enumerate() {
            if !v.is_finite() || *v <= 0.0 {
                continue;
            }
            let w = v / max * width;
            let _ = writeln!(
                s,
                r#"<rect x="{at:.1}" y="{y}" width="{w:.1}" height="22" fill="{}"><title>{}: {v:.3} {unit}</title></rect>"#,
                COLORS[i % COLORS.len()],
                escape(segments.get(i).copied().unwrap_or(""))
            );
            at += w;
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{:.2} {}</text>"#,
            at + 6.0,
            y + 17.0,
            total(bar),
            escape(unit)
        );
    }
    let axis_y = top + row * bars.len() as f64 + 10.0;
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="black"/><text x="{left}" y="{}">0</text><text x="{}" y="{}" text-anchor="end">{max:.2} {}</text>"#,
        left + width,
        axis_y + 15.0,
        left + width,
        axis_y + 15.0,
        escape(unit)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_rect_per_positive_segment_and_escapes_text() {
        let svg = stacked_bars(
            "t <1>",
            "s",
            &["a", "b"],
            &[Bar {
                label: "x & y".into(),
                segments: vec![1.0, 0.0],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("x &amp; y"));
        // Two legend swatches, the background and one bar segment.
        assert_eq!(svg.matches("<rect").count(), 4);
    }
}

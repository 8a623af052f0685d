//! Small charts as inline SVG: one bar per sync, failures in red, the largest value labelled.
//! Server-rendered, no script; each chart has a title and a text summary for screen readers.

use super::esc;

/// One bar: its value, whether that sync failed, and what hovering it says.
pub struct Bar {
    pub value: f64,
    pub failed: bool,
    pub label: String,
}

const W: f64 = 360.0;
const H: f64 = 90.0;

/// A bar chart of `bars` (oldest left), values formatted by `fmt`.
pub fn bars(title: &str, bars: &[Bar], fmt: impl Fn(f64) -> String) -> String {
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max).max(1.0);
    let slot = W / bars.len().max(1) as f64;
    let width = (slot * 0.8).max(1.0);
    let mut rects = String::new();
    for (i, b) in bars.iter().enumerate() {
        let h = (b.value / max * (H - 14.0)).max(1.0);
        let class = if b.failed { "bad" } else { "good" };
        rects.push_str(&format!(
            "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{h:.1}\">\
             <title>{label}</title></rect>",
            x = i as f64 * slot,
            y = H - h,
            label = esc(&b.label),
        ));
    }
    let failed = bars.iter().filter(|b| b.failed).count();
    let summary = format!("{title}: {} syncs, largest {}, {failed} failed", bars.len(), fmt(max));
    format!(
        "<figure><svg role=\"img\" aria-label=\"{summary}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">\
         <style>.good{{fill:#1a7f37}}.bad{{fill:#b3261e}}text{{font:11px sans-serif;fill:#57606a}}</style>\
         <line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#d0d7de\"/>{rects}\
         <text x=\"2\" y=\"11\">{max}</text></svg><figcaption>{title} (red: failed)</figcaption></figure>",
        summary = esc(&summary),
        max = esc(&fmt(max)),
        title = esc(title),
    )
}

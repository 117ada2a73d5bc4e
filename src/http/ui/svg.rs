//! The history pictures, drawn on the server as SVG: a device's state timeline, the pool's
//! utilisation per hour, and the request-wait histogram.
//!
//! Pure functions from the [`crate::domain::history`] shapes to markup strings (no clock,
//! no storage, nothing fetched): the templates insert them as they are, so every piece of
//! text that came from data goes through [`esc`] here. Each picture scales to its box
//! (`viewBox`, `width="100%"`), so it fits a phone; each segment or bar is focusable and
//! carries a `<title>` with its numbers, so hover and keyboard focus both tell them; and
//! each band has a pattern as well as a colour, and the legends ([`activity_legend`],
//! [`usage_legend`]) name them, so colour is never the only cue. Pattern ids are prefixed
//! with the caller's `id`, so two pictures on one page do not clash.

use std::fmt::Write as _;

use crate::domain::clock::Millis;
use crate::domain::history::{
    Activity, DeviceHistory, PoolHistory, RequestHistory, Segment, Usage, UsageBucket, WaitBucket,
    Window,
};

/// One day in milliseconds: a timeline band.
const DAY_MS: u64 = 24 * 3_600_000;

/// Width of every picture's coordinate system; the browser scales it to the box.
const WIDTH: f64 = 720.0;

/// Escape text for SVG/HTML content and attribute values.
#[must_use]
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0 text.
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `2026-12-04 13:05` (UTC).
fn minute(m: Millis) -> String {
    let w = super::view::when(m);
    w.get(..16).unwrap_or(&w).to_owned()
}

/// `12-04` (UTC).
fn day(m: Millis) -> String {
    let w = super::view::when(m);
    w.get(5..10).unwrap_or(&w).to_owned()
}

/// `13:00` (UTC).
fn clock(m: Millis) -> String {
    let w = super::view::when(m);
    w.get(11..16).unwrap_or(&w).to_owned()
}

/// A duration for people: `850 ms`, `42 s`, `12 min`, `3.5 h`.
#[must_use]
pub fn duration(ms: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = ms as f64;
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{} s", trim(f / 1000.0))
    } else if ms < 3_600_000 {
        format!("{} min", trim(f / 60_000.0))
    } else {
        format!("{} h", trim(f / 3_600_000.0))
    }
}

/// A number with at most one decimal, without a trailing `.0`.
fn trim(f: f64) -> String {
    let s = format!("{f:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
}

/// A coordinate with two decimals at most (short markup, exact enough).
fn n(f: f64) -> String {
    let s = format!("{f:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[allow(clippy::cast_precision_loss)]
fn f(ms: u64) -> f64 {
    ms as f64
}

/// The fill colour and the pattern's ink and shape of an activity.
const fn activity_look(a: Activity) -> (&'static str, &'static str, Shape) {
    match a {
        Activity::Ready => ("#bbf7d0", "#15803d", Shape::Plain),
        Activity::InUse => ("#93c5fd", "#1e3a8a", Shape::Vertical),
        Activity::SelfTest => ("#fde68a", "#92400e", Shape::Dots),
        Activity::Flashing => ("#fdba74", "#7c2d12", Shape::Horizontal),
        Activity::Failed => ("#b91c1c", "#ffffff", Shape::Cross),
        Activity::Maintenance => ("#e5e7eb", "#374151", Shape::Diagonal),
    }
}

/// The pool chart's bands look like the activities they gather.
const fn usage_activity(u: Usage) -> Activity {
    match u {
        Usage::InUse => Activity::InUse,
        Usage::Ready => Activity::Ready,
        Usage::Preparing => Activity::SelfTest,
        Usage::OutOfService => Activity::Maintenance,
    }
}

/// Words for an activity (legends and titles).
const fn activity_label(a: Activity) -> &'static str {
    match a {
        Activity::Ready => "ready (free)",
        Activity::InUse => "in use",
        Activity::SelfTest => "self-test",
        Activity::Flashing => "flashing",
        Activity::Failed => "FAILED",
        Activity::Maintenance => "maintenance / out",
    }
}

/// Words for a pool band.
const fn usage_label(u: Usage) -> &'static str {
    match u {
        Usage::InUse => "in use",
        Usage::Ready => "ready",
        Usage::Preparing => "preparing",
        Usage::OutOfService => "out of service",
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Plain,
    Vertical,
    Horizontal,
    Diagonal,
    Cross,
    Dots,
}

/// One `<pattern>`: `fill` background with `ink` lines or dots.
fn pattern(out: &mut String, id: &str, a: Activity) {
    let (fill, ink, shape) = activity_look(a);
    let _ = write!(
        out,
        r#"<pattern id="{id}" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="{fill}"/>"#
    );
    let marks = match shape {
        Shape::Plain => String::new(),
        Shape::Vertical => format!(r#"<path d="M2 0V8M6 0V8" stroke="{ink}" stroke-width="1"/>"#),
        Shape::Horizontal => {
            format!(r#"<path d="M0 2H8M0 6H8" stroke="{ink}" stroke-width="1.2"/>"#)
        }
        Shape::Diagonal => {
            format!(r#"<path d="M-2 2L2 -2M0 8L8 0M6 10L10 6" stroke="{ink}" stroke-width="1.2"/>"#)
        }
        Shape::Cross => {
            format!(r#"<path d="M0 0L8 8M8 0L0 8" stroke="{ink}" stroke-width="1.4"/>"#)
        }
        Shape::Dots => format!(r#"<circle cx="4" cy="4" r="1.5" fill="{ink}"/>"#),
    };
    out.push_str(&marks);
    out.push_str("</pattern>");
}

fn pattern_id(prefix: &str, a: Activity) -> String {
    format!("{}-{}", esc(prefix), a.name())
}

/// `<defs>` with a pattern per activity.
fn defs(out: &mut String, prefix: &str) {
    out.push_str("<defs>");
    for a in Activity::ALL {
        pattern(out, &pattern_id(prefix, a), a);
    }
    out.push_str("</defs>");
}

/// An `<svg>` opening tag that scales to its box.
fn open(out: &mut String, class: &str, height: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart {class}" viewBox="0 0 {w} {h}" width="100%" preserveAspectRatio="xMinYMin meet" role="group" aria-label="{label}">"#,
        w = n(WIDTH),
        h = n(height),
        label = esc(label),
    );
}

/// A focusable group with a title (hover and keyboard focus show it) and data attributes.
fn focusable(out: &mut String, class: &str, title: &str, data: &[(&str, String)]) {
    let _ = write!(
        out,
        r#"<g class="{class}" tabindex="0" role="img" aria-label="{t}""#,
        t = esc(title)
    );
    for (k, v) in data {
        let _ = write!(out, r#" data-{k}="{}""#, esc(v));
    }
    let _ = write!(out, "><title>{}</title>", esc(title));
}

/// The legend of a timeline, as HTML: a swatch with the pattern and the words per activity.
#[must_use]
pub fn activity_legend(prefix: &str) -> String {
    legend(
        &format!("{prefix}-legend"),
        Activity::ALL.iter().map(|a| (*a, activity_label(*a))),
    )
}

/// The legend of the pool chart, as HTML.
#[must_use]
pub fn usage_legend(prefix: &str) -> String {
    legend(
        &format!("{prefix}-legend"),
        Usage::ALL
            .iter()
            .map(|u| (usage_activity(*u), usage_label(*u))),
    )
}

fn legend(prefix: &str, items: impl Iterator<Item = (Activity, &'static str)>) -> String {
    let mut out = String::from(r#"<ul class="legend">"#);
    for (a, label) in items {
        let id = pattern_id(prefix, a);
        let _ = write!(
            out,
            r#"<li><svg xmlns="http://www.w3.org/2000/svg" class="swatch" viewBox="0 0 16 16" width="16" height="16" aria-hidden="true"><defs>"#
        );
        pattern(&mut out, &id, a);
        let _ = write!(
            out,
            r##"</defs><rect width="16" height="16" fill="url(#{id})" stroke="#374151"/></svg> {}</li>"##,
            esc(label)
        );
    }
    out.push_str("</ul>");
    out
}

// --- Device timeline ----------------------------------------------------------------------

/// Left column of the timeline (day labels).
const TL_LABEL: f64 = 64.0;
/// Right margin.
const TL_PAD: f64 = 8.0;
/// Top axis height (hour labels).
const TL_AXIS: f64 = 20.0;

fn band_height(w: Window) -> f64 {
    match w {
        Window::Day => 36.0,
        Window::Week => 22.0,
        Window::Month => 13.0,
    }
}

/// The x of `t` in a band that starts at `band_start`.
fn tl_x(t: u64, band_start: u64) -> f64 {
    let plot = WIDTH - TL_LABEL - TL_PAD;
    TL_LABEL + f(t.saturating_sub(band_start).min(DAY_MS)) / f(DAY_MS) * plot
}

fn segment_title(s: &Segment) -> String {
    let mut t = format!(
        "{}: {} from {} to {} UTC ({})",
        activity_label(s.activity),
        s.state,
        minute(s.start),
        minute(s.end),
        duration(s.end.0.saturating_sub(s.start.0)),
    );
    if let Some(line) = &s.log_line {
        let _ = write!(t, ". Began with: {line}");
    }
    t
}

/// A device's state timeline: one band per day of the window (oldest at the top), its
/// segments filled by activity, each piece focusable with the state, its start and end and
/// the log line that began it. `id` prefixes the pattern ids.
#[must_use]
pub fn device_timeline(h: &DeviceHistory, id: &str) -> String {
    let bands = h.window.millis() / DAY_MS;
    let bh = band_height(h.window);
    let gap = 3.0;
    #[allow(clippy::cast_precision_loss)]
    let height = TL_AXIS + bands as f64 * (bh + gap) + 4.0;
    let mut out = String::new();
    open(
        &mut out,
        "timeline",
        height,
        &format!(
            "State timeline of {}, {} to {} UTC",
            h.device,
            minute(h.from),
            minute(h.until)
        ),
    );
    defs(&mut out, id);
    // Hour ticks at UTC multiples of 6 hours (the same offsets in every band).
    let step = 6 * 3_600_000;
    let first = h.from.0.div_ceil(step) * step;
    let bottom = height - 4.0;
    out.push_str(r#"<g class="axis">"#);
    let mut t = first;
    while t < h.from.0 + DAY_MS {
        let x = tl_x(t, h.from.0);
        let _ = write!(
            out,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#9ca3af" stroke-dasharray="2 3"/><text x="{x}" y="13" font-size="12" text-anchor="middle" fill="#374151">{label}</text>"##,
            x = n(x),
            y0 = n(TL_AXIS - 4.0),
            y1 = n(bottom),
            label = clock(Millis(t)),
        );
        t += step;
    }
    out.push_str("</g>");
    for b in 0..bands {
        let start = h.from.0 + b * DAY_MS;
        let end = start + DAY_MS;
        #[allow(clippy::cast_precision_loss)]
        let y = TL_AXIS + b as f64 * (bh + gap);
        let _ = write!(
            out,
            r##"<g class="band" data-start="{start}"><text x="{lx}" y="{ty}" font-size="{fs}" text-anchor="end" fill="#111827">{label}</text><rect x="{x}" y="{y}" width="{w}" height="{bh}" fill="#ffffff" stroke="#d1d5db"/>"##,
            lx = n(TL_LABEL - 6.0),
            ty = n(y + bh / 2.0 + 4.0),
            fs = if bh < 16.0 { 10 } else { 12 },
            label = day(Millis(start)),
            x = n(TL_LABEL),
            y = n(y),
            w = n(WIDTH - TL_LABEL - TL_PAD),
            bh = n(bh),
        );
        for s in &h.segments {
            let (a, z) = (s.start.0.max(start), s.end.0.min(end));
            if a >= z {
                continue;
            }
            let (x0, x1) = (tl_x(a, start), tl_x(z, start));
            let title = segment_title(s);
            focusable(
                &mut out,
                &format!("seg {}", s.activity.name()),
                &title,
                &[
                    ("activity", s.activity.name().to_owned()),
                    ("state", s.state.clone()),
                    ("start", s.start.0.to_string()),
                    ("end", s.end.0.to_string()),
                ],
            );
            let _ = write!(
                out,
                r##"<rect x="{x}" y="{y}" width="{w}" height="{bh}" fill="url(#{pid})" stroke="#111827" stroke-width="0.5"/>"##,
                x = n(x0),
                y = n(y),
                w = n((x1 - x0).max(1.0)),
                bh = n(bh),
                pid = pattern_id(id, s.activity),
            );
            // Wide pieces say what they are, so the band reads without the legend.
            if x1 - x0 > 70.0 && bh >= 20.0 {
                let (_, ink, _) = activity_look(s.activity);
                let bg = if matches!(s.activity, Activity::Failed) {
                    "#7f1d1d"
                } else {
                    "#ffffff"
                };
                let _ = write!(
                    out,
                    r#"<text x="{x}" y="{ty}" font-size="11" fill="{ink}" stroke="{bg}" stroke-width="3" paint-order="stroke" pointer-events="none">{label}</text>"#,
                    x = n(x0 + 4.0),
                    ty = n(y + bh / 2.0 + 4.0),
                    label = esc(activity_label(s.activity)),
                );
            }
            out.push_str("</g>");
        }
        out.push_str("</g>");
    }
    if h.segments.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{x}" y="{y}" font-size="13" fill="#4b5563">No state changes are recorded in this window.</text>"##,
            x = n(TL_LABEL + 8.0),
            y = n(TL_AXIS + 16.0),
        );
    }
    out.push_str("</svg>");
    out
}

// --- Pool utilisation -----------------------------------------------------------------------

const PU_LEFT: f64 = 40.0;
const PU_RIGHT: f64 = 8.0;
const PU_TOP: f64 = 10.0;
const PU_BOTTOM: f64 = 24.0;
const PU_HEIGHT: f64 = 240.0;

/// A round axis maximum at or above `v` (1, 2, 5 × 10^k).
fn nice_max(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn bucket_total(b: &UsageBucket) -> f64 {
    b.in_use + b.ready + b.preparing + b.out_of_service
}

fn band_value(b: &UsageBucket, u: Usage) -> f64 {
    match u {
        Usage::InUse => b.in_use,
        Usage::Ready => b.ready,
        Usage::Preparing => b.preparing,
        Usage::OutOfService => b.out_of_service,
    }
}

/// The pool's utilisation: one stacked bar per bucket (in use at the bottom, then ready,
/// preparing, out of service), average devices per band; each bar focusable with its
/// numbers. Buckets without data leave a gap. `id` prefixes the pattern ids.
#[must_use]
pub fn pool_utilisation(h: &PoolHistory, id: &str) -> String {
    let bucket = h.bucket_ms.max(1);
    let slot0 = h.from.0 / bucket * bucket;
    let slots = h.until.0.saturating_sub(slot0).div_ceil(bucket).max(1);
    let plot_w = WIDTH - PU_LEFT - PU_RIGHT;
    let plot_h = PU_HEIGHT - PU_TOP - PU_BOTTOM;
    let bar_w = plot_w / f(slots);
    let peak = h.buckets.iter().map(bucket_total).fold(0.0, f64::max);
    let top = nice_max(peak);
    let mut out = String::new();
    open(
        &mut out,
        "utilisation",
        PU_HEIGHT,
        &format!(
            "Devices in use, ready, preparing and out of service per hour, {} to {} UTC",
            minute(h.from),
            minute(h.until)
        ),
    );
    defs(&mut out, id);
    // Y axis: 0, half, top.
    out.push_str(r#"<g class="axis">"#);
    for frac in [0.0, 0.5, 1.0] {
        let y = PU_TOP + plot_h * (1.0 - frac);
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#d1d5db"/><text x="{tx}" y="{ty}" font-size="12" text-anchor="end" fill="#374151">{v}</text>"##,
            x0 = n(PU_LEFT),
            x1 = n(WIDTH - PU_RIGHT),
            y = n(y),
            tx = n(PU_LEFT - 4.0),
            ty = n(y + 4.0),
            v = trim(top * frac),
        );
    }
    // X axis: every 3 hours for a day, every midnight for longer windows.
    let tick = if h.window == Window::Day {
        3 * 3_600_000
    } else {
        DAY_MS
    };
    let mut t = slot0.div_ceil(tick) * tick;
    while t < h.until.0 {
        let x = PU_LEFT + f(t - slot0) / f(bucket) * bar_w;
        let label = if h.window == Window::Day {
            clock(Millis(t))
        } else {
            day(Millis(t))
        };
        let _ = write!(
            out,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#6b7280"/><text x="{x}" y="{ty}" font-size="12" text-anchor="middle" fill="#374151">{label}</text>"##,
            x = n(x),
            y0 = n(PU_TOP + plot_h),
            y1 = n(PU_TOP + plot_h + 4.0),
            ty = n(PU_HEIGHT - 6.0),
        );
        t += tick;
    }
    out.push_str("</g>");
    let gap = if bar_w > 4.0 { 1.0 } else { 0.0 };
    for b in &h.buckets {
        if b.start.0 < slot0 {
            continue;
        }
        let x = PU_LEFT + f(b.start.0 - slot0) / f(bucket) * bar_w;
        let total = bucket_total(b);
        let title = format!(
            "{} to {} UTC: {} in use, {} ready, {} preparing, {} out of service (average devices)",
            minute(b.start),
            clock(Millis(b.start.0 + bucket)),
            trim(b.in_use),
            trim(b.ready),
            trim(b.preparing),
            trim(b.out_of_service),
        );
        focusable(
            &mut out,
            "bar",
            &title,
            &[
                ("start", b.start.0.to_string()),
                ("in-use", trim(b.in_use)),
                ("total", trim(total)),
            ],
        );
        let mut y = PU_TOP + plot_h;
        for u in Usage::ALL {
            let v = band_value(b, u);
            if v <= 0.0 {
                continue;
            }
            let hgt = v / top * plot_h;
            y -= hgt;
            let _ = write!(
                out,
                r#"<rect class="{cls}" x="{x}" y="{y}" width="{w}" height="{hgt}" fill="url(#{pid})"/>"#,
                cls = u.name(),
                x = n(x),
                y = n(y),
                w = n((bar_w - gap).max(0.5)),
                hgt = n(hgt),
                pid = pattern_id(id, usage_activity(u)),
            );
        }
        out.push_str("</g>");
    }
    if h.buckets.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{x}" y="{y}" font-size="13" fill="#4b5563">No utilisation recorded in this window.</text>"##,
            x = n(PU_LEFT + 8.0),
            y = n(PU_TOP + 20.0),
        );
    }
    out.push_str("</svg>");
    out
}

// --- Request waits --------------------------------------------------------------------------

const RW_LEFT: f64 = 40.0;
const RW_TOP: f64 = 36.0;
const RW_BOTTOM: f64 = 24.0;
const RW_HEIGHT: f64 = 220.0;

/// A histogram bar's label: `≤ 30 s`, or `> 1 h` for the overflow bar.
fn bucket_label(hist: &[WaitBucket], i: usize) -> String {
    match hist.get(i).and_then(|b| b.le_ms) {
        Some(le) => format!("≤ {}", duration(le)),
        None => {
            let prev = i
                .checked_sub(1)
                .and_then(|p| hist.get(p))
                .and_then(|b| b.le_ms);
            prev.map_or_else(|| "more".to_owned(), |p| format!("> {}", duration(p)))
        }
    }
}

/// The request-to-ready histogram: one bar per bucket, each focusable with its count, and
/// dashed markers at the bars holding the median (p50) and the 95th percentile (p95).
#[must_use]
pub fn request_waits(h: &RequestHistory) -> String {
    let hist = &h.histogram;
    let bars = hist.len().max(1);
    let plot_w = WIDTH - RW_LEFT - 8.0;
    let plot_h = RW_HEIGHT - RW_TOP - RW_BOTTOM;
    #[allow(clippy::cast_precision_loss)]
    let bar_w = plot_w / bars as f64;
    let peak = hist.iter().map(|b| b.count).max().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let top = nice_max(peak as f64);
    let mut out = String::new();
    open(
        &mut out,
        "waits",
        RW_HEIGHT,
        &format!(
            "Request-to-ready times of {} requests, {} to {} UTC",
            h.served,
            minute(h.from),
            minute(h.until)
        ),
    );
    out.push_str(r#"<g class="axis">"#);
    for frac in [0.0, 0.5, 1.0] {
        let y = RW_TOP + plot_h * (1.0 - frac);
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#d1d5db"/><text x="{tx}" y="{ty}" font-size="12" text-anchor="end" fill="#374151">{v}</text>"##,
            x0 = n(RW_LEFT),
            x1 = n(WIDTH - 8.0),
            y = n(y),
            tx = n(RW_LEFT - 4.0),
            ty = n(y + 4.0),
            v = trim(top * frac),
        );
    }
    out.push_str("</g>");
    for (i, b) in hist.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x = RW_LEFT + i as f64 * bar_w;
        #[allow(clippy::cast_precision_loss)]
        let hgt = b.count as f64 / top * plot_h;
        let label = bucket_label(hist, i);
        let title = format!(
            "{label}: {} request{}",
            b.count,
            if b.count == 1 { "" } else { "s" }
        );
        focusable(
            &mut out,
            "bar",
            &title,
            &[
                ("le", b.le_ms.map_or_else(String::new, |v| v.to_string())),
                ("count", b.count.to_string()),
            ],
        );
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{y}" width="{w}" height="{hgt}" fill="#93c5fd" stroke="#1e3a8a"/><text x="{cx}" y="{ly}" font-size="10" text-anchor="middle" fill="#374151">{label}</text></g>"##,
            x = n(x + 2.0),
            y = n(RW_TOP + plot_h - hgt),
            w = n((bar_w - 4.0).max(1.0)),
            hgt = n(hgt),
            cx = n(x + bar_w / 2.0),
            ly = n(RW_HEIGHT - 8.0),
            label = esc(&label),
        );
    }
    // Quantile markers over the bar each falls in (the overflow bar when `None` but served).
    for (name, q) in [("p50", h.p50_ms), ("p95", h.p95_ms)] {
        if h.served == 0 {
            break;
        }
        let i = hist
            .iter()
            .position(|b| b.le_ms == q)
            .unwrap_or(hist.len().saturating_sub(1));
        #[allow(clippy::cast_precision_loss)]
        let x = RW_LEFT + (i as f64 + if name == "p50" { 0.35 } else { 0.65 }) * bar_w;
        let text = match q {
            Some(v) => format!("{name} ≤ {}", duration(v)),
            None => format!("{name} {}", bucket_label(hist, i)),
        };
        let _ = write!(
            out,
            r##"<g class="marker {name}" data-bar="{i}"><line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#111827" stroke-width="2" stroke-dasharray="5 3"/><text x="{x}" y="{ty}" font-size="12" text-anchor="middle" fill="#111827">{text}</text></g>"##,
            x = n(x),
            y0 = n(RW_TOP - 4.0),
            y1 = n(RW_TOP + plot_h),
            // Labels on two lines, so p50 and p95 in one bar do not overprint.
            ty = n(if name == "p50" { 12.0 } else { 28.0 }),
            text = esc(&text),
        );
    }
    if h.served == 0 {
        let _ = write!(
            out,
            r##"<text x="{x}" y="{y}" font-size="13" fill="#4b5563">No request became ready in this window.</text>"##,
            x = n(RW_LEFT + 8.0),
            y = n(RW_TOP + 20.0),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::history::{FlakyDevice, WaitReason};

    /// A small XML well-formedness check: every tag closes in order, attributes are
    /// quoted, and text holds no raw `<` or stray `&`.
    fn well_formed(xml: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = xml;
        while let Some(lt) = rest.find('<') {
            check_text(&rest[..lt])?;
            let gt = rest[lt..]
                .find('>')
                .ok_or_else(|| format!("unclosed tag near {:?}", &rest[lt..]))?
                + lt;
            let tag = &rest[lt + 1..gt];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("stray </{name}>"))?;
                if open != name {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
            } else {
                let self_closing = tag.ends_with('/');
                let body = tag.trim_end_matches('/');
                let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
                check_attrs(&body[name.len()..])?;
                if !self_closing {
                    stack.push(name);
                }
            }
            rest = &rest[gt + 1..];
        }
        check_text(rest)?;
        if stack.is_empty() {
            Ok(())
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    fn check_text(t: &str) -> Result<(), String> {
        let mut s = t;
        while let Some(i) = s.find('&') {
            let end = s[i..].find(';').ok_or(format!("stray & in {t:?}"))?;
            let ent = &s[i + 1..i + end];
            if !(["amp", "lt", "gt", "quot", "#39"].contains(&ent)) {
                return Err(format!("unknown entity {ent}"));
            }
            s = &s[i + end..];
        }
        if t.contains('>') {
            return Err(format!("raw > in {t:?}"));
        }
        Ok(())
    }

    fn check_attrs(a: &str) -> Result<(), String> {
        let mut s = a.trim();
        while !s.is_empty() {
            let eq = s
                .find('=')
                .ok_or(format!("attribute without value: {s:?}"))?;
            let after = &s[eq + 1..];
            if !after.starts_with('"') {
                return Err(format!("unquoted attribute: {s:?}"));
            }
            let close = after[1..].find('"').ok_or("unterminated attribute")? + 1;
            let value = &after[1..close];
            if value.contains('<') {
                return Err(format!("< in attribute {value:?}"));
            }
            check_text(value)?;
            s = after[close + 1..].trim_start();
        }
        Ok(())
    }

    const EVIL: &str = "<script>alert('x')</script> & \"q\"";
    const H: u64 = 3_600_000;
    /// 2026-12-04 00:00 UTC.
    const MIDNIGHT: u64 = 1_796_342_400_000;

    fn seg(a: Activity, state: &str, start: u64, end: u64, line: Option<&str>) -> Segment {
        Segment {
            activity: a,
            state: state.into(),
            start: Millis(start),
            end: Millis(end),
            log_seq: line.map(|_| 1),
            log_line: line.map(str::to_owned),
        }
    }

    fn device_history(window: Window, until: u64, segments: Vec<Segment>) -> DeviceHistory {
        DeviceHistory {
            device: format!("panda-1{EVIL}"),
            window,
            from: window.span(Millis(until)).0,
            until: Millis(until),
            segments,
            failures: 1,
            recoveries: 1,
            last_failure: None,
            complete: true,
        }
    }

    /// The `x` attribute of the first `<rect>` after the segment group whose data-start
    /// is `start`.
    fn seg_x(svg: &str, start: u64) -> f64 {
        let at = svg
            .find(&format!(r#"data-start="{start}""#))
            .expect("segment drawn");
        let rect = svg[at..].find("<rect x=\"").expect("rect") + at + 9;
        let end = svg[rect..].find('"').expect("quote") + rect;
        svg[rect..end].parse().expect("number")
    }

    #[test]
    fn midnight_constant_is_midnight() {
        assert_eq!(
            super::super::view::when(Millis(MIDNIGHT)),
            "2026-12-04 00:00:00"
        );
    }

    #[test]
    fn timeline_is_well_formed_escaped_and_places_failures() {
        // A day ending at midnight: a failure 18:00–19:00 sits three quarters along.
        let until = MIDNIGHT;
        let from = until - 24 * H;
        let h = device_history(
            Window::Day,
            until,
            vec![
                seg(Activity::Ready, "ready", from, from + 18 * H, None),
                seg(
                    Activity::Failed,
                    "failed_pinging",
                    from + 18 * H,
                    from + 19 * H,
                    Some(EVIL),
                ),
                seg(
                    Activity::SelfTest,
                    "pc_rebooting",
                    from + 19 * H,
                    until,
                    None,
                ),
            ],
        );
        let svg = device_timeline(&h, "tl");
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(!svg.contains("<script>"), "escaped");
        assert!(svg.contains("&lt;script&gt;alert(&#39;x&#39;)"));
        let x = seg_x(&svg, from + 18 * H);
        let expected = TL_LABEL + 0.75 * (WIDTH - TL_LABEL - TL_PAD);
        assert!((x - expected).abs() < 0.01, "{x} vs {expected}");
        assert!(svg.contains(r#"class="seg failed""#));
        assert!(svg.contains("FAILED: failed_pinging from 2026-12-03 18:00 to 2026-12-03 19:00"));
        assert_eq!(
            svg.matches(r#"tabindex="0""#).count(),
            3,
            "every segment focusable"
        );
        assert!(svg.contains(r#"viewBox="0 0 720"#) && svg.contains(r#"width="100%""#));
    }

    #[test]
    fn week_timeline_has_a_band_per_day_and_splits_segments_across_them() {
        let until = MIDNIGHT;
        let from = until - 7 * 24 * H;
        // A failure from 22:00 on day 2 to 02:00 on day 3 shows in both bands.
        let h = device_history(
            Window::Week,
            until,
            vec![
                seg(Activity::Ready, "ready", from, from + 46 * H, None),
                seg(
                    Activity::Failed,
                    "failed_flashing",
                    from + 46 * H,
                    from + 50 * H,
                    None,
                ),
                seg(Activity::InUse, "ready", from + 50 * H, until, None),
            ],
        );
        let svg = device_timeline(&h, "tl");
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(svg.matches(r#"<g class="band""#).count(), 7);
        assert_eq!(svg.matches(r#"class="seg failed""#).count(), 2);
        let month = device_timeline(&device_history(Window::Month, until, vec![]), "tl");
        well_formed(&month).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(month.matches(r#"<g class="band""#).count(), 30);
        assert!(month.contains("No state changes"));
    }

    #[test]
    fn pool_chart_peak_is_the_tallest_bar() {
        let until = MIDNIGHT;
        let from = until - 24 * H;
        let buckets: Vec<UsageBucket> = (0..24)
            .map(|i| UsageBucket {
                start: Millis(from + i * H),
                in_use: if i == 15 { 9.0 } else { 1.0 },
                ready: 1.0,
                preparing: 0.5,
                out_of_service: if i == 15 { 0.0 } else { 0.5 },
            })
            .collect();
        let h = PoolHistory {
            window: Window::Day,
            from: Millis(from),
            until: Millis(until),
            bucket_ms: H,
            buckets,
            flaky: vec![FlakyDevice {
                device: EVIL.into(),
                failures: 2,
                last_failure: Millis(from),
            }],
        };
        let svg = pool_utilisation(&h, "pu");
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        // Height of each bar = sum of its rects' heights.
        let mut heights = Vec::new();
        for part in svg.split(r#"<g class="bar""#).skip(1) {
            let body = &part[..part.find("</g>").expect("bar closes")];
            let h: f64 = body
                .split(r#"height=""#)
                .skip(1)
                .map(|s| {
                    s[..s.find('"').expect("quote")]
                        .parse::<f64>()
                        .expect("number")
                })
                .sum();
            heights.push(h);
        }
        assert_eq!(heights.len(), 24);
        let tallest = heights
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        assert_eq!(tallest, Some(15));
        assert!(svg.contains(r#"data-in-use="9""#));
        assert!(svg.contains("9 in use, 1 ready, 0.5 preparing, 0 out of service"));
        // The axis top is a round number at or above the peak (10.5 → 20).
        assert!(svg.contains(">20</text>"));
    }

    #[test]
    fn waits_mark_p50_and_p95() {
        let histogram = vec![
            WaitBucket {
                le_ms: Some(1000),
                count: 50,
            },
            WaitBucket {
                le_ms: Some(60_000),
                count: 45,
            },
            WaitBucket {
                le_ms: None,
                count: 5,
            },
        ];
        let h = RequestHistory {
            window: Window::Day,
            from: Millis(MIDNIGHT - 24 * H),
            until: Millis(MIDNIGHT),
            served: 100,
            p50_ms: Some(1000),
            p95_ms: Some(60_000),
            histogram,
            waited: 3,
            reasons: vec![WaitReason {
                reason: EVIL.into(),
                requests: 3,
            }],
        };
        let svg = request_waits(&h);
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(svg.contains(r#"<g class="marker p50" data-bar="0">"#));
        assert!(svg.contains(r#"<g class="marker p95" data-bar="1">"#));
        assert!(svg.contains("p95 ≤ 1 min"));
        assert!(svg.contains("&gt; 1 min: 5 requests"));
        let empty = request_waits(&RequestHistory {
            served: 0,
            histogram: vec![],
            p50_ms: None,
            p95_ms: None,
            ..h
        });
        well_formed(&empty).unwrap_or_else(|e| panic!("{e}"));
        assert!(empty.contains("No request became ready"));
    }

    #[test]
    fn legends_name_every_band_and_are_well_formed() {
        let l = activity_legend("tl");
        well_formed(&l).unwrap_or_else(|e| panic!("{e}"));
        for a in Activity::ALL {
            assert!(l.contains(&esc(activity_label(a))));
        }
        let u = usage_legend("pu");
        well_formed(&u).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.matches("<li>").count(), 4);
        assert!(well_formed("<a><b></a></b>").is_err());
        assert!(well_formed("<a x=1></a>").is_err());
        assert!(well_formed("<a>1 < 2</a>").is_err());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(90_000), "1.5 min");
        assert_eq!(duration(3_600_000), "1 h");
    }
}

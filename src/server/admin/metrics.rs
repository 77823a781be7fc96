//! `GET /metrics`: what a scrape measures (connections, topics, tables,
//! traffic) and the two exposition formats Prometheus reads.

use crate::server::metrics::LiveValues;
use crate::server::serve::shared::Shared;

/// The exposition text for `GET /metrics` in `format`.
pub(crate) fn scrape(shared: &Shared, format: Format) -> String {
    let (topics, history_bytes) = shared.topics.totals();
    let conns = shared.registry.snapshot();
    let subscriptions: usize = conns.iter().map(|c| c.subscriptions.lock().len()).sum();
    let outbox_max = conns
        .iter()
        .map(|c| c.out.queued_bytes())
        .max()
        .unwrap_or(0);
    drop(conns);
    let live = LiveValues {
        open: shared.registry.len(),
        pubsub: [
            topics,
            history_bytes,
            subscriptions,
            outbox_max,
            shared.per_ip.len(),
            shared.connect_rate.len(),
        ],
        traffic: shared.registry.traffic(),
    };
    let text = shared.metrics.encode(&live);
    match format {
        Format::OpenMetrics => text,
        Format::Text => openmetrics_to_text(&text),
    }
}

/// The two exposition formats Prometheus reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`), what Prometheus asks
    /// for first.
    OpenMetrics,
    /// The classic text format 0.0.4 (`text/plain; version=0.0.4`), for
    /// everything else (`curl`, `promtool check metrics`).
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics if it names it,
    /// else the classic text format (also with no header at all).
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text as the classic text format: a counter family
/// `x` has samples `x_total`, and the classic format wants its `HELP` and
/// `TYPE` lines under that sample name; `# UNIT` and `# EOF` do not exist
/// there.
fn openmetrics_to_text(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, after) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(prefix);
                out.push_str(&name);
                if !after.is_empty() {
                    out.push(' ');
                    out.push_str(after);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_header_picks_the_format() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        // What Prometheus sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
    }

    #[test]
    fn counters_are_named_by_their_samples_in_the_classic_format() {
        let om = "# HELP x Things.\n# TYPE x counter\nx_total{a=\"b\"} 1\n# HELP g Level.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n# HELP g Level.\n# TYPE g gauge\ng 2\n"
        );
    }
}

//! A strict parser of the Prometheus text exposition format (version 0.0.4), for tests that
//! read `/metrics` back.
//!
//! Strict where scrapers are: metric and label names must be valid, label values properly
//! quoted and escaped, values valid floats; `# TYPE` comes before a family's samples and at
//! most once; a family's samples are contiguous; no series appears twice; histograms have
//! `_bucket` series with `le`, cumulative counts, a `+Inf` bucket equal to `_count`, and a
//! `_sum`. Anything else is an error naming the line.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

/// The kind a `# TYPE` line declares (`untyped` without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `summary`.
    Summary,
    /// `untyped`, or no `# TYPE` line.
    Untyped,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (for histograms with its `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A metric family: its `# HELP`, `# TYPE` and samples.
#[derive(Debug, Clone)]
pub struct Family {
    /// Family name.
    pub name: String,
    /// Declared kind.
    pub kind: Kind,
    /// Help text, unescaped.
    pub help: Option<String>,
    /// Samples in exposition order.
    pub samples: Vec<Sample>,
}

/// A whole exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Families by name.
    pub families: BTreeMap<String, Family>,
}

/// What is wrong, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses `text`, checking it as described in the module doc.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut parser = Parser::default();
    for (index, line) in text.lines().enumerate() {
        parser.line(line).map_err(|message| ParseError {
            line: index + 1,
            message,
        })?;
    }
    let families = parser.families;
    for family in families.values() {
        if family.kind == Kind::Histogram {
            check_histogram(family).map_err(|message| ParseError { line: 0, message })?;
        }
    }
    Ok(Exposition { families })
}

#[derive(Default)]
struct Parser {
    families: BTreeMap<String, Family>,
    /// Families whose samples are over (another family's began after them).
    closed: HashSet<String>,
    current: Option<String>,
    series: HashSet<(String, Vec<(String, String)>)>,
}

impl Parser {
    fn line(&mut self, line: &str) -> Result<(), String> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(comment);
        }
        let sample = sample(line)?;
        let family = self.family_of(&sample.name);
        self.enter(&family)?;
        let key = (
            sample.name.clone(),
            sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        if !self.series.insert(key) {
            return Err(format!("series {} appears twice", sample.name));
        }
        let kind = self.families.get(&family).map_or(Kind::Untyped, |f| f.kind);
        if kind == Kind::Counter && sample.value < 0.0 {
            return Err(format!("counter {} is negative", sample.name));
        }
        self.families
            .entry(family.clone())
            .or_insert_with(|| Family {
                name: family,
                kind: Kind::Untyped,
                help: None,
                samples: Vec::new(),
            })
            .samples
            .push(sample);
        Ok(())
    }

    fn comment(&mut self, comment: &str) -> Result<(), String> {
        let mut words = comment.trim_start().splitn(3, ' ');
        let keyword = words.next().unwrap_or("");
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(());
        }
        let name = words.next().ok_or("HELP/TYPE without a metric name")?;
        check_metric_name(name)?;
        let rest = words.next().unwrap_or("");
        self.enter(name)?;
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                name: name.to_owned(),
                kind: Kind::Untyped,
                help: None,
                samples: Vec::new(),
            });
        if keyword == "HELP" {
            if family.help.is_some() {
                return Err(format!("second HELP for {name}"));
            }
            family.help = Some(unescape(rest)?);
            return Ok(());
        }
        if !family.samples.is_empty() {
            return Err(format!("TYPE of {name} after its samples"));
        }
        if family.kind != Kind::Untyped {
            return Err(format!("second TYPE for {name}"));
        }
        family.kind = match rest {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            other => return Err(format!("unknown TYPE {other:?} for {name}")),
        };
        Ok(())
    }

    /// The family a sample belongs to: a declared histogram or summary family that its name
    /// extends with a suffix, else the name itself.
    fn family_of(&self, name: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if let Some(family) = self.families.get(base) {
                    if matches!(family.kind, Kind::Histogram | Kind::Summary) {
                        return base.to_owned();
                    }
                }
            }
        }
        name.to_owned()
    }

    /// Makes `family` the current one; a family may not come back once another began.
    fn enter(&mut self, family: &str) -> Result<(), String> {
        if self.current.as_deref() == Some(family) {
            return Ok(());
        }
        if self.closed.contains(family) {
            return Err(format!("lines of family {family} are not contiguous"));
        }
        if let Some(previous) = self.current.replace(family.to_owned()) {
            self.closed.insert(previous);
        }
        Ok(())
    }
}

/// Parses `name{labels} value [timestamp]`.
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let label = rest[..eq].trim();
            check_label_name(label)?;
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let (value, after) = quoted(rest)?;
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label".into());
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected a space before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The label value up to its closing quote (unescaped), and what follows it.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("bad escape {other:?} in a label value")),
            },
            '\n' => return Err("raw newline in a label value".into()),
            c => value.push(c),
        }
    }
    Err("unterminated label value".into())
}

/// HELP text: `\\` and `\n` are the only escapes.
fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape {other:?} in HELP")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("bad value {text:?}")),
    }
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

/// One histogram series: `(le, cumulative count)` buckets, `_sum`, `_count`.
type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);

/// Per series (labels other than `le`): cumulative buckets ending in `+Inf` = `_count`, and a
/// `_sum`.
fn check_histogram(family: &Family) -> Result<(), String> {
    let name = &family.name;
    let mut series: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le");
        let key: Vec<_> = labels.into_iter().collect();
        let entry = series.entry(key).or_default();
        match sample.name.strip_prefix(name.as_str()) {
            Some("_bucket") => {
                let le = le.ok_or_else(|| format!("{name}_bucket without le"))?;
                entry.0.push((parse_value(&le)?, sample.value));
            }
            Some("_sum") => entry.1 = Some(sample.value),
            Some("_count") => entry.2 = Some(sample.value),
            _ => return Err(format!("sample {} in histogram {name}", sample.name)),
        }
    }
    for (labels, (buckets, sum, count)) in series {
        let count = count.ok_or_else(|| format!("{name}{labels:?} has no _count"))?;
        sum.ok_or_else(|| format!("{name}{labels:?} has no _sum"))?;
        let mut previous = (f64::NEG_INFINITY, 0.0);
        for (le, value) in &buckets {
            if *le <= previous.0 || *value < previous.1 {
                return Err(format!(
                    "{name}{labels:?}: buckets not cumulative at le={le}"
                ));
            }
            previous = (*le, *value);
        }
        if previous.0 != f64::INFINITY || previous.1 != count {
            return Err(format!(
                "{name}{labels:?}: +Inf bucket {} differs from _count {count}",
                previous.1
            ));
        }
    }
    Ok(())
}

impl Exposition {
    /// Every sample named `name` (a histogram's `_bucket`/`_sum`/`_count` too).
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .values()
            .flat_map(|f| f.samples.iter())
            .filter(move |s| s.name == name)
    }

    /// Sum of the samples named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every sample name present (a histogram contributes `_bucket`, `_sum` and `_count`).
    pub fn sample_names(&self) -> BTreeSet<&str> {
        self.families
            .values()
            .flat_map(|f| f.samples.iter().map(|s| s.name.as_str()))
            .collect()
    }

    /// The distinct values of `label` among the samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples(name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP a_total Things, with a \\\\ backslash.
# TYPE a_total counter
a_total{x=\"1\",y=\"q\\\"uote\"} 3
a_total{x=\"2\"} 0
# TYPE h histogram
h_bucket{le=\"0.1\"} 1
h_bucket{le=\"+Inf\"} 2
h_sum 0.3
h_count 2
g 1.5e3 1700000000
";

    #[test]
    fn parses_families_and_series() {
        let exposition = parse(GOOD).unwrap();
        assert_eq!(exposition.families["a_total"].kind, Kind::Counter);
        assert_eq!(
            exposition.families["a_total"].help.as_deref(),
            Some("Things, with a \\ backslash.")
        );
        assert_eq!(exposition.sum("a_total", &[]), 3.0);
        assert_eq!(exposition.sum("a_total", &[("y", "q\"uote")]), 3.0);
        assert_eq!(exposition.sum("h_count", &[]), 2.0);
        assert_eq!(exposition.sum("g", &[]), 1500.0);
        assert_eq!(exposition.families["h"].samples.len(), 4);
    }

    #[test]
    fn rejects_what_scrapers_reject() {
        for (bad, why) in [
            ("a{x=\"1\"} 1\na{x=\"1\"} 2\n", "twice"),
            ("a 1\nb 1\na 2\n", "contiguous"),
            ("a 1\n# TYPE a counter\n", "after its samples"),
            ("1a 1\n", "invalid metric name"),
            ("a{1x=\"1\"} 1\n", "invalid label name"),
            ("a{x=1} 1\n", "not quoted"),
            ("a{x=\"1} 1\n", "unterminated"),
            ("a{x=\"\\t\"} 1\n", "bad escape"),
            ("a one\n", "bad value"),
            ("a 1 2 3\n", "trailing"),
            ("# TYPE a countr\n", "unknown TYPE"),
            ("# TYPE c counter\nc -1\n", "negative"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                "not cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
                "differs from _count",
            ),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n", "no _sum"),
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.message.contains(why), "{bad:?}: {error}");
        }
    }
}

//! Output: tables, times, YAML.

use std::time::SystemTime;

/// Renders rows under a header, columns padded to their widest cell (the last column is not
/// padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (index, cell) in row.iter().enumerate() {
            if index == last {
                out.push_str(cell);
            } else {
                let width = widths.get(index).copied().unwrap_or(0);
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push('\n');
    }
    out
}

/// `2025-03-01 14:02:07Z` for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `42s ago`, `5m ago`, `3h12m ago`, `2d ago` for seconds since the Unix epoch.
pub fn ago(seconds_since_epoch: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let elapsed = now.saturating_sub(seconds_since_epoch);
    match elapsed {
        0..60 => format!("{elapsed}s ago"),
        60..3600 => format!("{}m{}s ago", elapsed / 60, elapsed % 60),
        3600..86_400 => format!("{}h{}m ago", elapsed / 3600, elapsed % 3600 / 60),
        _ => format!("{}d{}h ago", elapsed / 86_400, elapsed % 86_400 / 3600),
    }
}

/// Documents as a YAML stream, each starting with `---`.
pub fn yaml_documents(documents: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        match yaml_serde::to_string(document) {
            Ok(text) => out.push_str(&text),
            Err(_) => {
                out.push_str(&document.to_string());
                out.push('\n');
            }
        }
    }
    out
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_740_837_727_999), "2025-03-01 14:02:07Z");
    }

    #[test]
    fn pads_table_columns() {
        let rows = vec![vec!["a".to_owned(), "long cell".to_owned(), "x".to_owned()]];
        assert_eq!(
            table(&["ID", "NAME", "LAST"], &rows),
            "ID  NAME       LAST\na   long cell  x\n"
        );
    }
}

/// Print rows as left-aligned columns separated by two spaces, like Nomad's CLI.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Key = value lines, aligned.
pub fn print_kv(pairs: &[(&str, String)]) {
    print!("{}", render_kv(pairs));
}

pub fn render_kv(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            let line = format!("{k}{} = {v}", " ".repeat(w - k.len()));
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// Unix nanoseconds as an RFC 3339 UTC time to the second, as Nomad's CLI prints dates.
pub fn timestamp(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns() {
        let s = super::render(&["ID", "Status"], &[vec!["abc".into(), "running".into()]]);
        assert_eq!(s, "ID   Status\nabc  running\n");
        let kv = super::render_kv(&[("ID", "x".into()), ("Status", "ok".into())]);
        assert_eq!(kv, "ID     = x\nStatus = ok\n");
        // An empty value leaves no trailing space (`Diff =` in `job history -p`).
        assert_eq!(super::render_kv(&[("Diff", String::new())]), "Diff =\n");
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            super::timestamp(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20Z"
        );
    }
}

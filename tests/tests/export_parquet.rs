//! Parquet exports for analysts: every kind of the quick demo's campaign, written by `thitl export
//! --format parquet` and by `GET /v1/exports/{kind}?format=parquet`, read back with the parquet
//! crate's row reader and checked row by row, value by value, against the CSV export of the same
//! data. The columns' types are what this test expects of each column's name, not what thitl
//! says they are.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::helpers::{TestApp, campaign_copy, spawn_app_in, thitl};

/// RFC 4180: cells split on commas, quoted cells may hold commas, quotes (doubled) and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(!quoted && cell.is_empty() && row.is_empty(), "the CSV ends mid-row");
    rows
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expected {
    Long,
    UnsignedLong,
    Double,
    Bool,
    Text,
    Time,
}

/// The type an analyst expects of each column: times as timestamps, rates and intervals as
/// doubles, counts as integers, seeds unsigned, flags as booleans, the rest text.
fn expected_type(column: &str) -> Expected {
    match column {
        "recorded_at" => Expected::Time,
        "position" | "index" | "quality" | "before_n" | "after_n" => Expected::Long,
        "seed" => Expected::UnsignedLong,
        "concept_present" | "group_depicted" => Expected::Bool,
        "quality_before" | "quality_after" | "alpha" => Expected::Double,
        name if name.ends_with("_rate")
            || name.ends_with("_median")
            || name.ends_with("_ci_low")
            || name.ends_with("_ci_high") =>
        {
            Expected::Double
        }
        _ => Expected::Text,
    }
}

/// Whether a Parquet value is the CSV cell, read as the column's expected type.
fn same_value(expected: Expected, cell: &str, field: &Field) -> bool {
    match (expected, field) {
        (_, Field::Null) => cell.is_empty(),
        (Expected::Text, Field::Str(text)) => text == cell,
        (Expected::Long, Field::Long(value)) => cell.parse::<i64>() == Ok(*value),
        (Expected::UnsignedLong, Field::ULong(value)) => cell.parse::<u64>() == Ok(*value),
        // CSV holds the shortest text that reads back as the same double: equality is exact.
        (Expected::Double, Field::Double(value)) => cell.parse::<f64>() == Ok(*value),
        (Expected::Bool, Field::Bool(value)) => cell == if *value { "true" } else { "false" },
        (Expected::Time, Field::TimestampMicros(micros)) => chrono::DateTime::parse_from_rfc3339(cell)
            .is_ok_and(|time| time.timestamp_micros() == *micros && time.offset().local_minus_utc() == 0),
        _ => false,
    }
}

/// Checks a Parquet file against the CSV export of the same data; answers the number of rows.
fn assert_same_rows(kind: &str, parquet: &Path, csv: &str) -> usize {
    let csv = parse_csv(csv);
    let (header, csv_rows) = csv.split_first().expect("a CSV header");
    let reader = SerializedFileReader::new(std::fs::File::open(parquet).expect("the Parquet file"))
        .unwrap_or_else(|e| panic!("{kind}: not a Parquet file: {e}"));
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<&str> = schema.columns().iter().map(|column| column.name()).collect();
    assert_eq!(names, *header, "{kind}: the Parquet columns are the CSV's, in order");
    for column in schema.columns() {
        // Nullable columns are OPTIONAL, the others REQUIRED; none repeats.
        assert!(column.max_def_level() <= 1 && column.max_rep_level() == 0, "{kind}: {}", column.name());
    }
    let rows: Vec<_> = reader
        .get_row_iter(None)
        .expect("a row iterator")
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{kind}: a row cannot be read: {e}"));
    assert_eq!(rows.len(), csv_rows.len(), "{kind}: as many rows as the CSV");
    assert!(!rows.is_empty(), "{kind}: the demo's campaign has some");
    for (number, (row, cells)) in rows.iter().zip(csv_rows).enumerate() {
        assert_eq!(row.len(), header.len(), "{kind} row {number}");
        for ((name, field), (column, cell)) in row.get_column_iter().zip(header.iter().zip(cells)) {
            assert_eq!(name, column);
            assert!(
                same_value(expected_type(name), cell, field),
                "{kind} row {number}, column {name}: the CSV has {cell:?}, the Parquet {field:?} \
                 (expected a {:?})",
                expected_type(name)
            );
        }
    }
    // Optional columns hold values too (not a column of nulls that matches empty CSV cells).
    for (index, column) in header.iter().enumerate() {
        let filled = csv_rows.iter().filter(|cells| !cells[index].is_empty()).count();
        let non_null = rows.iter().filter(|row| row.get_column_iter().nth(index).unwrap().1 != &Field::Null).count();
        assert_eq!(filled, non_null, "{kind}: column {column} has as many values in both");
    }
    rows.len()
}

/// GET, keeping the body's exact bytes (header names come in lower case).
fn get_bytes(app: &TestApp, path: &str, token: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let response = app.get(path, token);
    (response.status, response.headers, response.bytes)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn parquet_exports_hold_the_csv_exports_rows_typed() {
    let copy = campaign_copy();
    let data = copy.path().to_str().unwrap().to_string();

    // The command line: each kind as CSV and as Parquet, from the same log.
    let mut counts = Vec::new();
    for kind in ["annotations", "images", "evaluations"] {
        let csv = thitl(&["export", kind, "--data", &data]);
        assert!(csv.status.success(), "{}", String::from_utf8_lossy(&csv.stderr));
        let file = copy.path().join(format!("{kind}.parquet"));
        let output = thitl(&["export", kind, "--data", &data, "--format", "parquet", "--out", file.to_str().unwrap()]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let rows = assert_same_rows(kind, &file, &String::from_utf8(csv.stdout).expect("UTF-8 CSV"));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(&format!("exported {rows} {kind} rows up to position")),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        counts.push(rows);
    }
    let bad = thitl(&["export", "images", "--data", &data, "--format", "xlsx"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("csv, jsonl, parquet"));

    // Over HTTP: the same rows, with the Parquet content type and a .parquet file name.
    let app = spawn_app_in(copy);
    let analyst = app.token("auditor", "ana");
    for (kind, rows) in ["annotations", "images", "evaluations"].into_iter().zip(counts) {
        let csv = app.get(&format!("/v1/exports/{kind}"), &analyst);
        csv.expect(200);
        let (status, headers, body) = get_bytes(&app, &format!("/v1/exports/{kind}?format=parquet"), &analyst);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(header(&headers, "content-type"), Some("application/vnd.apache.parquet"));
        let position = header(&headers, "thitl-position").expect("Thitl-Position");
        assert_eq!(Some(position), csv.header("thitl-position"), "both exports reflect the same log");
        assert!(
            header(&headers, "content-disposition")
                .is_some_and(|d| d.contains(&format!("thitl-{kind}-{position}.parquet"))),
            "{headers:?}"
        );
        let file = app.dir.path().join(format!("served-{kind}.parquet"));
        std::fs::write(&file, &body).unwrap();
        assert_eq!(assert_same_rows(kind, &file, &csv.body), rows, "{kind}: the CLI's rows");
    }
    // An unknown format or kind is a clear client error, as for any bad input.
    let unknown = app.get("/v1/exports/images?format=xlsx", &analyst);
    unknown.expect(400);
    assert!(unknown.json()["detail"].as_str().unwrap().contains("parquet"), "{}", unknown.body);
    app.get("/v1/exports/ratings?format=parquet", &analyst).expect(404);
    let annotator = app.token("annotator", "anna");
    app.get("/v1/exports/images?format=parquet", &annotator).expect(403);
}

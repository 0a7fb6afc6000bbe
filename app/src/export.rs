//! Exports for analysts: annotations, images' metadata and evaluations as CSV, JSON Lines or
//! Parquet, read straight from the event log up to one position, a page of events at a time.
//!
//! ```text
//! ExportCursor::new(kind, format, store)   fixes `until` = the store's head now
//!   next_chunk() ─ read_all(after, 1000) ─ rows of the events of `kind` ─ CSV / JSONL bytes
//!                                                                     └─ Parquet: a row group per 65 536 rows
//!   ... until `until`: later events are not in this export, so it is one consistent snapshot
//!   last chunk ─ Parquet's last row group and footer
//! ```
//!
//! Key design decisions:
//! - **From the log, not the read models**: every row names the position of the event it comes
//!   from, so an analyst can cite it and an auditor can find it (`thitl audit log`).
//! - **Streamed**: the HTTP route and `thitl export` pull one chunk at a time; memory holds only
//!   what rows need from earlier events (each round's items, to say which association an
//!   annotation is about).
//! - **One list of columns**: [`ExportKind::columns`] names each column and its type once; CSV's
//!   header, JSON's keys and the Parquet schema (`export/parquet_file.rs`) all come from it, and
//!   one row builder feeds the three formats.
//! - **Analysts are not blind**: annotation rows name the item's association and the models its
//!   images came from; annotators never see this export (the route needs the read role).

use std::collections::HashMap;
use std::sync::Arc;

use domain::campaign::CampaignEvent;
use domain::generation::GenerationEvent;
use domain::round::{Answer, RoundEvent, RoundKind, Side};
use domain::*;
use serde_json::{Value, json};

use crate::commands::to_recorded;

mod parquet_file;
use store::{EventStore, StoreError};

/// Events read per chunk.
const PAGE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// One row per annotation submitted or withdrawn.
    Annotations,
    /// One row per image generated: its job, model, purpose, prompt, seed and blob.
    Images,
    /// One row per evaluation recorded, association and arm.
    Evaluations,
}

impl ExportKind {
    pub const ALL: [ExportKind; 3] = [ExportKind::Annotations, ExportKind::Images, ExportKind::Evaluations];

    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Annotations => "annotations",
            ExportKind::Images => "images",
            ExportKind::Evaluations => "evaluations",
        }
    }

    pub fn parse(text: &str) -> Option<ExportKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == text)
    }

    /// The columns, in order: the CSV header, the JSON Lines objects' keys and the Parquet schema.
    pub fn columns(self) -> &'static [Column] {
        match self {
            ExportKind::Annotations => ANNOTATION_COLUMNS,
            ExportKind::Images => IMAGE_COLUMNS,
            ExportKind::Evaluations => EVALUATION_COLUMNS,
        }
    }
}

use ColumnType::{Bool, Double, Int, Text, Time, UnsignedInt};

const ANNOTATION_COLUMNS: &[Column] = &[
    Column::required("position", Int),
    Column::required("recorded_at", Time),
    Column::required("round_id", Text),
    // Null when the round's opening is not in the log (never, in a valid log).
    Column::optional("round_kind", Text),
    Column::required("item_id", Text),
    Column::optional("association_id", Text),
    Column::optional("models", Text),
    Column::required("annotator", Text),
    Column::required("event", Text),
    Column::optional("concept_present", Bool),
    Column::optional("quality", Int),
    Column::optional("group_depicted", Bool),
    Column::optional("preferred", Text),
];

const IMAGE_COLUMNS: &[Column] = &[
    Column::required("position", Int),
    Column::required("recorded_at", Time),
    Column::required("image_id", Text),
    Column::required("generation_id", Text),
    Column::required("index", Int),
    Column::required("model_version", Text),
    Column::required("purpose", Text),
    Column::optional("association_id", Text),
    Column::optional("prompt_id", Text),
    Column::required("prompt", Text),
    Column::optional("negative_prompt", Text),
    Column::required("seed", UnsignedInt),
    Column::required("blob", Text),
];

// Rates are optional: a rate that is not a number (no answers) is null, as in JSON.
const EVALUATION_COLUMNS: &[Column] = &[
    Column::required("position", Int),
    Column::required("recorded_at", Time),
    Column::required("campaign_id", Text),
    Column::required("association_id", Text),
    Column::required("arm", Text),
    Column::optional("before_rate", Double),
    Column::optional("before_ci_low", Double),
    Column::optional("before_ci_high", Double),
    Column::required("before_n", Int),
    Column::optional("after_rate", Double),
    Column::optional("after_ci_low", Double),
    Column::optional("after_ci_high", Double),
    Column::required("after_n", Int),
    Column::optional("quality_before", Double),
    Column::optional("quality_after", Double),
    Column::optional("win_rate", Double),
    Column::optional("win_rate_ci_low", Double),
    Column::optional("win_rate_ci_high", Double),
    Column::optional("alpha", Double),
    Column::optional("quality_source", Text),
    Column::optional("people_quality_before_median", Double),
    Column::optional("people_quality_before_ci_low", Double),
    Column::optional("people_quality_before_ci_high", Double),
    Column::optional("people_quality_after_median", Double),
    Column::optional("people_quality_after_ci_low", Double),
    Column::optional("people_quality_after_ci_high", Double),
    Column::optional("aggregation", Text),
];

/// What a column holds; CSV and JSON write the values as JSON does, Parquet as these types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Positions, counts, indices: INT64.
    Int,
    /// Seeds (the whole `u64` range): INT64 annotated as unsigned 64-bit.
    UnsignedInt,
    /// Rates, interval bounds, quality means: DOUBLE.
    Double,
    Bool,
    /// Ids, names, prompts: UTF-8 strings.
    Text,
    /// `recorded_at`: microseconds since the epoch, UTC (the log keeps microseconds).
    Time,
}

/// One column of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// Whether a row may leave it empty (null).
    pub nullable: bool,
}

impl Column {
    const fn required(name: &'static str, ty: ColumnType) -> Column {
        Column { name, ty, nullable: false }
    }

    const fn optional(name: &'static str, ty: ColumnType) -> Column {
        Column { name, ty, nullable: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    JsonLines,
    /// Typed columns (see [`ColumnType`]), one row group per [`ROW_GROUP`] rows, snappy-compressed.
    Parquet,
}

impl ExportFormat {
    /// Every format, by its first name.
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Csv, ExportFormat::JsonLines, ExportFormat::Parquet];

    pub fn parse(text: &str) -> Option<ExportFormat> {
        match text {
            "csv" => Some(ExportFormat::Csv),
            "jsonl" | "ndjson" => Some(ExportFormat::JsonLines),
            "parquet" => Some(ExportFormat::Parquet),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::JsonLines => "jsonl",
            ExportFormat::Parquet => "parquet",
        }
    }

    /// The file name extension, which is also the name.
    pub fn extension(self) -> &'static str {
        self.name()
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::JsonLines => "application/x-ndjson",
            ExportFormat::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// Whether the bytes are text (a terminal can show them).
    pub fn is_text(self) -> bool {
        self != ExportFormat::Parquet
    }
}

/// Rows per Parquet row group: what the cursor holds before it writes them out.
pub const ROW_GROUP: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} cannot be read: {message}")]
    Decode { position: u64, message: String },
    #[error("the Parquet file cannot be written: {0}")]
    Parquet(String),
}

/// What annotation rows need to know about a round's items.
struct RoundInfo {
    kind: RoundKind,
    items: HashMap<ItemId, (Option<AssociationId>, Vec<ModelVersionId>)>,
}

/// A consistent export of one kind, pulled chunk by chunk.
pub struct ExportCursor {
    kind: ExportKind,
    format: ExportFormat,
    store: Arc<dyn EventStore>,
    after: u64,
    until: u64,
    started: bool,
    finished: bool,
    rows: u64,
    rounds: HashMap<RoundId, RoundInfo>,
    parquet: Option<parquet_file::ParquetSink>,
}

impl ExportCursor {
    /// An export of everything in the store now.
    pub fn new(
        kind: ExportKind,
        format: ExportFormat,
        store: Arc<dyn EventStore>,
    ) -> Result<ExportCursor, ExportError> {
        let until = store.head_position()?;
        let parquet = match format {
            ExportFormat::Parquet => Some(parquet_file::ParquetSink::new(kind, ROW_GROUP)?),
            _ => None,
        };
        Ok(ExportCursor {
            kind,
            format,
            store,
            after: 0,
            until,
            started: false,
            finished: false,
            rows: 0,
            rounds: HashMap::new(),
            parquet,
        })
    }

    /// The position the export reflects: every event up to it, none after.
    pub fn position(&self) -> u64 {
        self.until
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The next bytes of the export; `None` once it is complete.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ExportError> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            if self.format == ExportFormat::Csv {
                let names: Vec<&str> = self.kind.columns().iter().map(|c| c.name).collect();
                out.extend_from_slice(names.join(",").as_bytes());
                out.push(b'\n');
            }
        }
        if self.after < self.until {
            self.read_page(&mut out)?;
        } else {
            self.finished = true;
            if let Some(sink) = &mut self.parquet {
                sink.finish(&mut out)?;
            }
            if out.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// One page of events: their rows, and for Parquet the row groups that filled up.
    fn read_page(&mut self, out: &mut Vec<u8>) -> Result<(), ExportError> {
        let page = self.store.read_all(self.after, PAGE)?;
        if page.is_empty() {
            // The store holds fewer events than its head said: nothing more to read.
            self.after = self.until;
            return Ok(());
        }
        for stored in page {
            if stored.position > self.until {
                self.after = self.until;
                break;
            }
            self.after = stored.position;
            let recorded = to_recorded(&stored)
                .map_err(|e| ExportError::Decode { position: stored.position, message: e.to_string() })?;
            for row in self.rows_of(&recorded) {
                self.write_row(out, row)?;
            }
        }
        Ok(())
    }

    fn write_row(&mut self, out: &mut Vec<u8>, row: Vec<Value>) -> Result<(), ExportError> {
        self.rows += 1;
        match self.format {
            ExportFormat::Csv => {
                let cells: Vec<String> = row.iter().map(csv_cell).collect();
                out.extend_from_slice(cells.join(",").as_bytes());
                out.push(b'\n');
            }
            ExportFormat::JsonLines => {
                let object: serde_json::Map<String, Value> =
                    self.kind.columns().iter().map(|c| c.name.to_string()).zip(row).collect();
                out.extend_from_slice(Value::Object(object).to_string().as_bytes());
                out.push(b'\n');
            }
            ExportFormat::Parquet => {
                if let Some(sink) = &mut self.parquet {
                    sink.push(&row, out)?;
                }
            }
        }
        Ok(())
    }

    /// The rows one event contributes, in the kind's column order.
    fn rows_of(&mut self, event: &Recorded) -> Vec<Vec<Value>> {
        let (position, at) = (json!(event.position), json!(event.metadata.recorded_at));
        match (self.kind, &event.event) {
            (ExportKind::Annotations, DomainEvent::Round(round_event)) => match round_event {
                RoundEvent::RoundOpened { round_id, kind, items, .. } => {
                    let items = items
                        .iter()
                        .map(|item| (item.item_id, (item.label.association_id, item.label.models.clone())))
                        .collect();
                    self.rounds.insert(*round_id, RoundInfo { kind: *kind, items });
                    vec![]
                }
                RoundEvent::AnnotationSubmitted { round_id, item_id, annotator, answer } => {
                    let (concept, quality, group, preferred) = match answer {
                        Answer::Baseline { concept_present } => {
                            (json!(concept_present), Value::Null, Value::Null, Value::Null)
                        }
                        Answer::Screen { quality, group_depicted, concept_present } => {
                            (json!(concept_present), json!(quality.get()), json!(group_depicted), Value::Null)
                        }
                        Answer::Check { concept_present, quality } => {
                            (json!(concept_present), json!(quality.get()), Value::Null, Value::Null)
                        }
                        Answer::Compare { preferred } => (
                            Value::Null,
                            Value::Null,
                            Value::Null,
                            json!(match preferred {
                                Side::Left => "left",
                                Side::Right => "right",
                            }),
                        ),
                    };
                    let mut row = self.annotation_columns(position, at, *round_id, *item_id, annotator, "submitted");
                    row.extend([concept, quality, group, preferred]);
                    vec![row]
                }
                RoundEvent::AnnotationWithdrawn { round_id, item_id, annotator } => {
                    let mut row = self.annotation_columns(position, at, *round_id, *item_id, annotator, "withdrawn");
                    row.extend([Value::Null, Value::Null, Value::Null, Value::Null]);
                    vec![row]
                }
                _ => vec![],
            },
            (
                ExportKind::Images,
                DomainEvent::Generation(GenerationEvent::ImageGenerated {
                    generation_id,
                    index,
                    image_id,
                    blob,
                    model_version,
                    purpose,
                    item,
                }),
            ) => {
                vec![vec![
                    position,
                    at,
                    json!(image_id),
                    json!(generation_id),
                    json!(index),
                    json!(model_version),
                    json!(purpose),
                    json!(item.association_id),
                    json!(item.prompt_id),
                    json!(item.prompt),
                    json!(item.negative_prompt),
                    json!(item.seed),
                    json!(blob),
                ]]
            }
            (
                ExportKind::Evaluations,
                DomainEvent::Campaign(CampaignEvent::EvaluationRecorded { campaign_id, evaluations }),
            ) => evaluations
                .iter()
                .map(|e| {
                    let win = |f: fn(&domain::campaign::RateEstimate) -> f64| {
                        e.win_rate.as_ref().map_or(Value::Null, |w| json!(f(w)))
                    };
                    let people = |m: &Option<domain::campaign::MedianEstimate>,
                                  f: fn(&domain::campaign::MedianEstimate) -> f64| {
                        m.as_ref().map_or(Value::Null, |m| json!(f(m)))
                    };
                    vec![
                        position.clone(),
                        at.clone(),
                        json!(campaign_id),
                        json!(e.association_id),
                        json!(e.arm),
                        json!(e.before.rate),
                        json!(e.before.ci_low),
                        json!(e.before.ci_high),
                        json!(e.before.n),
                        json!(e.after.rate),
                        json!(e.after.ci_low),
                        json!(e.after.ci_high),
                        json!(e.after.n),
                        json!(e.quality_before),
                        json!(e.quality_after),
                        win(|w| w.rate),
                        win(|w| w.ci_low),
                        win(|w| w.ci_high),
                        json!(e.alpha),
                        json!(e.quality_source),
                        people(&e.people_quality_before, |m| m.median),
                        people(&e.people_quality_before, |m| m.ci_low),
                        people(&e.people_quality_before, |m| m.ci_high),
                        people(&e.people_quality_after, |m| m.median),
                        people(&e.people_quality_after, |m| m.ci_low),
                        people(&e.people_quality_after, |m| m.ci_high),
                        json!(e.aggregation),
                    ]
                })
                .collect(),
            _ => vec![],
        }
    }

    fn annotation_columns(
        &self,
        position: Value,
        at: Value,
        round_id: RoundId,
        item_id: ItemId,
        annotator: &str,
        event: &str,
    ) -> Vec<Value> {
        let round = self.rounds.get(&round_id);
        let item = round.and_then(|r| r.items.get(&item_id));
        vec![
            position,
            at,
            json!(round_id),
            round.map_or(Value::Null, |r| json!(r.kind)),
            json!(item_id),
            json!(item.and_then(|(association, _)| *association)),
            // A gold picture or a team's own image names no model: null, not an empty text.
            item.filter(|(_, models)| !models.is_empty()).map_or(Value::Null, |(_, models)| {
                json!(models.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(" "))
            }),
            json!(annotator),
            json!(event),
        ]
    }
}

/// One CSV cell (RFC 4180): text as itself, quoted when it holds a comma, quote or line break;
/// null as empty.
fn csv_cell(value: &Value) -> String {
    let text = match value {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_quote_what_would_break_a_row() {
        assert_eq!(csv_cell(&json!("a photo of a woman")), "a photo of a woman");
        assert_eq!(csv_cell(&json!("a woman, at the beach")), "\"a woman, at the beach\"");
        assert_eq!(csv_cell(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell(&json!("two\nlines")), "\"two\nlines\"");
        assert_eq!(csv_cell(&Value::Null), "");
        assert_eq!(csv_cell(&json!(0.25)), "0.25");
        assert_eq!(csv_cell(&json!(true)), "true");
    }

    #[test]
    fn kinds_and_formats_parse_by_name() {
        for kind in ExportKind::ALL {
            assert_eq!(ExportKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(ExportKind::parse("ratings"), None);
        for format in ExportFormat::ALL {
            assert_eq!(ExportFormat::parse(format.name()), Some(format));
        }
        assert_eq!(ExportFormat::parse("ndjson"), Some(ExportFormat::JsonLines));
        assert_eq!(ExportFormat::parse("parquet"), Some(ExportFormat::Parquet));
        assert_eq!(ExportFormat::parse("xlsx"), None);
    }
}

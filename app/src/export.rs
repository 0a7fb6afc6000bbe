//! Exports for analysts: annotations, images' metadata and evaluations as CSV or JSON Lines,
//! read straight from the event log up to one position, a page of events at a time.
//!
//! ```text
//! ExportCursor::new(kind, format, store)   fixes `until` = the store's head now
//!   next_chunk() ─ read_all(after, 1000) ─ rows of the events of `kind` ─ CSV / JSONL bytes
//!   ... until `until`: later events are not in this export, so it is one consistent snapshot
//! ```
//!
//! Key design decisions:
//! - **From the log, not the read models**: every row names the position of the event it comes
//!   from, so an analyst can cite it and an auditor can find it (`thitl audit log`).
//! - **Streamed**: the HTTP route and `thitl export` pull one chunk at a time; memory holds only
//!   what rows need from earlier events (each round's items, to say which association an
//!   annotation is about).
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

    /// The columns, in order (CSV header; JSON Lines objects carry the same keys).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            ExportKind::Annotations => &[
                "position",
                "recorded_at",
                "round_id",
                "round_kind",
                "item_id",
                "association_id",
                "models",
                "annotator",
                "event",
                "concept_present",
                "quality",
                "group_depicted",
                "preferred",
            ],
            ExportKind::Images => &[
                "position",
                "recorded_at",
                "image_id",
                "generation_id",
                "index",
                "model_version",
                "purpose",
                "association_id",
                "prompt_id",
                "prompt",
                "negative_prompt",
                "seed",
                "blob",
            ],
            ExportKind::Evaluations => &[
                "position",
                "recorded_at",
                "campaign_id",
                "association_id",
                "arm",
                "before_rate",
                "before_ci_low",
                "before_ci_high",
                "before_n",
                "after_rate",
                "after_ci_low",
                "after_ci_high",
                "after_n",
                "quality_before",
                "quality_after",
                "win_rate",
                "win_rate_ci_low",
                "win_rate_ci_high",
                "alpha",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    JsonLines,
}

impl ExportFormat {
    pub fn parse(text: &str) -> Option<ExportFormat> {
        match text {
            "csv" => Some(ExportFormat::Csv),
            "jsonl" | "ndjson" => Some(ExportFormat::JsonLines),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::JsonLines => "application/x-ndjson",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} cannot be read: {message}")]
    Decode { position: u64, message: String },
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
    header_written: bool,
    rows: u64,
    rounds: HashMap<RoundId, RoundInfo>,
}

impl ExportCursor {
    /// An export of everything in the store now.
    pub fn new(
        kind: ExportKind,
        format: ExportFormat,
        store: Arc<dyn EventStore>,
    ) -> Result<ExportCursor, ExportError> {
        let until = store.head_position()?;
        Ok(ExportCursor {
            kind,
            format,
            store,
            after: 0,
            until,
            header_written: false,
            rows: 0,
            rounds: HashMap::new(),
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
        let mut out = Vec::new();
        if !self.header_written {
            self.header_written = true;
            if self.format == ExportFormat::Csv {
                out.extend_from_slice(self.kind.columns().join(",").as_bytes());
                out.push(b'\n');
            }
            if self.until == 0 {
                return Ok(Some(out));
            }
        }
        if self.after >= self.until {
            return Ok(None);
        }
        let page = self.store.read_all(self.after, PAGE)?;
        if page.is_empty() {
            // The store holds fewer events than its head said: nothing more to read.
            self.after = self.until;
            return Ok(Some(out));
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
                self.write_row(&mut out, row);
            }
        }
        Ok(Some(out))
    }

    fn write_row(&mut self, out: &mut Vec<u8>, row: Vec<Value>) {
        self.rows += 1;
        match self.format {
            ExportFormat::Csv => {
                let cells: Vec<String> = row.iter().map(csv_cell).collect();
                out.extend_from_slice(cells.join(",").as_bytes());
            }
            ExportFormat::JsonLines => {
                let object: serde_json::Map<String, Value> =
                    self.kind.columns().iter().map(|c| c.to_string()).zip(row).collect();
                out.extend_from_slice(Value::Object(object).to_string().as_bytes());
            }
        }
        out.push(b'\n');
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
            item.map_or(Value::Null, |(_, models)| {
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
        assert_eq!(ExportFormat::parse("jsonl"), Some(ExportFormat::JsonLines));
        assert_eq!(ExportFormat::parse("xlsx"), None);
    }
}

//! The Parquet format of the exports: the kind's [`Column`]s as a typed schema, rows buffered
//! column by column and written out a row group at a time, the footer at the end.
//!
//! ```text
//! push(row) ─ each value into its column's buffer (+ a definition level if nullable)
//!   ROW_GROUP rows ─ one row group: each column chunk written, the file's new bytes handed out
//! finish() ─ the last row group, then the footer (schema, row groups' offsets and statistics)
//! ```
//!
//! Values come from the same rows as CSV and JSON Lines (JSON values in the kind's column
//! order), so the three formats cannot disagree on what a row holds; a value that does not fit
//! its column's type is an error, never a silent null.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;

use super::{Column, ColumnType, ExportError, ExportKind};

/// The Parquet message type of an export kind's columns.
pub(super) fn schema(kind: ExportKind) -> String {
    let fields: Vec<String> = kind
        .columns()
        .iter()
        .map(|column| {
            let repetition = if column.nullable { "OPTIONAL" } else { "REQUIRED" };
            let (physical, logical) = match column.ty {
                ColumnType::Int => ("INT64", ""),
                ColumnType::UnsignedInt => ("INT64", " (INTEGER(64,false))"),
                ColumnType::Double => ("DOUBLE", ""),
                ColumnType::Bool => ("BOOLEAN", ""),
                ColumnType::Text => ("BYTE_ARRAY", " (STRING)"),
                ColumnType::Time => ("INT64", " (TIMESTAMP(MICROS,true))"),
            };
            format!("  {repetition} {physical} {}{logical};", column.name)
        })
        .collect();
    format!("message thitl_{} {{\n{}\n}}", kind.name(), fields.join("\n"))
}

/// One column's values of the rows not yet written (nulls leave no value, only a level).
enum Values {
    Int(Vec<i64>),
    Double(Vec<f64>),
    Bool(Vec<bool>),
    Text(Vec<ByteArray>),
}

struct Buffer {
    column: Column,
    values: Values,
    /// Definition levels of a nullable column: 1 for a value, 0 for null.
    levels: Vec<i16>,
}

impl Buffer {
    fn new(column: Column) -> Buffer {
        let values = match column.ty {
            ColumnType::Int | ColumnType::UnsignedInt | ColumnType::Time => Values::Int(Vec::new()),
            ColumnType::Double => Values::Double(Vec::new()),
            ColumnType::Bool => Values::Bool(Vec::new()),
            ColumnType::Text => Values::Text(Vec::new()),
        };
        Buffer { column, values, levels: Vec::new() }
    }

    fn push(&mut self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            if !self.column.nullable {
                return Err(format!("column {} holds no null, but the row has none", self.column.name));
            }
            self.levels.push(0);
            return Ok(());
        }
        let mismatch = || format!("column {} is {:?}, but the row has {value}", self.column.name, self.column.ty);
        match (&mut self.values, self.column.ty) {
            (Values::Int(values), ColumnType::Int) => values.push(value.as_i64().ok_or_else(mismatch)?),
            // The bits of the u64, as Parquet stores unsigned 64-bit integers.
            (Values::Int(values), ColumnType::UnsignedInt) => {
                values.push(value.as_u64().ok_or_else(mismatch)?.cast_signed())
            }
            (Values::Int(values), ColumnType::Time) => {
                let time = value
                    .as_str()
                    .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                    .ok_or_else(mismatch)?;
                values.push(time.timestamp_micros())
            }
            (Values::Double(values), _) => values.push(value.as_f64().ok_or_else(mismatch)?),
            (Values::Bool(values), _) => values.push(value.as_bool().ok_or_else(mismatch)?),
            (Values::Text(values), _) => values.push(ByteArray::from(value.as_str().ok_or_else(mismatch)?)),
            (Values::Int(_), _) => return Err(mismatch()),
        }
        if self.column.nullable {
            self.levels.push(1);
        }
        Ok(())
    }
}

/// A Parquet file being written to memory, handed out as it grows.
pub(super) struct ParquetSink {
    writer: SerializedFileWriter<Vec<u8>>,
    buffers: Vec<Buffer>,
    rows: usize,
    /// Rows per row group.
    row_group: usize,
}

fn parquet_error(error: ParquetError) -> ExportError {
    ExportError::Parquet(error.to_string())
}

impl ParquetSink {
    /// A file of `kind`'s columns, written out every `row_group` rows.
    pub(super) fn new(kind: ExportKind, row_group: usize) -> Result<ParquetSink, ExportError> {
        let schema = parse_message_type(&schema(kind)).map_err(parquet_error)?;
        // Snappy: what pandas, polars and DuckDB write by default, and cheap to compress.
        let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let writer =
            SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(properties)).map_err(parquet_error)?;
        let buffers = kind.columns().iter().map(|column| Buffer::new(*column)).collect();
        Ok(ParquetSink { writer, buffers, rows: 0, row_group: row_group.max(1) })
    }

    /// Buffers one row (in the kind's column order); appends to `out` whatever row group it fills.
    pub(super) fn push(&mut self, row: &[Value], out: &mut Vec<u8>) -> Result<(), ExportError> {
        if row.len() != self.buffers.len() {
            return Err(ExportError::Parquet(format!(
                "a row has {} values for {} columns",
                row.len(),
                self.buffers.len()
            )));
        }
        for (buffer, value) in self.buffers.iter_mut().zip(row) {
            buffer.push(value).map_err(ExportError::Parquet)?;
        }
        self.rows += 1;
        if self.rows >= self.row_group {
            self.write_row_group(out)?;
        }
        Ok(())
    }

    /// Writes the rows left and the footer; appends the file's last bytes to `out`.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ExportError> {
        self.write_row_group(out)?;
        self.writer.finish().map_err(parquet_error)?;
        out.append(self.writer.inner_mut());
        Ok(())
    }

    fn write_row_group(&mut self, out: &mut Vec<u8>) -> Result<(), ExportError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group().map_err(parquet_error)?;
        for buffer in &mut self.buffers {
            let mut column = group
                .next_column()
                .map_err(parquet_error)?
                .ok_or_else(|| ExportError::Parquet(format!("the schema lacks column {}", buffer.column.name)))?;
            let levels = buffer.column.nullable.then_some(buffer.levels.as_slice());
            match &mut buffer.values {
                Values::Int(values) => column.typed::<Int64Type>().write_batch(values, levels, None),
                Values::Double(values) => column.typed::<DoubleType>().write_batch(values, levels, None),
                Values::Bool(values) => column.typed::<BoolType>().write_batch(values, levels, None),
                Values::Text(values) => column.typed::<ByteArrayType>().write_batch(values, levels, None),
            }
            .map_err(parquet_error)?;
            column.close().map_err(parquet_error)?;
            match &mut buffer.values {
                Values::Int(values) => values.clear(),
                Values::Double(values) => values.clear(),
                Values::Bool(values) => values.clear(),
                Values::Text(values) => values.clear(),
            }
            buffer.levels.clear();
        }
        group.close().map_err(parquet_error)?;
        self.rows = 0;
        // What the row group wrote, past the writer's buffer: the file's next bytes.
        self.writer.flush().map_err(|e| ExportError::Parquet(e.to_string()))?;
        out.append(self.writer.inner_mut());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use parquet::basic::{ConvertedType, Repetition, Type as PhysicalType};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use serde_json::json;

    use super::*;

    fn image_row(position: u64, seed: u64, negative: Value) -> Vec<Value> {
        vec![
            json!(position),
            json!("2025-03-01T12:34:56.789012Z"),
            json!("image"),
            json!("generation"),
            json!(position - 1),
            json!("model"),
            json!("baseline"),
            Value::Null,
            Value::Null,
            json!("a photo, \"quoted\""),
            negative,
            json!(seed),
            json!("blob"),
        ]
    }

    fn read_back(bytes: Vec<u8>) -> SerializedFileReader<std::fs::File> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        SerializedFileReader::new(file).expect("a Parquet file")
    }

    #[test]
    fn rows_come_back_typed_across_row_groups() {
        let mut sink = ParquetSink::new(ExportKind::Images, 2).unwrap();
        let mut out = Vec::new();
        let seeds = [0, 7, u64::MAX, 1 << 63, 42];
        for (n, seed) in seeds.into_iter().enumerate() {
            let negative = if n % 2 == 0 { Value::Null } else { json!("blurry") };
            sink.push(&image_row(n as u64 + 1, seed, negative), &mut out).unwrap();
        }
        // Two full row groups are out before the end; the magic number leads them.
        assert!(out.starts_with(b"PAR1"));
        sink.finish(&mut out).unwrap();
        assert!(out.ends_with(b"PAR1"));

        let reader = read_back(out);
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let schema = reader.metadata().file_metadata().schema_descr();
        let recorded_at = schema.column(1);
        assert_eq!(recorded_at.physical_type(), PhysicalType::INT64);
        assert_eq!(recorded_at.converted_type(), ConvertedType::TIMESTAMP_MICROS);
        assert_eq!(schema.column(11).converted_type(), ConvertedType::UINT_64);
        assert_eq!(schema.column(2).converted_type(), ConvertedType::UTF8);
        assert_eq!(schema.column(10).self_type().get_basic_info().repetition(), Repetition::OPTIONAL);
        assert_eq!(schema.column(9).self_type().get_basic_info().repetition(), Repetition::REQUIRED);

        let rows: Vec<_> = reader.get_row_iter(None).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.len(), seeds.len());
        for (n, row) in rows.iter().enumerate() {
            let fields: Vec<&Field> = row.get_column_iter().map(|(_, field)| field).collect();
            assert_eq!(fields[0], &Field::Long(n as i64 + 1));
            assert_eq!(fields[1], &Field::TimestampMicros(1_740_832_496_789_012));
            assert_eq!(fields[4], &Field::Long(n as i64));
            assert_eq!(fields[7], &Field::Null);
            assert_eq!(fields[9], &Field::Str("a photo, \"quoted\"".into()));
            let negative = if n % 2 == 0 { Field::Null } else { Field::Str("blurry".into()) };
            assert_eq!(fields[10], &negative);
            assert_eq!(fields[11], &Field::ULong(seeds[n]));
        }
    }

    #[test]
    fn an_empty_export_is_a_file_with_the_schema_and_no_rows() {
        let mut out = Vec::new();
        ParquetSink::new(ExportKind::Evaluations, 10).unwrap().finish(&mut out).unwrap();
        let reader = read_back(out);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
        let names: Vec<&str> =
            reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name()).collect();
        let expected: Vec<&str> = ExportKind::Evaluations.columns().iter().map(|c| c.name).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_value_that_does_not_fit_its_column_is_an_error() {
        let mut out = Vec::new();
        let mut sink = ParquetSink::new(ExportKind::Images, 10).unwrap();
        let mut text_position = image_row(1, 1, Value::Null);
        text_position[0] = json!("one");
        assert!(matches!(sink.push(&text_position, &mut out), Err(ExportError::Parquet(m)) if m.contains("position")));
        let mut null_prompt = image_row(1, 1, Value::Null);
        null_prompt[9] = Value::Null;
        assert!(matches!(sink.push(&null_prompt, &mut out), Err(ExportError::Parquet(m)) if m.contains("prompt")));
        let mut negative_seed = image_row(1, 1, Value::Null);
        negative_seed[11] = json!(-1);
        assert!(sink.push(&negative_seed, &mut out).is_err());
        assert!(sink.push(&image_row(1, 1, Value::Null)[..3], &mut out).is_err());
    }
}

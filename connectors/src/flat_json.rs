//! A fast path for the JSON records most streams carry: one flat object per record, of
//! integers, floats, booleans, strings and timestamps (Nexmark's bids, people and auctions,
//! most Kafka topics). One pass over each record's bytes appends each value straight to its
//! column, skipping members the schema does not name without building anything for them.
//! arrow-json, which the general path uses, first tokenizes every record into a tape and then
//! builds columns from it; on bids this path takes about half its time.
//!
//! It never decides what a record means on its own: whatever it is not sure reads exactly as
//! arrow-json reads it (an escape it does not handle, a number in a string, a timestamp in
//! another layout, a duplicate or missing member, a bad record) makes it give the batch up,
//! and the general path decodes it as before. A property test checks that, where it answers,
//! it answers what arrow-json does.

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, Int8Builder, PrimitiveBuilder, StringBuilder, UInt16Builder,
    UInt32Builder, UInt64Builder, UInt8Builder,
};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// What a column holds, for the fast path.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    UInt {
        max: u64,
    },
    Float32,
    Float64,
    Bool,
    Utf8,
    /// A timestamp without time zone: a JSON integer in the unit, or a string
    /// `YYYY-MM-DDTHH:MM:SS.sssZ`.
    Timestamp(TimeUnit),
}

impl Kind {
    fn of(t: &DataType) -> Option<Kind> {
        Some(match t {
            DataType::Int8 => Kind::Int {
                min: i8::MIN.into(),
                max: i8::MAX.into(),
            },
            DataType::Int16 => Kind::Int {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            },
            DataType::Int32 => Kind::Int {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            },
            DataType::Int64 => Kind::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            DataType::UInt8 => Kind::UInt {
                max: u8::MAX.into(),
            },
            DataType::UInt16 => Kind::UInt {
                max: u16::MAX.into(),
            },
            DataType::UInt32 => Kind::UInt {
                max: u32::MAX.into(),
            },
            DataType::UInt64 => Kind::UInt { max: u64::MAX },
            DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            DataType::Boolean => Kind::Bool,
            DataType::Utf8 => Kind::Utf8,
            DataType::Timestamp(unit, None) => Kind::Timestamp(*unit),
            _ => return None,
        })
    }
}

/// Decodes flat JSON objects of one schema; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct FlatJson {
    schema: SchemaRef,
    kinds: Vec<Kind>,
}

/// The fast path gives up on this batch (the general path decodes it).
struct GiveUp;

type Fast<T> = Result<T, GiveUp>;

impl FlatJson {
    /// The fast path for `schema`, if every column is of a kind it reads.
    pub(crate) fn plan(schema: &SchemaRef) -> Option<FlatJson> {
        let kinds = schema
            .fields()
            .iter()
            .map(|f| Kind::of(f.data_type()))
            .collect::<Option<Vec<_>>>()?;
        if kinds.is_empty() {
            return None;
        }
        Some(FlatJson {
            schema: schema.clone(),
            kinds,
        })
    }

    /// The batch of `records` (byte ranges of `bytes`, one object each), or `None` where it
    /// cannot be sure to read them as arrow-json would.
    pub(crate) fn decode(&self, bytes: &[u8], records: &[(usize, usize)]) -> Option<RecordBatch> {
        let mut columns: Vec<Column> = self
            .kinds
            .iter()
            .map(|&k| Column::new(k, records.len()))
            .collect();
        let mut seen = vec![false; self.kinds.len()];
        for &(start, end) in records {
            let record = bytes.get(start..end)?;
            seen.iter_mut().for_each(|s| *s = false);
            self.record(record, &mut columns, &mut seen).ok()?;
            for (i, s) in seen.iter().enumerate() {
                if !*s {
                    // A missing member is null, if the column may be.
                    if !self.schema.field(i).is_nullable() {
                        return None;
                    }
                    columns[i].null();
                }
            }
        }
        let arrays: Vec<ArrayRef> = columns.into_iter().map(Column::finish).collect();
        RecordBatch::try_new(self.schema.clone(), arrays).ok()
    }

    fn record(&self, record: &[u8], columns: &mut [Column], seen: &mut [bool]) -> Fast<()> {
        // arrow-json refuses a record that is not UTF-8 anywhere, names and skipped members
        // included.
        std::str::from_utf8(record).map_err(|_| GiveUp)?;
        let mut p = Parser { b: record, at: 0 };
        p.ws();
        p.expect(b'{')?;
        p.ws();
        // Members usually come in the schema's order: try the next one first.
        let mut guess = 0;
        if p.peek() == Some(b'}') {
            p.at += 1;
        } else {
            loop {
                let key = p.key()?;
                p.ws();
                p.expect(b':')?;
                p.ws();
                let field = match self.schema.fields().get(guess) {
                    Some(f) if f.name().as_bytes() == key => Some(guess),
                    _ => self
                        .schema
                        .fields()
                        .iter()
                        .position(|f| f.name().as_bytes() == key),
                };
                match field {
                    Some(i) => {
                        if std::mem::replace(&mut seen[i], true) {
                            // A duplicate member: arrow-json decides which counts.
                            return Err(GiveUp);
                        }
                        let nullable = self.schema.field(i).is_nullable();
                        columns[i].value(&mut p, nullable)?;
                        guess = i + 1;
                    }
                    None => p.skip_value(0)?,
                }
                p.ws();
                match p.next() {
                    Some(b',') => p.ws(),
                    Some(b'}') => break,
                    _ => return Err(GiveUp),
                }
            }
        }
        p.ws();
        if p.at != record.len() {
            // A second object, or anything else, after the first.
            return Err(GiveUp);
        }
        Ok(())
    }
}

struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

/// How deep nested values of members the schema does not name may go before the fast path
/// gives up (bounded recursion on input a user can send).
const MAX_DEPTH: usize = 32;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.at += 1;
        c
    }

    /// Skips JSON whitespace (the newline ending each record too).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Fast<()> {
        match self.next() {
            Some(n) if n == c => Ok(()),
            _ => Err(GiveUp),
        }
    }

    /// A member's name, which must need no unescaping.
    fn key(&mut self) -> Fast<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .ok_or(GiveUp)?;
        if self.b[start + len] != b'"' {
            return Err(GiveUp);
        }
        self.at = start + len + 1;
        let b: &'a [u8] = self.b;
        Ok(&b[start..start + len])
    }

    /// A string's content, unescaped into `out` (valid UTF-8 checked by the caller).
    fn string_into(&mut self, out: &mut Vec<u8>) -> Fast<()> {
        self.expect(b'"')?;
        loop {
            let rest = &self.b[self.at..];
            let run = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .ok_or(GiveUp)?;
            out.extend_from_slice(&rest[..run]);
            self.at += run;
            match self.next() {
                Some(b'"') => return Ok(()),
                Some(b'\\') => {
                    let unescaped = match self.next() {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'b') => 0x08,
                        Some(b'f') => 0x0c,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        // \u escapes (and surrogate pairs) are left to arrow-json.
                        _ => return Err(GiveUp),
                    };
                    out.push(unescaped);
                }
                // A raw control character, which JSON does not allow in a string.
                _ => return Err(GiveUp),
            }
        }
    }

    /// Skips a string (of a member the schema does not name), checking its escapes.
    fn skip_string(&mut self) -> Fast<()> {
        self.expect(b'"')?;
        loop {
            let run = self.b[self.at..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .ok_or(GiveUp)?;
            self.at += run;
            match self.next() {
                Some(b'"') => return Ok(()),
                Some(b'\\') => match self.next() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                    Some(b'u') => {
                        let hex = self.b.get(self.at..self.at + 4).ok_or(GiveUp)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(GiveUp);
                        }
                        self.at += 4;
                    }
                    _ => return Err(GiveUp),
                },
                _ => return Err(GiveUp),
            }
        }
    }

    /// The bytes of a number literal, checked to be JSON's grammar; whether it has a
    /// fraction or exponent.
    fn number(&mut self) -> Fast<(&'a str, bool)> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.at;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.at += 1;
            }
            p.at - s
        };
        let int_start = self.at;
        let n = digits(self);
        if n == 0 || (n > 1 && self.b[int_start] == b'0') {
            return Err(GiveUp);
        }
        let mut fraction = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(GiveUp);
            }
            fraction = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(GiveUp);
            }
            fraction = true;
        }
        // Digits, signs, dots and exponents are ASCII.
        let b: &'a [u8] = self.b;
        let text = std::str::from_utf8(&b[start..self.at]).map_err(|_| GiveUp)?;
        Ok((text, fraction))
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// Skips any JSON value (a member the schema does not name).
    fn skip_value(&mut self, depth: usize) -> Fast<()> {
        if depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{' | b'[') => {
                let close = if self.next() == Some(b'{') {
                    b'}'
                } else {
                    b']'
                };
                self.ws();
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    if close == b'}' {
                        self.key()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => self.ws(),
                        Some(c) if c == close => return Ok(()),
                        _ => return Err(GiveUp),
                    }
                }
            }
            Some(b't') if self.literal(b"true") => Ok(()),
            Some(b'f') if self.literal(b"false") => Ok(()),
            Some(b'n') if self.literal(b"null") => Ok(()),
            _ => self.number().map(|_| ()),
        }
    }
}

/// One column being built.
enum Column {
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Utf8(StringBuilder, Vec<u8>),
    Timestamp(TimeUnit, Int64Builder),
}

impl Column {
    fn new(kind: Kind, rows: usize) -> Column {
        match kind {
            Kind::Int { min, .. } if min == i8::MIN as i64 => {
                Column::Int8(Int8Builder::with_capacity(rows))
            }
            Kind::Int { min, .. } if min == i16::MIN as i64 => {
                Column::Int16(Int16Builder::with_capacity(rows))
            }
            Kind::Int { min, .. } if min == i32::MIN as i64 => {
                Column::Int32(Int32Builder::with_capacity(rows))
            }
            Kind::Int { .. } => Column::Int64(Int64Builder::with_capacity(rows)),
            Kind::UInt { max } if max == u8::MAX as u64 => {
                Column::UInt8(UInt8Builder::with_capacity(rows))
            }
            Kind::UInt { max } if max == u16::MAX as u64 => {
                Column::UInt16(UInt16Builder::with_capacity(rows))
            }
            Kind::UInt { max } if max == u32::MAX as u64 => {
                Column::UInt32(UInt32Builder::with_capacity(rows))
            }
            Kind::UInt { .. } => Column::UInt64(UInt64Builder::with_capacity(rows)),
            Kind::Float32 => Column::Float32(Float32Builder::with_capacity(rows)),
            Kind::Float64 => Column::Float64(Float64Builder::with_capacity(rows)),
            Kind::Bool => Column::Bool(BooleanBuilder::with_capacity(rows)),
            Kind::Utf8 => Column::Utf8(StringBuilder::with_capacity(rows, rows * 16), Vec::new()),
            Kind::Timestamp(unit) => Column::Timestamp(unit, Int64Builder::with_capacity(rows)),
        }
    }

    fn null(&mut self) {
        match self {
            Column::Int8(b) => b.append_null(),
            Column::Int16(b) => b.append_null(),
            Column::Int32(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::UInt8(b) => b.append_null(),
            Column::UInt16(b) => b.append_null(),
            Column::UInt32(b) => b.append_null(),
            Column::UInt64(b) => b.append_null(),
            Column::Float32(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::Bool(b) => b.append_null(),
            Column::Utf8(b, _) => b.append_null(),
            Column::Timestamp(_, b) => b.append_null(),
        }
    }

    /// Reads one value at `p` into the column.
    fn value(&mut self, p: &mut Parser<'_>, nullable: bool) -> Fast<()> {
        if p.peek() == Some(b'n') {
            if !nullable || !p.literal(b"null") {
                return Err(GiveUp);
            }
            self.null();
            return Ok(());
        }
        let int = |p: &mut Parser<'_>| -> Fast<i64> {
            match p.number()? {
                (text, false) => text.parse::<i64>().map_err(|_| GiveUp),
                _ => Err(GiveUp),
            }
        };
        let uint = |p: &mut Parser<'_>| -> Fast<u64> {
            match p.number()? {
                (text, false) => text.parse::<u64>().map_err(|_| GiveUp),
                _ => Err(GiveUp),
            }
        };
        fn append<T: ArrowPrimitiveType>(
            b: &mut PrimitiveBuilder<T>,
            v: impl TryInto<T::Native>,
        ) -> Fast<()> {
            b.append_value(v.try_into().map_err(|_| GiveUp)?);
            Ok(())
        }
        match self {
            Column::Int8(b) => append(b, int(p)?),
            Column::Int16(b) => append(b, int(p)?),
            Column::Int32(b) => append(b, int(p)?),
            Column::Int64(b) => append(b, int(p)?),
            Column::UInt8(b) => append(b, uint(p)?),
            Column::UInt16(b) => append(b, uint(p)?),
            Column::UInt32(b) => append(b, uint(p)?),
            Column::UInt64(b) => append(b, uint(p)?),
            // Parsed in the column's own width (an f32 read through f64 may round twice);
            // out of range is left to arrow-json.
            Column::Float32(b) => {
                let (text, _) = p.number()?;
                let v = text.parse::<f32>().map_err(|_| GiveUp)?;
                b.append_value(if v.is_finite() { v } else { return Err(GiveUp) });
                Ok(())
            }
            Column::Float64(b) => {
                let (text, _) = p.number()?;
                let v = text.parse::<f64>().map_err(|_| GiveUp)?;
                b.append_value(if v.is_finite() { v } else { return Err(GiveUp) });
                Ok(())
            }
            Column::Bool(b) => {
                if p.literal(b"true") {
                    b.append_value(true);
                } else if p.literal(b"false") {
                    b.append_value(false);
                } else {
                    return Err(GiveUp);
                }
                Ok(())
            }
            Column::Utf8(b, scratch) => {
                scratch.clear();
                p.string_into(scratch)?;
                b.append_value(std::str::from_utf8(scratch).map_err(|_| GiveUp)?);
                Ok(())
            }
            Column::Timestamp(unit, b) => {
                let v = match p.peek() {
                    Some(b'"') => {
                        // The quoted layout, whole, or the general path decides.
                        let text = p.b.get(p.at + 1..p.at + 26).ok_or(GiveUp)?;
                        let ms = utc_millis(&text[..24]).ok_or(GiveUp)?;
                        if text[24] != b'"' {
                            return Err(GiveUp);
                        }
                        p.at += 26;
                        match unit {
                            TimeUnit::Second if ms % 1000 == 0 => ms / 1000,
                            TimeUnit::Second => return Err(GiveUp),
                            TimeUnit::Millisecond => ms,
                            TimeUnit::Microsecond => ms.checked_mul(1000).ok_or(GiveUp)?,
                            TimeUnit::Nanosecond => ms.checked_mul(1_000_000).ok_or(GiveUp)?,
                        }
                    }
                    _ => int(p)?,
                };
                b.append_value(v);
                Ok(())
            }
        }
    }

    fn finish(self) -> ArrayRef {
        fn done(mut b: impl ArrayBuilder) -> ArrayRef {
            b.finish()
        }
        match self {
            Column::Int8(b) => done(b),
            Column::Int16(b) => done(b),
            Column::Int32(b) => done(b),
            Column::Int64(b) => done(b),
            Column::UInt8(b) => done(b),
            Column::UInt16(b) => done(b),
            Column::UInt32(b) => done(b),
            Column::UInt64(b) => done(b),
            Column::Float32(b) => done(b),
            Column::Float64(b) => done(b),
            Column::Bool(b) => done(b),
            Column::Utf8(b, _) => done(b),
            Column::Timestamp(unit, mut b) => {
                let values = b.finish();
                match unit {
                    TimeUnit::Second => Arc::new(values.reinterpret_cast::<TimestampSecondType>()),
                    TimeUnit::Millisecond => {
                        Arc::new(values.reinterpret_cast::<TimestampMillisecondType>())
                    }
                    TimeUnit::Microsecond => {
                        Arc::new(values.reinterpret_cast::<TimestampMicrosecondType>())
                    }
                    TimeUnit::Nanosecond => {
                        Arc::new(values.reinterpret_cast::<TimestampNanosecondType>())
                    }
                }
            }
        }
    }
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.sssZ` (the layout Oxflow writes), a
/// valid date and time of day; `None` for anything else.
fn utc_millis(s: &[u8]) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(r)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0i64, |v, d| v * 10 + (d - b'0') as i64))
    };
    if s.len() != 24
        || s[4] != b'-'
        || s[7] != b'-'
        || s[10] != b'T'
        || s[13] != b':'
        || s[16] != b':'
        || s[19] != b'.'
        || s[23] != b'Z'
    {
        return None;
    }
    let (year, month, day) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hour, minute, second, milli) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::general_json;
    use datafusion::arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
            Field::new("g", DataType::Float32, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("u", DataType::UInt16, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn lines(records: &[String]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let texts: Vec<&str> = records.iter().map(String::as_str).collect();
        crate::decode::records(&texts)
    }

    #[test]
    fn reads_bids_as_arrow_json_does() {
        let records = vec![
            r#"{"a":1,"b":-2,"s":"x\"y\\z\n","f":1.5e3,"g":0.25,"ok":true,"u":7,"t":"2024-02-29T23:59:59.999Z"}"#.to_string(),
            r#" { "t" : 12 , "a" : 9223372036854775807, "extra": {"n": [1, {"m": null}], "s": "\u00e9"} } "#.to_string(),
            r#"{"a":0,"s":"éa","b":null,"ok":false}"#.to_string(),
        ];
        let (bytes, spans) = lines(&records);
        let fast = FlatJson::plan(&schema())
            .unwrap()
            .decode(&bytes, &spans)
            .expect("the fast path reads these");
        assert_eq!(Some(fast), general_json(&schema(), &bytes, records.len()));
    }

    #[test]
    fn gives_up_where_arrow_json_decides() {
        let plan = FlatJson::plan(&schema()).unwrap();
        for record in [
            r#"{"a":1,"s":"\u00e9"}"#,
            r#"{"a":"1"}"#,
            r#"{"a":1.0}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"b":1}"#,
            r#"{"a":1,"t":"2024-01-01 00:00:00"}"#,
            r#"{"a":1}{"a":2}"#,
            r#"{"a":01}"#,
            r#"{"a":1,"b":2147483648}"#,
            "{\"a\":1,\"s\":\"tab\there\"}",
        ] {
            let (bytes, spans) = lines(&[record.to_string()]);
            assert!(plan.decode(&bytes, &spans).is_none(), "{record}");
        }
    }

    #[test]
    fn utc_millis_matches_chrono() {
        for (text, ms) in [
            ("1970-01-01T00:00:00.000Z", 0),
            ("2024-01-01T00:00:00.000Z", 1_704_067_200_000),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2000-02-29T12:34:56.789Z", 951_827_696_789),
        ] {
            assert_eq!(utc_millis(text.as_bytes()), Some(ms), "{text}");
        }
        for bad in [
            "2023-02-29T00:00:00.000Z",
            "2024-13-01T00:00:00.000Z",
            "2024-01-01T24:00:00.000Z",
            "2024-01-01T00:00:00.000+",
        ] {
            assert_eq!(utc_millis(bad.as_bytes()), None, "{bad}");
        }
    }

    /// Any value, mostly odd ones.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| format!("{v:?}")),
            Just("null".to_string()),
            Just("true".to_string()),
            "[a-z\\\\\"/é\\n]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("{\"x\":[1,2,{}]}".to_string()),
            Just("\"\\u0041\"".to_string()),
            "[ -~]{0,4}",
        ]
    }

    /// A value for member `k` of the schema: mostly one of its type (or null), sometimes any.
    fn value_for(k: usize) -> BoxedStrategy<String> {
        let typed: BoxedStrategy<String> = match k {
            1 => (i32::MIN..=i32::MAX).prop_map(|v| v.to_string()).boxed(),
            2 => "[a-z\\\\\"/é\\n\\t]{0,8}"
                .prop_map(|s| serde_json::to_string(&s).unwrap())
                .boxed(),
            3 => prop_oneof![
                any::<f64>()
                    .prop_filter("finite", |v| v.is_finite())
                    .prop_map(|v| format!("{v:?}")),
                (-1000i64..1000).prop_map(|v| v.to_string()),
                (-1000i64..1000, 0u32..30).prop_map(|(m, e)| format!("{m}.5e-{e}")),
            ]
            .boxed(),
            4 => any::<f32>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| format!("{v:?}"))
                .boxed(),
            5 => any::<bool>().prop_map(|v| v.to_string()).boxed(),
            6 => (0u32..70_000).prop_map(|v| v.to_string()).boxed(),
            7 => prop_oneof![
                (0i64..4_000_000_000_000).prop_map(|ms| {
                    let t = datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
                        .unwrap();
                    format!("\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
                }),
                any::<i64>().prop_map(|v| v.to_string()),
            ]
            .boxed(),
            _ => value().boxed(),
        };
        prop_oneof![6 => typed, 1 => Just("null".to_string()), 1 => value()].boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random records of the schema's members (and others), values mostly of their
        /// types, any order: where the fast path answers (about a third of the batches, when
        /// counted), it answers what arrow-json does; it never panics.
        #[test]
        fn the_fast_path_reads_what_arrow_json_reads(
            records in proptest::collection::vec(
                (
                    (-1000i64..1000).prop_map(|v| v.to_string()),
                    (1..9usize)
                        .map(|k| proptest::option::weighted(0.8, value_for(k)))
                        .collect::<Vec<_>>(),
                    Just((0..9).collect::<Vec<usize>>()).prop_shuffle(),
                ),
                1..4,
            ),
            spaced in any::<bool>(),
        ) {
            const KEYS: [&str; 9] = ["a", "b", "s", "f", "g", "ok", "u", "t", "x"];
            let sep = if spaced { " , " } else { "," };
            let records: Vec<String> = records
                .iter()
                .map(|(a, others, order)| {
                    let body: Vec<String> = order
                        .iter()
                        .filter_map(|&k| {
                            let v = if k == 0 { Some(a) } else { others[k - 1].as_ref() };
                            v.map(|v| format!("\"{}\":{v}", KEYS[k]))
                        })
                        .collect();
                    format!("{{{}}}", body.join(sep))
                })
                .collect();
            let (bytes, spans) = lines(&records);
            let schema = schema();
            if let Some(fast) = FlatJson::plan(&schema).unwrap().decode(&bytes, &spans) {
                let slow = general_json(&schema, &bytes, records.len());
                prop_assert_eq!(Some(fast), slow, "{:?}", records);
            }
        }

        /// Any bytes at all, and a valid record cut or with bytes changed: an answer or a
        /// refusal, never a panic; an answer for a changed record is arrow-json's.
        #[test]
        fn any_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            changes in proptest::collection::vec((0usize..120, any::<u8>()), 0..4),
            cut in 0usize..130,
        ) {
            let plan = FlatJson::plan(&schema()).unwrap();
            let _ = plan.decode(&bytes, &[(0, bytes.len())]);
            let mut record = br#"{"a":1,"b":-2,"s":"x\"y","f":1.5e3,"ok":true,"u":7,"t":"2024-02-29T23:59:59.999Z","x":[{}]}"#.to_vec();
            for (at, b) in changes {
                if let Some(c) = record.get_mut(at) {
                    *c = b;
                }
            }
            record.truncate(cut);
            record.push(b'\n');
            if let Some(fast) = plan.decode(&record, &[(0, record.len())]) {
                prop_assert_eq!(Some(fast), general_json(&schema(), &record, 1));
            }
        }
    }
}

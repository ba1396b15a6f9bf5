//! Submission labels the MPC accepts: the only place a label is judged.
//!
//! `Label::parse` is a hand-written byte parser (no regex, one allocation on
//! success) because it runs on every request, and its errors are shown to
//! people verbatim, so each one names the rule that failed.

use std::fmt;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// Longest raw input accepted before trimming.
pub const MAX_RAW_BYTES: usize = 64;

/// Longest trksub or trkid, in characters.
const TRACKLET_MAX: usize = 12;
/// Length of a submission id: `YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx`.
const SUBMISSION_ID_LEN: usize = 32;
/// Length of a submission block id: a submission id plus `_nn`.
const SUBMISSION_BLOCK_ID_LEN: usize = 35;

/// A submission label the MPC accepts, valid by construction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    value: Box<str>,
    kind: LabelKind,
}

impl Label {
    /// Parses a raw label: trims ASCII whitespace, then checks it against every accepted format.
    pub fn parse(raw: &str) -> Result<Label, LabelError> {
        // Checked before anything else so hostile input costs nothing more.
        if raw.len() > MAX_RAW_BYTES {
            return Err(LabelError::TooLong { len: raw.len() });
        }
        let value = raw.trim_ascii();
        if value.is_empty() {
            return Err(LabelError::Empty);
        }
        let start = raw.len() - raw.trim_ascii_start().len();
        let kind = Parser {
            raw,
            start,
            bytes: value.as_bytes(),
        }
        .kind()?;
        Ok(Label {
            value: Box::from(value),
            kind,
        })
    }

    /// The label as the MPC expects it: trimmed, never otherwise rewritten.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Which accepted format the label has.
    pub fn kind(&self) -> LabelKind {
        self.kind
    }
}

impl AsRef<str> for Label {
    fn as_ref(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}

impl utoipa::PartialSchema for Label {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A trksub, trkid, submission id or submission block id, trimmed.",
            ))
            .min_length(Some(1))
            .max_length(Some(35))
            .examples(["2024-05-02T21:03:35.001_0000FzZw"])
            .into()
    }
}

impl utoipa::ToSchema for Label {}

/// The accepted format a label has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// A tracklet submission id of 1 to 7 characters.
    Trksub,
    /// A track id of 9 to 12 characters.
    Trkid,
    /// An 8-character label, which both tracklet formats allow.
    TrksubOrTrkid,
    /// A submission id followed by `_nn`.
    SubmissionBlockId,
    /// `YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx`.
    SubmissionId,
}

impl LabelKind {
    /// Every kind, so metrics can export each series from start-up.
    pub const ALL: [LabelKind; 5] = [
        LabelKind::Trksub,
        LabelKind::Trkid,
        LabelKind::TrksubOrTrkid,
        LabelKind::SubmissionBlockId,
        LabelKind::SubmissionId,
    ];

    /// The kind's name as it appears in responses and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            LabelKind::Trksub => "trksub",
            LabelKind::Trkid => "trkid",
            LabelKind::TrksubOrTrkid => "trksub_or_trkid",
            LabelKind::SubmissionBlockId => "submission_block_id",
            LabelKind::SubmissionId => "submission_id",
        }
    }
}

impl fmt::Display for LabelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a raw string is not a label; every `at` is a 0-based byte offset into the raw input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The raw input is over [`MAX_RAW_BYTES`] before trimming.
    #[error("label is {len} bytes long; at most {MAX_RAW_BYTES} bytes are accepted")]
    TooLong {
        /// Length of the raw input in bytes.
        len: usize,
    },
    /// Nothing is left after trimming whitespace.
    #[error("label is empty")]
    Empty,
    /// A character outside ASCII, which no format allows.
    #[error("character {ch:?} at byte {at} is not allowed: labels contain ASCII characters only{}", non_ascii_hint(*.ch))]
    NonAscii {
        /// The offending character.
        ch: char,
        /// Where it starts.
        at: usize,
    },
    /// Whitespace between other characters, which trimming does not remove.
    #[error(
        "whitespace {ch:?} at byte {at} is not allowed inside a label (only leading and trailing whitespace is removed)"
    )]
    InnerWhitespace {
        /// The offending whitespace character.
        ch: char,
        /// Where it is.
        at: usize,
    },
    /// An ASCII control character, which no format allows.
    #[error("control character {ch:?} at byte {at} is not allowed in a label")]
    ControlCharacter {
        /// The offending character.
        ch: char,
        /// Where it is.
        at: usize,
    },
    /// A character a trksub or trkid may not contain.
    #[error(
        "character {ch:?} at byte {at} is not allowed in a trksub or trkid, which contain only ASCII letters, digits, '-' and '_'"
    )]
    TrackletCharacter {
        /// The offending character.
        ch: char,
        /// Where it is.
        at: usize,
    },
    /// Longer than a tracklet label but not shaped like a submission id.
    #[error(
        "label has {len} characters, but a trksub or trkid has at most 12, and longer labels must be a submission id (YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx) or submission block id (YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx_nn)"
    )]
    TooLongForTracklet {
        /// Length of the trimmed label in characters.
        len: usize,
    },
    /// A character that does not fit the submission id format at its position.
    #[error(
        "character {ch:?} at byte {at} does not fit the submission id format YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx(_nn): expected {expected}"
    )]
    SubmissionIdCharacter {
        /// The offending character.
        ch: char,
        /// Where it is.
        at: usize,
        /// What the format requires there, in words.
        expected: &'static str,
    },
    /// Shaped like a submission id but neither 32 nor 35 characters long.
    #[error(
        "label has {len} characters, but a submission id (YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx) has 32 and a submission block id (YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx_nn) has 35"
    )]
    SubmissionIdLength {
        /// Length of the trimmed label in characters.
        len: usize,
    },
    /// The month is not 01-12.
    #[error("month {month:02} is not between 01 and 12")]
    MonthOutOfRange {
        /// The month as written.
        month: u8,
    },
    /// The day does not exist in that month of that year.
    #[error(
        "day {day:02} does not exist in month {month:02} of year {year:04}, which has {days_in_month} days"
    )]
    NoSuchDay {
        /// The year as written.
        year: u16,
        /// The month as written.
        month: u8,
        /// The day as written.
        day: u8,
        /// How many days that month has in that year.
        days_in_month: u8,
    },
    /// The hour is not 00-23.
    #[error("hour {hour:02} is not between 00 and 23")]
    HourOutOfRange {
        /// The hour as written.
        hour: u8,
    },
    /// The minute is not 00-59.
    #[error("minute {minute:02} is not between 00 and 59")]
    MinuteOutOfRange {
        /// The minute as written.
        minute: u8,
    },
    /// The second is not 00-60 (60 being a leap second).
    #[error("second {second:02} is not between 00 and 60")]
    SecondOutOfRange {
        /// The second as written.
        second: u8,
    },
}

/// Pasted text often carries non-breaking or full-width spaces that look trimmable.
fn non_ascii_hint(ch: char) -> &'static str {
    if ch.is_whitespace() {
        " (only ASCII whitespace around a label is removed)"
    } else {
        ""
    }
}

/// One accepted label format, for error responses and docs.
#[derive(Clone, Copy, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AcceptedFormat {
    /// The [`LabelKind`] name.
    pub kind: &'static str,
    /// The format's rule as the MPC documents it.
    pub pattern: &'static str,
    /// A label of this format.
    pub example: &'static str,
}

/// Every accepted format, as the MPC's Action Codes API reference lists them.
pub const ACCEPTED_FORMATS: [AcceptedFormat; 4] = [
    AcceptedFormat {
        kind: LabelKind::Trksub.as_str(),
        pattern: "^[-A-Za-z0-9_]{1,8}$",
        example: "A10cnQO",
    },
    AcceptedFormat {
        kind: LabelKind::Trkid.as_str(),
        pattern: "^[-A-Za-z0-9_]{8,12}$",
        example: "00000DwbEz",
    },
    AcceptedFormat {
        kind: LabelKind::SubmissionBlockId.as_str(),
        pattern: "YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx_nn",
        example: "2024-05-02T21:03:35.001_0000FzZw_01",
    },
    AcceptedFormat {
        kind: LabelKind::SubmissionId.as_str(),
        pattern: "YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx",
        example: "2024-05-02T21:03:35.001_0000FzZw",
    },
];

/// What one position of a submission (block) id must hold.
#[derive(Clone, Copy)]
enum Slot {
    Digit(&'static str),
    Byte(u8, &'static str),
    Identifier,
}

const YEAR: Slot = Slot::Digit("a digit 0-9 of the year (YYYY)");
const MONTH: Slot = Slot::Digit("a digit 0-9 of the month (MM)");
const DAY: Slot = Slot::Digit("a digit 0-9 of the day (DD)");
const HOUR: Slot = Slot::Digit("a digit 0-9 of the hour (HH)");
const MINUTE: Slot = Slot::Digit("a digit 0-9 of the minute (MM)");
const SECOND: Slot = Slot::Digit("a digit 0-9 of the second (SS)");
const MILLI: Slot = Slot::Digit("a digit 0-9 of the milliseconds (mmm)");
const BLOCK: Slot = Slot::Digit("a digit 0-9 of the block number (nn)");
const X: Slot = Slot::Identifier;

const IDENTIFIER_EXPECTED: &str =
    "an ASCII letter, digit or '_' of the 8-character identifier (xxxxxxxx)";

/// `YYYY-MM-DDTHH:MM:SS.mmm_xxxxxxxx_nn`, one slot per byte.
const SUBMISSION_TEMPLATE: [Slot; SUBMISSION_BLOCK_ID_LEN] = [
    YEAR,
    YEAR,
    YEAR,
    YEAR,
    Slot::Byte(b'-', "'-' between the year and the month"),
    MONTH,
    MONTH,
    Slot::Byte(b'-', "'-' between the month and the day"),
    DAY,
    DAY,
    Slot::Byte(b'T', "'T' between the date and the time"),
    HOUR,
    HOUR,
    Slot::Byte(b':', "':' between the hour and the minute"),
    MINUTE,
    MINUTE,
    Slot::Byte(b':', "':' between the minute and the second"),
    SECOND,
    SECOND,
    Slot::Byte(b'.', "'.' between the second and the milliseconds"),
    MILLI,
    MILLI,
    MILLI,
    Slot::Byte(b'_', "'_' between the milliseconds and the identifier"),
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    Slot::Byte(b'_', "'_' between the identifier and the block number"),
    BLOCK,
    BLOCK,
];

/// The trimmed label, with enough of the raw input to report characters and offsets.
struct Parser<'a> {
    raw: &'a str,
    /// Where the trimmed label starts in `raw`.
    start: usize,
    bytes: &'a [u8],
}

impl Parser<'_> {
    fn kind(&self) -> Result<LabelKind, LabelError> {
        let len = self.bytes.len();
        if len <= TRACKLET_MAX {
            return self.tracklet();
        }
        if self.looks_like_submission_id() {
            return self.submission_id();
        }
        match self.bytes.iter().position(|b| !b.is_ascii_graphic()) {
            Some(i) => Err(self.foreign(i)),
            None => Err(LabelError::TooLongForTracklet { len }),
        }
    }

    fn tracklet(&self) -> Result<LabelKind, LabelError> {
        if let Some(i) = self.bytes.iter().position(|&b| !is_tracklet_byte(b)) {
            return Err(if self.bytes[i].is_ascii_graphic() {
                LabelError::TrackletCharacter {
                    ch: char::from(self.bytes[i]),
                    at: self.start + i,
                }
            } else {
                self.foreign(i)
            });
        }
        Ok(match self.bytes.len() {
            ..=7 => LabelKind::Trksub,
            8 => LabelKind::TrksubOrTrkid,
            _ => LabelKind::Trkid,
        })
    }

    /// Over 12 characters, a leading year means the submission id format was
    /// meant, so its positional errors are the helpful ones; a plain run of
    /// tracklet characters (like `20240502T2103`) is more likely a tracklet typo.
    fn looks_like_submission_id(&self) -> bool {
        let b = self.bytes;
        b.len() > 4
            && b[..4].iter().all(u8::is_ascii_digit)
            && (b[4] == b'-' || !b.iter().all(|&c| is_tracklet_byte(c)))
    }

    fn submission_id(&self) -> Result<LabelKind, LabelError> {
        let b = self.bytes;
        for (i, (&byte, slot)) in b.iter().zip(SUBMISSION_TEMPLATE.iter()).enumerate() {
            let (fits, expected) = match *slot {
                Slot::Digit(expected) => (byte.is_ascii_digit(), expected),
                Slot::Byte(want, expected) => (byte == want, expected),
                Slot::Identifier => (
                    byte.is_ascii_alphanumeric() || byte == b'_',
                    IDENTIFIER_EXPECTED,
                ),
            };
            if !fits {
                // A space is usually a mistyped separator, so say which one.
                return Err(if byte.is_ascii_graphic() || byte == b' ' {
                    LabelError::SubmissionIdCharacter {
                        ch: char::from(byte),
                        at: self.start + i,
                        expected,
                    }
                } else {
                    self.foreign(i)
                });
            }
        }
        let kind = match b.len() {
            SUBMISSION_ID_LEN => LabelKind::SubmissionId,
            SUBMISSION_BLOCK_ID_LEN => LabelKind::SubmissionBlockId,
            len => {
                // Past the template, characters were not checked yet, and a
                // length counted in characters needs them all to be ASCII.
                let tail = b.iter().enumerate().skip(SUBMISSION_BLOCK_ID_LEN);
                if let Some((i, _)) = tail.clone().find(|&(_, c)| !c.is_ascii_graphic()) {
                    return Err(self.foreign(i));
                }
                return Err(LabelError::SubmissionIdLength { len });
            }
        };
        check_timestamp(b)?;
        Ok(kind)
    }

    /// The error for a byte no format allows anywhere: non-ASCII, whitespace or control.
    fn foreign(&self, i: usize) -> LabelError {
        let at = self.start + i;
        let byte = self.bytes[i];
        if !byte.is_ascii() {
            // Every byte before `i` is ASCII, so `at` starts a character.
            let ch = self
                .raw
                .get(at..)
                .and_then(|rest| rest.chars().next())
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            LabelError::NonAscii { ch, at }
        } else if byte.is_ascii_whitespace() {
            LabelError::InnerWhitespace {
                ch: char::from(byte),
                at,
            }
        } else {
            LabelError::ControlCharacter {
                ch: char::from(byte),
                at,
            }
        }
    }
}

/// The characters the MPC allows in a trksub or trkid.
fn is_tracklet_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Checks that a template-shaped submission id names a real date and time.
fn check_timestamp(b: &[u8]) -> Result<(), LabelError> {
    let year = u16::from(two_digits(b, 0)) * 100 + u16::from(two_digits(b, 2));
    let month = two_digits(b, 5);
    let day = two_digits(b, 8);
    let hour = two_digits(b, 11);
    let minute = two_digits(b, 14);
    let second = two_digits(b, 17);
    if !(1..=12).contains(&month) {
        return Err(LabelError::MonthOutOfRange { month });
    }
    let days_in_month = days_in_month(year, month);
    if day == 0 || day > days_in_month {
        return Err(LabelError::NoSuchDay {
            year,
            month,
            day,
            days_in_month,
        });
    }
    if hour > 23 {
        return Err(LabelError::HourOutOfRange { hour });
    }
    if minute > 59 {
        return Err(LabelError::MinuteOutOfRange { minute });
    }
    if second > 60 {
        return Err(LabelError::SecondOutOfRange { second });
    }
    Ok(())
}

/// Reads the two ASCII digits (already checked) at `at`.
fn two_digits(b: &[u8], at: usize) -> u8 {
    (b[at] - b'0') * 10 + (b[at + 1] - b'0')
}

/// Days in a month of the proleptic Gregorian calendar; `month` is 1-12.
fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> Label {
        match Label::parse(raw) {
            Ok(label) => label,
            Err(e) => panic!("{raw:?} should parse, got: {e}"),
        }
    }

    fn err(raw: &str) -> LabelError {
        match Label::parse(raw) {
            Ok(label) => panic!("{raw:?} should be invalid, parsed as {:?}", label.kind()),
            Err(e) => e,
        }
    }

    fn kind(raw: &str) -> LabelKind {
        ok(raw).kind()
    }

    /// A valid submission id with one two-digit field replaced.
    fn submission_with(at: usize, text: &str) -> String {
        let mut s = String::from("2024-05-02T21:03:35.001_0000FzZw");
        s.replace_range(at..at + text.len(), text);
        s
    }

    fn date(d: &str) -> String {
        format!("{d}T21:03:35.001_0000FzZw")
    }

    // --- the SPEC's examples and the accepted formats ---

    #[test]
    fn spec_examples_parse_to_their_kind() {
        assert_eq!(kind("A10cnQO"), LabelKind::Trksub);
        assert_eq!(kind("00000DwbEz"), LabelKind::Trkid);
        assert_eq!(
            kind("2024-05-02T21:03:35.001_0000FzZw_01"),
            LabelKind::SubmissionBlockId
        );
        assert_eq!(
            kind("2024-05-02T21:03:35.001_0000FzZw"),
            LabelKind::SubmissionId
        );
    }

    #[test]
    fn tutorial_examples_parse() {
        assert_eq!(kind("ABC12345"), LabelKind::TrksubOrTrkid);
        assert_eq!(kind("ABCD12345678"), LabelKind::Trkid);
        assert_eq!(
            kind("2024-01-15T10:30:00.123_ABCD1234_01"),
            LabelKind::SubmissionBlockId
        );
        assert_eq!(
            kind("2026-01-01T00:05:07.453_0000BhCE"),
            LabelKind::SubmissionId
        );
    }

    #[test]
    fn accepted_formats_examples_parse_to_their_kind() {
        let kinds: Vec<&str> = ACCEPTED_FORMATS.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            ["trksub", "trkid", "submission_block_id", "submission_id"]
        );
        for format in ACCEPTED_FORMATS {
            assert_eq!(kind(format.example).as_str(), format.kind, "{format:?}");
        }
    }

    #[test]
    fn kind_names() {
        let names: Vec<String> = LabelKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "trksub",
                "trkid",
                "trksub_or_trkid",
                "submission_block_id",
                "submission_id"
            ]
        );
        for k in LabelKind::ALL {
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::Value::from(k.as_str()))
            );
        }
    }

    #[test]
    fn label_serializes_and_displays_as_its_text() {
        let label = ok("  A10cnQO\n");
        assert_eq!(label.as_str(), "A10cnQO");
        assert_eq!(label.as_ref(), "A10cnQO");
        assert_eq!(label.to_string(), "A10cnQO");
        assert_eq!(
            serde_json::to_string(&label).ok().as_deref(),
            Some("\"A10cnQO\"")
        );
        let formats = serde_json::to_value(ACCEPTED_FORMATS).unwrap_or_default();
        assert_eq!(formats[0]["kind"], "trksub");
        assert_eq!(formats[0]["pattern"], "^[-A-Za-z0-9_]{1,8}$");
        assert_eq!(formats[3]["example"], "2024-05-02T21:03:35.001_0000FzZw");
    }

    // --- tracklet lengths ---

    #[test]
    fn tracklet_length_boundaries() {
        assert_eq!(kind("A"), LabelKind::Trksub);
        assert_eq!(kind("ABCDEFG"), LabelKind::Trksub);
        assert_eq!(kind("ABCDEFGH"), LabelKind::TrksubOrTrkid);
        assert_eq!(kind("ABCDEFGHI"), LabelKind::Trkid);
        assert_eq!(kind("ABCDEFGHIJKL"), LabelKind::Trkid);
        assert_eq!(
            err("ABCDEFGHIJKLM"),
            LabelError::TooLongForTracklet { len: 13 }
        );
        assert_eq!(
            err(&"a".repeat(31)),
            LabelError::TooLongForTracklet { len: 31 }
        );
        assert_eq!(
            err(&"a".repeat(32)),
            LabelError::TooLongForTracklet { len: 32 }
        );
        assert_eq!(
            err("1234567890123"),
            LabelError::TooLongForTracklet { len: 13 }
        );
    }

    #[test]
    fn tracklet_allows_every_class_it_should() {
        assert_eq!(kind("-"), LabelKind::Trksub);
        assert_eq!(kind("_"), LabelKind::Trksub);
        assert_eq!(kind("a-b_C9"), LabelKind::Trksub);
        assert_eq!(kind("azAZ09-_"), LabelKind::TrksubOrTrkid);
        // Date-like text of tracklet length is a tracklet, as the MPC's regex says.
        assert_eq!(kind("2024-05-02"), LabelKind::Trkid);
    }

    #[test]
    fn trimmed_inputs_are_the_same_label() {
        assert_eq!(ok(" A10cnQO\t"), ok("A10cnQO"));
        let set: std::collections::HashSet<Label> = ["A10cnQO", "\nA10cnQO", "A10cnQO  "]
            .into_iter()
            .map(ok)
            .collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn case_is_preserved() {
        assert_eq!(ok("aBcDeF").as_str(), "aBcDeF");
        assert_ne!(ok("abc"), ok("ABC"));
        assert_eq!(
            ok("2024-05-02T21:03:35.001_abcdEFGH").as_str(),
            "2024-05-02T21:03:35.001_abcdEFGH"
        );
    }

    #[test]
    fn tracklet_bad_characters_are_named() {
        for (raw, ch, at) in [
            ("AB.CD", '.', 2),
            ("AB:CD", ':', 2),
            ("A/", '/', 1),
            ("+A", '+', 0),
            ("AB@", '@', 2),
            ("A~B", '~', 1),
            ("A'B", '\'', 1),
            ("A\"B", '"', 1),
        ] {
            assert_eq!(
                err(raw),
                LabelError::TrackletCharacter { ch, at },
                "{raw:?}"
            );
        }
    }

    #[test]
    fn offsets_count_from_the_raw_input() {
        assert_eq!(
            err("  AB.CD"),
            LabelError::TrackletCharacter { ch: '.', at: 4 }
        );
    }

    // --- whitespace, control characters, non-ASCII ---

    #[test]
    fn ascii_whitespace_around_is_trimmed() {
        assert_eq!(ok("\t label \n").as_str(), "label");
        assert_eq!(ok(" \r\n\x0cA10cnQO\t\t").as_str(), "A10cnQO");
        assert_eq!(
            ok("  2024-05-02T21:03:35.001_0000FzZw_01\r\n").kind(),
            LabelKind::SubmissionBlockId
        );
    }

    #[test]
    fn empty_and_blank_are_invalid() {
        assert_eq!(err(""), LabelError::Empty);
        assert_eq!(err(" \t\r\n\x0c"), LabelError::Empty);
    }

    #[test]
    fn inner_whitespace_is_invalid() {
        assert_eq!(err("AB CD"), LabelError::InnerWhitespace { ch: ' ', at: 2 });
        assert_eq!(
            err("AB\tCD"),
            LabelError::InnerWhitespace { ch: '\t', at: 2 }
        );
        assert_eq!(
            err("hello world, this is long"),
            LabelError::InnerWhitespace { ch: ' ', at: 5 }
        );
    }

    #[test]
    fn control_characters_are_invalid_and_visible() {
        let e = err("AB\u{7}CD");
        assert_eq!(e, LabelError::ControlCharacter { ch: '\u{7}', at: 2 });
        assert!(e.to_string().contains(r"'\u{7}'"), "{e}");
        assert_eq!(
            err("\u{0}"),
            LabelError::ControlCharacter { ch: '\0', at: 0 }
        );
        assert_eq!(
            err("AB\u{7f}"),
            LabelError::ControlCharacter {
                ch: '\u{7f}',
                at: 2
            }
        );
        // Vertical tab is not ASCII whitespace to Rust, so it is not trimmed.
        assert_eq!(
            err("\x0bAB"),
            LabelError::ControlCharacter { ch: '\x0b', at: 0 }
        );
    }

    #[test]
    fn non_ascii_is_invalid() {
        assert_eq!(err("caf\u{e9}"), LabelError::NonAscii { ch: 'é', at: 3 });
        // Arabic-Indic and fullwidth digits are digits to Unicode, not to the MPC.
        assert_eq!(err("AB\u{663}"), LabelError::NonAscii { ch: '٣', at: 2 });
        assert_eq!(
            err("\u{ff11}\u{ff12}"),
            LabelError::NonAscii { ch: '１', at: 0 }
        );
        assert_eq!(
            err(&date("\u{ff12}024-05-02")),
            LabelError::NonAscii { ch: '２', at: 0 }
        );
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000F\u{e9}Zw"),
            LabelError::NonAscii { ch: 'é', at: 29 }
        );
        assert_eq!(
            err("ABCDEFGHIJKLM\u{e9}"),
            LabelError::NonAscii { ch: 'é', at: 13 }
        );
    }

    #[test]
    fn non_ascii_whitespace_is_not_trimmed() {
        let e = err("\u{a0}A10cnQO");
        assert_eq!(
            e,
            LabelError::NonAscii {
                ch: '\u{a0}',
                at: 0
            }
        );
        assert!(e.to_string().contains("only ASCII whitespace"), "{e}");
        assert_eq!(
            err("A10cnQO\u{3000}"),
            LabelError::NonAscii {
                ch: '\u{3000}',
                at: 7
            }
        );
        assert_eq!(
            err("\u{feff}A10cnQO"),
            LabelError::NonAscii {
                ch: '\u{feff}',
                at: 0
            }
        );
    }

    // --- raw length ---

    #[test]
    fn raw_length_limit_counts_whitespace() {
        let at_limit = format!("{}{}", " ".repeat(MAX_RAW_BYTES - 7), "A10cnQO");
        assert_eq!(at_limit.len(), 64);
        assert_eq!(ok(&at_limit).as_str(), "A10cnQO");
        let over = format!("{at_limit}\n");
        assert_eq!(over.len(), 65);
        assert_eq!(err(&over), LabelError::TooLong { len: 65 });
        let id = "2024-05-02T21:03:35.001_0000FzZw_01";
        let padded = format!("{id}{}", " ".repeat(64 - id.len()));
        assert_eq!(kind(&padded), LabelKind::SubmissionBlockId);
        assert_eq!(err(&format!("{padded}\t")), LabelError::TooLong { len: 65 });
        assert_eq!(err(&"é".repeat(33)), LabelError::TooLong { len: 66 });
        assert_eq!(
            err(&"A".repeat(64)),
            LabelError::TooLongForTracklet { len: 64 }
        );
    }

    // --- calendar ---

    #[test]
    fn leap_years() {
        assert_eq!(kind(&date("2024-02-29")), LabelKind::SubmissionId);
        assert_eq!(kind(&date("2000-02-29")), LabelKind::SubmissionId);
        assert_eq!(kind(&date("0000-02-29")), LabelKind::SubmissionId);
        assert_eq!(
            err(&date("2023-02-29")),
            LabelError::NoSuchDay {
                year: 2023,
                month: 2,
                day: 29,
                days_in_month: 28
            }
        );
        assert_eq!(
            err(&date("1900-02-29")),
            LabelError::NoSuchDay {
                year: 1900,
                month: 2,
                day: 29,
                days_in_month: 28
            }
        );
        assert!(matches!(
            err(&date("2024-02-30")),
            LabelError::NoSuchDay { day: 30, .. }
        ));
    }

    #[test]
    fn days_per_month() {
        for month in ["04", "06", "09", "11"] {
            assert_eq!(
                kind(&date(&format!("2024-{month}-30"))),
                LabelKind::SubmissionId
            );
            assert!(matches!(
                err(&date(&format!("2024-{month}-31"))),
                LabelError::NoSuchDay {
                    day: 31,
                    days_in_month: 30,
                    ..
                }
            ));
        }
        for month in ["01", "03", "05", "07", "08", "10", "12"] {
            assert_eq!(
                kind(&date(&format!("2024-{month}-31"))),
                LabelKind::SubmissionId
            );
        }
        assert!(matches!(
            err(&date("2024-01-32")),
            LabelError::NoSuchDay { day: 32, .. }
        ));
        assert!(matches!(
            err(&date("2024-05-00")),
            LabelError::NoSuchDay { day: 0, .. }
        ));
    }

    #[test]
    fn year_range_is_any_four_digits() {
        assert_eq!(kind(&date("0000-01-01")), LabelKind::SubmissionId);
        assert_eq!(kind(&date("9999-12-31")), LabelKind::SubmissionId);
    }

    #[test]
    fn month_range() {
        assert_eq!(
            err(&date("2024-00-01")),
            LabelError::MonthOutOfRange { month: 0 }
        );
        assert_eq!(
            err(&date("2024-13-01")),
            LabelError::MonthOutOfRange { month: 13 }
        );
        assert_eq!(
            err(&date("2024-99-99")),
            LabelError::MonthOutOfRange { month: 99 }
        );
    }

    #[test]
    fn time_ranges() {
        assert_eq!(kind(&submission_with(11, "23")), LabelKind::SubmissionId);
        assert_eq!(
            err(&submission_with(11, "24")),
            LabelError::HourOutOfRange { hour: 24 }
        );
        assert_eq!(kind(&submission_with(14, "59")), LabelKind::SubmissionId);
        assert_eq!(
            err(&submission_with(14, "60")),
            LabelError::MinuteOutOfRange { minute: 60 }
        );
        assert_eq!(kind(&submission_with(17, "59")), LabelKind::SubmissionId);
        assert_eq!(kind(&submission_with(17, "60")), LabelKind::SubmissionId);
        assert_eq!(
            err(&submission_with(17, "61")),
            LabelError::SecondOutOfRange { second: 61 }
        );
        assert_eq!(kind(&submission_with(11, "00")), LabelKind::SubmissionId);
        assert_eq!(kind(&submission_with(20, "999")), LabelKind::SubmissionId);
        // A leap second is accepted on any date, as the MPC's own regex does.
        assert_eq!(
            kind("2023-02-28T23:59:60.000_0000FzZw_00"),
            LabelKind::SubmissionBlockId
        );
    }

    #[test]
    fn error_messages_read_as_sentences() {
        assert_eq!(
            err(&date("2024-13-01")).to_string(),
            "month 13 is not between 01 and 12"
        );
        assert_eq!(
            err(&date("2023-02-29")).to_string(),
            "day 29 does not exist in month 02 of year 2023, which has 28 days"
        );
        assert_eq!(
            err(&submission_with(11, "24")).to_string(),
            "hour 24 is not between 00 and 23"
        );
        assert_eq!(
            err(&submission_with(17, "61")).to_string(),
            "second 61 is not between 00 and 60"
        );
        assert_eq!(
            err("AB CD").to_string(),
            "whitespace ' ' at byte 2 is not allowed inside a label (only leading and trailing whitespace is removed)"
        );
        assert_eq!(
            err("caf\u{e9}").to_string(),
            "character 'é' at byte 3 is not allowed: labels contain ASCII characters only"
        );
        assert_eq!(
            err("AB.CD").to_string(),
            "character '.' at byte 2 is not allowed in a trksub or trkid, which contain only ASCII letters, digits, '-' and '_'"
        );
        assert!(
            err("ABCDEFGHIJKLM")
                .to_string()
                .contains("a trksub or trkid has at most 12")
        );
        assert_eq!(
            err(&"x".repeat(65)).to_string(),
            "label is 65 bytes long; at most 64 bytes are accepted"
        );
        assert_eq!(err("  ").to_string(), "label is empty");
    }

    // --- submission id shape ---

    #[test]
    fn wrong_separators_are_named() {
        for (raw, ch, at, needle) in [
            (
                "2024/05-02T21:03:35.001_0000FzZw",
                '/',
                4,
                "'-' between the year",
            ),
            (
                "2024-05/02T21:03:35.001_0000FzZw",
                '/',
                7,
                "'-' between the month",
            ),
            ("2024-05-02 21:03:35.001_0000FzZw", ' ', 10, "'T'"),
            ("2024-05-02t21:03:35.001_0000FzZw", 't', 10, "'T'"),
            (
                "2024-05-02T21-03:35.001_0000FzZw",
                '-',
                13,
                "':' between the hour",
            ),
            (
                "2024-05-02T21:03.35.001_0000FzZw",
                '.',
                16,
                "':' between the minute",
            ),
            ("2024-05-02T21:03:35,001_0000FzZw", ',', 19, "'.'"),
            (
                "2024-05-02T21:03:35.001-0000FzZw",
                '-',
                23,
                "'_' between the milliseconds",
            ),
            (
                "2024-05-02T21:03:35.001_0000FzZw-01",
                '-',
                32,
                "'_' between the identifier",
            ),
        ] {
            match err(raw) {
                LabelError::SubmissionIdCharacter {
                    ch: c,
                    at: a,
                    expected,
                } => {
                    assert_eq!((c, a), (ch, at), "{raw:?}");
                    assert!(expected.contains(needle), "{raw:?}: {expected}");
                }
                other => panic!("{raw:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_digits_in_numbers_are_named() {
        assert!(matches!(
            err("2024-O5-02T21:03:35.001_0000FzZw"),
            LabelError::SubmissionIdCharacter { ch: 'O', at: 5, expected } if expected.contains("month")
        ));
        assert!(matches!(
            err("2024-05-02T21:03:35.0a1_0000FzZw"),
            LabelError::SubmissionIdCharacter { ch: 'a', at: 21, expected } if expected.contains("milliseconds")
        ));
        assert!(matches!(
            err("2024-05-02T21:03:35.001_0000FzZw_0a"),
            LabelError::SubmissionIdCharacter { ch: 'a', at: 34, expected } if expected.contains("block number")
        ));
        assert!(matches!(
            err("2024-05-02T21:03:35.001_0000FzZw_\u{663}1"),
            LabelError::NonAscii { ch: '٣', at: 33 }
        ));
    }

    #[test]
    fn identifier_allows_letters_digits_underscore_only() {
        assert_eq!(
            kind("2024-05-02T21:03:35.001_ab_CD_09"),
            LabelKind::SubmissionId
        );
        assert_eq!(
            kind(&format!("2024-05-02T21:03:35.001_{}", "_".repeat(8))),
            LabelKind::SubmissionId
        );
        assert!(matches!(
            err("2024-05-02T21:03:35.001_0000-zZw"),
            LabelError::SubmissionIdCharacter { ch: '-', at: 28, expected } if expected.contains("identifier")
        ));
        assert!(matches!(
            err("2024-05-02T21:03:35.001_0000.zZw"),
            LabelError::SubmissionIdCharacter {
                ch: '.',
                at: 28,
                ..
            }
        ));
    }

    #[test]
    fn submission_block_number_must_have_two_digits() {
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZw_1"),
            LabelError::SubmissionIdLength { len: 34 }
        );
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZw_001"),
            LabelError::SubmissionIdLength { len: 36 }
        );
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZw_"),
            LabelError::SubmissionIdLength { len: 33 }
        );
        assert_eq!(
            kind("2024-05-02T21:03:35.001_0000FzZw_00"),
            LabelKind::SubmissionBlockId
        );
        assert_eq!(
            kind("2024-05-02T21:03:35.001_0000FzZw_99"),
            LabelKind::SubmissionBlockId
        );
    }

    #[test]
    fn truncated_or_extended_submission_ids() {
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZ"),
            LabelError::SubmissionIdLength { len: 31 }
        );
        assert_eq!(
            err("2024-05-02T21"),
            LabelError::SubmissionIdLength { len: 13 }
        );
        assert!(matches!(
            err("2024-05-02_21"),
            LabelError::SubmissionIdCharacter {
                ch: '_',
                at: 10,
                ..
            }
        ));
        assert!(matches!(
            err("2024-05-02T21:03:35_0000FzZw"),
            LabelError::SubmissionIdCharacter {
                ch: '_',
                at: 19,
                ..
            }
        ));
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZw_01\u{e9}"),
            LabelError::NonAscii { ch: 'é', at: 35 }
        );
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZw_01 x"),
            LabelError::InnerWhitespace { ch: ' ', at: 35 }
        );
        assert_eq!(
            err("2024-05-02T21:03:35.001_0000FzZw_01.x"),
            LabelError::SubmissionIdLength { len: 37 }
        );
    }

    #[test]
    fn shape_errors_come_before_calendar_errors() {
        // The shape is reported first: it is what the user must fix first.
        assert!(matches!(
            err("2024-13-32T25:61:61.001_0000-zZw"),
            LabelError::SubmissionIdCharacter { at: 28, .. }
        ));
        assert_eq!(
            err("2024-13-32T25:61:61.001_0000FzZw_1"),
            LabelError::SubmissionIdLength { len: 34 }
        );
    }

    #[test]
    fn long_labels_that_are_not_submission_ids() {
        assert_eq!(
            err("ABC.DEF.GHI.JKL"),
            LabelError::TooLongForTracklet { len: 15 }
        );
        assert_eq!(
            err("20240502T210335"),
            LabelError::TooLongForTracklet { len: 15 }
        );
        assert!(matches!(
            err("2024/05/02T21:03:35.001_0000FzZw"),
            LabelError::SubmissionIdCharacter { ch: '/', at: 4, .. }
        ));
    }

    #[test]
    fn days_in_month_table() {
        let common: Vec<u8> = (1..=12).map(|m| days_in_month(2023, m)).collect();
        assert_eq!(common, [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2400, 2), 29);
        assert_eq!(days_in_month(0, 2), 29);
    }

    // --- properties ---

    fn is_leap(year: u16) -> bool {
        year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
    }

    fn timestamp() -> impl Strategy<Value = String> {
        (0u16..=9999, 1u8..=12)
            .prop_flat_map(|(year, month)| {
                (
                    Just(year),
                    Just(month),
                    1..=days_in_month(year, month),
                    0u8..24,
                    0u8..60,
                    0u8..=60,
                    0u16..1000,
                )
            })
            .prop_map(|(y, mo, d, h, mi, s, ms)| {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}")
            })
    }

    /// Leap days and leap seconds, which a uniform date rarely hits.
    fn edge_timestamp() -> impl Strategy<Value = String> {
        (0u16..2500, 0u8..24, 0u8..60, 0u16..1000).prop_map(|(q, h, mi, ms)| {
            // Centuries not divisible by 400 are not leap years; the next multiple of 4 is.
            let year = if is_leap(q * 4) { q * 4 } else { q * 4 + 4 };
            format!("{year:04}-02-29T{h:02}:{mi:02}:60.{ms:03}")
        })
    }

    fn any_timestamp() -> impl Strategy<Value = String> {
        prop_oneof![4 => timestamp(), 1 => edge_timestamp()]
    }

    fn submission_id() -> impl Strategy<Value = String> {
        (any_timestamp(), "[A-Za-z0-9_]{8}").prop_map(|(t, x)| format!("{t}_{x}"))
    }

    fn submission_block_id() -> impl Strategy<Value = String> {
        (submission_id(), 0u8..100).prop_map(|(s, n)| format!("{s}_{n:02}"))
    }

    fn valid_label() -> impl Strategy<Value = (String, LabelKind)> {
        prop_oneof![
            "[-A-Za-z0-9_]{1,7}".prop_map(|s| (s, LabelKind::Trksub)),
            "[-A-Za-z0-9_]{8}".prop_map(|s| (s, LabelKind::TrksubOrTrkid)),
            "[-A-Za-z0-9_]{9,12}".prop_map(|s| (s, LabelKind::Trkid)),
            submission_id().prop_map(|s| (s, LabelKind::SubmissionId)),
            submission_block_id().prop_map(|s| (s, LabelKind::SubmissionBlockId)),
        ]
    }

    /// Characters that look like label material, including the look-alikes.
    const MIXED: &str = "[-A-Za-z0-9_:.T \t\n\r\u{b}\u{7}\u{0}\u{7f}é٣０１\u{a0}\u{200b}/,+Ω漢🚀]";

    fn mixed_string() -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("{MIXED}{{0,70}}"))
            .unwrap_or_else(|e| panic!("bad strategy regex: {e}"))
    }

    /// A valid label with one position overwritten by an arbitrary mixed character.
    fn mutated_label() -> impl Strategy<Value = String> {
        (
            valid_label(),
            any::<prop::sample::Index>(),
            proptest::string::string_regex(MIXED)
                .unwrap_or_else(|e| panic!("bad strategy regex: {e}")),
        )
            .prop_map(|((label, _), index, ch)| {
                let at = index.index(label.len());
                let mut s = label;
                s.replace_range(at..=at, &ch);
                s
            })
    }

    fn is_trim_space(c: char) -> bool {
        c.is_ascii_whitespace()
    }

    /// Characters no label contains anywhere.
    fn never_valid_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                ' ', '\t', '\n', '\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '!', '"', '#', '$', '%',
                '&', '\'', '(', ')', '*', '+', ',', '/', ';', '<', '=', '>', '?', '@', '[', '\\',
                ']', '^', '`', '{', '|', '}', '~', 'é', '٣', '０', '\u{a0}', '\u{200b}',
                '\u{3000}', '漢', '🚀',
            ]),
            any::<char>().prop_filter("non-ASCII", |c| !c.is_ascii()),
        ]
    }

    fn check_round_trip(s: &str) -> Result<(), TestCaseError> {
        if let Ok(label) = Label::parse(s) {
            prop_assert_eq!(label.as_str(), s.trim_matches(is_trim_space));
            prop_assert_eq!(Label::parse(label.as_str()), Ok(label));
        }
        Ok(())
    }

    fn check_error_is_terse(s: &str) -> Result<(), TestCaseError> {
        if let Err(e) = Label::parse(s) {
            let message = e.to_string();
            prop_assert!(!message.is_empty());
            // A message quotes at most one character of the input, never the input.
            prop_assert!(message.len() <= 300, "{}", message);
            let trimmed = s.trim_matches(is_trim_space);
            if trimmed.chars().count() >= 8 {
                prop_assert!(!message.contains(trimmed), "{}", message);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_any_string(s in any::<String>()) {
            let _ = Label::parse(&s);
            check_round_trip(&s)?;
            check_error_is_terse(&s)?;
        }

        #[test]
        fn never_panics_on_label_ish_strings(s in mixed_string()) {
            let _ = Label::parse(&s);
            check_round_trip(&s)?;
            check_error_is_terse(&s)?;
        }

        #[test]
        fn never_panics_on_mutated_labels(s in mutated_label()) {
            check_round_trip(&s)?;
            check_error_is_terse(&s)?;
        }

        #[test]
        fn valid_labels_parse_to_their_kind((s, kind) in valid_label()) {
            let label = Label::parse(&s);
            prop_assert_eq!(label.as_ref().map(Label::kind), Ok(kind), "{:?}", s);
            prop_assert_eq!(label.as_ref().map(Label::as_str), Ok(s.as_str()));
        }

        #[test]
        fn leap_days_follow_the_gregorian_rule(year in 0u16..=9999, x in "[A-Za-z0-9_]{8}") {
            let s = format!("{year:04}-02-29T00:00:00.000_{x}");
            prop_assert_eq!(Label::parse(&s).is_ok(), is_leap(year), "{}", s);
        }

        #[test]
        fn padded_labels_round_trip(
            (s, kind) in valid_label(),
            before in "[ \t\r\n\u{c}]{0,6}",
            after in "[ \t\r\n\u{c}]{0,6}",
        ) {
            let raw = format!("{before}{s}{after}");
            let label = Label::parse(&raw);
            prop_assert_eq!(label.as_ref().map(Label::kind), Ok(kind));
            prop_assert_eq!(label.as_ref().map(Label::as_str), Ok(s.as_str()));
            check_round_trip(&raw)?;
        }

        #[test]
        fn injected_invalid_character_never_parses(
            (s, _) in valid_label(),
            ch in never_valid_char(),
            index in any::<prop::sample::Index>(),
            replace in any::<bool>(),
        ) {
            let at = index.index(s.len() + 1);
            let mut raw = s.clone();
            if replace && at < s.len() {
                raw.replace_range(at..=at, ch.encode_utf8(&mut [0; 4]));
            } else {
                raw.insert(at, ch);
            }
            // ASCII whitespace at either end is trimmed, so it injects nothing.
            let trimmed_away = ch.is_ascii_whitespace()
                && (raw.starts_with(ch) || raw.ends_with(ch));
            prop_assume!(!trimmed_away);
            prop_assert!(Label::parse(&raw).is_err(), "{:?} parsed", raw);
        }
    }
}

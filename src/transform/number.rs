//! Numbers exactly as the API sent them.
//!
//! Receives a JSON number's text (serde_json keeps it, with its `arbitrary_precision` feature)
//! or a number written as text in a custom attribute; emits the cell that holds it without
//! changing it, and the decimal a `number` attribute's column stores. Invariant: no function
//! here rounds. A value that a type cannot hold exactly is refused (`None`), and the caller
//! keeps it as text.
//!
//! Decimals are `i128` units of 10^-`SCALE`, as Arrow's `Decimal128(PRECISION, SCALE)` stores
//! them: 20 digits before the point (every i64 and u64), 18 after it.

use std::fmt::Write as _;

use super::CellRef;

/// Total digits of a `number` attribute's column.
pub const PRECISION: u8 = 38;
/// Digits after the point of a `number` attribute's column.
pub const SCALE: i8 = 18;

/// The cell for a JSON number's text: an `Int` when i64 holds it, a `Float` when the f64
/// nearest to it prints back as the same number (its shortest form equals it), and otherwise
/// the text itself (`Json`), which no column type rounds.
pub fn number_cell(text: &str) -> CellRef<'_> {
    if !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        if let Ok(int) = text.parse::<i64>() {
            return CellRef::Int(int);
        }
        return CellRef::Json(text);
    }
    match text.parse::<f64>() {
        Ok(float) if float.is_finite() && float_is_exact(float, text) => CellRef::Float(float),
        _ => CellRef::Json(text),
    }
}

/// Whether `float`'s shortest representation is numerically `text` (so writing the float
/// loses nothing the API sent: `0.1` and `1.50` yes, `9007199254740993.0` no).
fn float_is_exact(float: f64, text: &str) -> bool {
    let Some(digits) = Digits::parse(text) else {
        return false;
    };
    if digits.surely_survives_f64() {
        return true;
    }
    let mut shortest = String::with_capacity(32);
    // `{:e}` prints the shortest digits that read back as the same f64.
    let _ = write!(shortest, "{float:e}");
    Digits::parse(&shortest).is_some_and(|shortest| digits.same_value(&shortest))
}

/// A decimal number's text taken apart: sign, significant digits (no leading or trailing
/// zeros) and where the point goes: value = 0.`digits` x 10^`point`. Taken apart in one pass
/// over the bytes and without allocating: this runs for every value of a `number` column,
/// twice (typing the column, then building its batch), and for every JSON number with a point.
#[derive(Debug)]
struct Digits<'a> {
    negative: bool,
    /// The significant digits as they appear in the text: from the first non-zero digit to the
    /// last one, with the point between them if it is there (empty for zero).
    significant: &'a [u8],
    /// How many digits `significant` holds.
    count: i64,
    point: i64,
}

impl<'a> Digits<'a> {
    /// Parses `[+-]digits[.digits][(e|E)[+-]digits]` (at least one mantissa digit; `5.` and
    /// `.5` as spreadsheets write them); `None` for anything else.
    fn parse(text: &'a str) -> Option<Self> {
        let bytes = text.as_bytes();
        let (negative, start) = match bytes.first()? {
            b'-' => (true, 1),
            b'+' => (false, 1),
            _ => (false, 0),
        };
        let mut at = start;
        let mut dot = None;
        let mut digit_count = 0i64;
        // Byte offsets of the first and last non-zero digits, and the digits before the first.
        let mut first = None;
        let mut last = 0;
        let mut leading = 0i64;
        let mut last_index = 0i64;
        while at < bytes.len() {
            match bytes[at] {
                b'0' => {
                    digit_count += 1;
                    if first.is_none() {
                        leading += 1;
                    }
                }
                b'1'..=b'9' => {
                    first.get_or_insert(at);
                    last = at;
                    last_index = digit_count;
                    digit_count += 1;
                }
                b'.' if dot.is_none() => dot = Some(digit_count),
                b'e' | b'E' => break,
                _ => return None,
            }
            at += 1;
        }
        if digit_count == 0 {
            return None;
        }
        let exponent: i64 = if at < bytes.len() {
            let e = &bytes[at + 1..];
            let (minus, digits) = match e.first() {
                Some(b'-') => (true, &e[1..]),
                Some(b'+') => (false, &e[1..]),
                _ => (false, e),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Saturate: beyond ±10^15 nothing fits anyway, and zero stays zero.
            let mut magnitude: i64 = 0;
            for &d in digits {
                magnitude = (magnitude * 10 + i64::from(d - b'0')).min(1 << 50);
            }
            if minus { -magnitude } else { magnitude }
        } else {
            0
        };
        let integer_digits = dot.unwrap_or(digit_count);
        let (significant, count) = match first {
            None => (&bytes[0..0], 0),
            Some(first) => (&bytes[first..=last], last_index - leading + 1),
        };
        Some(Self {
            negative,
            significant,
            count,
            // Leading zeros move the point; trailing zeros change nothing.
            point: integer_digits + exponent - leading,
        })
    }

    /// The significant digits, in order.
    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.significant
            .iter()
            .filter(|b| b.is_ascii_digit())
            .map(|b| b - b'0')
    }

    fn is_zero(&self) -> bool {
        self.count == 0
    }

    fn same_value(&self, other: &Digits<'_>) -> bool {
        match (self.is_zero(), other.is_zero()) {
            (true, true) => true,
            (false, false) => {
                self.negative == other.negative
                    && self.point == other.point
                    && self.count == other.count
                    && self.digits().eq(other.digits())
            }
            _ => false,
        }
    }

    /// Whether the f64 nearest to this number surely prints back as it, decided without
    /// printing: a decimal of at most 15 significant digits (f64's `DIGITS`) in the normal
    /// range comes back from decimal -> f64 -> 15 digits, and the f64's shortest form, which
    /// has no more digits than it, comes back the same way, so the two are equal. `false`: the
    /// digits must be compared.
    fn surely_survives_f64(&self) -> bool {
        self.is_zero()
            || (self.count <= i64::from(f64::DIGITS) && (-290..=290).contains(&self.point))
    }

    /// The value in units of 10^-SCALE, if `Decimal128(PRECISION, SCALE)` holds it exactly.
    fn to_decimal(&self) -> Option<i128> {
        if self.is_zero() {
            return Some(0);
        }
        // Digits before the point: `point`; the last significant digit's place after it.
        let fraction_digits = self.count - self.point;
        if fraction_digits > i64::from(SCALE) {
            return None;
        }
        let integer_digits = self.point.max(0);
        if integer_digits > i64::from(PRECISION - SCALE as u8) {
            return None;
        }
        let mut units: i128 = 0;
        for digit in self.digits() {
            units = units * 10 + i128::from(digit);
        }
        // Scale up to SCALE digits after the point; at most 38 digits in all, as checked.
        let shift = (i64::from(SCALE) - fraction_digits) as u32;
        units *= 10i128.pow(shift);
        Some(if self.negative { -units } else { units })
    }
}

/// The decimal (units of 10^-SCALE) for number text: `Some(None)` for blank text (null), the
/// value when `Decimal128(38, 18)` holds it exactly (`"1234.50"`, `" 7 "`, `"1e3"`), `None`
/// for anything else (`"1,234"`, `"NaN"`, `"12 USD"`, 21 digits before the point, 19 after
/// it), which makes the column text rather than round the value.
pub fn decimal_in_text(text: &str) -> Option<Option<i128>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(None);
    }
    Digits::parse(text)?.to_decimal().map(Some)
}

/// The decimal a cell holds in a `number` attribute's column, if it holds one exactly (blank
/// text is `Some(None)`, null).
pub fn decimal_of_cell(cell: CellRef<'_>) -> Option<Option<i128>> {
    match cell {
        CellRef::Int(int) => Some(Some(i128::from(int) * 10i128.pow(SCALE as u32))),
        CellRef::Float(float) => {
            let mut shortest = String::with_capacity(32);
            let _ = write!(shortest, "{float:e}");
            decimal_in_text(&shortest).filter(Option::is_some)
        }
        CellRef::Str(text) => decimal_in_text(text),
        // A number kept as its text (beyond i64, or digits no f64 holds); never blank.
        CellRef::Json(text) => decimal_in_text(text).filter(Option::is_some),
        CellRef::Bool(_) => None,
    }
}

/// Writes a decimal (units of 10^-SCALE) with the digits it has: no padding zeros after the
/// point, and no point for a whole number (`1234.5`, `9007199254740993`, `-0.000001`).
pub fn write_decimal(units: i128, out: &mut String) {
    let scale = 10u128.pow(SCALE as u32);
    let magnitude = units.unsigned_abs();
    if units < 0 {
        out.push('-');
    }
    // Printed as u64 where they fit (the fraction always does): u128 printing is slower, and
    // the CSV and NDJSON sinks print every value of a `number` column.
    let whole = magnitude / scale;
    let _ = match u64::try_from(whole) {
        Ok(whole) => write!(out, "{whole}"),
        Err(_) => write!(out, "{whole}"),
    };
    let fraction = (magnitude % scale) as u64;
    if fraction != 0 {
        let start = out.len();
        let _ = write!(out, ".{fraction:0width$}", width = SCALE as usize);
        let trimmed = out[start..].trim_end_matches('0').len();
        out.truncate(start + trimmed);
    }
}

/// `write_decimal` into a new string.
pub fn decimal_text(units: i128) -> String {
    let mut out = String::new();
    write_decimal(units, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_text_becomes_the_cell_that_holds_it_exactly() {
        for (text, want) in [
            ("0", CellRef::Int(0)),
            ("-0", CellRef::Int(0)),
            ("9007199254740993", CellRef::Int(9_007_199_254_740_993)),
            ("-9223372036854775808", CellRef::Int(i64::MIN)),
            ("9223372036854775808", CellRef::Json("9223372036854775808")),
            (
                "123456789012345678901234",
                CellRef::Json("123456789012345678901234"),
            ),
            ("0.1", CellRef::Float(0.1)),
            ("1.50", CellRef::Float(1.5)),
            ("1e3", CellRef::Float(1000.0)),
            ("-2.5E-3", CellRef::Float(-0.0025)),
            ("1234.5678901234", CellRef::Float(1234.5678901234)),
            ("9007199254740993.0", CellRef::Json("9007199254740993.0")),
            ("0.30000000000000001", CellRef::Json("0.30000000000000001")),
            ("1e400", CellRef::Json("1e400")),
            ("1.0", CellRef::Float(1.0)),
        ] {
            assert_eq!(number_cell(text), want, "{text}");
        }
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        let units = |whole: i128| whole * 10i128.pow(18);
        for (text, want) in [
            ("1234.50", Some(Some(units(123_450) / 100))),
            (" 7 ", Some(Some(units(7)))),
            ("  ", Some(None)),
            ("-0.000000000000000001", Some(Some(-1))),
            ("1e3", Some(Some(units(1000)))),
            ("+1.5e-1", Some(Some(units(15) / 100))),
            ("0e999999999999", Some(Some(0))),
            ("5.", Some(Some(units(5)))),
            (".5", Some(Some(units(5) / 10))),
            (
                "123456789012345678",
                Some(Some(units(123_456_789_012_345_678))),
            ),
            (
                "-99999999999999999999.999999999999999999",
                Some(Some(-(10i128.pow(38) - 1))),
            ),
            ("100000000000000000000", None),
            ("0.0000000000000000001", None),
            ("1.00000000000000000000000", Some(Some(units(1)))),
            ("1,234", None),
            ("NaN", None),
            ("inf", None),
            ("12 USD", None),
            ("0x10", None),
            ("--1", None),
            ("1e", None),
            (".", None),
            ("1e99999999999999999999999", None),
        ] {
            assert_eq!(decimal_in_text(text), want, "{text}");
        }
    }

    #[test]
    fn decimals_print_the_digits_they_have() {
        for (text, printed) in [
            ("1234.50", "1234.5"),
            ("9007199254740993", "9007199254740993"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("0.1", "0.1"),
            ("-0.000001", "-0.000001"),
            ("0", "0"),
            ("1e3", "1000"),
            (
                "99999999999999999999.999999999999999999",
                "99999999999999999999.999999999999999999",
            ),
        ] {
            let units = decimal_in_text(text).flatten().expect(text);
            assert_eq!(decimal_text(units), printed, "{text}");
        }
    }

    #[test]
    fn cells_convert_to_decimals_without_rounding() {
        assert_eq!(
            decimal_of_cell(CellRef::Int(i64::MIN)),
            Some(Some(i128::from(i64::MIN) * 10i128.pow(18)))
        );
        assert_eq!(
            decimal_of_cell(CellRef::Float(0.1)),
            Some(Some(10i128.pow(17)))
        );
        assert_eq!(
            decimal_of_cell(CellRef::Json("18446744073709551615")),
            Some(Some(18_446_744_073_709_551_615 * 10i128.pow(18)))
        );
        assert_eq!(decimal_of_cell(CellRef::Json("{\"a\":1}")), None);
        assert_eq!(decimal_of_cell(CellRef::Float(1e25)), None);
        assert_eq!(decimal_of_cell(CellRef::Bool(true)), None);
    }

    /// The shortcut in `float_is_exact` (15 significant digits, normal range) never says exact
    /// where printing the f64 and comparing digits would not.
    #[test]
    fn the_shortcut_agrees_with_printing() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let mut runner = TestRunner::new(Config::with_cases(20_000));
        let texts = (
            1u64..1_000_000_000_000_000,
            0usize..19,
            -300i32..300,
            any::<bool>(),
        )
            .prop_map(|(mantissa, point_at, exponent, negative)| {
                let digits = mantissa.to_string();
                let point_at = point_at.min(digits.len());
                let sign = if negative { "-" } else { "" };
                format!(
                    "{sign}{}.{}e{exponent}",
                    &digits[..point_at],
                    &digits[point_at..]
                )
            });
        runner
            .run(&texts, |text| {
                let digits = Digits::parse(&text).expect("a number");
                let float: f64 = text.parse().expect("a float");
                if digits.surely_survives_f64() && float.is_finite() {
                    let shortest = format!("{float:e}");
                    let printed = Digits::parse(&shortest).expect("a number");
                    prop_assert!(digits.same_value(&printed), "{text} printed {shortest}");
                }
                Ok(())
            })
            .expect("the shortcut holds");
    }
}

//! PostgreSQL's NUMERIC, exactly: the same base-10000 digits, weight and display scale
//! (dscale) as the server keeps, so that sums and averages merged from the shards' partial
//! results print, and send, exactly what one PostgreSQL would.
//!
//! Only what merging needs: text and binary input and output, comparison (NaN equals NaN and
//! sorts after everything, as in PostgreSQL's btree order), addition (`sum`), and the
//! division of a sum by a row count with PostgreSQL's result scale (`avg`: `numeric_div`
//! through `select_div_scale`, rounded half away from zero at that scale).
//!
//! No external crate: PostgreSQL's numerics hold up to 131072 digits before the point, and
//! its scale rules are defined on this very representation, so it is the simplest way to
//! match them digit for digit.

use std::cmp::Ordering;
use std::fmt;

const NBASE: u32 = 10000;
const DEC_DIGITS: i32 = 4;
const NUMERIC_MIN_SIG_DIGITS: i32 = 16;
const NUMERIC_MIN_DISPLAY_SCALE: i32 = 0;
const NUMERIC_MAX_DISPLAY_SCALE: i32 = 1000;

// Sign words of the binary format.
const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;

/// Why a NUMERIC could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumericError(pub String);

impl fmt::Display for NumericError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NumericError {}

/// NaN, ±Infinity (PostgreSQL 14 and later) or a finite value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Finite,
    NaN,
    PosInf,
    NegInf,
}

/// A NUMERIC value: `sum(digits[i] * 10000^(weight - i))`, negated when `neg`, shown with
/// `dscale` digits after the point. Digits carry no leading or trailing zero groups; zero has
/// no digits, weight 0 and is never negative (PostgreSQL's `make_result`).
#[derive(Debug, Clone)]
pub struct Numeric {
    special: Special,
    neg: bool,
    weight: i32,
    digits: Vec<u16>,
    dscale: i32,
}

impl PartialEq for Numeric {
    /// Equality as PostgreSQL's `=`: `1.0 = 1.00`, NaN = NaN.
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Numeric {}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Numeric {
    /// PostgreSQL's btree order: -Infinity < finite values < Infinity < NaN.
    fn cmp(&self, other: &Self) -> Ordering {
        let rank = |n: &Numeric| match n.special {
            Special::NegInf => 0,
            Special::Finite => 1,
            Special::PosInf => 2,
            Special::NaN => 3,
        };
        match rank(self).cmp(&rank(other)) {
            Ordering::Equal if self.special == Special::Finite => {}
            o => return o,
        }
        let sign = |n: &Numeric| {
            if n.digits.is_empty() {
                0
            } else if n.neg {
                -1
            } else {
                1
            }
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal => {}
            o => return o,
        }
        let abs = cmp_abs(self, other);
        if self.neg {
            abs.reverse()
        } else {
            abs
        }
    }
}

/// Compares magnitudes of two normalized finite values.
fn cmp_abs(a: &Numeric, b: &Numeric) -> Ordering {
    match (a.digits.is_empty(), b.digits.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        _ => {}
    }
    a.weight
        .cmp(&b.weight)
        .then_with(|| a.digits.cmp(&b.digits))
}

impl Numeric {
    pub fn nan() -> Numeric {
        Self::special(Special::NaN)
    }

    fn special(special: Special) -> Numeric {
        Numeric {
            special,
            neg: false,
            weight: 0,
            digits: Vec::new(),
            dscale: 0,
        }
    }

    pub fn zero() -> Numeric {
        Self::special(Special::Finite)
    }

    pub fn is_nan(&self) -> bool {
        self.special == Special::NaN
    }

    /// The display scale: digits shown after the point.
    pub fn dscale(&self) -> i32 {
        self.dscale
    }

    pub fn from_i64(v: i64) -> Numeric {
        let mut groups = Vec::new();
        let mut m = v.unsigned_abs();
        while m > 0 {
            groups.push((m % NBASE as u64) as u16);
            m /= NBASE as u64;
        }
        groups.reverse();
        let mut n = Numeric {
            special: Special::Finite,
            neg: v < 0,
            weight: groups.len() as i32 - 1,
            digits: groups,
            dscale: 0,
        };
        n.normalize();
        n
    }

    /// Strips zero groups at both ends; zero gets weight 0 and a positive sign.
    fn normalize(&mut self) {
        let lead = self.digits.iter().take_while(|d| **d == 0).count();
        if lead > 0 {
            self.digits.drain(..lead);
            self.weight -= lead as i32;
        }
        while self.digits.last() == Some(&0) {
            self.digits.pop();
        }
        if self.digits.is_empty() {
            self.weight = 0;
            self.neg = false;
        }
    }

    /// The digit group of weight `w` (0 outside the digits).
    fn group(&self, w: i32) -> u32 {
        let i = self.weight - w;
        if i < 0 || i as usize >= self.digits.len() {
            0
        } else {
            self.digits[i as usize] as u32
        }
    }

    /// Parses PostgreSQL's text form: `[+-]digits[.digits][e[+-]n]`, `NaN`, `Infinity`,
    /// `-Infinity` (case-insensitive, surrounding white space allowed).
    pub fn parse_text(s: &str) -> Result<Numeric, NumericError> {
        let bad = || NumericError(format!("invalid input syntax for type numeric: \"{s}\""));
        let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
        let lower = t.to_ascii_lowercase();
        match lower.as_str() {
            "nan" => return Ok(Self::nan()),
            "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Self::special(Special::PosInf)),
            "-infinity" | "-inf" => return Ok(Self::special(Special::NegInf)),
            _ => {}
        }
        let b = t.as_bytes();
        let mut i = 0;
        let mut neg = false;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            neg = b[i] == b'-';
            i += 1;
        }
        let mut int_digits: Vec<u8> = Vec::new();
        let mut frac_digits: Vec<u8> = Vec::new();
        while i < b.len() && b[i].is_ascii_digit() {
            int_digits.push(b[i] - b'0');
            i += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                frac_digits.push(b[i] - b'0');
                i += 1;
            }
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad());
        }
        let mut exp: i64 = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let rest = std::str::from_utf8(&b[i..]).map_err(|_| bad())?;
            exp = rest.parse::<i64>().map_err(|_| bad())?;
            if exp.abs() > 1_000_000 {
                return Err(NumericError("value overflows numeric format".into()));
            }
            i = b.len();
        }
        if i != b.len() {
            return Err(bad());
        }
        let dscale = (frac_digits.len() as i64 - exp).max(0) as i32;
        let mut all = int_digits;
        let int_len = all.len() as i64;
        all.extend_from_slice(&frac_digits);
        // Decimal exponent of the first digit, and the base-10000 group that holds it.
        let e0 = int_len + exp - 1;
        let weight = e0.div_euclid(DEC_DIGITS as i64);
        let pad = (DEC_DIGITS as i64 - 1 - (e0 - weight * DEC_DIGITS as i64)) as usize;
        let mut dec = vec![0u8; pad];
        dec.extend_from_slice(&all);
        while !dec.len().is_multiple_of(DEC_DIGITS as usize) {
            dec.push(0);
        }
        let digits = dec
            .chunks(DEC_DIGITS as usize)
            .map(|c| c.iter().fold(0u16, |acc, d| acc * 10 + *d as u16))
            .collect();
        let mut n = Numeric {
            special: Special::Finite,
            neg,
            weight: weight as i32,
            digits,
            dscale,
        };
        n.normalize();
        Ok(n)
    }

    /// Parses the binary form (`numeric_recv`): ndigits, weight, sign, dscale, then ndigits
    /// base-10000 digits, all big-endian 16-bit.
    pub fn parse_binary(b: &[u8]) -> Result<Numeric, NumericError> {
        let bad = |what: &str| NumericError(format!("invalid binary numeric: {what}"));
        if b.len() < 8 {
            return Err(bad("short header"));
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let ndigits = u16_at(0) as usize;
        let weight = u16_at(2) as i16 as i32;
        let sign = u16_at(4);
        let dscale = u16_at(6);
        if b.len() != 8 + 2 * ndigits {
            return Err(bad("length does not match its digit count"));
        }
        let special = match sign {
            SIGN_POS | SIGN_NEG => Special::Finite,
            SIGN_NAN => Special::NaN,
            SIGN_PINF => Special::PosInf,
            SIGN_NINF => Special::NegInf,
            _ => return Err(bad("sign")),
        };
        if special != Special::Finite {
            return Ok(Self::special(special));
        }
        if dscale & 0xC000 != 0 {
            return Err(bad("scale"));
        }
        let mut digits = Vec::with_capacity(ndigits);
        for i in 0..ndigits {
            let d = u16_at(8 + 2 * i);
            if d as u32 >= NBASE {
                return Err(bad("digit out of range"));
            }
            digits.push(d);
        }
        let mut n = Numeric {
            special,
            neg: sign == SIGN_NEG,
            weight,
            digits,
            dscale: dscale as i32,
        };
        n.normalize();
        Ok(n)
    }

    /// Appends the binary form (`numeric_send`).
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        let sign = match self.special {
            Special::NaN => SIGN_NAN,
            Special::PosInf => SIGN_PINF,
            Special::NegInf => SIGN_NINF,
            Special::Finite if self.neg => SIGN_NEG,
            Special::Finite => SIGN_POS,
        };
        out.extend_from_slice(&(self.digits.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        // PostgreSQL reads the scale of an infinity out of its header word, which gives 32.
        let dscale = match self.special {
            Special::PosInf | Special::NegInf => 0x20,
            Special::NaN => 0,
            Special::Finite => self.dscale as u16,
        };
        out.extend_from_slice(&dscale.to_be_bytes());
        for d in &self.digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
    }

    /// Appends bytes equal for equal values whatever their display scale (`1.0`, `1.00`):
    /// a group key.
    pub fn write_value_key(&self, out: &mut Vec<u8>) {
        let tag = match self.special {
            Special::Finite if self.neg => 0u8,
            Special::Finite => 1,
            Special::NaN => 2,
            Special::PosInf => 3,
            Special::NegInf => 4,
        };
        out.push(tag);
        out.extend_from_slice(&self.weight.to_be_bytes());
        for d in &self.digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
    }

    /// `a + b` (`numeric_add`): the larger display scale; NaN wins; Infinity + -Infinity is
    /// NaN.
    pub fn add(&self, other: &Numeric) -> Numeric {
        use Special::*;
        match (self.special, other.special) {
            (NaN, _) | (_, NaN) => return Self::nan(),
            (PosInf, NegInf) | (NegInf, PosInf) => return Self::nan(),
            (PosInf, _) | (_, PosInf) => return Self::special(PosInf),
            (NegInf, _) | (_, NegInf) => return Self::special(NegInf),
            _ => {}
        }
        let dscale = self.dscale.max(other.dscale);
        if other.digits.is_empty() {
            return Numeric {
                dscale,
                ..self.clone()
            };
        }
        if self.digits.is_empty() {
            return Numeric {
                dscale,
                ..other.clone()
            };
        }
        let hi = self.weight.max(other.weight) + 1;
        let lo = (self.weight - self.digits.len() as i32 + 1)
            .min(other.weight - other.digits.len() as i32 + 1);
        let (big, small, neg) = if self.neg == other.neg {
            (self, other, self.neg)
        } else {
            match cmp_abs(self, other) {
                Ordering::Equal => {
                    return Numeric {
                        dscale,
                        ..Self::zero()
                    }
                }
                Ordering::Greater => (self, other, self.neg),
                Ordering::Less => (other, self, other.neg),
            }
        };
        let subtract = self.neg != other.neg;
        // Groups from the lowest weight up, with carries or borrows.
        let mut out = Vec::with_capacity((hi - lo + 1) as usize);
        let mut carry: i32 = 0;
        for w in lo..=hi {
            let a = big.group(w) as i32;
            let b = small.group(w) as i32;
            let mut v = if subtract {
                a - b + carry
            } else {
                a + b + carry
            };
            carry = 0;
            if v < 0 {
                v += NBASE as i32;
                carry = -1;
            } else if v >= NBASE as i32 {
                v -= NBASE as i32;
                carry = 1;
            }
            out.push(v as u16);
        }
        out.reverse();
        let mut n = Numeric {
            special: Finite,
            neg,
            weight: hi,
            digits: out,
            dscale,
        };
        n.normalize();
        n
    }

    /// `sum / count` as `numeric_div` computes it for `avg` (`numeric_avg`, `int8_avg`,
    /// `numeric_poly_avg`): scale from `select_div_scale`, rounded half away from zero.
    /// `count` must be positive (an average of no rows is NULL, decided by the caller).
    pub fn div_count(&self, count: i64) -> Numeric {
        assert!(count > 0, "an average needs rows");
        match self.special {
            Special::Finite => {}
            s => return Self::special(s),
        }
        let divisor = Numeric::from_i64(count);
        let rscale = select_div_scale(self, &divisor);
        let d = count as u128;
        // Quotient groups from the dividend's weight down to one group past the scale: the
        // first dropped decimal digit decides the rounding.
        let lowest = -(rscale / DEC_DIGITS + 1);
        let mut q = Vec::new();
        let mut rem: u128 = 0;
        let mut w = self.weight;
        while w >= lowest {
            let cur = rem * NBASE as u128 + self.group(w) as u128;
            q.push((cur / d) as u16);
            rem = cur % d;
            w -= 1;
        }
        let mut n = Numeric {
            special: Special::Finite,
            neg: self.neg,
            weight: self.weight,
            digits: q,
            dscale: rscale,
        };
        if n.digits.is_empty() {
            n.weight = 0;
        }
        n.round(rscale);
        n.normalize();
        n.dscale = rscale;
        n
    }

    /// Rounds to `rscale` decimal digits after the point, half away from zero
    /// (`round_var`).
    fn round(&mut self, rscale: i32) {
        let di = (self.weight + 1) * DEC_DIGITS + rscale;
        if di < 0 {
            self.digits.clear();
            self.weight = 0;
            self.neg = false;
            return;
        }
        let mut ndigits = ((di + DEC_DIGITS - 1) / DEC_DIGITS) as usize;
        let di = di % DEC_DIGITS;
        let len = self.digits.len();
        if !(ndigits < len || (ndigits == len && di > 0)) {
            return;
        }
        let mut carry: u32;
        if di == 0 {
            carry = (self.digits[ndigits] as u32 >= NBASE / 2) as u32;
            self.digits.truncate(ndigits);
        } else {
            self.digits.truncate(ndigits);
            let pow10 = [0u32, 1000, 100, 10][di as usize];
            ndigits -= 1;
            let d = self.digits[ndigits] as u32;
            let extra = d % pow10;
            let mut kept = d - extra;
            carry = 0;
            if extra >= pow10 / 2 {
                kept += pow10;
                if kept >= NBASE {
                    kept -= NBASE;
                    carry = 1;
                }
            }
            self.digits[ndigits] = kept as u16;
        }
        while carry > 0 {
            if ndigits == 0 {
                self.digits.insert(0, 1);
                self.weight += 1;
                break;
            }
            ndigits -= 1;
            let v = self.digits[ndigits] as u32 + carry;
            if v >= NBASE {
                self.digits[ndigits] = (v - NBASE) as u16;
                carry = 1;
            } else {
                self.digits[ndigits] = v as u16;
                carry = 0;
            }
        }
    }
}

/// PostgreSQL's `select_div_scale`: at least 16 significant digits, and no fewer digits
/// after the point than either input shows.
fn select_div_scale(a: &Numeric, b: &Numeric) -> i32 {
    let first = |n: &Numeric| -> (i32, u16) {
        // Normalized: the first group is not zero (or there is none).
        n.digits.first().map_or((0, 0), |d| (n.weight, *d))
    };
    let (weight1, first1) = first(a);
    let (weight2, first2) = first(b);
    let mut qweight = weight1 - weight2;
    if first1 <= first2 {
        qweight -= 1;
    }
    (NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS)
        .max(a.dscale)
        .max(b.dscale)
        .clamp(NUMERIC_MIN_DISPLAY_SCALE, NUMERIC_MAX_DISPLAY_SCALE)
}

impl fmt::Display for Numeric {
    /// PostgreSQL's text output (`numeric_out`): exactly `dscale` digits after the point.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.special {
            Special::NaN => return f.write_str("NaN"),
            Special::PosInf => return f.write_str("Infinity"),
            Special::NegInf => return f.write_str("-Infinity"),
            Special::Finite => {}
        }
        let mut s = String::with_capacity(self.digits.len() * 4 + self.dscale as usize + 3);
        if self.neg {
            s.push('-');
        }
        if self.weight < 0 || self.digits.is_empty() {
            s.push('0');
        } else {
            for w in (0..=self.weight).rev() {
                let g = self.group(w);
                if w == self.weight {
                    s.push_str(&g.to_string());
                } else {
                    s.push_str(&format!("{g:04}"));
                }
            }
        }
        if self.dscale > 0 {
            s.push('.');
            let mut left = self.dscale as usize;
            let mut w = -1;
            while left > 0 {
                let g = format!("{:04}", self.group(w));
                let take = left.min(4);
                s.push_str(&g[..take]);
                left -= take;
                w -= 1;
            }
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Numeric {
        Numeric::parse_text(s).unwrap()
    }

    #[test]
    fn text_round_trips_with_the_display_scale() {
        for s in [
            "0",
            "1",
            "-1",
            "1.50",
            "0.0001",
            "12345678.9",
            "-0.000000012300",
            "10000",
            "99999999999999999999999999.000001",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.000",
        ] {
            assert_eq!(n(s).to_string(), s);
        }
        assert_eq!(n(" 1e3 ").to_string(), "1000");
        assert_eq!(n("1.5e-2").to_string(), "0.015");
        assert_eq!(n("-0.00").to_string(), "0.00");
        assert_eq!(n(".5").to_string(), "0.5");
        assert_eq!(n("nan").to_string(), "NaN");
        assert!(Numeric::parse_text("1.2.3").is_err());
        assert!(Numeric::parse_text("").is_err());
        assert!(Numeric::parse_text("abc").is_err());
    }

    #[test]
    fn binary_round_trips() {
        for s in [
            "0",
            "-12.3400",
            "1e20",
            "0.00001",
            "NaN",
            "-Infinity",
            "Infinity",
        ] {
            let mut b = Vec::new();
            n(s).write_binary(&mut b);
            let back = Numeric::parse_binary(&b).unwrap();
            assert_eq!(back.to_string(), n(s).to_string());
        }
        // numeric_send of 12.34: ndigits 2, weight 0, sign 0, dscale 2, digits 12, 3400.
        let mut b = Vec::new();
        n("12.34").write_binary(&mut b);
        assert_eq!(b, [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 13, 72]);
        // PostgreSQL 14's infinities.
        assert_eq!(
            Numeric::parse_binary(&[0, 0, 0, 0, 0xD0, 0, 0, 0])
                .unwrap()
                .to_string(),
            "Infinity"
        );
        assert!(Numeric::parse_binary(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn order_is_postgres_btree_order() {
        let mut v: Vec<Numeric> = ["NaN", "1.0", "-Infinity", "-2", "0", "Infinity", "0.5", "1"]
            .iter()
            .map(|s| n(s))
            .collect();
        v.sort();
        let shown: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            shown,
            ["-Infinity", "-2", "0", "0.5", "1.0", "1", "Infinity", "NaN"]
        );
        assert_eq!(n("1.0"), n("1.00"));
        assert_eq!(n("NaN"), n("NaN"));
        assert!(n("-0.001") < n("0"));
        assert!(n("-10") < n("-9.99"));
    }

    #[test]
    fn addition_keeps_the_larger_scale() {
        assert_eq!(n("1.5").add(&n("2.25")).to_string(), "3.75");
        assert_eq!(n("1.50").add(&n("-1.5")).to_string(), "0.00");
        assert_eq!(n("9999").add(&n("1")).to_string(), "10000");
        assert_eq!(n("-0.0001").add(&n("0.00005")).to_string(), "-0.00005");
        assert_eq!(
            n("100000000").add(&n("-0.000001")).to_string(),
            "99999999.999999"
        );
        assert_eq!(n("Infinity").add(&n("-Infinity")).to_string(), "NaN");
        assert_eq!(n("Infinity").add(&n("5")).to_string(), "Infinity");
        assert_eq!(n("NaN").add(&n("5")).to_string(), "NaN");
    }

    /// `avg` over `values` as PostgreSQL computes it: the exact sum, divided by the count.
    fn avg(values: &[&str]) -> String {
        let sum = values.iter().fold(Numeric::zero(), |acc, v| acc.add(&n(v)));
        sum.div_count(values.len() as i64).to_string()
    }

    /// Expected values read from PostgreSQL 15 (`SELECT avg(x) FROM (VALUES ...) v(x)`).
    #[test]
    fn averages_match_postgres() {
        assert_eq!(avg(&["1", "2"]), "1.5000000000000000");
        assert_eq!(avg(&["1", "2", "2"]), "1.6666666666666667");
        assert_eq!(avg(&["10000", "20001", "3"]), "10001.3333333333333333");
        assert_eq!(avg(&["1.5", "2.25"]), "1.8750000000000000");
        assert_eq!(
            avg(&["0.0001", "0.0002", "0.0004"]),
            "0.00023333333333333333"
        );
        assert_eq!(avg(&["123456789012345678", "3"]), "61728394506172841");
        assert_eq!(avg(&["-7", "0", "0"]), "-2.3333333333333333");
        assert_eq!(avg(&["NaN", "1"]), "NaN");
        assert_eq!(avg(&["Infinity", "1"]), "Infinity");
        assert_eq!(avg(&["Infinity", "-Infinity"]), "NaN");
        assert_eq!(
            avg(&["1.000000000000000000001", "2"]),
            "1.500000000000000000001"
        );
        assert_eq!(avg(&["0", "0"]), "0.00000000000000000000");
        assert_eq!(avg(&["99999999", "1"]), "50000000.000000000000");
        assert_eq!(
            avg(&["0.66666666666666666667", "1"]),
            "0.83333333333333333334"
        );
        assert_eq!(
            avg(&["5", "5", "5", "5", "5", "5", "5"]),
            "5.0000000000000000"
        );
        assert_eq!(avg(&["-1", "-2"]), "-1.5000000000000000");
        assert_eq!(
            avg(&["1e-20", "2e-20"]),
            "0.000000000000000000015000000000000000"
        );
        assert_eq!(avg(&["1.10", "2.205", "-0.3"]), "1.00166666666666666667");
        assert_eq!(
            avg(&["9223372036854775807", "9223372036854775807"]),
            "9223372036854775807"
        );
        assert_eq!(avg(&["12345", "1"]), "6173.0000000000000000");
        assert_eq!(avg(&["2", "1", "1"]), "1.3333333333333333");
        assert_eq!(avg(&["-0.00005", "0"]), "-0.000025000000000000000000");
    }

    /// `numeric_send` bytes read from PostgreSQL 15.
    #[test]
    fn binary_output_matches_postgres() {
        let send = |x: &Numeric| {
            let mut b = Vec::new();
            x.write_binary(&mut b);
            b
        };
        let avg12 = n("3").div_count(2);
        assert_eq!(send(&avg12), [0, 2, 0, 0, 0, 0, 0, 0x10, 0, 1, 0x13, 0x88]);
        let avg = n("3.5").div_count(2);
        assert_eq!(send(&avg), [0, 2, 0, 0, 0, 0, 0, 0x10, 0, 1, 0x1d, 0x4c]);
        assert_eq!(send(&n("0")), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(send(&n("0.00")), [0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(send(&n("NaN")), [0, 0, 0, 0, 0xc0, 0, 0, 0]);
        assert_eq!(send(&n("-Infinity")), [0, 0, 0, 0, 0xf0, 0, 0, 0x20]);
        assert_eq!(send(&n("Infinity")), [0, 0, 0, 0, 0xd0, 0, 0, 0x20]);
        assert_eq!(send(&n("-0.0001")), [0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 1]);
    }

    #[test]
    fn rounding_half_away_from_zero() {
        let mut x = n("0.99995");
        x.round(4);
        x.normalize();
        assert_eq!(
            Numeric {
                dscale: 4,
                ..x.clone()
            }
            .to_string(),
            "1.0000"
        );
        let mut y = n("-2.5");
        y.round(0);
        assert_eq!(Numeric { dscale: 0, ..y }.to_string(), "-3");
    }
}

//! Python-style text for values quoted in error messages and config descriptions.
//!
//! coremltools' messages embed Python `repr`s (`-1.0`, `1e-05`, `'abc'`, `(3, 4)`); users grep for
//! them, so we reproduce the formatting instead of Rust's `{:?}`.

/// `repr(float)` of CPython: shortest round-trip digits, fixed notation for decimal exponents in
/// `-4..16`, scientific (`1e-05`, `1.5e+16`) otherwise, `.0` on integral values.
pub fn float(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.5e-7", "1e0".
    let sci = format!("{:e}", x);
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if !(-4..16).contains(&exp) {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{head}{frac}e{esign}{:02}", exp.unsigned_abs());
    }
    // Fixed notation: place the decimal point `exp + 1` digits into the digit string.
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
    } else {
        let point = point as usize;
        if digits.len() <= point {
            format!("{}{}.0", digits, "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

/// `repr(str)` of CPython for the common cases: single quotes unless the text contains a single
/// quote and no double quote; backslash and control characters escaped.
pub fn string(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Most characters of config text one message echoes: a key or value of any length (a 16 MB key)
/// made an error line of that length.
pub const ECHO_CHARS: usize = 64;

/// Config text as a message echoes it: on one line (line breaks and other control characters
/// escaped, as `repr` escapes them) and, past [`ECHO_CHARS`] characters, cut there and marked with
/// the length of the whole, `'abc…' (70000 bytes)`-style.
pub fn clip(s: &str) -> String {
    clip_at(s, ECHO_CHARS)
}

/// [`clip`] with another length, for a message listing several echoed names.
pub fn clip_at(s: &str, max_chars: usize) -> String {
    let (mut out, cut) = escaped_head(s, max_chars);
    if cut {
        out.push_str(&format!("… ({} bytes)", s.len()));
    }
    out
}

/// The first `max_chars` characters of `s` with control characters escaped, and whether that cut
/// anything off.
pub fn escaped_head(s: &str, max_chars: usize) -> (String, bool) {
    let cut = s.char_indices().nth(max_chars).map_or(s.len(), |(i, _)| i);
    let mut out = String::with_capacity(cut + 24);
    for c in s[..cut].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    (out, cut < s.len())
}

/// `repr` of an optional integer (`None` or digits).
pub fn opt_int<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_string(), |v| v.to_string())
}

/// `repr` of an optional float.
pub fn opt_float(v: Option<f64>) -> String {
    v.map_or_else(|| "None".to_string(), float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_match_python_repr() {
        let cases: [(f64, &str); 16] = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (0.5, "0.5"),
            (1e-12, "1e-12"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.0000001, "1.0000001"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (-1e-300, "-1e-300"),
            (0.1 + 0.2, "0.30000000000000004"),
            (2.5e-5, "2.5e-05"),
        ];
        for (x, want) in cases {
            assert_eq!(float(x), want, "repr({x:e})");
        }
        assert_eq!(float(f64::NAN), "nan");
        assert_eq!(float(f64::NEG_INFINITY), "-inf");
    }

    #[test]
    fn strings_match_python_repr() {
        assert_eq!(string("abc"), "'abc'");
        assert_eq!(string("it's"), "\"it's\"");
        assert_eq!(string("a\nb\\"), "'a\\nb\\\\'");
        assert_eq!(string("both ' and \""), "'both \\' and \"'");
    }

    #[test]
    fn echoed_text_is_one_short_line() {
        assert_eq!(clip("op_1"), "op_1");
        assert_eq!(clip("a\nb\u{2028}c\x07"), "a\\nb\\u{2028}c\\u{7}");
        let long = "k".repeat(70_000);
        assert_eq!(clip(&long), format!("{}… (70000 bytes)", "k".repeat(64)));
        // Cut on a character, counted in characters.
        let wide = "é".repeat(100);
        assert_eq!(clip(&wide), format!("{}… (200 bytes)", "é".repeat(64)));
    }
}

//! What HF chat templates call that minijinja does not have, or has otherwise:
//! `raise_exception`, `strftime_now`, and `tojson` as Python's `json.dumps` writes it
//! (indent, separators, `sort_keys`, `ensure_ascii`), into output buffers that refuse to grow
//! past a byte bound.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub(super) fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        msg,
    ))
}

/// Memory that refuses to grow past `limit` bytes: a render's output (and each `tojson`'s)
/// is bounded while it is written, not after. A client's deeply nested tool schema under a
/// template's `tojson(indent=4)` gains four spaces per level on every line: a 4 MB body
/// would otherwise render to about a gigabyte before anything could refuse it.
pub(super) struct CappedBuf {
    pub(super) buf: Vec<u8>,
    limit: usize,
    /// A write was refused: the output is cut short.
    pub(super) over: bool,
}

impl CappedBuf {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            over: false,
        }
    }
}

impl std::io::Write for CappedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(b.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("over the render's byte limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn too_long(limit: usize) -> String {
    format!(
        "the rendered prompt passes {limit} bytes, more than any prompt that fits the \
         model's context"
    )
}

/// The widest `tojson` indent a template may ask (HF's templates use 2 or 4).
const MAX_TOJSON_INDENT: usize = 64;

/// HF's `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with those keywords; `", "` and `": "` between items, or `indent` spaces
/// per level and `","`; key order as given unless `sort_keys`; nothing HTML-escaped
/// (minijinja's own escapes `<`, `>`, `&` and `'`, so prompts would differ from HF's).
/// At most `limit` bytes a value, and twice that over one render (`spent` so far): output
/// captured by the template (a macro, `{% set %}…{% endset %}`) is held before it reaches
/// the render's own cap. `over` is set when a cap stops it.
pub(super) fn tojson(
    value: &minijinja::Value,
    indent: Option<usize>,
    kwargs: minijinja::value::Kwargs,
    limit: usize,
    spent: &AtomicUsize,
    over: &AtomicBool,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let bad =
        |msg: &str| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg.to_string());
    let indent = kwargs.get::<Option<usize>>("indent")?.or(indent);
    // The indent is built before any output cap applies: a template's `indent=10**13` would
    // ask for terabytes at once (an abort, not an error).
    if indent.is_some_and(|n| n > MAX_TOJSON_INDENT) {
        return Err(bad(&format!(
            "tojson: indent may be at most {MAX_TOJSON_INDENT}"
        )));
    }
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators = kwargs.get::<Option<Vec<String>>>("separators")?;
    kwargs.assert_all_used()?;
    // Python's defaults: `", "` between items, `","` once lines are indented.
    let (item, key) = match separators.as_deref() {
        None => (if indent.is_some() { "," } else { ", " }, ": "),
        Some([item, key]) => (item.as_str(), key.as_str()),
        Some(_) => {
            return Err(bad(
                "tojson: separators must be (item_separator, key_separator)",
            ))
        }
    };
    let mut fmt = PythonJson {
        item: item.as_bytes().to_vec(),
        key: key.as_bytes().to_vec(),
        indent: indent.map(|n| vec![b' '; n]),
        ensure_ascii,
        level: 0,
        has_value: false,
    };
    let room = limit
        .saturating_mul(2)
        .saturating_sub(spent.load(Ordering::Relaxed));
    let mut out = CappedBuf::new(limit.min(room));
    let written = if sort_keys {
        let mut v = serde_json::to_value(value).map_err(|e| bad(&e.to_string()))?;
        sort_keys_deep(&mut v);
        v.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, &mut fmt,
        ))
    } else {
        value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, &mut fmt,
        ))
    };
    written.map_err(|e| {
        let msg = if out.over {
            over.store(true, Ordering::Relaxed);
            too_long(limit)
        } else {
            e.to_string()
        };
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg)
    })?;
    spent.fetch_add(out.buf.len(), Ordering::Relaxed);
    let s = String::from_utf8(out.buf).expect("serde_json writes UTF-8");
    Ok(minijinja::Value::from_safe_string(s))
}

/// Python's `sort_keys`: every object's keys in code-point order (UTF-8 byte order is the same).
fn sort_keys_deep(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.sort_keys();
            m.values_mut().for_each(sort_keys_deep);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(sort_keys_deep),
        _ => {}
    }
}

/// `json.dumps`' layout: its separators, its indentation (a newline and the indent before
/// each item, none inside an empty container), `ensure_ascii`'s `\uXXXX` escapes (UTF-16,
/// lower-case hex, as Python writes them).
struct PythonJson {
    item: Vec<u8>,
    key: Vec<u8>,
    indent: Option<Vec<u8>>,
    ensure_ascii: bool,
    level: usize,
    has_value: bool,
}

/// Python's `repr(float)`, as `json.dumps` writes floats: the shortest digits that read back
/// to `v`, positional for decimal exponents −4..16 (`.0` when whole), else scientific with a
/// sign and two exponent digits at least (`1e-05`, `1e+16`), where serde writes `0.00001`.
fn python_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}`: the shortest round-trip digits, one before the point ("-1.5e-7").
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} writes an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let body = if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    };
    format!("{sign}{body}")
}

impl PythonJson {
    fn open<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(c)
    }
    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        self.level -= 1;
        if let (Some(pad), true) = (&self.indent, self.has_value) {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(pad)?;
            }
        }
        w.write_all(c)
    }
    fn item<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(&self.item)?;
        }
        if let Some(pad) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(pad)?;
            }
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for &mut PythonJson {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.key)
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        w.write_all(python_float_repr(v).as_bytes())
    }
    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        w.write_all(python_float_repr(v as f64).as_bytes())
    }
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if !self.ensure_ascii || fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{:04x}", u)?;
                }
            }
        }
        Ok(())
    }
}

pub(super) fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    // `to_string()` panics on a specifier chrono does not know; writing reports it.
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {fmt:?}"),
        )
    })?;
    Ok(out)
}

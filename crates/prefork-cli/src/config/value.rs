//! The types of settings: how each is read from a TOML value and from the
//! text of an environment variable or a flag, and how it is written back
//! as TOML.

use std::fmt;
use std::time::Duration;

use toml::de::DeValue;

use crate::Mode;

/// A setting's type.
pub(super) trait Value: Sized {
    /// What a value looks like, for "wrong type" messages.
    const EXPECTED: &'static str;
    /// Reads a value of the file.
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String>;
    /// Reads the text of a variable or a flag.
    fn from_text(s: &str) -> Result<Self, String>;
    /// The value as TOML, `None` when not set.
    fn show(&self) -> Option<String>;
}

fn wrong_type<T: Value>(v: &DeValue<'_>) -> String {
    let found = match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_str().to_owned(),
    };
    format!("wrong type: expected {}, found {found}", T::EXPECTED)
}

/// The text of a string value, or the wrong-type error.
fn text_of<T: Value>(v: &DeValue<'_>) -> Result<String, String> {
    match v {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err(wrong_type::<T>(other)),
    }
}

fn integer_of<T: Value>(v: &DeValue<'_>) -> Result<i128, String> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| format!("out of range: {i} is too large")),
        other => Err(wrong_type::<T>(other)),
    }
}

impl Value for String {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &DeValue<'_>) -> Result<String, String> {
        text_of::<String>(v)
    }
    fn from_text(s: &str) -> Result<String, String> {
        Ok(s.to_owned())
    }
    fn show(&self) -> Option<String> {
        Some(toml::Value::String(self.clone()).to_string())
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Value for $t {
            const EXPECTED: &'static str = "a whole number";
            fn from_toml(v: &DeValue<'_>) -> Result<$t, String> {
                let n = integer_of::<$t>(v)?;
                <$t>::try_from(n).map_err(|_| range_error(&n.to_string(), <$t>::MAX as u128))
            }
            fn from_text(s: &str) -> Result<$t, String> {
                let t = s.trim();
                if t.starts_with('-') && t[1..].chars().all(|c| c.is_ascii_digit()) && t.len() > 1 {
                    return Err(range_error(t, <$t>::MAX as u128));
                }
                t.parse().map_err(|_| format!("invalid value {s:?}: expected {}", Self::EXPECTED))
            }
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

fn range_error(n: &str, max: u128) -> String {
    if n.starts_with('-') {
        format!("out of range: must not be negative (got {n})")
    } else {
        format!("out of range: must be at most {max} (got {n})")
    }
}

unsigned!(usize, u32, u64);

impl Value for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_toml(v: &DeValue<'_>) -> Result<f64, String> {
        match v {
            DeValue::Float(f) => f
                .as_str()
                .parse()
                .map_err(|_| format!("invalid value {f}: expected {}", Self::EXPECTED)),
            DeValue::Integer(_) => Ok(integer_of::<f64>(v)? as f64),
            other => Err(wrong_type::<f64>(other)),
        }
    }
    fn from_text(s: &str) -> Result<f64, String> {
        match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            _ => Err(format!("invalid value {s:?}: expected {}", Self::EXPECTED)),
        }
    }
    fn show(&self) -> Option<String> {
        Some(toml::Value::Float(*self).to_string())
    }
}

impl Value for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_toml(v: &DeValue<'_>) -> Result<bool, String> {
        match v {
            DeValue::Boolean(b) => Ok(*b),
            other => Err(wrong_type::<bool>(other)),
        }
    }
    fn from_text(s: &str) -> Result<bool, String> {
        match s.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("invalid value {s:?}: expected {}", Self::EXPECTED)),
        }
    }
    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Value for Duration {
    const EXPECTED: &'static str =
        "a duration with a unit, such as \"30s\", \"250ms\", \"5m\" or \"1h\"";
    fn from_toml(v: &DeValue<'_>) -> Result<Duration, String> {
        Duration::from_text(&text_of::<Duration>(v)?)
    }
    fn from_text(s: &str) -> Result<Duration, String> {
        parse_duration(s.trim())
            .ok_or_else(|| format!("invalid value {s:?}: expected {}", Self::EXPECTED))
    }
    fn show(&self) -> Option<String> {
        Some(format!("\"{}\"", show_duration(*self)))
    }
}

/// `250ms`, `1.5s`, `5m`, `1h`.
fn parse_duration(s: &str) -> Option<Duration> {
    let at = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(at);
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// A duration in its largest whole unit (`90s`, `5m`, `250ms`, `1.5ms`).
pub(super) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ms", d.as_secs_f64() * 1e3);
    }
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A size in bytes: an integer, or a string with a unit (`"512MiB"`,
/// `"2GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl Value for Bytes {
    const EXPECTED: &'static str =
        "a size: a number of bytes, or a string such as \"512MiB\" or \"2GB\"";
    fn from_toml(v: &DeValue<'_>) -> Result<Bytes, String> {
        match v {
            DeValue::Integer(_) => u64::from_toml(v).map(Bytes),
            DeValue::String(s) => Bytes::from_text(s),
            other => Err(wrong_type::<Bytes>(other)),
        }
    }
    fn from_text(s: &str) -> Result<Bytes, String> {
        let t = s.trim();
        let bad = || format!("invalid value {s:?}: expected {}", Self::EXPECTED);
        let (number, scale) = SIZE_UNITS
            .iter()
            .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n.trim(), *scale)))
            .unwrap_or((t, 1));
        let n: u64 = number.parse().map_err(|_| bad())?;
        n.checked_mul(scale).map(Bytes).ok_or_else(bad)
    }
    fn show(&self) -> Option<String> {
        let (unit, scale) = SIZE_UNITS
            .iter()
            .find(|(_, scale)| {
                self.0.is_multiple_of(*scale) && self.0 >= *scale && *scale >= 1 << 10
            })
            .copied()
            .unwrap_or(("", 1));
        if unit.is_empty() {
            return Some(self.0.to_string());
        }
        Some(format!("\"{}{unit}\"", self.0 / scale))
    }
}

/// A list of file descriptors (`[3, 4]`; `"3,4"` in the environment).
impl Value for Vec<i32> {
    const EXPECTED: &'static str = "a list of file descriptors, such as [3, 4]";
    fn from_toml(v: &DeValue<'_>) -> Result<Vec<i32>, String> {
        let DeValue::Array(items) = v else {
            return Err(wrong_type::<Vec<i32>>(v));
        };
        items
            .iter()
            .map(|item| match integer_of::<Vec<i32>>(item.get_ref()) {
                Ok(n) => fd(n),
                Err(_) => Err(wrong_type::<Vec<i32>>(item.get_ref())),
            })
            .collect()
    }
    fn from_text(s: &str) -> Result<Vec<i32>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<i128>()
                    .map_err(|_| {
                        format!("invalid value {s:?}: expected descriptors such as \"3,4\"")
                    })
                    .and_then(fd)
            })
            .collect()
    }
    fn show(&self) -> Option<String> {
        let items: Vec<String> = self.iter().map(i32::to_string).collect();
        Some(format!("[{}]", items.join(", ")))
    }
}

fn fd(n: i128) -> Result<i32, String> {
    match i32::try_from(n) {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err(format!("out of range: {n} is not a file descriptor")),
    }
}

impl<T: Value> Value for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_toml(v: &DeValue<'_>) -> Result<Option<T>, String> {
        T::from_toml(v).map(Some)
    }
    fn from_text(s: &str) -> Result<Option<T>, String> {
        T::from_text(s).map(Some)
    }
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
}

/// A choice among names.
fn choose<T: Copy>(s: &str, choices: &[(&str, T)], expected: &str) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == s.trim())
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("invalid value {s:?}: expected {expected}"))
}

impl Value for Mode {
    const EXPECTED: &'static str = "\"pull\" or \"dispatch\"";
    fn from_toml(v: &DeValue<'_>) -> Result<Mode, String> {
        Mode::from_text(&text_of::<Mode>(v)?)
    }
    fn from_text(s: &str) -> Result<Mode, String> {
        choose(
            s,
            &[("pull", Mode::Pull), ("dispatch", Mode::Dispatch)],
            Self::EXPECTED,
        )
    }
    fn show(&self) -> Option<String> {
        Some(format!("\"{self}\""))
    }
}

/// How log lines are written (`logging.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line (`tracing-subscriber`'s JSON format).
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl Value for LogFormat {
    const EXPECTED: &'static str = "\"text\" or \"json\"";
    fn from_toml(v: &DeValue<'_>) -> Result<LogFormat, String> {
        LogFormat::from_text(&text_of::<LogFormat>(v)?)
    }
    fn from_text(s: &str) -> Result<LogFormat, String> {
        choose(
            s,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            Self::EXPECTED,
        )
    }
    fn show(&self) -> Option<String> {
        Some(format!("\"{self}\""))
    }
}

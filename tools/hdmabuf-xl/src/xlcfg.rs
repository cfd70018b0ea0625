// SPDX-License-Identifier: MIT
//! xl domain configuration files (xl.cfg(5)), read with the grammar of
//! libxl's `libxlu_cfg`, and the `hyper_dmabuf = [ ... ]` entries in them.
//!
//! A file is a sequence of settings `KEY = VALUE` (or `KEY += VALUE`),
//! separated by newlines or `;`. A value is a number, a string in double
//! or single quotes with C-like escapes, or a list `[ v, v, ]` that may
//! span lines, nest, and end with a comma. `#` starts a comment that runs
//! to the end of the line. As in xl, a later setting of a key replaces an
//! earlier one and `+=` appends (strings are concatenated, lists
//! extended). Every key is kept; only `name` and `hyper_dmabuf` are read.
//!
//! Each `hyper_dmabuf` string describes one device:
//! `backend=<domid or name>, devid=<n>, ring-page-order=<k>,
//! max-buffer-mib=<m>, rw=<0|1>`, every key optional.
//!
//! Nothing here panics on any input: the text is bounded ([`MAX_FILE_SIZE`],
//! [`MAX_DEPTH`]) and every error names the source, the line and the key.

use std::collections::HashMap;
use std::fmt;

use hyper_dmabuf_xenbus_proto::parse::DOMID_FIRST_RESERVED;
use hyper_dmabuf_xenbus_proto::schema::{DeviceSpec, MAX_RING_PAGE_ORDER};

/// Largest configuration file read, in bytes.
pub(crate) const MAX_FILE_SIZE: usize = 1 << 20;
/// Deepest nesting of lists (xl itself uses at most two levels).
pub(crate) const MAX_DEPTH: usize = 16;
/// Longest backend domain name (xenstore's `name` nodes are short).
const MAX_NAME_LEN: usize = 64;
/// The config key of our devices.
pub(crate) const KEY: &str = "hyper_dmabuf";

/// Why a configuration could not be used: where, and about which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CfgError {
    /// The file name (or `command line`).
    pub(crate) source: String,
    /// 1-based line number; 0 when the error is about the whole source.
    pub(crate) line: usize,
    /// The setting or entry key concerned, if any.
    pub(crate) key: Option<String>,
    /// What is wrong.
    pub(crate) message: String,
}

impl fmt::Display for CfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A value of a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A number, as written (xl keeps numbers as text too).
    Number(String),
    /// A string, unescaped, with the line where it starts.
    Str(String, usize),
    /// A list.
    List(Vec<Value>),
}

/// One `KEY = VALUE` of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    /// The file name (or `command line`).
    pub(crate) source: String,
    /// The line of the key.
    pub(crate) line: usize,
    /// The key.
    pub(crate) key: String,
    /// `+=` rather than `=`.
    pub(crate) append: bool,
    /// The value.
    pub(crate) value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    LBracket,
    RBracket,
    Comma,
    Eq,
    PlusEq,
    /// `;` or a newline.
    End,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Number(s) => format!("number {s}"),
            Tok::Str(_) => "a string".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`=`".into(),
            Tok::PlusEq => "`+=`".into(),
            Tok::End => "the end of the setting".into(),
            Tok::Eof => "the end of the file".into(),
        }
    }
}

struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
    source: &'a str,
    /// The key of the setting being read, for errors.
    key: Option<String>,
}

impl<'a> Lexer<'a> {
    fn error(&self, line: usize, message: impl Into<String>) -> CfgError {
        CfgError {
            source: self.source.to_string(),
            line,
            key: self.key.clone(),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// The next token and the line it starts on.
    fn next(&mut self) -> Result<(Tok, usize), CfgError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'#') => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let line = self.line;
        let Some(c) = self.peek() else {
            return Ok((Tok::Eof, line));
        };
        self.pos += 1;
        let tok = match c {
            b'\n' => {
                self.line += 1;
                Tok::End
            }
            b';' => Tok::End,
            b'[' => Tok::LBracket,
            b']' => Tok::RBracket,
            b',' => Tok::Comma,
            b'=' => Tok::Eq,
            b'+' if self.peek() == Some(b'=') => {
                self.pos += 1;
                Tok::PlusEq
            }
            b'"' | b'\'' => Tok::Str(self.string(c, line)?),
            b'0'..=b'9' => {
                let start = self.pos - 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
                {
                    self.pos += 1;
                }
                Tok::Number(String::from_utf8_lossy(&self.text[start..self.pos]).into_owned())
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.pos - 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
                {
                    self.pos += 1;
                }
                Tok::Ident(String::from_utf8_lossy(&self.text[start..self.pos]).into_owned())
            }
            0 => return Err(self.error(line, "a NUL byte")),
            c => {
                let what = if c.is_ascii_graphic() {
                    format!("`{}`", char::from(c))
                } else {
                    format!("byte 0x{c:02x}")
                };
                return Err(self.error(line, format!("unexpected character {what}")));
            }
        };
        Ok((tok, line))
    }

    /// The rest of a string opened by `quote` on `line`, unescaped as
    /// libxlu does: `\" \' \\ \a \b \f \n \r \t \v`, `\xHH`, `\OOO`.
    fn string(&mut self, quote: u8, line: usize) -> Result<String, CfgError> {
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error(line, "unterminated string"));
            };
            self.pos += 1;
            match c {
                b'\n' => return Err(self.error(line, "unterminated string (newline in it)")),
                0 => return Err(self.error(line, "a NUL byte in a string")),
                c if c == quote => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.error(line, "unterminated string"));
                    };
                    self.pos += 1;
                    let byte = match e {
                        b'"' | b'\'' | b'\\' => e,
                        b'a' => 7,
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 11,
                        b'x' => self.numeric_escape(16, 2, 2, line)?,
                        b'0'..=b'7' => {
                            self.pos -= 1;
                            self.numeric_escape(8, 1, 3, line)?
                        }
                        _ => return Err(self.error(line, "invalid escape in a string")),
                    };
                    if byte == 0 {
                        return Err(self.error(line, "a NUL byte in a string"));
                    }
                    out.push(byte);
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.error(line, "a string that is not UTF-8"))
    }

    /// `min..=max` digits of `radix` as one byte.
    fn numeric_escape(
        &mut self,
        radix: u32,
        min: usize,
        max: usize,
        line: usize,
    ) -> Result<u8, CfgError> {
        let mut value: u32 = 0;
        let mut n = 0;
        while n < max {
            let Some(d) = self.peek().and_then(|c| char::from(c).to_digit(radix)) else {
                break;
            };
            value = value * radix + d;
            self.pos += 1;
            n += 1;
        }
        if n < min {
            return Err(self.error(line, "invalid numeric escape in a string"));
        }
        u8::try_from(value).map_err(|_| self.error(line, "numeric escape above 255 in a string"))
    }
}

/// Reads the settings of `text`; `source` names it in errors.
pub(crate) fn parse_settings(source: &str, text: &[u8]) -> Result<Vec<Setting>, CfgError> {
    if text.len() > MAX_FILE_SIZE {
        return Err(CfgError {
            source: source.to_string(),
            line: 0,
            key: None,
            message: format!("larger than {MAX_FILE_SIZE} bytes"),
        });
    }
    let mut lx = Lexer {
        text,
        pos: 0,
        line: 1,
        source,
        key: None,
    };
    let mut out = Vec::new();
    loop {
        lx.key = None;
        let (tok, line) = lx.next()?;
        let key = match tok {
            Tok::End => continue,
            Tok::Eof => break,
            Tok::Ident(k) => k,
            t => return Err(lx.error(line, format!("expected a key, found {}", t.describe()))),
        };
        lx.key = Some(key.clone());
        let append = match lx.next()? {
            (Tok::Eq, _) => false,
            (Tok::PlusEq, _) => true,
            (t, l) => {
                return Err(lx.error(
                    l,
                    format!("expected `=` after the key, found {}", t.describe()),
                ))
            }
        };
        let first = lx.next()?;
        let value = parse_value(&mut lx, first, 0)?;
        match lx.next()? {
            (Tok::End | Tok::Eof, _) => {}
            (t, l) => {
                return Err(lx.error(
                    l,
                    format!("expected the end of the setting, found {}", t.describe()),
                ))
            }
        }
        out.push(Setting {
            source: source.to_string(),
            line,
            key,
            append,
            value,
        });
    }
    Ok(out)
}

/// A value starting with `first`, at list depth `depth`.
fn parse_value(lx: &mut Lexer<'_>, first: (Tok, usize), depth: usize) -> Result<Value, CfgError> {
    match first {
        (Tok::Number(n), _) => Ok(Value::Number(n)),
        (Tok::Str(s), line) => Ok(Value::Str(s, line)),
        (Tok::LBracket, line) => {
            if depth >= MAX_DEPTH {
                return Err(lx.error(line, format!("lists nested deeper than {MAX_DEPTH}")));
            }
            let mut items = Vec::new();
            loop {
                let mut tok = lx.next()?;
                while tok.0 == Tok::End {
                    tok = lx.next()?;
                }
                if tok.0 == Tok::RBracket {
                    // `[]`, or the `]` after a trailing comma.
                    return Ok(Value::List(items));
                }
                if tok.0 == Tok::Eof {
                    return Err(lx.error(line, "unterminated list"));
                }
                items.push(parse_value(lx, tok, depth + 1)?);
                let mut tok = lx.next()?;
                while tok.0 == Tok::End {
                    tok = lx.next()?;
                }
                match tok {
                    (Tok::Comma, _) => {}
                    (Tok::RBracket, _) => return Ok(Value::List(items)),
                    (Tok::Eof, _) => return Err(lx.error(line, "unterminated list")),
                    (t, l) => {
                        return Err(lx.error(
                            l,
                            format!("expected `,` or `]` in a list, found {}", t.describe()),
                        ))
                    }
                }
            }
        }
        (t, l) => Err(lx.error(l, format!("expected a value, found {}", t.describe()))),
    }
}

/// A domain as an admin names it: by id or by name (an entry's backend,
/// the DOMAIN of `xl attach`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Domain {
    /// A domain id.
    Id(u16),
    /// A domain name, resolved with `xl domid`.
    Name(String),
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Id(d) => write!(f, "{d}"),
            Domain::Name(n) => f.write_str(n),
        }
    }
}

impl std::str::FromStr for Domain {
    type Err = String;

    /// Digits are a domain id (below the reserved ids); anything else must
    /// be a name xl would accept.
    fn from_str(value: &str) -> Result<Domain, String> {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            let max = u64::from(DOMID_FIRST_RESERVED) - 1;
            let id = number(value, 0, max)?;
            return u16::try_from(id)
                .map(Domain::Id)
                .map_err(|_| "out of range".into());
        }
        if (1..=MAX_NAME_LEN).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Ok(Domain::Name(value.to_string()));
        }
        Err(format!(
            "{value:?} is neither a domain id nor a domain name \
             (letters, digits, `.`, `_`, `-`; at most {MAX_NAME_LEN})"
        ))
    }
}

/// One `hyper_dmabuf` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `backend=`, default domain 0.
    pub(crate) backend: Domain,
    /// `devid=`, default the entry's index.
    pub(crate) devid: u32,
    /// `ring-page-order=`.
    pub(crate) ring_page_order: Option<u32>,
    /// `max-buffer-mib=`.
    pub(crate) max_buffer_mib: Option<u64>,
    /// `rw=`.
    pub(crate) rw: Option<bool>,
}

/// An error about one key of an entry (`key` is `None` for the syntax of
/// the entry as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryError {
    pub(crate) key: Option<String>,
    pub(crate) message: String,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "key {k}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The keys of an entry.
const ENTRY_KEYS: [&str; 5] = [
    "backend",
    "devid",
    "ring-page-order",
    "max-buffer-mib",
    "rw",
];

/// A decimal number of ASCII digits only, at most `max`.
fn number(value: &str, min: u64, max: u64) -> Result<u64, String> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{value:?} is not a decimal number"));
    }
    match value.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("{value:?} is out of range ({min} to {max})")),
    }
}

impl Entry {
    /// Parses one entry string; `index` is its position in the list (the
    /// default `devid`).
    pub(crate) fn parse(text: &str, index: usize) -> Result<Entry, EntryError> {
        let mut seen: Vec<&str> = Vec::new();
        let mut entry = Entry {
            backend: Domain::Id(0),
            devid: u32::try_from(index).map_err(|_| EntryError {
                key: Some("devid".into()),
                message: "too many entries".into(),
            })?,
            ring_page_order: None,
            max_buffer_mib: None,
            rw: None,
        };
        for item in text.split(',') {
            let item = item.trim_matches([' ', '\t']);
            if item.is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(EntryError {
                    key: None,
                    message: format!("{item:?} is not KEY=VALUE"),
                });
            };
            let (key, value) = (
                key.trim_matches([' ', '\t']),
                value.trim_matches([' ', '\t']),
            );
            let err = |message: String| EntryError {
                key: Some(key.to_string()),
                message,
            };
            if !ENTRY_KEYS.contains(&key) {
                return Err(err(format!(
                    "unknown key (known: {})",
                    ENTRY_KEYS.join(", ")
                )));
            }
            if seen.contains(&key) {
                return Err(err("given twice".into()));
            }
            seen.push(key);
            match key {
                "backend" => entry.backend = value.parse().map_err(err)?,
                "devid" => {
                    entry.devid = u32::try_from(number(value, 0, u32::MAX.into()).map_err(err)?)
                        .map_err(|_| err("out of range".into()))?;
                }
                "ring-page-order" => {
                    let o = number(value, 0, MAX_RING_PAGE_ORDER.into()).map_err(err)?;
                    entry.ring_page_order =
                        Some(u32::try_from(o).map_err(|_| err("out of range".into()))?);
                }
                "max-buffer-mib" => {
                    entry.max_buffer_mib = Some(number(value, 1, u64::MAX >> 20).map_err(err)?);
                }
                _ => {
                    entry.rw = Some(number(value, 0, 1).map_err(err)? == 1);
                }
            }
        }
        Ok(entry)
    }

    /// The entry in the config syntax, every key spelled out but those
    /// absent: `Entry::parse(&e.render(), _) == e`.
    pub(crate) fn render(&self) -> String {
        let mut out = format!("backend={}, devid={}", self.backend, self.devid);
        if let Some(o) = self.ring_page_order {
            out += &format!(", ring-page-order={o}");
        }
        if let Some(m) = self.max_buffer_mib {
            out += &format!(", max-buffer-mib={m}");
        }
        if let Some(rw) = self.rw {
            out += &format!(", rw={}", u8::from(rw));
        }
        out
    }

    /// The device of frontend `front` with backend domain `back` (the
    /// entry's backend, resolved). `feature-rw` is always written, `0`
    /// unless `rw=1`, as `hdmabuf xl attach` does.
    pub(crate) fn spec(&self, front: u16, back: u16) -> DeviceSpec {
        DeviceSpec {
            front,
            back,
            devid: self.devid,
            max_ring_page_order: self.ring_page_order,
            // parse() bounds the MiB so that the shift cannot overflow.
            max_buffer_size: self.max_buffer_mib.map(|m| m << 20),
            feature_rw: Some(self.rw.unwrap_or(false)),
        }
    }
}

/// An entry with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) entry: Entry,
    pub(crate) source: String,
    pub(crate) line: usize,
}

impl Located {
    /// An error about this entry's `key`.
    pub(crate) fn error(&self, key: &str, message: impl Into<String>) -> CfgError {
        CfgError {
            source: self.source.clone(),
            line: self.line,
            key: Some(format!("{KEY} key {key}")),
            message: message.into(),
        }
    }
}

/// What this tool reads of a domain configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// `name`, if set.
    pub(crate) name: Option<String>,
    /// The `hyper_dmabuf` entries, in order.
    pub(crate) devices: Vec<Located>,
}

/// The effective value of each key, as xl computes it: a later `=`
/// replaces, `+=` appends to a value of the same kind. Returns the value
/// and the setting it was last given by.
fn effective(settings: &[Setting]) -> Result<HashMap<&str, (Value, &Setting)>, CfgError> {
    let mut map: HashMap<&str, (Value, &Setting)> = HashMap::new();
    for s in settings {
        let value = match (s.append, map.remove(s.key.as_str())) {
            (true, Some((Value::List(mut a), _))) => match &s.value {
                Value::List(b) => {
                    a.extend(b.iter().cloned());
                    Value::List(a)
                }
                _ => return Err(type_error(s, "`+=` of a list needs a list")),
            },
            (true, Some((Value::Str(a, l), _))) => match &s.value {
                Value::Str(b, _) => Value::Str(a + b, l),
                _ => return Err(type_error(s, "`+=` of a string needs a string")),
            },
            (true, Some((Value::Number(_), _))) => {
                return Err(type_error(s, "`+=` of a number"));
            }
            _ => s.value.clone(),
        };
        map.insert(s.key.as_str(), (value, s));
    }
    Ok(map)
}

fn type_error(s: &Setting, message: &str) -> CfgError {
    CfgError {
        source: s.source.clone(),
        line: s.line,
        key: Some(s.key.clone()),
        message: message.into(),
    }
}

impl Config {
    /// The configuration that `settings` (a file's, then any from the
    /// command line) make.
    pub(crate) fn from_settings(settings: &[Setting]) -> Result<Config, CfgError> {
        let map = effective(settings)?;
        let name = match map.get("name") {
            None => None,
            Some((Value::Str(n, _), _)) => Some(n.clone()),
            Some((_, s)) => return Err(type_error(s, "must be a string")),
        };
        let mut devices: Vec<Located> = Vec::new();
        match map.get(KEY) {
            None => {}
            Some((Value::List(items), s)) => {
                for (index, item) in items.iter().enumerate() {
                    let Value::Str(text, line) = item else {
                        return Err(type_error(
                            s,
                            &format!("entry {index} is not a string (one string per device)"),
                        ));
                    };
                    let entry = Entry::parse(text, index).map_err(|e| CfgError {
                        source: s.source.clone(),
                        line: *line,
                        key: Some(match e.key {
                            Some(k) => format!("{KEY} key {k}"),
                            None => KEY.to_string(),
                        }),
                        message: e.message,
                    })?;
                    let located = Located {
                        entry,
                        source: s.source.clone(),
                        line: *line,
                    };
                    if let Some(other) = devices
                        .iter()
                        .find(|d| d.entry.devid == located.entry.devid)
                    {
                        return Err(located.error(
                            "devid",
                            format!(
                                "devid {} is used already by the entry of line {}",
                                located.entry.devid, other.line
                            ),
                        ));
                    }
                    devices.push(located);
                }
            }
            Some((_, s)) => {
                return Err(type_error(
                    s,
                    "must be a list of strings, one per device: [ \"backend=0\" ]",
                ))
            }
        }
        Ok(Config { name, devices })
    }

    /// Reads the file at `path`, then the `KEY=VALUE` arguments of `extra`
    /// (what `xl create` appends to the configuration).
    pub(crate) fn read(path: &str, extra: &[String]) -> Result<Config, CfgError> {
        let text = read_bounded(path).map_err(|message| CfgError {
            source: path.to_string(),
            line: 0,
            key: None,
            message,
        })?;
        let mut settings = parse_settings(path, &text)?;
        for arg in extra.iter().filter(|a| is_setting_arg(a)) {
            settings.extend(parse_settings("command line", arg.as_bytes())?);
        }
        Config::from_settings(&settings)
    }
}

/// Whether an `xl create` argument is a `KEY=VALUE` setting (rather than
/// an option).
pub(crate) fn is_setting_arg(arg: &str) -> bool {
    let key_end = arg
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(arg.len());
    arg.as_bytes()
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && arg[key_end..]
            .trim_start_matches([' ', '\t'])
            .starts_with(['=', '+'])
}

/// The bytes of `path`, at most [`MAX_FILE_SIZE`].
pub(crate) fn read_bounded(path: impl AsRef<std::path::Path>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut text = Vec::new();
    file.take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() > MAX_FILE_SIZE {
        return Err(format!("larger than {MAX_FILE_SIZE} bytes"));
    }
    Ok(text)
}

/// Parses `text` as the whole configuration, named `source`.
pub(crate) fn parse(source: &str, text: &[u8]) -> Result<Config, CfgError> {
    Config::from_settings(&parse_settings(source, text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(text: &str) -> Config {
        parse("vm.cfg", text.as_bytes()).unwrap()
    }

    fn err(text: &str) -> String {
        parse("vm.cfg", text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_typical_file() {
        let c = ok(r#"
# A guest.
name = "guest1"   # its name
type = 'pvh'; memory = 512
kernel = "/boot/vmlinuz"
extra = "console=hvc0 \"quoted\""
vif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]
vnuma = [ [ "pnode=0", "size=256" ], [ "pnode=1", "size=256", ], ]
hyper_dmabuf = [
    "backend=0, devid=0, ring-page-order=2, max-buffer-mib=256, rw=1",
    # a comment inside the list
    'backend=dd1',
]
"#);
        assert_eq!(c.name.as_deref(), Some("guest1"));
        assert_eq!(c.devices.len(), 2);
        assert_eq!(
            c.devices[0].entry,
            Entry {
                backend: Domain::Id(0),
                devid: 0,
                ring_page_order: Some(2),
                max_buffer_mib: Some(256),
                rw: Some(true),
            }
        );
        assert_eq!(c.devices[0].line, 10);
        assert_eq!(c.devices[1].line, 12);
        assert_eq!(c.devices[1].entry.backend, Domain::Name("dd1".into()));
        // The default devid is the entry's index.
        assert_eq!(c.devices[1].entry.devid, 1);
        assert_eq!(c.devices[1].entry.rw, None);
    }

    #[test]
    fn no_entries_and_empty_lists() {
        assert_eq!(ok("").devices, []);
        assert_eq!(ok("name='x'\n").devices, []);
        assert_eq!(ok("hyper_dmabuf=[]").devices, []);
        assert_eq!(ok("hyper_dmabuf=[\n]\n").devices, []);
        // An empty string is a device with every default.
        let c = ok("hyper_dmabuf=['']");
        assert_eq!(c.devices[0].entry.spec(3, 0).feature_rw, Some(false));
    }

    #[test]
    fn escapes() {
        let c = ok(r#"name = "a\tb\x41\101\\\"\'""#);
        assert_eq!(c.name.as_deref(), Some("a\tbAA\\\"'"));
        let c = ok(r"name = 'it\'s'");
        assert_eq!(c.name.as_deref(), Some("it's"));
        assert!(err(r#"name = "\q""#).contains("invalid escape"));
        assert!(err(r#"name = "\x4""#).contains("numeric escape"));
        assert!(err(r#"name = "\0""#).contains("NUL"));
        assert!(err(r#"name = "\777""#).contains("above 255"));
    }

    #[test]
    fn later_settings_win_and_plus_equals_appends() {
        let c = ok("name='a'\nname='b'\nhyper_dmabuf=['devid=4']\nhyper_dmabuf+=['']");
        assert_eq!(c.name.as_deref(), Some("b"));
        let devids: Vec<u32> = c.devices.iter().map(|d| d.entry.devid).collect();
        assert_eq!(devids, [4, 1]);
        assert_eq!(ok("name='a'\nname+='b'").name.as_deref(), Some("ab"));
        assert_eq!(err("m=1\nm+=2"), "vm.cfg:2: m: `+=` of a number");
    }

    #[test]
    fn syntax_errors_name_the_line_and_key() {
        assert_eq!(err("name = \"x"), "vm.cfg:1: name: unterminated string");
        assert_eq!(
            err("a=1\nname = \"x\ny\""),
            "vm.cfg:2: name: unterminated string (newline in it)"
        );
        assert_eq!(
            err("\n\nhyper_dmabuf = [ 'a',\n 'b'\n"),
            "vm.cfg:3: hyper_dmabuf: unterminated list"
        );
        assert_eq!(
            err("x = [ 1 2 ]"),
            "vm.cfg:1: x: expected `,` or `]` in a list, found number 2"
        );
        assert_eq!(err("= 3"), "vm.cfg:1: expected a key, found `=`");
        assert_eq!(
            err("a b = 3"),
            "vm.cfg:1: a: expected `=` after the key, found `b`"
        );
        assert_eq!(
            err("a = 3 4"),
            "vm.cfg:1: a: expected the end of the setting, found number 4"
        );
        assert_eq!(
            err("a = \n3"),
            "vm.cfg:1: a: expected a value, found the end of the setting"
        );
        assert_eq!(err("a = 1\0"), "vm.cfg:1: a: a NUL byte");
        assert_eq!(err("a = $"), "vm.cfg:1: a: unexpected character `$`");
        let deep = format!("a = {}", "[".repeat(100_000));
        assert_eq!(err(&deep), "vm.cfg:1: a: lists nested deeper than 16");
        let big = vec![b'#'; MAX_FILE_SIZE + 1];
        assert_eq!(
            parse("vm.cfg", &big).unwrap_err().to_string(),
            "vm.cfg: larger than 1048576 bytes"
        );
    }

    #[test]
    fn entry_errors_name_the_line_and_key() {
        let e = |entry: &str| err(&format!("name='g'\nhyper_dmabuf = [\n  '',\n  '{entry}' ]"));
        assert_eq!(
            e("ring-page-order=5"),
            "vm.cfg:4: hyper_dmabuf key ring-page-order: \"5\" is out of range (0 to 4)"
        );
        assert_eq!(
            e("colour=red"),
            "vm.cfg:4: hyper_dmabuf key colour: unknown key \
             (known: backend, devid, ring-page-order, max-buffer-mib, rw)"
        );
        assert_eq!(e("rw=1,rw=0"), "vm.cfg:4: hyper_dmabuf key rw: given twice");
        assert_eq!(
            e("rw=2"),
            "vm.cfg:4: hyper_dmabuf key rw: \"2\" is out of range (0 to 1)"
        );
        assert_eq!(e("rw"), "vm.cfg:4: hyper_dmabuf: \"rw\" is not KEY=VALUE");
        assert_eq!(
            e("max-buffer-mib=0"),
            "vm.cfg:4: hyper_dmabuf key max-buffer-mib: \"0\" is out of range (1 to 17592186044415)"
        );
        assert!(e("max-buffer-mib=17592186044416").contains("out of range"));
        assert!(e("max-buffer-mib=99999999999999999999999").contains("not a decimal"));
        assert!(e("max-buffer-mib=-1").contains("not a decimal"));
        assert_eq!(
            e("backend=32752"),
            "vm.cfg:4: hyper_dmabuf key backend: \"32752\" is out of range (0 to 32751)"
        );
        assert!(e("backend=a b").contains("neither a domain id nor a domain name"));
        assert!(e("backend=").contains("neither"));
        assert_eq!(
            e("devid=0"),
            "vm.cfg:4: hyper_dmabuf key devid: devid 0 is used already by the entry of line 3"
        );
        assert!(e("devid=4294967296").contains("out of range"));
        assert_eq!(
            err("hyper_dmabuf = 'backend=0'"),
            "vm.cfg:1: hyper_dmabuf: must be a list of strings, one per device: [ \"backend=0\" ]"
        );
        assert_eq!(
            err("hyper_dmabuf = [ 3 ]"),
            "vm.cfg:1: hyper_dmabuf: entry 0 is not a string (one string per device)"
        );
        assert_eq!(err("name = [ 'x' ]"), "vm.cfg:1: name: must be a string");
    }

    #[test]
    fn setting_arguments() {
        assert!(is_setting_arg("name=foo"));
        assert!(is_setting_arg("name = 'foo'"));
        assert!(is_setting_arg("hyper_dmabuf+=['']"));
        assert!(!is_setting_arg("-q"));
        assert!(!is_setting_arg("--name=x"));
        assert!(!is_setting_arg("vm.cfg"));
        assert!(!is_setting_arg("=x"));
    }

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        (
            prop_oneof![
                (0..DOMID_FIRST_RESERVED).prop_map(Domain::Id),
                "[a-zA-Z_.-][a-zA-Z0-9_.-]{0,63}".prop_map(Domain::Name),
            ],
            any::<u32>(),
            proptest::option::of(0..=MAX_RING_PAGE_ORDER),
            proptest::option::of(1..=u64::MAX >> 20),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(backend, devid, ring_page_order, max_buffer_mib, rw)| Entry {
                    backend,
                    devid,
                    ring_page_order,
                    max_buffer_mib,
                    rw,
                },
            )
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(text in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse("fuzz.cfg", &text);
        }

        #[test]
        fn random_config_like_text_never_panics(
            text in "([a-z_]{1,3}|[ \t\n;=,\\[\\]#'\"\\\\x0-9+]|\0|hyper_dmabuf|name){0,80}"
        ) {
            if let Err(e) = parse("fuzz.cfg", text.as_bytes()) {
                prop_assert!(e.to_string().starts_with("fuzz.cfg"));
            }
        }

        #[test]
        fn random_entries_never_panic(text in "([a-z-]{1,16}|[=, 0-9]|\0|backend|rw|devid){0,40}") {
            let _ = Entry::parse(&text, 0);
        }

        #[test]
        fn unterminated_lists_are_errors(depth in 1usize..64, body in "[ \n'a,0-9]{0,20}") {
            let text = format!("k = {}{}", "[".repeat(depth), body.replace('\'', ""));
            prop_assert!(parse("x", text.as_bytes()).is_err());
        }

        #[test]
        fn huge_numbers_are_errors(digits in "[1-9][0-9]{20,60}") {
            for key in ["devid", "backend", "ring-page-order", "max-buffer-mib", "rw"] {
                let text = format!("hyper_dmabuf = [ '{key}={digits}' ]");
                let e = parse("x", text.as_bytes()).unwrap_err();
                let key_text = format!("key {key}");
                prop_assert!(e.to_string().contains(&key_text), "{}", e);
            }
        }

        #[test]
        fn generated_entries_round_trip(
            entries in proptest::collection::vec(entry_strategy(), 0..8),
            double in any::<bool>(),
        ) {
            // Unique devids, as a valid file needs.
            let mut entries = entries;
            for (i, e) in entries.iter_mut().enumerate() {
                e.devid = e.devid.wrapping_mul(8).wrapping_add(i as u32 & 7);
            }
            let items: Vec<String> = entries
                .iter()
                .map(|e| {
                    if double {
                        format!("\"{}\"", e.render())
                    } else {
                        format!("'{}'", e.render())
                    }
                })
                .collect();
            let list = if items.is_empty() {
                "[]".to_string()
            } else {
                format!("[\n{},\n]", items.join(",\n  # between\n"))
            };
            let text = format!("name = 'g' # x\nhyper_dmabuf = {list}\nother = [ 1 ]\n");
            let c = parse("x", text.as_bytes()).unwrap();
            let got: Vec<Entry> = c.devices.into_iter().map(|d| d.entry).collect();
            prop_assert_eq!(got, entries);
        }
    }
}

//! Chat templates: turn a list of chat messages into the prompt text a model expects.
//!
//! GGUF files carry a Jinja template in `tokenizer.chat_template`, written for Python's
//! jinja2 as used by Hugging Face transformers' `apply_chat_template`. This module renders
//! those templates with [`minijinja`] configured to behave like that setup:
//!
//! * `trim_blocks` and `lstrip_blocks` on, trailing newline of the source dropped,
//!   `{% break %}` / `{% continue %}` available;
//! * globals `raise_exception(msg)` and `strftime_now(fmt)`, variables `messages`,
//!   `tools`, `documents`, `add_generation_prompt`, `bos_token`, `eos_token`;
//! * a `tojson` filter that matches Python's `json.dumps` (no HTML escaping, `indent`,
//!   `separators`, `sort_keys`, `ensure_ascii`), as transformers overrides it;
//! * Python string methods (`.strip()`, `.startswith()`, `.split()`, …) via
//!   `minijinja-contrib`'s pycompat, with Python's notion of whitespace;
//! * printing of values as Python's `str()` does (`None`, `True`, `['a', 1.5]`, `1e+20`).
//!
//! The golden test `tests/chat_template_golden.rs` compares the output byte for byte with
//! jinja2 (see `scripts/gen_chat_template_golden.py`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Serde, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use serde::Serialize;

const TEMPLATE_NAME: &str = "chat_template";

/// One chat message as given to the template (`message.role`, `message.content`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template source does not parse.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`; holds the message as given.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Any other failure while rendering (undefined attribute access, type errors, …).
    #[error("chat template render error: {0}")]
    Render(String),
}

impl ChatTemplateError {
    /// The message without the prefix naming the kind of failure.
    pub fn message(&self) -> &str {
        match self {
            ChatTemplateError::Syntax(m)
            | ChatTemplateError::Raised(m)
            | ChatTemplateError::Render(m) => m,
        }
    }
}

/// Everything besides the messages that a render can take. `Default` gives what
/// [`ChatTemplate::render`] uses: no tools, no generation prompt, no extra variables.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Value of `add_generation_prompt`.
    pub add_generation_prompt: bool,
    /// Value of `tools` (usually a list of JSON function schemas); `None` renders as `none`
    /// just like transformers passes `tools=None`.
    pub tools: Option<serde_json::Value>,
    /// Value of `documents` (retrieval-augmented templates); `None` renders as `none`.
    pub documents: Option<serde_json::Value>,
    /// Further template variables (transformers' `**kwargs`), e.g. `date_string` or
    /// `enable_thinking`. These may override `bos_token` / `eos_token` but not `messages`,
    /// `tools`, `documents` or `add_generation_prompt`.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template together with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` once; renders reuse the compiled template.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let mut env = Environment::new();
        configure(&mut env);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders `messages` like transformers' `apply_chat_template(..., tokenize=False)`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                ..RenderOptions::default()
            },
        )
    }

    /// Renders any serializable messages (e.g. JSON values carrying `tool_calls`) with
    /// tools, documents and extra variables.
    pub fn render_with<M: Serialize>(
        &self,
        messages: &[M],
        options: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        for (k, v) in &options.extra {
            ctx.insert(k.clone(), to_value(v));
        }
        ctx.insert("messages".into(), to_value(messages));
        ctx.insert("tools".into(), optional_json(&options.tools));
        ctx.insert("documents".into(), optional_json(&options.documents));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(options.add_generation_prompt),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(describe(&e)))?;
        template.render(ctx).map_err(classify_render_error)
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    Value::from(Serde(v))
}

fn optional_json(v: &Option<serde_json::Value>) -> Value {
    match v {
        Some(v) => to_value(v),
        None => Value::from(()),
    }
}

/// The error that `raise_exception` attaches as source, so that its message can be told
/// apart from engine errors.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn classify_render_error(err: Error) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return ChatTemplateError::Raised(raised.0.clone());
        }
        source = e.source();
    }
    ChatTemplateError::Render(describe(&err))
}

fn describe(err: &Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let _ = write!(msg, ": {e}");
        source = e.source();
    }
    msg
}

fn configure(env: &mut Environment<'static>) {
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(|out, _state, value| {
        if value.is_undefined() {
            return Ok(());
        }
        let mut s = String::new();
        py_str(&mut s, value);
        out.write_str(&s).map_err(Error::from)
    });
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim_filter);
    env.add_filter("string", |v: Value| {
        let mut s = String::new();
        py_str(&mut s, &v);
        s
    });
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
}

fn raise_exception(message: Option<Value>) -> Result<Value, Error> {
    let mut msg = String::new();
    if let Some(m) = message {
        py_str(&mut msg, &m);
    }
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
}

// ---------------------------------------------------------------------------------------
// Python string semantics.

/// Python's `str.isspace` set: Rust's Unicode whitespace plus the ASCII separators
/// U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let matches = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_py_space(c),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(matches);
    }
    if right {
        out = out.trim_end_matches(matches);
    }
    out
}

fn trim_filter(value: Value, chars: Option<String>) -> Value {
    let mut s = String::new();
    py_str(&mut s, &value);
    Value::from(py_strip(&s, chars.as_deref(), true, true))
}

fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let strip = match method {
            "strip" => Some((true, true)),
            "lstrip" => Some((true, false)),
            "rstrip" => Some((false, true)),
            _ => None,
        };
        if let Some((left, right)) = strip {
            let (chars,): (Option<Value>,) = minijinja::value::from_args(args)?;
            let chars = match &chars {
                None => None,
                Some(v) if v.is_none() => None,
                Some(v) => Some(v.as_str().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("{method} arg must be None or str"),
                    )
                })?),
            };
            return Ok(Value::from(py_strip(s, chars, left, right)));
        }
        if method == "isspace" && args.is_empty() {
            return Ok(Value::from(!s.is_empty() && s.chars().all(is_py_space)));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Appends Python's `str(value)`.
fn py_str(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => py_repr(out, value),
    }
}

/// Appends Python's `repr(value)` (approximated for objects with no Python counterpart).
fn py_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => py_number(out, value),
        ValueKind::String => py_repr_str(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut n = 0;
            if let Ok(iter) = value.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(out, &item);
                    n += 1;
                }
            }
            if tuple {
                if n == 1 {
                    out.push(',');
                }
                out.push(')');
            } else {
                out.push(']');
            }
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = value.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(out, &key);
                    out.push_str(": ");
                    py_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn py_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else if let Ok(f) = f64::try_from(value.clone()) {
        py_float(out, f, false);
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Python's `repr(float)`; with `json` the non-finite spellings of `json.dumps`.
fn py_float(out: &mut String, f: f64, json: bool) {
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
        return;
    }
    if f.is_infinite() {
        let s = match (json, f > 0.0) {
            (true, true) => "Infinity",
            (true, false) => "-Infinity",
            (false, true) => "inf",
            (false, false) => "-inf",
        };
        out.push_str(s);
        return;
    }
    // Shortest round-trip digits, as Python's repr uses.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let decpt = exp + 1;
    if neg {
        out.push('-');
    }
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}

/// Whether Python's `str.isprintable` is false for `c` (approximation covering the
/// control, format and separator characters that occur in practice).
fn py_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{61c}' | '\u{1680}' | '\u{180e}'
            | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}' | '\u{3000}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
            | '\u{e000}'..='\u{f8ff}')
}

fn py_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
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
            c if py_unprintable(c) => {
                let cp = c as u32;
                let _ = if cp < 0x100 {
                    write!(out, "\\x{cp:02x}")
                } else if cp < 0x10000 {
                    write!(out, "\\u{cp:04x}")
                } else {
                    write!(out, "\\U{cp:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

// ---------------------------------------------------------------------------------------
// tojson, as transformers defines it:
// json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn tojson(value: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments besides the value",
        ));
    }
    let mut params: [Value; 4] = Default::default();
    for (i, v) in args.0.into_iter().enumerate() {
        params[i] = v;
    }
    for (i, name) in NAMES.iter().enumerate() {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if !params[i].is_undefined() {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for argument '{name}'"),
                ));
            }
            params[i] = v;
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number if indent.is_integer() => {
            let n = indent.as_i64().unwrap_or(0).max(0) as usize;
            Some(" ".repeat(n))
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson indent must be an integer, a string or none",
            ))
        }
    };
    let (item_sep, key_sep) = if separators.is_undefined() || separators.is_none() {
        let item = if indent.is_some() { "," } else { ", " };
        (item.to_owned(), ": ".to_owned())
    } else {
        let parts: Vec<Value> = separators.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                a.as_str().unwrap_or_default().to_owned(),
                b.as_str().unwrap_or_default().to_owned(),
            ),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson separators must be a pair of strings",
                ))
            }
        }
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_true(),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_true(),
    };
    let mut out = String::new();
    json_value(&mut out, &value, &opts, 0, 0)?;
    Ok(Value::from_safe_string(out))
}

const MAX_JSON_DEPTH: usize = 500;

fn json_newline(out: &mut String, opts: &JsonOptions, level: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn json_value(
    out: &mut String,
    value: &Value,
    opts: &JsonOptions,
    level: usize,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let f = f64::try_from(value.clone())?;
                py_float(out, f, true);
            }
        }
        ValueKind::String => json_str(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                json_newline(out, opts, level + 1);
                json_value(out, item, opts, level + 1, depth + 1)?;
            }
            json_newline(out, opts, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                json_newline(out, opts, level + 1);
                json_str(out, key, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                json_value(out, item, opts, level + 1, depth + 1)?;
            }
            json_newline(out, opts, level);
            out.push('}');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Dictionary keys as `json.dumps` converts them.
fn json_key(key: &Value) -> Result<String, Error> {
    let mut s = String::new();
    match key.kind() {
        ValueKind::String => s.push_str(key.as_str().unwrap_or_default()),
        ValueKind::None => s.push_str("null"),
        ValueKind::Bool => s.push_str(if key.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if key.is_integer() {
                let _ = write!(s, "{key}");
            } else {
                py_float(&mut s, f64::try_from(key.clone())?, true);
            }
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    }
    Ok(s)
}

fn json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------
// strftime_now: Python's datetime.now().strftime(fmt), evaluated in UTC (the engine does
// not read the local time zone).

fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    strftime(&format, secs)
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Formats the UTC time `unix_secs` with C/Python `strftime` directives (C locale).
/// Directives without a meaning here are copied literally, as glibc does.
pub fn strftime(format: &str, unix_secs: f64) -> String {
    let whole = unix_secs.floor();
    let micros = ((unix_secs - whole) * 1e6).round().min(999_999.0) as u32;
    let whole = whole as i64;
    let days = whole.div_euclid(86_400);
    let sod = whole.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (3)
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[month as usize - 1] + day + u32::from(month > 2 && is_leap(year));
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc flag: "%-d" drops the padding.
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match chars.next() {
            Some('Y') => {
                let _ = write!(out, "{year}");
            }
            Some('y') => num(&mut out, year.rem_euclid(100), 2),
            Some('m') => num(&mut out, month.into(), 2),
            Some('d') => num(&mut out, day.into(), 2),
            Some('e') => {
                let _ = write!(out, "{day:>2}");
            }
            Some('H') => num(&mut out, hour, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, minute, 2),
            Some('S') => num(&mut out, second, 2),
            Some('f') => {
                let _ = write!(out, "{micros:06}");
            }
            Some('j') => num(&mut out, yday.into(), 3),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('b') | Some('h') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('w') => {
                let _ = write!(out, "{}", (weekday + 1) % 7);
            }
            Some('u') => {
                let _ = write!(out, "{}", weekday + 1);
            }
            Some('F') => {
                let _ = write!(out, "{year}-{month:02}-{day:02}");
            }
            Some('D') | Some('x') => {
                let _ = write!(out, "{month:02}/{day:02}/{:02}", year.rem_euclid(100));
            }
            Some('T') | Some('X') => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            Some('R') => {
                let _ = write!(out, "{hour:02}:{minute:02}");
            }
            Some('c') => {
                let _ = write!(
                    out,
                    "{} {} {day:>2} {hour:02}:{minute:02}:{second:02} {year}",
                    &WEEKDAYS[weekday][..3],
                    &MONTHS[month as usize - 1][..3]
                );
            }
            // A naive datetime has no zone: Python prints nothing.
            Some('z') | Some('Z') => {}
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    fn render_src(src: &str) -> Result<String, ChatTemplateError> {
        ChatTemplate::new(src, "<s>", "</s>")?.render(&msgs(&[("user", "hi")]), false)
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax(_)), "{err:?}");
        assert!(err.to_string().contains("syntax"), "{err}");
    }

    #[test]
    fn raise_exception_message_comes_back() {
        let err = render_src("{{ raise_exception('roles must alternate') }}").unwrap_err();
        assert_eq!(
            err,
            ChatTemplateError::Raised("roles must alternate".into())
        );
        assert_eq!(err.message(), "roles must alternate");
    }

    #[test]
    fn render_errors_do_not_panic() {
        for src in [
            "{{ messages[0].content.nope() }}",
            "{{ undefined_thing.attr }}",
            "{{ 1 + 'a' }}",
            "{{ nope | tojson }}",
            "{{ messages | tojson(indent=[1]) }}",
            "{{ messages | tojson(bogus=1) }}",
            "{{ raise_exception() }}",
        ] {
            assert!(render_src(src).is_err(), "{src} should fail");
        }
    }

    #[test]
    fn python_printing() {
        let out = render_src(
            "{{ none }}|{{ true }}|{{ [1, 'a', \"b'c\", none, 2.5] }}|{{ {'k': false} }}|{{ 1e16 }}|{{ 0.00001 }}|{{ 123.0 }}",
        )
        .unwrap();
        assert_eq!(
            out,
            "None|True|[1, 'a', \"b'c\", None, 2.5]|{'k': False}|1e+16|1e-05|123.0"
        );
    }

    #[test]
    fn tojson_matches_python() {
        let out = render_src(
            "{{ {'a': [1, 2.0, 'x\"<>&\u{e9}'], 'b': {}, 'c': []} | tojson }}\n{{ {'a': [1]} | tojson(indent=2) }}\n{{ 'é' | tojson(ensure_ascii=true) }}",
        )
        .unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, 2.0, \"x\\\"<>&\u{e9}\"], \"b\": {}, \"c\": []}\n{\n  \"a\": [\n    1\n  ]\n}\n\"\\u00e9\""
        );
    }

    #[test]
    fn python_strip_whitespace() {
        let out = render_src(
            "{{ '\u{1f} x\u{a0}'.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ ' y ' | trim }}",
        )
        .unwrap();
        assert_eq!(out, "x|hi|y");
    }

    #[test]
    fn tools_and_extra_variables() {
        let t = ChatTemplate::new(
            "{% if tools %}{% for t in tools %}{{ t.name }};{% endfor %}{% endif %}{{ date_string }}|{{ bos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("date_string".into(), "1 Jan 2025".into());
        let opts = RenderOptions {
            tools: Some(serde_json::json!([{"name": "a"}, {"name": "b"}])),
            extra,
            ..Default::default()
        };
        let out = t.render_with(&msgs(&[("user", "x")]), &opts).unwrap();
        assert_eq!(out, "a;b;1 Jan 2025|<s>");
        assert_eq!(t.render(&[], false).unwrap(), "|<s>");
    }

    #[test]
    fn strftime_formats() {
        // 2024-07-26 13:05:09.25 UTC, a Friday.
        let t = 1_722_000_000.0 - 1_722_000_000.0 % 86_400.0 + 13.0 * 3600.0 + 5.0 * 60.0 + 9.25;
        assert_eq!(
            strftime("%d %b %Y|%A %B %-d|%H:%M:%S.%f|%I%p|%j|%y|%%|%Q", t),
            "26 Jul 2024|Friday July 26|13:05:09.250000|01PM|208|24|%|%Q"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0.0), "1970-01-01 Thu");
        assert_eq!(strftime("%F %j", 951_782_400.0), "2000-02-29 060");
        let year = render_src("{{ strftime_now('%Y') }}").unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.starts_with('2'));
    }

    #[test]
    fn compiled_template_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }
}

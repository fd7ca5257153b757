//! Process-wide logging through `tracing`, shaped like etcd's output.
//!
//! etcd 3.4 has two loggers: capnslog (the 3.4 default), which prints
//! `2006-01-02 15:04:05.000000 I | pkg: message` lines, and zap, which prints
//! JSON objects with `level`, `ts`, `caller` and `msg` keys. Operators' log
//! pipelines parse these, so detcd emits the same shapes (without `caller`).
//! Messages are written verbatim so that tools grepping for etcd's phrases,
//! like "ready to serve client requests", keep working.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// `--logger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logger {
    /// Human-readable capnslog-style lines (etcd 3.4's default).
    #[default]
    Capnslog,
    /// Structured JSON lines like zap's.
    Zap,
}

impl Logger {
    /// Parses etcd's `--logger` values.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "capnslog" => Some(Logger::Capnslog),
            "zap" => Some(Logger::Zap),
            _ => None,
        }
    }
}

/// `--log-level`: etcd's (zap's) level names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    /// `debug`.
    Debug,
    /// `info` (the default).
    #[default]
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
    /// `dpanic`: shown like errors; detcd never panics on log calls.
    Dpanic,
    /// `panic`: shown like errors.
    Panic,
    /// `fatal`: shown like errors.
    Fatal,
}

impl LogLevel {
    /// Parses etcd's `--log-level` values.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "dpanic" => LogLevel::Dpanic,
            "panic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            _ => return None,
        })
    }

    /// The most verbose `tracing` level shown; `tracing` has nothing above
    /// ERROR, so etcd's panic/fatal thresholds show errors only.
    pub fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            _ => LevelFilter::ERROR,
        }
    }
}

/// One `--log-outputs` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    /// `default`: stderr (etcd may use journald under systemd; detcd does not).
    Default,
    /// `stderr`.
    Stderr,
    /// `stdout`.
    Stdout,
    /// `systemd/journal`: written to stderr, which systemd captures.
    Journal,
    /// Any other value: a file path, appended to.
    File(String),
}

impl LogOutput {
    /// Interprets one `--log-outputs` entry; anything unrecognised is a path.
    pub fn parse(s: &str) -> Self {
        match s {
            "default" => LogOutput::Default,
            "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            "systemd/journal" => LogOutput::Journal,
            path => LogOutput::File(path.to_string()),
        }
    }
}

/// Everything [`init`] needs; build it with `Config::log_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Output format.
    pub logger: Logger,
    /// Least severe level written.
    pub level: LogLevel,
    /// Where lines go; empty means stderr.
    pub outputs: Vec<LogOutput>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            logger: Logger::Capnslog,
            level: LogLevel::Info,
            outputs: vec![LogOutput::Default],
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// A `--log-outputs` file could not be opened for appending.
    #[error("cannot open log output {path:?}: {source}")]
    OpenOutput {
        /// The path from `--log-outputs`.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A global subscriber was already installed (e.g. `init` called twice).
    #[error("logging is already initialized")]
    AlreadyInitialized,
}

/// Installs the global `tracing` subscriber described by `cfg`.
///
/// Call it once per process; a second call returns
/// [`LoggingError::AlreadyInitialized`] instead of panicking.
pub fn init(cfg: &LogConfig) -> Result<(), LoggingError> {
    let layer = EtcdLayer::new(cfg)?;
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(cfg.level.filter()));
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| LoggingError::AlreadyInitialized)
}

/// A `tracing` layer that writes etcd-style lines to the configured outputs.
///
/// Public so that tests and embedders can compose it with other layers or
/// install it with `tracing::subscriber::with_default`.
pub struct EtcdLayer {
    logger: Logger,
    sinks: Arc<Vec<Sink>>,
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<File>),
}

impl EtcdLayer {
    /// Opens the outputs named in `cfg`.
    pub fn new(cfg: &LogConfig) -> Result<Self, LoggingError> {
        let mut sinks = Vec::new();
        for output in &cfg.outputs {
            let sink = match output {
                LogOutput::Default | LogOutput::Stderr | LogOutput::Journal => Sink::Stderr,
                LogOutput::Stdout => Sink::Stdout,
                LogOutput::File(path) => {
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| LoggingError::OpenOutput {
                            path: path.clone(),
                            source,
                        })?;
                    Sink::File(Mutex::new(file))
                }
            };
            sinks.push(sink);
        }
        if sinks.is_empty() {
            sinks.push(Sink::Stderr);
        }
        Ok(EtcdLayer {
            logger: cfg.logger,
            sinks: Arc::new(sinks),
        })
    }

    fn write_line(&self, line: &str) {
        // Logging must never take the process down, so write errors are dropped.
        for sink in self.sinks.iter() {
            match sink {
                Sink::Stderr => {
                    let _ = std::io::stderr().lock().write_all(line.as_bytes());
                }
                Sink::Stdout => {
                    let _ = std::io::stdout().lock().write_all(line.as_bytes());
                }
                Sink::File(file) => {
                    if let Ok(mut f) = file.lock() {
                        let _ = f.write_all(line.as_bytes());
                    }
                }
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for EtcdLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = match self.logger {
            Logger::Zap => format_json(*meta.level(), now, &fields),
            Logger::Capnslog => format_capnslog(*meta.level(), meta.target(), now, &fields),
        };
        self.write_line(&line);
    }
}

/// The event's message and its other fields, in order.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, FieldValue)>,
}

enum FieldValue {
    Str(String),
    Raw(String),
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others
                .push((field.name().to_string(), FieldValue::Str(value.to_string())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.others
            .push((field.name().to_string(), FieldValue::Raw(value.to_string())));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.others
            .push((field.name().to_string(), FieldValue::Raw(value.to_string())));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.others
            .push((field.name().to_string(), FieldValue::Raw(value.to_string())));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let raw = if value.is_finite() {
            value.to_string()
        } else {
            format!("\"{value}\"")
        };
        self.others
            .push((field.name().to_string(), FieldValue::Raw(raw)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((
                field.name().to_string(),
                FieldValue::Str(format!("{value:?}")),
            ));
        }
    }
}

fn zap_level(level: Level) -> &'static str {
    match level {
        Level::TRACE | Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// `{"level":"info","ts":"2024-01-02T03:04:05.678Z","msg":"...",...}`
fn format_json(level: Level, now: std::time::Duration, fields: &Fields) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"level\":\"");
    out.push_str(zap_level(level));
    out.push_str("\",\"ts\":\"");
    out.push_str(&iso8601(now));
    out.push_str("\",\"msg\":");
    push_json_string(&mut out, &fields.message);
    for (name, value) in &fields.others {
        out.push(',');
        push_json_string(&mut out, name);
        out.push(':');
        match value {
            FieldValue::Str(s) => push_json_string(&mut out, s),
            FieldValue::Raw(r) => out.push_str(r),
        }
    }
    out.push_str("}\n");
    out
}

/// The start of a capnslog line written now at `letter`'s level (`E`, `W`, ...):
/// `2024-01-02 03:04:05.678901 E | `. For messages printed before logging is set up, such
/// as etcd's refusal of a bad command line, which etcd writes through capnslog.
pub fn capnslog_prefix(letter: char) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (date, time) = civil_time(now);
    format!("{date} {time}.{:06} {letter} | ", now.subsec_micros())
}

/// `2024-01-02 03:04:05.678901 I | target: message key=value`
fn format_capnslog(
    level: Level,
    target: &str,
    now: std::time::Duration,
    fields: &Fields,
) -> String {
    let letter = match level {
        Level::TRACE => 'T',
        Level::DEBUG => 'D',
        Level::INFO => 'I',
        Level::WARN => 'W',
        Level::ERROR => 'E',
    };
    let (date, time) = civil_time(now);
    let mut out = format!(
        "{date} {time}.{:06} {letter} | {target}: {}",
        now.subsec_micros(),
        fields.message
    );
    for (name, value) in &fields.others {
        match value {
            FieldValue::Str(s) => {
                let _ = write!(out, " {name}={s:?}");
            }
            FieldValue::Raw(r) => {
                let _ = write!(out, " {name}={r}");
            }
        }
    }
    out.push('\n');
    out
}

fn push_json_string(out: &mut String, s: &str) {
    crate::gojson::push_string(out, s, crate::gojson::Html::Keep);
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, zap's ISO8601 encoding.
fn iso8601(now: std::time::Duration) -> String {
    let (date, time) = civil_time(now);
    format!("{date}T{time}.{:03}Z", now.subsec_millis())
}

/// UTC date and time of day for a Unix time, without a date-time crate
/// (Howard Hinnant's days-to-civil algorithm).
fn civil_time(now: std::time::Duration) -> (String, String) {
    let secs = now.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(cfg_logger: Logger, level: LogLevel, emit: impl FnOnce()) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let cfg = LogConfig {
            logger: cfg_logger,
            level,
            outputs: vec![LogOutput::File(path.to_string_lossy().into_owned())],
        };
        let layer = EtcdLayer::new(&cfg).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(level.filter()));
        tracing::subscriber::with_default(subscriber, emit);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn levels_parse_like_etcd() {
        for (s, l) in [
            ("debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("error", LogLevel::Error),
            ("panic", LogLevel::Panic),
            ("fatal", LogLevel::Fatal),
        ] {
            assert_eq!(LogLevel::parse(s), Some(l));
        }
        assert_eq!(LogLevel::parse("nope"), None);
        assert_eq!(LogLevel::parse("INFO"), None);
        assert_eq!(Logger::parse("zap"), Some(Logger::Zap));
        assert_eq!(Logger::parse("capnslog"), Some(Logger::Capnslog));
        assert_eq!(Logger::parse("foo"), None);
        assert_eq!(LogOutput::parse("/tmp/x"), LogOutput::File("/tmp/x".into()));
    }

    #[test]
    fn zap_writes_json_lines() {
        let out = capture(Logger::Zap, LogLevel::Info, || {
            tracing::info!(address = "127.0.0.1:2379", "ready to serve client requests");
            tracing::debug!("hidden");
            tracing::warn!(count = 3, ok = true, "quote \" and \\ here");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "info");
        assert_eq!(first["msg"], "ready to serve client requests");
        assert_eq!(first["address"], "127.0.0.1:2379");
        assert!(first["ts"].as_str().unwrap().ends_with('Z'));
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["level"], "warn");
        assert_eq!(second["count"], 3);
        assert_eq!(second["ok"], true);
        assert_eq!(second["msg"], "quote \" and \\ here");
    }

    #[test]
    fn capnslog_writes_readable_lines() {
        let out = capture(Logger::Capnslog, LogLevel::Debug, || {
            tracing::info!(target: "etcdmain", "ready to serve client requests");
            tracing::debug!(target: "etcdserver", id = 7, "debug line");
        });
        assert!(
            out.contains(" I | etcdmain: ready to serve client requests\n"),
            "{out}"
        );
        assert!(out.contains(" D | etcdserver: debug line id=7\n"), "{out}");
    }

    #[test]
    fn level_filter_hides_lower_levels() {
        let out = capture(Logger::Zap, LogLevel::Error, || {
            tracing::warn!("warned");
            tracing::error!("failed");
        });
        assert!(!out.contains("warned"));
        assert!(out.contains("failed"));
    }

    #[test]
    fn civil_time_is_correct() {
        let (d, t) = civil_time(std::time::Duration::from_secs(0));
        assert_eq!((d.as_str(), t.as_str()), ("1970-01-01", "00:00:00"));
        let (d, t) = civil_time(std::time::Duration::from_secs(1_709_210_096));
        assert_eq!((d.as_str(), t.as_str()), ("2024-02-29", "12:34:56"));
    }

    #[test]
    fn unopenable_output_is_an_error() {
        let cfg = LogConfig {
            outputs: vec![LogOutput::File("/nonexistent-dir/x/y.log".into())],
            ..LogConfig::default()
        };
        assert!(matches!(
            EtcdLayer::new(&cfg),
            Err(LoggingError::OpenOutput { .. })
        ));
    }

    #[test]
    fn init_twice_is_an_error_not_a_panic() {
        let cfg = LogConfig {
            level: LogLevel::Error,
            ..LogConfig::default()
        };
        let first = init(&cfg);
        let second = init(&cfg);
        // Another test binary thread may have installed one first; either
        // way at most one call succeeds and nothing panics.
        assert!(first.is_err() || matches!(second, Err(LoggingError::AlreadyInitialized)));
    }
}

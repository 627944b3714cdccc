//! `sluice test`: a customer's cases for a step (input records; the records it must write, the
//! records it must reject, or the retry it must answer), run through the composed step in
//! wasmtime ([`sluice_compose::step_host`]) under the bounds a host operator is told to set.
//!
//! ```yaml
//! cases:
//!   - name: maps a reading
//!     input:
//!       - json: {device: d-1, temp: 21.5, site: north}
//!     output:
//!       - key: d-1
//!         json_subset: {device_id: d-1}
//!   - name: refuses what is not JSON
//!     input:
//!       - text: "not json"
//!     rejects:
//!       - index: 0
//!         reason: payload is not a JSON object
//! ```
//!
//! A record gives its payload as exactly one of `text`, `json`, `base64` (and, expected only,
//! `json_subset`: every field given must be there with that value, others may be too), plus an
//! optional `key` (text), `headers` (text values) and, for input, `timestamp_ms` and `origin`.
//! Each case runs in a fresh instance, like a host's invocation.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use sluice_compose::step_host::{Bounds, Failure, Message, StepHost};

/// A cases file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One case: a batch delivered to a fresh instance of the step and what must come of it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows; printed with its result.
    pub name: String,
    /// The batch delivered.
    pub input: Vec<Record>,
    /// The records the step must write, in order (none when absent).
    #[serde(default)]
    pub output: Vec<Record>,
    /// The input records the step must reject, by index (none when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejects: Vec<Reject>,
    /// When set, the step must answer `retry` for the whole batch with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
}

/// A record as a cases file writes it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The key, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The payload as JSON (compared as JSON: key order and spacing do not matter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// Expected only: a JSON payload holding at least these fields with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_subset: Option<Value>,
    /// The payload as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Headers, values as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Input only: the record's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
    /// Input only: where the record came from (default `test:<case>/<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// An input record the step must reject.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// Its position in the input.
    pub index: u32,
    /// The reason the step gives, exactly.
    pub reason: String,
}

/// A cases file that cannot be used, naming the case and field.
#[derive(Debug, Error)]
pub enum CasesError {
    /// Not YAML of the expected shape.
    #[error("not a cases file: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A record whose payload is not given exactly once, or given in a form its place forbids.
    #[error("case `{case}`, {place}: {problem}")]
    Record {
        /// The case's name.
        case: String,
        /// `input[2]` or `output[0]`.
        place: String,
        /// What is wrong.
        problem: String,
    },
    /// The step could not be compiled or linked.
    #[error("the step cannot run: {0:#}")]
    Step(wasmtime::Error),
}

impl Cases {
    /// Parses and checks a cases file.
    ///
    /// # Errors
    /// When it is not YAML of the documented shape or a record's payload is not given once.
    pub fn parse(yaml: &str) -> Result<Self, CasesError> {
        let cases: Self = serde_yaml::from_str(yaml)?;
        for case in &cases.cases {
            for (index, record) in case.input.iter().enumerate() {
                record.payload(false).map_err(|problem| CasesError::Record {
                    case: case.name.clone(),
                    place: format!("input[{index}]"),
                    problem,
                })?;
            }
            for (index, record) in case.output.iter().enumerate() {
                record.payload(true).map_err(|problem| CasesError::Record {
                    case: case.name.clone(),
                    place: format!("output[{index}]"),
                    problem,
                })?;
            }
        }
        Ok(cases)
    }

    /// The file as YAML.
    ///
    /// # Panics
    /// Never: every field serializes.
    #[must_use]
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("cases serialize")
    }
}

/// A payload as a case gives it.
enum Payload<'a> {
    Bytes(Vec<u8>),
    Json(&'a Value),
    JsonSubset(&'a Value),
}

impl Record {
    fn payload(&self, expected: bool) -> Result<Payload<'_>, String> {
        let given = [
            self.text.is_some(),
            self.json.is_some(),
            self.json_subset.is_some(),
            self.base64.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give the payload as exactly one of `text`, `json`, `json_subset`, `base64`".into());
        }
        if !expected && (self.json_subset.is_some()) {
            return Err("`json_subset` is for expected records; give input as `text`, `json` or `base64`".into());
        }
        if let Some(text) = &self.text {
            return Ok(Payload::Bytes(text.clone().into_bytes()));
        }
        if let Some(json) = &self.json {
            return Ok(Payload::Json(json));
        }
        if let Some(subset) = &self.json_subset {
            return Ok(Payload::JsonSubset(subset));
        }
        let encoded = self.base64.as_deref().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Payload::Bytes)
            .map_err(|err| format!("`base64`: {err}"))
    }

    /// The message delivered for this input record.
    fn to_message(&self, origin: String) -> Message {
        let payload = match self.payload(false) {
            Ok(Payload::Bytes(bytes)) => bytes,
            Ok(Payload::Json(json)) => json.to_string().into_bytes(),
            // Checked by `Cases::parse`.
            Ok(Payload::JsonSubset(_)) | Err(_) => Vec::new(),
        };
        Message {
            key: self.key.as_ref().map(|k| k.clone().into_bytes()),
            payload,
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone().into_bytes()))
                .collect(),
            timestamp_ms: self.timestamp_ms,
            origin: self.origin.clone().unwrap_or(origin),
        }
    }

    /// How a written message reads in a cases file: JSON when it parses as JSON, else text when
    /// it is UTF-8, else base64.
    fn from_message(message: &Message) -> Self {
        let mut record = Self {
            key: message.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
                .collect(),
            ..Self::default()
        };
        match (
            serde_json::from_slice::<Value>(&message.payload),
            std::str::from_utf8(&message.payload),
        ) {
            (Ok(json), _) => record.json = Some(json),
            (Err(_), Ok(text)) => record.text = Some(text.to_owned()),
            (Err(_), Err(_)) => {
                record.base64 = Some(base64::engine::general_purpose::STANDARD.encode(&message.payload));
            }
        }
        record
    }

    /// Why `message` is not this expected record, if it is not.
    fn mismatch(&self, message: &Message) -> Option<String> {
        let mut why = Vec::new();
        let key = message.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
        if self.key.is_some() && self.key != key {
            why.push(format!("key: expected {:?}, got {key:?}", self.key));
        }
        for (name, value) in &self.headers {
            let got = message
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            if got.as_deref() != Some(value.as_str()) {
                why.push(format!("header `{name}`: expected {value:?}, got {got:?}"));
            }
        }
        let shown = || String::from_utf8_lossy(&message.payload).into_owned();
        match self.payload(true) {
            Ok(Payload::Bytes(bytes)) => {
                if bytes != message.payload {
                    why.push(format!(
                        "payload: expected {:?}, got {:?}",
                        String::from_utf8_lossy(&bytes),
                        shown()
                    ));
                }
            }
            Ok(Payload::Json(json)) => match serde_json::from_slice::<Value>(&message.payload) {
                Ok(got) if &got == json => {}
                Ok(got) => why.push(format!("payload: expected {json}, got {got}")),
                Err(_) => why.push(format!("payload: expected JSON {json}, got {:?}", shown())),
            },
            Ok(Payload::JsonSubset(subset)) => match serde_json::from_slice::<Value>(&message.payload) {
                Ok(got) => {
                    if let Some(path) = missing(subset, &got, String::new()) {
                        why.push(format!("payload: expected {subset} within it, {path}; got {got}"));
                    }
                }
                Err(_) => why.push(format!("payload: expected JSON holding {subset}, got {:?}", shown())),
            },
            Err(problem) => why.push(problem),
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Where `got` fails to hold `subset` (objects: every given field, recursively; anything else:
/// equal), as a path; `None` when it holds it.
fn missing(subset: &Value, got: &Value, path: String) -> Option<String> {
    match (subset, got) {
        (Value::Object(want), Value::Object(have)) => want.iter().find_map(|(field, value)| {
            let at = format!("{path}.{field}");
            match have.get(field) {
                Some(inner) => missing(value, inner, at),
                None => Some(format!("{at} is missing")),
            }
        }),
        _ if subset == got => None,
        _ => Some(format!(
            "{} is {got}, not {subset}",
            if path.is_empty() { "the payload" } else { &path }
        )),
    }
}

/// The limits a case runs under: what README tells a host operator to set.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// One `deliver` call's deadline (`--max-execution-time-ms`).
    pub deadline: Duration,
    /// The most a linear memory may grow to (`--max-linear-memory-bytes`).
    pub max_memory: usize,
    /// Fuel per call (`None`: not metered, like a wasmCloud host).
    pub fuel: Option<u64>,
}

impl Default for RunLimits {
    /// 10 s and 256 MiB: the deadline README recommends below the source's 30 s
    /// `deliver_timeout`, and wasmCloud's default memory limit.
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            max_memory: 256 << 20,
            fuel: None,
        }
    }
}

/// What one case did.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Why it failed, one line per difference; empty when it passed.
    pub failures: Vec<String>,
    /// What the step actually did, as the case would say it (for `--update`).
    pub actual: Case,
}

impl CaseResult {
    /// Whether the step did what the case expects.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            return write!(f, "ok      {}", self.name);
        }
        write!(f, "FAILED  {}", self.name)?;
        for failure in &self.failures {
            write!(f, "\n        {failure}")?;
        }
        Ok(())
    }
}

/// Runs every case against the composed step `step`, each in a fresh instance.
///
/// # Errors
/// When the step cannot be compiled or linked (a case that traps is a failed case, not an error).
pub fn run(step: &[u8], cases: &Cases, limits: RunLimits) -> Result<Vec<CaseResult>, CasesError> {
    let host = StepHost::new(
        step,
        Bounds {
            deadline: limits.deadline,
            fuel: limits.fuel,
            max_memory: limits.max_memory,
        },
    )
    .map_err(CasesError::Step)?;
    Ok(cases.cases.iter().map(|case| run_case(&host, case, limits)).collect())
}

fn run_case(host: &StepHost, case: &Case, limits: RunLimits) -> CaseResult {
    let batch: Vec<Message> = case
        .input
        .iter()
        .enumerate()
        .map(|(index, record)| record.to_message(format!("test:{}/{index}", case.name)))
        .collect();
    let mut actual = Case {
        name: case.name.clone(),
        input: case.input.clone(),
        ..Case::default()
    };
    let outcome = host.instantiate().and_then(|mut step| {
        let answer = step.deliver(&batch)?;
        Ok((answer, step.records()))
    });
    let (answer, written) = match outcome {
        Ok(done) => done,
        Err(trap) => {
            return CaseResult {
                name: case.name.clone(),
                failures: vec![format!("the step trapped: {}", trap_reason(&trap, limits))],
                actual: case.clone(),
            }
        }
    };
    actual.output = written.iter().map(Record::from_message).collect();
    match answer {
        Ok(()) => {}
        Err(Failure::Reject(rejected)) => {
            actual.rejects = rejected
                .into_iter()
                .map(|r| Reject {
                    index: r.index,
                    reason: r.reason,
                })
                .collect();
        }
        Err(Failure::Retry(reason)) => actual.retry = Some(reason),
    }

    let mut failures = Vec::new();
    if case.retry != actual.retry {
        failures.push(match (&case.retry, &actual.retry) {
            (Some(want), Some(got)) => format!("retry: expected {want:?}, got {got:?}"),
            (Some(want), None) => format!("retry: expected {want:?}, the step accepted the batch"),
            (None, Some(got)) => format!("the step answered retry: {got:?}"),
            (None, None) => unreachable!(),
        });
    }
    for index in 0..case.output.len().max(written.len()) {
        match (case.output.get(index), written.get(index)) {
            (Some(want), Some(got)) => {
                if let Some(why) = want.mismatch(got) {
                    failures.push(format!("output[{index}] (from {}): {why}", got.origin));
                }
            }
            (Some(want), None) => failures.push(format!(
                "output[{index}]: expected {}, the step wrote only {} record(s)",
                summary(want),
                written.len()
            )),
            (None, Some(got)) => failures.push(format!(
                "output[{index}] (from {}): unexpected record {}",
                got.origin,
                summary(&Record::from_message(got))
            )),
            (None, None) => {}
        }
    }
    if case.rejects != actual.rejects {
        let show = |rejects: &[Reject]| {
            let mut out = String::from("[");
            for (i, r) in rejects.iter().enumerate() {
                let _ = write!(
                    out,
                    "{}input[{}]: {:?}",
                    if i > 0 { ", " } else { "" },
                    r.index,
                    r.reason
                );
            }
            out + "]"
        };
        failures.push(format!(
            "rejects: expected {}, got {}",
            show(&case.rejects),
            show(&actual.rejects)
        ));
    }
    CaseResult {
        name: case.name.clone(),
        failures,
        actual,
    }
}

/// A record on one line: key and payload.
fn summary(record: &Record) -> String {
    let payload = match (&record.text, &record.json, &record.json_subset, &record.base64) {
        (Some(text), ..) => format!("{text:?}"),
        (_, Some(json), ..) => json.to_string(),
        (_, _, Some(subset), _) => format!("holding {subset}"),
        (.., Some(b64)) => format!("base64 {b64}"),
        _ => String::new(),
    };
    match &record.key {
        Some(key) => format!("key {key:?} payload {payload}"),
        None => format!("payload {payload}"),
    }
}

/// Why a call trapped, in the terms of the limit that stopped it.
fn trap_reason(trap: &wasmtime::Error, limits: RunLimits) -> String {
    match trap.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => format!(
            "it ran past the deadline ({} ms, the host's --max-execution-time-ms)",
            limits.deadline.as_millis()
        ),
        Some(wasmtime::Trap::OutOfFuel) => "it ran out of fuel".to_owned(),
        _ => {
            // The root cause (a trap code, or a host error), then where: the innermost named
            // frames of the Wasm backtrace.
            let frames: Vec<String> = trap
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|backtrace| {
                    backtrace
                        .frames()
                        .iter()
                        .filter_map(|frame| frame.func_name().map(str::to_owned))
                        .take(3)
                        .collect()
                })
                .unwrap_or_default();
            if frames.is_empty() {
                trap.root_cause().to_string()
            } else {
                format!("{}, in {}", trap.root_cause(), frames.join(" < "))
            }
        }
    }
}

/// The cases file with every case's expectations replaced by what the step did (`--update`).
#[must_use]
pub fn updated(results: &[CaseResult]) -> Cases {
    Cases {
        cases: results.iter().map(|r| r.actual.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_gives_its_payload_exactly_once() {
        let err = Cases::parse("cases:\n  - name: a\n    input:\n      - text: x\n        json: 1\n").unwrap_err();
        assert!(err.to_string().contains("case `a`, input[0]"), "{err}");
        let err = Cases::parse("cases:\n  - name: b\n    input:\n      - json_subset: {a: 1}\n").unwrap_err();
        assert!(
            err.to_string().contains("`json_subset` is for expected records"),
            "{err}"
        );
        let err = Cases::parse("cases:\n  - name: c\n    input: []\n    outputs: []\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `outputs`"), "{err}");
    }

    #[test]
    fn json_subset_names_the_first_missing_or_different_field() {
        let got = serde_json::json!({"a": {"b": 1, "c": 2}, "d": 3});
        assert_eq!(missing(&serde_json::json!({"a": {"b": 1}}), &got, String::new()), None);
        assert_eq!(
            missing(&serde_json::json!({"a": {"x": 1}}), &got, String::new()).as_deref(),
            Some(".a.x is missing")
        );
        assert_eq!(
            missing(&serde_json::json!({"d": 4}), &got, String::new()).as_deref(),
            Some(".d is 3, not 4")
        );
    }

    #[test]
    fn written_records_read_back_as_json_text_or_base64() {
        let message = |payload: &[u8]| Message {
            key: Some(b"k".to_vec()),
            payload: payload.to_vec(),
            headers: vec![("h".into(), b"v".to_vec())],
            timestamp_ms: None,
            origin: "o".into(),
        };
        let json = Record::from_message(&message(br#"{"a":1}"#));
        assert_eq!(json.json, Some(serde_json::json!({"a": 1})));
        assert_eq!(json.key.as_deref(), Some("k"));
        assert_eq!(json.headers["h"], "v");
        assert_eq!(Record::from_message(&message(b"plain")).text.as_deref(), Some("plain"));
        assert_eq!(
            Record::from_message(&message(&[0xff, 0])).base64.as_deref(),
            Some("/wA=")
        );
        assert_eq!(json.mismatch(&message(br#"{"a": 1}"#)), None);
        assert!(json
            .mismatch(&message(br#"{"a":2}"#))
            .unwrap()
            .contains("expected {\"a\":1}"));
    }
}

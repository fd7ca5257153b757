//! What one simulation run recorded (its trace, its history of operations, its faults and
//! what went wrong), its verdict, the run's fingerprint, and the HTML report a failing or
//! inconclusive run writes.
//!
//! Everything here is plain Rust without madsim, so the report generator is tested on
//! hand-made histories in the normal build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use crate::check::linearizability::{CheckResult, Operation};
use crate::check::watch::{WatchStream, WatchViolation};

/// One injected fault: when it struck, when it was healed, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpan {
    /// When the fault was injected, in simulated nanoseconds.
    pub start_ns: u64,
    /// When it was healed, in simulated nanoseconds (`None` if the run ended first).
    pub end_ns: Option<u64>,
    /// What it was, e.g. "kill-leader node2".
    pub description: String,
}

/// Everything one run recorded. The trace holds every operation and fault with its time,
/// in the order they happened; two runs of one seed must produce the same trace.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    /// One line per event, each starting with the simulated time in nanoseconds.
    pub trace: Vec<String>,
    /// Every client operation, as the linearizability checker takes it.
    pub history: Vec<Operation>,
    /// Every injected fault.
    pub faults: Vec<FaultSpan>,
    /// The member each operation was sent through, by history index (operations that
    /// stand for something the cluster may do on its own, such as a lease expiring, have
    /// none).
    pub via: BTreeMap<usize, String>,
    /// What went wrong (empty when the run passed).
    pub failures: Vec<String>,
    /// Why the run could not be judged, when a checker gave up without an answer (empty
    /// when every check came to a verdict). A run with failures failed whatever this says.
    pub inconclusive: Vec<String>,
    /// Every lease grant a client sent: the lease id, when the grant was called (in
    /// simulated nanoseconds) and the TTL asked for, in seconds. A lease can expire no
    /// earlier than its TTL after the grant was called.
    pub lease_grants: Vec<(i64, u64, i64)>,
    /// Every watcher's stream: its request and every response it received, per creation.
    pub watches: Vec<WatchStream>,
}

impl RunRecord {
    /// Appends a trace line stamped with `at_ns`.
    pub fn event(&mut self, at_ns: u64, what: impl std::fmt::Display) {
        self.trace.push(format!("{at_ns:>15} {what}"));
    }

    /// What the checks made of the run: failed if anything went wrong, else inconclusive
    /// if a checker gave up, else passed.
    pub fn verdict(&self) -> Verdict {
        if !self.failures.is_empty() {
            Verdict::Failed
        } else if !self.inconclusive.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::Passed
        }
    }

    /// The run's fingerprint: a hash of every trace line, so two runs of one seed can be
    /// compared by one number.
    pub fn fingerprint(&self) -> u64 {
        fingerprint_of(&self.trace)
    }
}

/// What the checks made of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Every check ran to the end and found nothing wrong.
    Passed,
    /// Something went wrong: a checker found a violation, the cluster did not converge,
    /// or the simulation panicked.
    Failed,
    /// Nothing was found wrong, but a checker gave up (its search budget ran out), so the
    /// run was not fully checked and must not count as passed.
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// The fingerprint of a trace (SipHash with fixed keys, so stable across processes).
pub fn fingerprint_of(trace: &[String]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    trace.hash(&mut h);
    h.finish()
}

/// The first line at which two traces differ, with both versions (`None` if equal).
pub fn first_divergence(a: &[String], b: &[String]) -> Option<(usize, String, String)> {
    let n = a.len().max(b.len());
    (0..n).find_map(|i| {
        let (x, y) = (a.get(i), b.get(i));
        (x != y).then(|| {
            let show = |l: Option<&String>| l.cloned().unwrap_or_else(|| "<end of trace>".into());
            (i, show(x), show(y))
        })
    })
}

/// How long before the first named operation an operation with an unknown outcome may have
/// been called to be listed around a violation, in nanoseconds.
const AROUND_UNKNOWN_NS: u64 = 2_000_000_000;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// What the report shows about one failing or inconclusive run.
pub struct ReportInput<'a> {
    /// The title, e.g. "leader-crash seed 17".
    pub title: &'a str,
    /// The command that reproduces the run.
    pub reproduce: &'a str,
    /// The run's record.
    pub record: &'a RunRecord,
    /// The checker's verdict, if the history was checked.
    pub check: Option<&'a CheckResult>,
    /// The watch guarantees found broken.
    pub watch_violations: &'a [WatchViolation],
}

/// Renders a self-contained HTML report: what failed, how to reproduce it, the checker's
/// explanation, a timeline with one lane per client (each operation a bar from its call to
/// its return, open-ended when its outcome is unknown) and one lane of faults, and then
/// every operation in a table. The operations the checker names are highlighted in both.
pub fn html(input: &ReportInput<'_>) -> String {
    let rec = input.record;
    let violation = input.check.and_then(|c| c.violation());
    let flagged: Vec<usize> = violation.map(|v| v.ops.clone()).unwrap_or_default();
    let blocking = violation.and_then(|v| v.blocking_op);
    // The time axis spans every call, return and fault.
    let mut end_ns = 1u64;
    for op in &rec.history {
        end_ns = end_ns.max(op.call_ns).max(op.return_ns.unwrap_or(0));
    }
    for f in &rec.faults {
        end_ns = end_ns.max(f.start_ns).max(f.end_ns.unwrap_or(0));
    }
    let end_ns = end_ns + end_ns / 50 + 1;
    let pct = |ns: u64| ns as f64 * 100.0 / end_ns as f64;

    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:1em}} pre{{background:#f4f4f4;padding:.5em;white-space:pre-wrap}}\
         .lane{{position:relative;height:22px;border-bottom:1px solid #ddd;margin-left:7em}}\
         .lname{{position:absolute;left:-7em;width:6.5em;font-size:12px}}\
         .op{{position:absolute;height:16px;top:3px;background:#8ab;min-width:2px;font-size:10px;overflow:hidden;white-space:nowrap}}\
         .unknown{{background:repeating-linear-gradient(45deg,#ccc,#ccc 4px,#eee 4px,#eee 8px)}}\
         .err{{background:#db8}} .flag{{background:#e33!important;outline:2px solid #900;z-index:2}}\
         .fault{{position:absolute;height:16px;top:3px;background:#fc6;opacity:.8;font-size:10px;overflow:hidden;white-space:nowrap}}\
         table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 4px}}\
         tr.flag td{{background:#fcc}}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(input.title)
    );
    let _ = writeln!(s, "<h2>Reproduce</h2><pre>{}</pre>", esc(input.reproduce));
    verdict_section(&mut s, rec);
    if let Some(v) = violation {
        let _ = write!(
            s,
            "<h2>Linearizability violation</h2><p>Operations involved (highlighted in red \
             below): {}</p><pre>{}</pre>",
            v.ops
                .iter()
                .map(|i| format!("#{i}"))
                .collect::<Vec<_>>()
                .join(", "),
            esc(&v.explanation)
        );
        // The operations and faults around the violation, so the story can be read
        // without scanning the whole history: everything that overlaps the span of the
        // named operations.
        let named: Vec<&Operation> = v.ops.iter().filter_map(|&i| rec.history.get(i)).collect();
        let from = named.iter().map(|o| o.call_ns).min().unwrap_or(0);
        let to = named
            .iter()
            .map(|o| o.return_ns.unwrap_or(o.call_ns))
            .max()
            .unwrap_or(0);
        s.push_str(
            "<h3>Around the violation</h3><p>Every operation that overlaps the named ones in \
             time, and the faults active then.</p><ul>",
        );
        for f in &rec.faults {
            if f.start_ns <= to && f.end_ns.is_none_or(|e| e >= from) {
                let _ = write!(s, "<li>fault: {}</li>", esc(&f.description));
            }
        }
        s.push_str("</ul><table><tr><th>#</th><th>operation</th></tr>");
        for (i, op) in rec.history.iter().enumerate() {
            // An operation with an unknown outcome overlaps everything after its call;
            // only those called shortly before the named ones are listed.
            let (end, earliest) = match op.return_ns {
                Some(r) => (r, 0),
                None => (u64::MAX, from.saturating_sub(AROUND_UNKNOWN_NS)),
            };
            if op.call_ns <= to && end >= from && op.call_ns >= earliest {
                let class = if v.ops.contains(&i) {
                    " class=\"flag\""
                } else {
                    ""
                };
                let via = rec
                    .via
                    .get(&i)
                    .map(|m| format!(" (via {m})"))
                    .unwrap_or_default();
                let _ = write!(
                    s,
                    "<tr{class}><td>{i}</td><td>{}{}</td></tr>",
                    esc(&op.to_string()),
                    esc(&via)
                );
            }
        }
        s.push_str("</table>\n");
    } else if let Some(CheckResult::Unknown(e)) = input.check {
        let _ = write!(
            s,
            "<h2>Checker</h2><p>The search budget ran out after {} steps (longest \
             linearizable prefix: {} operations).</p>",
            e.steps, e.longest_prefix
        );
    }

    if !input.watch_violations.is_empty() {
        watch_section(&mut s, rec, input.watch_violations);
    }

    // The timeline: one lane per client, in client order, plus the faults.
    let mut lanes: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, op) in rec.history.iter().enumerate() {
        lanes.entry(op.client_id).or_default().push(i);
    }
    let _ = write!(
        s,
        "<h2>Timeline</h2><p>0 to {:.3} s of simulated time. Blue: returned; orange: \
         returned a definite error; hatched: outcome unknown (timed out or connection lost; \
         it may take effect any time after its call); red: named by the checker; yellow: \
         faults. Hover a bar for the operation.</p>",
        end_ns as f64 / 1e9
    );
    s.push_str("<div class=\"lane\"><span class=\"lname\">faults</span>");
    for f in &rec.faults {
        let stop = f.end_ns.unwrap_or(end_ns);
        let _ = write!(
            s,
            "<div class=\"fault\" style=\"left:{:.3}%;width:{:.3}%\" title=\"{}\">{}</div>",
            pct(f.start_ns),
            pct(stop.saturating_sub(f.start_ns)),
            esc(&format!(
                "{} from {:.3} s to {}",
                f.description,
                f.start_ns as f64 / 1e9,
                f.end_ns
                    .map(|e| format!("{:.3} s", e as f64 / 1e9))
                    .unwrap_or_else(|| "the end".into())
            )),
            esc(&f.description)
        );
    }
    s.push_str("</div>\n");
    for (client, ops) in &lanes {
        let _ = write!(
            s,
            "<div class=\"lane\"><span class=\"lname\">client {client}</span>"
        );
        for &i in ops {
            let op = &rec.history[i];
            let stop = op.return_ns.unwrap_or(end_ns);
            let mut class = String::from("op");
            match &op.output {
                None => class.push_str(" unknown"),
                Some(Err(_)) => class.push_str(" err"),
                Some(Ok(_)) => {}
            }
            if flagged.contains(&i) {
                class.push_str(" flag");
            }
            let _ = write!(
                s,
                "<div class=\"{class}\" data-op=\"{i}\" style=\"left:{:.3}%;width:{:.3}%\" title=\"#{i} {}\">#{i}</div>",
                pct(op.call_ns),
                pct(stop.saturating_sub(op.call_ns)),
                esc(&op.to_string())
            );
        }
        s.push_str("</div>\n");
    }

    s.push_str(
        "<h2>Operations</h2><table><tr><th>#</th><th>client</th><th>call (s)</th>\
         <th>return (s)</th><th>via</th><th>request</th><th>outcome</th><th>checker</th></tr>\n",
    );
    for (i, op) in rec.history.iter().enumerate() {
        let row_class = if flagged.contains(&i) {
            " class=\"flag\""
        } else {
            ""
        };
        let role = if blocking == Some(i) {
            "blocking: could not be placed"
        } else if flagged.contains(&i) {
            "involved"
        } else {
            ""
        };
        let outcome = match &op.output {
            None => "unknown outcome".to_string(),
            Some(out) => crate::check::model::ShowOutput(out).to_string(),
        };
        let _ = write!(
            s,
            "<tr{row_class}><td>{i}</td><td>{}</td><td>{:.6}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{role}</td></tr>",
            op.client_id,
            op.call_ns as f64 / 1e9,
            op.return_ns
                .map(|r| format!("{:.6}", r as f64 / 1e9))
                .unwrap_or_else(|| "-".into()),
            esc(rec.via.get(&i).map(String::as_str).unwrap_or("-")),
            esc(&op.input.to_string()),
            esc(&outcome)
        );
    }
    s.push_str("</table>\n<h2>Faults</h2><ul>");
    for f in &rec.faults {
        let _ = write!(
            s,
            "<li>{:.3} s – {}: {}</li>",
            f.start_ns as f64 / 1e9,
            f.end_ns
                .map(|e| format!("{:.3} s", e as f64 / 1e9))
                .unwrap_or_else(|| "end".into()),
            esc(&f.description)
        );
    }
    s.push_str("</ul></body></html>\n");
    s
}

/// The run's verdict, what failed, and why it could not be judged if a checker gave up.
fn verdict_section(s: &mut String, rec: &RunRecord) {
    let verdict = rec.verdict();
    let _ = writeln!(
        s,
        "<h2>Verdict</h2><p class=\"verdict verdict-{verdict}\">{verdict}</p>"
    );
    for (title, lines) in [
        ("What failed", &rec.failures),
        ("Why inconclusive", &rec.inconclusive),
    ] {
        if lines.is_empty() {
            continue;
        }
        let _ = write!(s, "<h2>{title}</h2><ul>");
        for l in lines {
            let _ = write!(s, "<li>{}</li>", esc(l));
        }
        s.push_str("</ul>\n");
    }
}

/// The watch guarantees found broken, each with the response it blames (highlighted)
/// and the responses around it, so the report shows what the watcher received.
fn watch_section(s: &mut String, rec: &RunRecord, violations: &[WatchViolation]) {
    let _ = write!(
        s,
        "<h2>Watch guarantees broken</h2><p>{} violation(s). Each names the watcher, the \
         segment (one creation of the watcher; a new one starts after a resume) and the \
         response to blame, shown in red among its neighbours.</p>",
        violations.len()
    );
    for v in violations.iter().take(MAX_WATCH_VIOLATIONS_SHOWN) {
        let _ = write!(
            s,
            "<h3 class=\"watch-violation\">{}</h3>",
            esc(&v.to_string())
        );
        let Some(stream) = rec.watches.iter().find(|w| w.watcher == v.watcher) else {
            continue;
        };
        let _ = write!(
            s,
            "<p>watcher {} watches {}</p>",
            stream.watcher,
            esc(&format!("{:?}", stream.request))
        );
        let Some(segment) = stream.segments.get(v.segment) else {
            continue;
        };
        let _ = write!(
            s,
            "<p>segment {} started from revision {} (known compact revision {}), ended {:?}</p>\
             <table><tr><th>response</th><th>header</th><th>flags</th><th>events</th></tr>",
            v.segment, segment.start_revision, segment.known_compact_revision, segment.end
        );
        let blamed = v.response_index.unwrap_or(usize::MAX);
        let from = v.response_index.unwrap_or(0).saturating_sub(3);
        for (ri, r) in segment.responses.iter().enumerate().skip(from).take(7) {
            let class = if ri == blamed { " class=\"flag\"" } else { "" };
            let mut flags = Vec::new();
            if r.created {
                flags.push("created".to_string());
            }
            if r.canceled {
                flags.push("canceled".to_string());
            }
            if r.compact_revision != 0 {
                flags.push(format!("compact {}", r.compact_revision));
            }
            if r.fragment {
                flags.push("fragment".to_string());
            }
            if r.is_progress_notify() {
                flags.push("progress".to_string());
            }
            let events: Vec<String> = r
                .events
                .iter()
                .map(|e| match &e.prev_kv {
                    Some(p) => format!("{} {} (prev {p})", e.kind, e.kv),
                    None => format!("{} {}", e.kind, e.kv),
                })
                .collect();
            let _ = write!(
                s,
                "<tr{class}><td>{ri}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.header_revision,
                esc(&flags.join(" ")),
                esc(&events.join("; "))
            );
        }
        s.push_str("</table>\n");
    }
}

/// How many watch violations the report details; the rest are only counted.
const MAX_WATCH_VIOLATIONS_SHOWN: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::linearizability::{check, CheckConfig};
    use crate::check::model::{
        Input, KeyValue, PutRequest, PutResult, RangeRequest, RangeResult, Reply, Response,
    };

    fn put(key: &str, value: &str) -> Input {
        Input::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    #[test]
    fn the_report_of_a_stale_read_names_the_violating_operations() {
        // Client 1 writes x=1 at revision 2, then x=2 at revision 3; client 2 reads x
        // after the second write returned, yet sees x=1: a stale read.
        let put_ok = |rev| {
            Ok(Reply {
                revision: rev,
                response: Response::Put(PutResult::default()),
            })
        };
        let history = vec![
            Operation::returned(1, 10, 20, put("x", "1"), put_ok(2)),
            Operation::returned(1, 30, 40, put("x", "2"), put_ok(3)),
            Operation::returned(
                2,
                50,
                60,
                Input::Get(RangeRequest {
                    key: b"x".to_vec(),
                    ..Default::default()
                }),
                Ok(Reply {
                    revision: 2,
                    response: Response::Get(RangeResult {
                        kvs: vec![KeyValue {
                            key: b"x".to_vec(),
                            value: b"1".to_vec(),
                            create_revision: 2,
                            mod_revision: 2,
                            version: 1,
                            lease: 0,
                        }],
                        count: 1,
                        more: false,
                    }),
                }),
            ),
            Operation::unknown(3, 15, put("y", "1")),
        ];
        let result = check(&history, &CheckConfig::default()).unwrap();
        let v = result
            .violation()
            .expect("a stale read is a violation")
            .clone();
        let record = RunRecord {
            trace: vec![],
            history,
            faults: vec![FaultSpan {
                start_ns: 25,
                end_ns: Some(45),
                description: "isolate-leader node1".into(),
            }],
            failures: vec!["the history is not linearizable".into()],
            inconclusive: vec![],
            via: BTreeMap::from([(2, "node3".to_string())]),
            lease_grants: vec![],
            watches: vec![],
        };
        let page = html(&ReportInput {
            title: "hand-made seed 1",
            reproduce: "detcd-sim run --scenario scenarios/x.toml --seed 1",
            record: &record,
            check: Some(&result),
            watch_violations: &[],
        });
        assert!(page.contains("detcd-sim run --scenario scenarios/x.toml --seed 1"));
        assert!(page.contains("Linearizability violation"));
        assert!(page.contains("<p class=\"verdict verdict-failed\">failed</p>"));
        assert!(page.contains(&esc(&v.explanation)));
        assert!(!v.ops.is_empty());
        for i in &v.ops {
            // Every named operation is highlighted in the timeline and in the table.
            assert!(
                page.contains(&format!("flag\" data-op=\"{i}\"")),
                "#{i} is not highlighted in the timeline"
            );
            assert!(
                page.contains(&format!("<tr class=\"flag\"><td>{i}</td>")),
                "#{i}"
            );
        }
        assert!(page.contains("isolate-leader node1"));
        assert!(
            page.contains("<td>node3</td>"),
            "the member a read went through is shown"
        );
        assert!(
            page.contains("op unknown"),
            "the unknown put is drawn as such"
        );
    }

    #[test]
    fn the_report_of_an_inconclusive_run_says_so_and_why() {
        let record = RunRecord {
            inconclusive: vec!["the linearizability checker gave up after 7 steps".into()],
            ..Default::default()
        };
        assert_eq!(record.verdict(), Verdict::Inconclusive);
        let exhausted = CheckResult::Unknown(crate::check::linearizability::Exhausted {
            steps: 7,
            longest_prefix: 3,
        });
        let page = html(&ReportInput {
            title: "hand-made seed 2",
            reproduce: "detcd-sim run --scenario scenarios/x.toml --seed 2",
            record: &record,
            check: Some(&exhausted),
            watch_violations: &[],
        });
        assert!(page.contains("<p class=\"verdict verdict-inconclusive\">inconclusive</p>"));
        assert!(page.contains("Why inconclusive"));
        assert!(page.contains("gave up after 7 steps"));
        assert!(page.contains("The search budget ran out after 7 steps"));
        assert!(!page.contains("What failed"));
    }

    #[test]
    fn a_failure_outweighs_an_inconclusive_check() {
        let mut record = RunRecord::default();
        assert_eq!(record.verdict(), Verdict::Passed);
        record.inconclusive.push("gave up".into());
        record.failures.push("members disagree on HashKV".into());
        assert_eq!(record.verdict(), Verdict::Failed);
    }

    #[test]
    fn divergence_is_found_at_the_first_differing_line() {
        let a = vec!["1".to_string(), "2".into(), "3".into()];
        let mut b = a.clone();
        assert_eq!(first_divergence(&a, &b), None);
        assert_eq!(fingerprint_of(&a), fingerprint_of(&b));
        b[1] = "x".into();
        assert_eq!(first_divergence(&a, &b), Some((1, "2".into(), "x".into())));
        b.truncate(1);
        assert_eq!(
            first_divergence(&a, &b),
            Some((1, "2".into(), "<end of trace>".into()))
        );
    }
}

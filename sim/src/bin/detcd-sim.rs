//! `detcd-sim`: runs chaos scenarios against simulated detcd clusters.
//!
//! ```text
//! detcd-sim run --scenario scenarios/NAME.toml --seed N [--check-determinism] [--duration-s S] [--trace]
//! detcd-sim explore (--scenario scenarios/NAME.toml | --all-scenarios) --seeds A..B [--threads T] [--duration-s S] [--until-failure]
//! ```
//!
//! detcd-sim shrink --scenario scenarios/NAME.toml --seed N [--duration-s S] [--max-runs R]
//!
//! `shrink` makes a failing run's scenario smaller while the seed still fails the same
//! way, and prints (and saves) the smallest one. `--until-failure` stops exploring at the
//! first failing seed (seeds are handed out in order, so every lower seed has run) and
//! reports how many seeds it took. Each failing run's first line, `FAILED SCENARIO seed N
//! (KIND):`, names the kind of its failure; the planted-bug check (`ci/planted-bugs.sh`)
//! counts the seeds that fail with the kind each bug must cause.
//!
//! Every run gets a verdict: passed, failed, or inconclusive (nothing was found wrong,
//! but the linearizability checker ran out of search budget, so the run was not fully
//! checked). `run` and `explore` exit with 0 when every run passed, 1 when any failed, 3
//! when none failed but some were inconclusive, and 2 on a usage error. `explore` ends
//! with the line `N passed, M failed, K inconclusive of T runs`, and names the kind of
//! its first failure (see [`detcd_sim::shrink::failure_class`]) on a line
//! `first failure kind: KIND`.
//!
//! It only works when built with `RUSTFLAGS="--cfg madsim"`; the normal build says so.

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "detcd-sim runs clusters under the madsim simulator; build it with\n  \
         RUSTFLAGS=\"--cfg madsim\" cargo run -p detcd-sim --bin detcd-sim --target-dir target/madsim -- ..."
    );
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(cli::main(std::env::args().skip(1).collect()));
}

#[cfg(madsim)]
mod cli {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use detcd_sim::report::{self, ReportInput, Verdict};
    use detcd_sim::run::{self, RunOutcome};
    use detcd_sim::scenario::Scenario;
    use detcd_sim::shrink;

    const USAGE: &str = "usage:\n  \
        detcd-sim run --scenario scenarios/NAME.toml --seed N [--check-determinism] [--duration-s S] [--trace]\n  \
        detcd-sim explore (--scenario scenarios/NAME.toml | --all-scenarios) --seeds A..B \
        [--threads T] [--duration-s S] [--until-failure]\n  \
        detcd-sim shrink --scenario scenarios/NAME.toml --seed N [--duration-s S] [--max-runs R]\n\
        exit status: 0 every run passed, 1 a run failed, 3 no run failed but some were \
        inconclusive (the linearizability checker gave up), 2 usage error";

    /// The exit status when a run failed.
    const EXIT_FAILED: i32 = 1;
    /// The exit status when no run failed but some were inconclusive.
    const EXIT_INCONCLUSIVE: i32 = 3;

    /// Parsed command-line options.
    #[derive(Default)]
    struct Opts {
        scenarios: Vec<PathBuf>,
        all: bool,
        seed: Option<u64>,
        seeds: Option<(u64, u64)>,
        determinism: bool,
        threads: Option<usize>,
        duration_s: Option<u64>,
        until_failure: bool,
        max_runs: Option<usize>,
        keep_trace: bool,
    }

    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--scenario" => o.scenarios.push(PathBuf::from(value(a)?)),
                "--all-scenarios" => o.all = true,
                "--check-determinism" => o.determinism = true,
                "--until-failure" => o.until_failure = true,
                "--trace" => o.keep_trace = true,
                "--max-runs" => {
                    let v = value(a)?;
                    o.max_runs = Some(
                        v.parse()
                            .ok()
                            .filter(|r| *r > 0)
                            .ok_or_else(|| format!("--max-runs {v}: not a positive number"))?,
                    );
                }
                "--seed" => {
                    let v = value(a)?;
                    o.seed = Some(v.parse().map_err(|_| format!("--seed {v}: not a number"))?);
                }
                "--seeds" => {
                    let v = value(a)?;
                    let (lo, hi) = v
                        .split_once("..")
                        .ok_or_else(|| format!("--seeds {v}: expected A..B"))?;
                    let lo: u64 = lo.parse().map_err(|_| format!("--seeds {v}: bad start"))?;
                    let hi: u64 = hi.parse().map_err(|_| format!("--seeds {v}: bad end"))?;
                    if hi <= lo {
                        return Err(format!("--seeds {v}: the range is empty (B is exclusive)"));
                    }
                    o.seeds = Some((lo, hi));
                }
                "--threads" => {
                    let v = value(a)?;
                    o.threads = Some(
                        v.parse()
                            .ok()
                            .filter(|t| *t > 0)
                            .ok_or_else(|| format!("--threads {v}: not a positive number"))?,
                    );
                }
                "--duration-s" => {
                    let v = value(a)?;
                    o.duration_s = Some(
                        v.parse()
                            .ok()
                            .filter(|d| *d > 0)
                            .ok_or_else(|| format!("--duration-s {v}: not a positive number"))?,
                    );
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(o)
    }

    /// Loads a scenario, applying a duration override.
    fn load(path: &Path, duration_s: Option<u64>) -> Result<Scenario, String> {
        let mut s = Scenario::load_path(path).map_err(|e| e.to_string())?;
        if let Some(d) = duration_s {
            s.duration_s = d;
        }
        Ok(s)
    }

    /// The command that reproduces a run.
    fn reproduce(path: &Path, seed: u64, duration_s: Option<u64>) -> String {
        let mut cmd = format!("detcd-sim run --scenario {} --seed {seed}", path.display());
        if let Some(d) = duration_s {
            cmd.push_str(&format!(" --duration-s {d}"));
        }
        cmd
    }

    /// Writes the trace (and history) and the HTML report of a failed run; returns their
    /// paths.
    fn write_artifacts(out: &RunOutcome, repro: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let dir = PathBuf::from("target/detcd-sim");
        std::fs::create_dir_all(&dir)?;
        let base = dir.join(format!("{}-{}", out.scenario, out.seed));
        let trace = base.with_extension("trace");
        let mut text = format!("# {repro}\n# verdict: {}\n# failures:\n", out.verdict());
        for f in &out.record.failures {
            text.push_str(&format!("#   {f}\n"));
        }
        text.push_str("# inconclusive:\n");
        for f in &out.record.inconclusive {
            text.push_str(&format!("#   {f}\n"));
        }
        text.push_str("# trace:\n");
        for l in &out.record.trace {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("# history:\n");
        for (i, op) in out.record.history.iter().enumerate() {
            text.push_str(&format!("#{i} {op}\n"));
        }
        if let Some(v) = out.check.as_ref().and_then(|c| c.violation()) {
            text.push_str(&format!("# checker:\n{}\n", v.explanation));
        }
        if !out.watch_violations.is_empty() {
            text.push_str("# watch violations:\n");
            for v in &out.watch_violations {
                text.push_str(&format!("{v}\n"));
            }
        }
        std::fs::write(&trace, text)?;
        let html = base.with_extension("html");
        let title = format!("detcd-sim: {} seed {}", out.scenario, out.seed);
        std::fs::write(
            &html,
            report::html(&ReportInput {
                title: &title,
                reproduce: repro,
                record: &out.record,
                check: out.check.as_ref(),
                watch_violations: &out.watch_violations,
            }),
        )?;
        Ok((trace, html))
    }

    /// Reports a failed or inconclusive run: what went wrong or why it could not be
    /// judged, its artifacts, and the reproduce line.
    fn report_failure(out: &RunOutcome, repro: &str) {
        match out.verdict() {
            Verdict::Failed => println!(
                "FAILED {} seed {} ({}):",
                out.scenario,
                out.seed,
                shrink::failure_class(&out.record.failures)
            ),
            _ => println!("INCONCLUSIVE {} seed {}:", out.scenario, out.seed),
        }
        for f in out.record.failures.iter().chain(&out.record.inconclusive) {
            println!("  {f}");
        }
        if let Some(v) = out.check.as_ref().and_then(|c| c.violation()) {
            println!("{}", v.explanation);
        }
        match write_artifacts(out, repro) {
            Ok((t, h)) => println!("  trace: {}\n  report: {}", t.display(), h.display()),
            Err(e) => println!("  could not write the trace and report: {e}"),
        }
        println!("{repro}");
    }

    fn cmd_run(o: &Opts) -> Result<i32, String> {
        let [path] = &o.scenarios[..] else {
            return Err("run needs exactly one --scenario".into());
        };
        let scenario = load(path, o.duration_s)?;
        let seed = o.seed.unwrap_or(scenario.seed);
        for line in run::parameters(&scenario, seed) {
            println!("{line}");
        }
        let repro = reproduce(path, seed, o.duration_s);
        let wall = Instant::now();
        let out = run::run(&scenario, seed);
        let h = &out.record.history;
        let unknown = h.iter().filter(|op| op.output.is_none()).count();
        let errors = h
            .iter()
            .filter(|op| matches!(op.output, Some(Err(_))))
            .count();
        println!(
            "{} operations ({} ok, {errors} definite errors, {unknown} unknown outcomes), {} \
             faults, {:.1} simulated s in {:.1} wall s ({:.1} s of it checking, {} of {} \
             checker steps), fingerprint {:016x}",
            h.len(),
            h.len() - unknown - errors,
            out.record.faults.len(),
            out.simulated_s,
            wall.elapsed().as_secs_f64(),
            out.check_wall_s,
            out.check.as_ref().map_or(0, |c| c.steps()),
            run::CHECK_MAX_STEPS,
            out.record.fingerprint()
        );
        let w = &out.record.watches;
        let segments: usize = w.iter().map(|s| s.segments.len()).sum();
        let responses: usize = w
            .iter()
            .flat_map(|s| &s.segments)
            .map(|g| g.responses.len())
            .sum();
        let events: usize = w
            .iter()
            .flat_map(|s| &s.segments)
            .flat_map(|g| &g.responses)
            .map(|r| r.events.len())
            .sum();
        println!(
            "{} watchers: {segments} creations, {responses} responses, {events} events",
            w.len()
        );
        match out.verdict() {
            Verdict::Passed => {}
            Verdict::Failed => {
                report_failure(&out, &repro);
                return Ok(EXIT_FAILED);
            }
            Verdict::Inconclusive => {
                report_failure(&out, &repro);
                return Ok(EXIT_INCONCLUSIVE);
            }
        }
        if o.keep_trace {
            let (trace, html) = write_artifacts(&out, &repro).map_err(|e| e.to_string())?;
            println!("trace: {}\nreport: {}", trace.display(), html.display());
        }
        if o.determinism {
            let again = run::run(&scenario, seed);
            if let Some((line, a, b)) =
                report::first_divergence(&out.record.trace, &again.record.trace)
            {
                println!(
                    "NONDETERMINISTIC {} seed {seed}: the traces of two runs differ at line \
                     {line}:\n  first:  {a}\n  second: {b}\n{} --check-determinism",
                    scenario.name, repro
                );
                return Ok(EXIT_FAILED);
            }
            println!("deterministic: the second run's fingerprint is the same");
        }
        println!("PASSED {} seed {seed}", scenario.name);
        Ok(0)
    }

    fn cmd_explore(o: &Opts) -> Result<i32, String> {
        let paths: Vec<PathBuf> = if o.all {
            let names = Scenario::shipped().map_err(|e| e.to_string())?;
            names
                .iter()
                .map(|n| PathBuf::from(format!("scenarios/{n}.toml")))
                .collect()
        } else {
            o.scenarios.clone()
        };
        if paths.is_empty() {
            return Err("explore needs --scenario or --all-scenarios".into());
        }
        let (lo, hi) = o.seeds.ok_or("explore needs --seeds A..B")?;
        let mut jobs = Vec::new();
        for p in &paths {
            // A missing file under `scenarios/` is looked up in the repository too.
            let s = load(p, o.duration_s).or_else(|e| {
                let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                Scenario::load(name)
                    .map(|mut s| {
                        if let Some(d) = o.duration_s {
                            s.duration_s = d;
                        }
                        s
                    })
                    .map_err(|_| e)
            })?;
            for seed in lo..hi {
                jobs.push((p.clone(), s.clone(), seed));
            }
        }
        let threads = o.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let total = jobs.len();
        let jobs = Arc::new(jobs);
        let next = Arc::new(AtomicUsize::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let until_failure = o.until_failure;
        let wall = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..threads.min(total) {
            let (jobs, next, tally) = (jobs.clone(), next.clone(), tally.clone());
            let duration_s = o.duration_s;
            workers.push(std::thread::spawn(move || loop {
                if until_failure && lock(&tally).first_failure.is_some() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((path, scenario, seed)) = jobs.get(i) else {
                    break;
                };
                let out = run::run(scenario, *seed);
                let mut t = lock(&tally);
                t.add(&out, &reproduce(path, *seed, duration_s));
                let secs = wall.elapsed().as_secs_f64();
                println!(
                    "{}/{total} runs, {} failed, {} inconclusive, {:.1} simulated s per wall s, \
                     {:.1} runs/min",
                    t.done,
                    t.failed.len(),
                    t.inconclusive.len(),
                    t.simulated_s / secs,
                    t.done as f64 * 60.0 / secs
                );
            }));
        }
        for w in workers {
            let _ = w.join();
        }
        let t = lock(&tally);
        Ok(t.summarize(lo, hi))
    }

    /// Locks a mutex, whether or not a thread panicked holding it.
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What an exploration has found so far.
    #[derive(Default)]
    struct Tally {
        /// How many runs are done.
        done: usize,
        /// How many of them passed.
        passed: usize,
        /// The reproduce lines of the failed runs.
        failed: Vec<String>,
        /// The reproduce lines of the inconclusive runs.
        inconclusive: Vec<String>,
        /// The simulated seconds of every run done.
        simulated_s: f64,
        /// The lowest failing seed and the kind of its failure.
        first_failure: Option<(u64, &'static str)>,
        /// The most steps one linearizability check took, and the run's reproduce line:
        /// how close the sweep came to an inconclusive run.
        most_steps: Option<(u64, String)>,
    }

    impl Tally {
        /// Counts a finished run, and reports it if it did not pass.
        fn add(&mut self, out: &RunOutcome, repro: &str) {
            self.done += 1;
            self.simulated_s += out.simulated_s;
            let steps = out.check.as_ref().map_or(0, |c| c.steps());
            if self
                .most_steps
                .as_ref()
                .is_none_or(|(most, _)| steps > *most)
            {
                self.most_steps = Some((steps, repro.to_string()));
            }
            match out.verdict() {
                Verdict::Passed => self.passed += 1,
                Verdict::Failed => {
                    report_failure(out, repro);
                    self.failed.push(repro.to_string());
                    let kind = shrink::failure_class(&out.record.failures);
                    if self.first_failure.is_none_or(|(seed, _)| out.seed < seed) {
                        self.first_failure = Some((out.seed, kind));
                    }
                }
                Verdict::Inconclusive => {
                    report_failure(out, repro);
                    self.inconclusive.push(repro.to_string());
                }
            }
        }

        /// Prints the counts, the first failure and the runs to reproduce, and returns
        /// the exit status. `lo..hi` are the seeds explored.
        fn summarize(&self, lo: u64, hi: u64) -> i32 {
            if let Some((first, kind)) = self.first_failure {
                println!(
                    "first failure at seed {first}: caught within {} seed(s) of {lo}..{hi}",
                    first - lo + 1
                );
                println!("first failure kind: {kind}");
            }
            if let Some((steps, repro)) = &self.most_steps {
                println!(
                    "the longest linearizability check took {steps} of {} steps: {repro}",
                    run::CHECK_MAX_STEPS
                );
            }
            println!(
                "{} passed, {} failed, {} inconclusive of {} runs",
                self.passed,
                self.failed.len(),
                self.inconclusive.len(),
                self.done
            );
            for (what, runs) in [
                ("failed", &self.failed),
                ("inconclusive", &self.inconclusive),
            ] {
                if !runs.is_empty() {
                    println!("{what} runs; reproduce with:");
                    for r in runs {
                        println!("{r}");
                    }
                }
            }
            if !self.failed.is_empty() {
                EXIT_FAILED
            } else if !self.inconclusive.is_empty() {
                EXIT_INCONCLUSIVE
            } else {
                println!("all {} runs passed", self.done);
                0
            }
        }
    }

    /// How many runs `shrink` makes at most unless told otherwise.
    const SHRINK_MAX_RUNS: usize = 300;

    fn cmd_shrink(o: &Opts) -> Result<i32, String> {
        let [path] = &o.scenarios[..] else {
            return Err("shrink needs exactly one --scenario".into());
        };
        let scenario = load(path, o.duration_s)?;
        let seed = o.seed.unwrap_or(scenario.seed);
        let first = run::run(&scenario, seed);
        match first.verdict() {
            Verdict::Failed => {}
            Verdict::Passed => {
                println!("{} seed {seed} passes: nothing to shrink", scenario.name);
                return Ok(0);
            }
            Verdict::Inconclusive => {
                println!(
                    "{} seed {seed} is inconclusive ({}): nothing to shrink",
                    scenario.name,
                    first.record.inconclusive.join("; ")
                );
                return Ok(EXIT_INCONCLUSIVE);
            }
        }
        let class = shrink::failure_class(&first.record.failures);
        println!(
            "{} seed {seed} fails ({class}): {}",
            scenario.name,
            first.record.failures.join("; ")
        );
        let planned = |s: &Scenario| detcd_sim::faults::plan_all(s, seed).len();
        let fails = |s: &Scenario| {
            let out = run::run(s, seed);
            let same = out.verdict() == Verdict::Failed
                && shrink::failure_class(&out.record.failures) == class;
            if same {
                println!("  still fails: {}", out.record.failures.join("; "));
            }
            same
        };
        let out = shrink::shrink(
            scenario,
            planned,
            fails,
            o.max_runs.unwrap_or(SHRINK_MAX_RUNS),
        );
        for step in &out.steps {
            println!("step: {step}");
        }
        let text = toml::to_string(&out.scenario).map_err(|e| e.to_string())?;
        let dir = PathBuf::from("target/detcd-sim");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join(format!("{}-{seed}-shrunk.toml", out.scenario.name));
        std::fs::write(&file, &text).map_err(|e| e.to_string())?;
        println!(
            "shrunk in {} runs ({} steps); the smallest scenario that still fails:\n{text}\n\
             saved as {}; reproduce with:\ndetcd-sim run --scenario {} --seed {seed}",
            out.runs,
            out.steps.len(),
            file.display(),
            file.display()
        );
        Ok(EXIT_FAILED)
    }

    /// Runs the command line; returns the exit code.
    pub fn main(args: Vec<String>) -> i32 {
        let (cmd, rest) = match args.split_first() {
            Some((c, r)) => (c.as_str(), r),
            None => {
                eprintln!("{USAGE}");
                return 2;
            }
        };
        let result = parse(rest).and_then(|o| match cmd {
            "run" => cmd_run(&o),
            "explore" => cmd_explore(&o),
            "shrink" => cmd_shrink(&o),
            _ => Err(format!("unknown command {cmd}")),
        });
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("detcd-sim: {e}\n{USAGE}");
                2
            }
        }
    }
}

//! `sluice test`, run as a customer runs it: the example logic of every language passes its
//! committed cases; a wrong expectation fails with a diff naming the record; a case whose logic
//! traps or loops forever fails with the reason while the other cases still run; `--update`
//! writes what the step did.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixtures::{self, repo, Lang};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cases-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sluice_test(logic: &Path, cases: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("test")
        .arg("--logic")
        .arg(logic)
        .arg(cases)
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The flags the examples compose with: the Python runtime reads its environment.
fn compose_flags(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::Python => &["--allow", "wasi:cli/environment", "--deny", "trap"],
        Lang::Rust | Lang::Js => &["--deny", "trap"],
    }
}

#[test]
fn every_example_logic_passes_its_cases_and_a_wrong_expectation_fails_with_a_diff() {
    let dir = temp_dir("examples");
    let cases = repo().join("examples/logic/sensors.cases.yaml");
    let committed = std::fs::read_to_string(&cases).unwrap();
    let wrong = dir.join("wrong.cases.yaml");
    std::fs::write(&wrong, committed.replace("temperature: 21.5", "temperature: 22.5")).unwrap();
    for lang in Lang::ALL {
        let logic = dir.join(format!("{}.wasm", lang.name()));
        std::fs::write(&logic, fixtures::example(lang)).unwrap();

        let passing = sluice_test(&logic, &cases, compose_flags(lang));
        assert!(passing.status.success(), "{}: {passing:?}", lang.name());
        assert!(
            stdout(&passing).contains("5 passed, 0 failed"),
            "{}: {}",
            lang.name(),
            stdout(&passing)
        );

        let failing = sluice_test(&logic, &wrong, compose_flags(lang));
        assert!(!failing.status.success(), "{}: a wrong expectation passed", lang.name());
        let out = stdout(&failing);
        assert!(
            out.contains("FAILED  maps a reading, keyed by its device")
                && out.contains("output[0] (from test:maps a reading, keyed by its device/0)")
                && out.contains("\"temperature\":22.5")
                && out.contains("4 passed, 1 failed"),
            "{}: {out}",
            lang.name()
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_case_that_traps_or_never_ends_fails_with_the_reason_and_the_others_still_run() {
    let dir = temp_dir("behave");
    let logic = dir.join("behave.wasm");
    std::fs::write(&logic, fixtures::behave()).unwrap();
    let cases = dir.join("behave.cases.yaml");
    std::fs::write(
        &cases,
        "cases:
  - name: passes through
    input: [{text: hello, key: k}]
    output: [{text: hello, key: k}]
  - name: loops forever
    input: [{text: loop}]
  - name: panics
    input: [{text: trap}]
  - name: asks to retry
    input: [{text: retry}]
    retry: asked to retry
  - name: rejects one, keeps the other
    input: [{text: reject}, {text: kept}]
    output: [{text: kept}]
    rejects: [{index: 0, reason: asked to reject}]
",
    )
    .unwrap();
    let output = sluice_test(&logic, &cases, &["--deny", "trap", "--max-execution-time", "300ms"]);
    let out = stdout(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains("ok      passes through")
            && out.contains("FAILED  loops forever\n        the step trapped: it ran past the deadline (300 ms")
            && out.contains("FAILED  panics\n        the step trapped:")
            && out.contains("ok      asks to retry")
            && out.contains("ok      rejects one, keeps the other")
            && out.contains("3 passed, 2 failed"),
        "{out}"
    );

    // `--update` writes what the step did; the updated file passes, except where it trapped.
    let update = sluice_test(
        &logic,
        &cases,
        &["--deny", "trap", "--max-execution-time", "300ms", "--update"],
    );
    assert!(update.status.success(), "{update:?}");
    let rewritten = std::fs::read_to_string(&cases).unwrap();
    assert!(
        rewritten.contains("asked to reject") && rewritten.contains("kept"),
        "{rewritten}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

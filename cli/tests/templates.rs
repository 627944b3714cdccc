//! `sluice new logic`: every template builds with the command its README gives, composes and runs.

mod common;

use std::path::Path;
use std::process::Command;

use common::fixtures::{self, Lang};
use common::host::{message, Bounds, Failure, Rejected, StepHost};
use sluice_compose::compose::compose;

/// The first command of the README's `section` (the first ```sh block after its heading).
fn command_of(readme: &str, section: &str) -> String {
    let build = &readme[readme.find(section).unwrap_or_else(|| panic!("a {section} section"))..];
    let block = &build[build.find("```sh\n").expect("a sh block") + 6..];
    block[..block.find("```").unwrap()]
        .replace("\\\n", " ")
        .trim()
        .to_string()
}

fn new_logic(lang: Lang, dir: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["new", "logic", "--lang", lang.name(), "my-logic", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn each_template_builds_as_its_readme_says_composes_and_runs() {
    let root = std::env::temp_dir().join(format!("sluice-templates-{}", std::process::id()));
    for lang in Lang::ALL {
        let dir = root.join(lang.name());
        new_logic(lang, &dir);
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let command = command_of(&readme, "## Build");
        let logic = match lang {
            // The README leads with the standard route (a rustup target, which cannot be added
            // on this project's machines); its fallback is what builds here, with the guest
            // target directory shared between tests so the standard library is built once.
            Lang::Rust => {
                assert_eq!(
                    command,
                    "rustup target add wasm32-wasip2\ncargo build --target wasm32-wasip2 --release"
                );
                let fallback = command_of(&readme, "### Fallback");
                assert!(
                    fallback.contains("-Zbuild-std=std,panic_abort") && fallback.contains("/usr/bin/cargo build"),
                    "{fallback}"
                );
                fixtures::rust_guest(&dir)
            }
            Lang::Python | Lang::Js => {
                let output = Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .current_dir(&dir)
                    .output()
                    .unwrap();
                assert!(output.status.success(), "{lang:?}: {command}: {output:?}");
                std::fs::read(dir.join("logic.wasm")).unwrap()
            }
        };
        let step = compose(&logic, &fixtures::compose_options(lang)).unwrap();
        let host = StepHost::new(&step.bytes, Bounds::default()).unwrap();
        let mut instance = host.instantiate().unwrap();
        let batch = [message(b"a", "o/0"), message(b"", "o/1"), message(b"b", "o/2")];
        assert_eq!(
            instance.deliver(&batch).unwrap(),
            Err(Failure::Reject(vec![Rejected {
                index: 1,
                reason: "empty payload".into()
            }])),
            "{lang:?}"
        );
        let payloads: Vec<Vec<u8>> = instance.records().into_iter().map(|m| m.payload).collect();
        assert_eq!(payloads, vec![b"a".to_vec(), b"b".to_vec()], "{lang:?}");

        // The README's test command passes the template's own cases (for Rust, the one for the
        // fallback route's output).
        let test = match lang {
            Lang::Rust => {
                let standard = command_of(&readme, "## Test");
                assert_eq!(
                    standard,
                    "sluice test --logic target/wasm32-wasip2/release/my_logic.wasm --deny=trap cases.yaml"
                );
                command_of(&readme, "Built with the fallback route")
            }
            Lang::Python | Lang::Js => command_of(&readme, "## Test"),
        };
        assert!(
            test.starts_with("sluice test ") && test.contains("cases.yaml"),
            "{test}"
        );
        if lang == Lang::Rust {
            // Built by the fixture into the shared guest target rather than the project's own.
            std::fs::create_dir_all(dir.join("target/wasm32-unknown-unknown/release")).unwrap();
            std::fs::write(dir.join("target/wasm32-unknown-unknown/release/my_logic.wasm"), &logic).unwrap();
        }
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(test.split_whitespace().skip(1))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{lang:?}: {test}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("2 passed, 0 failed"),
            "{lang:?}: {output:?}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_template_refuses_a_bad_name_or_a_used_directory() {
    let root = std::env::temp_dir().join(format!("sluice-template-refusals-{}", std::process::id()));
    let error =
        sluice_cli::templates::write_logic(sluice_cli::templates::Language::Rust, "Bad Name", &root.join("bad"))
            .unwrap_err();
    assert!(error.to_string().contains("not a usable name"), "{error}");
    new_logic(Lang::Js, &root.join("used"));
    let error = sluice_cli::templates::write_logic(sluice_cli::templates::Language::Js, "again", &root.join("used"))
        .unwrap_err();
    assert!(error.to_string().contains("not empty"), "{error}");
    std::fs::remove_dir_all(&root).unwrap();
}

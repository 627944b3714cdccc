//! `sluice compose`: the import policy (refuse or trap) and the composed step's world.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::fixtures::{self, Lang};
use sluice_compose::compose::{compose, ComposeError, ComposeOptions, DenyMode, INGEST, SINK};
use sluice_compose::policy::Policy;
use sluice_compose::world::World;

const FORBIDDEN: [&str; 5] = [
    "wasi:http/types@0.2.0",
    "wasi:sockets/network@0.2.0",
    "wasi:sockets/instance-network@0.2.0",
    "wasi:filesystem/types@0.2.0",
    "wasi:filesystem/preopens@0.2.0",
];

fn names(items: Vec<&str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_string).collect()
}

#[test]
fn the_rust_step_world_is_exactly_ingest_and_sink_plus_logging_and_the_clock() {
    let composed = compose(&fixtures::example(Lang::Rust), &ComposeOptions::default()).unwrap();
    // Read back from the binary, not from what compose reported.
    let world = World::of("the step", &composed.bytes).unwrap();
    assert_eq!(names(world.export_names()), names(vec![INGEST]));
    assert_eq!(
        names(world.import_names()),
        names(vec![
            "sluice:pipeline/types@0.1.0",
            SINK,
            "wasi:logging/logging@0.1.0-draft",
            "wasi:clocks/monotonic-clock@0.2.0",
        ])
    );
    assert!(composed.stubbed.is_empty());
    assert_eq!(world, composed.world);
}

#[test]
fn the_relay_world_is_exactly_ingest_and_sink_plus_logging_and_the_clock() {
    let composed = sluice_compose::compose::relay(&ComposeOptions::default()).unwrap();
    let world = World::of("the relay", &composed.bytes).unwrap();
    assert_eq!(names(world.export_names()), names(vec![INGEST]));
    assert_eq!(
        names(world.import_names()),
        names(vec![
            "sluice:pipeline/types@0.1.0",
            SINK,
            "wasi:logging/logging@0.1.0-draft",
            "wasi:clocks/monotonic-clock@0.2.0",
        ])
    );
    assert!(composed.stubbed.is_empty());
}

#[test]
fn python_and_js_steps_keep_only_ingest_sink_and_allowed_imports() {
    for lang in [Lang::Python, Lang::Js] {
        let options = fixtures::compose_options(lang);
        let composed = compose(&fixtures::example(lang), &options).unwrap();
        let world = World::of("the step", &composed.bytes).unwrap();
        assert_eq!(names(world.export_names()), names(vec![INGEST]), "{lang:?}");
        assert!(world.import_names().contains(&SINK), "{lang:?}");
        for import in world.import_names() {
            assert!(
                import == SINK || options.policy.allows(import),
                "{lang:?}: the step imports {import}"
            );
        }
        assert!(
            composed.stubbed.iter().any(|s| s.starts_with("wasi:filesystem/")),
            "{lang:?}: {:?}",
            composed.stubbed
        );
        // (tests/run.rs runs these steps in a host that links nothing but the allowed interfaces.)
    }
}

#[test]
fn logic_importing_http_sockets_or_files_is_refused_with_each_import_named() {
    let error = compose(&fixtures::forbidden(), &ComposeOptions::default()).unwrap_err();
    let ComposeError::Forbidden { imports, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(imports, &FORBIDDEN);
    let message = error.to_string();
    for import in FORBIDDEN {
        assert!(message.contains(&format!("  - {import}\n")), "{message}");
    }
    assert!(message.contains("--deny=trap"), "{message}");
}

#[test]
fn python_and_js_logic_is_refused_by_default() {
    for lang in [Lang::Python, Lang::Js] {
        let error = compose(&fixtures::example(lang), &ComposeOptions::default()).unwrap_err();
        let ComposeError::Forbidden { imports, .. } = &error else {
            panic!("{lang:?}: {error}");
        };
        assert!(
            imports.iter().any(|i| i.starts_with("wasi:filesystem/preopens@")),
            "{lang:?}: {imports:?}"
        );
        assert!(
            !imports.iter().any(|i| i.starts_with("wasi:clocks/")
                || i.starts_with("wasi:random/")
                || i.starts_with("sluice:pipeline/types")),
            "{lang:?}: allowed imports listed as forbidden: {imports:?}"
        );
    }
}

#[test]
fn with_deny_trap_the_forbidden_imports_are_stubbed_out_of_the_world() {
    let options = ComposeOptions {
        deny: DenyMode::Trap,
        ..ComposeOptions::default()
    };
    let composed = compose(&fixtures::forbidden(), &options).unwrap();
    assert_eq!(composed.stubbed, FORBIDDEN);
    let world = World::of("the step", &composed.bytes).unwrap();
    for import in world.import_names() {
        assert!(!import.starts_with("wasi:http"), "{import}");
        assert!(!import.starts_with("wasi:sockets"), "{import}");
        assert!(!import.starts_with("wasi:filesystem"), "{import}");
    }
}

#[test]
fn an_allowed_import_needing_a_forbidden_one_is_refused() {
    // wasi:sockets/instance-network uses wasi:sockets/network's types.
    let options = ComposeOptions {
        policy: Policy::default_and(["wasi:sockets/instance-network".parse().unwrap()]),
        deny: DenyMode::Trap,
        ..ComposeOptions::default()
    };
    let error = compose(&fixtures::forbidden(), &options).unwrap_err();
    assert!(
        matches!(&error, ComposeError::NotClosed { allowed, needs }
            if allowed == "wasi:sockets/instance-network@0.2.0" && needs == "wasi:sockets/network@0.2.0"),
        "{error}"
    );
}

#[test]
fn a_component_that_is_not_logic_is_refused() {
    let error = compose(
        &sluice_compose::trusted::out_component().unwrap(),
        &ComposeOptions::default(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("does not export sluice:pipeline/transform"),
        "{error}"
    );
    let error = compose(b"not wasm", &ComposeOptions::default()).unwrap_err();
    assert!(error.to_string().contains("not a WebAssembly binary"), "{error}");
}

#[test]
fn the_cli_refuses_or_composes_and_prints_the_world() {
    let dir = std::env::temp_dir().join(format!("sluice-compose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let logic = dir.join("forbidden.wasm");
    std::fs::write(&logic, fixtures::forbidden()).unwrap();
    let step = dir.join("step.wasm");
    let sluice = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("compose")
            .arg("--logic")
            .arg(&logic)
            .arg("-o")
            .arg(&step)
            .args(args)
            .output()
            .unwrap()
    };

    let refused = sluice(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for import in FORBIDDEN {
        assert!(stderr.contains(import), "{stderr}");
    }
    assert!(!step.exists(), "nothing written when refused");

    let trapped = sluice(&["--deny=trap", "--max-records", "500"]);
    assert!(trapped.status.success(), "{trapped:?}");
    let stdout = String::from_utf8_lossy(&trapped.stdout);
    assert!(stdout.contains(&format!("export {INGEST};")), "{stdout}");
    assert!(stdout.contains(&format!("import {SINK};")), "{stdout}");
    assert!(!stdout.contains("wasi:http"), "{stdout}");
    let stderr = String::from_utf8_lossy(&trapped.stderr);
    assert!(stderr.contains("at most 500 records"), "{stderr}");
    let world = World::of("the step", &std::fs::read(&step).unwrap()).unwrap();
    assert_eq!(stdout.trim(), world.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
}

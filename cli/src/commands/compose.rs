//! `sluice compose`: check a logic component's imports and compose it into a step, or compose a
//! relay step (`--relay`: trusted in + identity + out) for the sinks of a multi-step pipeline.

use std::path::PathBuf;

use anyhow::Context;
use sluice_compose::compose::{compose, relay, ComposeOptions, DenyMode};
use sluice_compose::limits::Limits;
use sluice_compose::policy::{Policy, Rule};

/// Arguments of `sluice compose`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The customer's logic: a component exporting `sluice:pipeline/transform` (or a core module
    /// built with wit-bindgen).
    #[arg(long, required_unless_present = "relay", conflicts_with = "relay")]
    logic: Option<PathBuf>,
    /// Compose a relay step instead: the trusted in and out components around an identity logic
    /// (what a multi-step pipeline puts in front of each sink fed from a JetStream hop).
    #[arg(long)]
    relay: bool,
    /// Where to write the composed step.
    #[arg(short, long, default_value = "step.wasm")]
    output: PathBuf,
    #[command(flatten)]
    options: Options,
}

/// How logic is composed into a step: the import policy and the output limits (shared by
/// `sluice compose` and `sluice test --logic`).
#[derive(Debug, clap::Args)]
pub struct Options {
    /// What to do with imports the policy forbids: refuse the logic, or satisfy them with stubs
    /// whose every function traps.
    #[arg(long, value_enum, default_value_t = Deny::Refuse)]
    deny: Deny,
    /// Also allow this package (`wasi:cli`) or interface (`wasi:cli/stdout`); repeatable. The
    /// default policy allows wasi:logging, wasi:clocks, wasi:random and wasi:io/poll.
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<Rule>,
    /// Allow only the `--allow` rules, not the default ones.
    #[arg(long)]
    no_default_allow: bool,
    /// The most records one write of this step may carry (enforced by the trusted out component).
    #[arg(long, default_value_t = Limits::default().max_records)]
    max_records: u32,
    /// The most bytes (payload in the wire form, key, headers, origin) one write of this step may carry.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    max_bytes: u64,
}

impl Options {
    /// The compose options these flags ask for.
    pub fn compose_options(self) -> ComposeOptions {
        ComposeOptions {
            policy: if self.no_default_allow {
                Policy::new(self.allow)
            } else {
                Policy::default_and(self.allow)
            },
            deny: match self.deny {
                Deny::Refuse => DenyMode::Refuse,
                Deny::Trap => DenyMode::Trap,
            },
            limits: Limits {
                max_records: self.max_records,
                max_bytes: self.max_bytes,
            },
        }
    }
}

/// How forbidden imports are handled.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Deny {
    Refuse,
    Trap,
}

/// Runs `sluice compose`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let options = args.options.compose_options();
    let composed = match &args.logic {
        Some(path) => {
            let logic = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            compose(&logic, &options)?
        }
        None => relay(&options)?,
    };
    std::fs::write(&args.output, &composed.bytes).with_context(|| format!("writing {}", args.output.display()))?;
    for import in &composed.stubbed {
        eprintln!("stubbed (traps when called): {import}");
    }
    let instances = sluice_compose::component::core_instantiations(&composed.bytes)?;
    eprintln!(
        "wrote {} ({} bytes, {instances} core instances; output limits: {})",
        args.output.display(),
        composed.bytes.len(),
        options.limits
    );
    println!("{}", composed.world);
    Ok(())
}

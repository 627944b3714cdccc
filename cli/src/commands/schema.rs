//! `sluice schema <provider>`: the JSON Schema of a provider's link config (each role's keys,
//! types, defaults, allowed values, which are secrets), as `sluice render` checks specs against it.

use sluice_deploy::schemas::{schema_json, SCHEMAS};

/// `sluice schema` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The provider's name in specs: http-inproc, jetstream, kafka, modbus, mqtt or s3.
    provider: String,
}

/// Prints the schema.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(json) = schema_json(&args.provider) else {
        let names: Vec<&str> = SCHEMAS.iter().map(|(name, _)| *name).collect();
        anyhow::bail!("no provider `{}`: expected one of {}", args.provider, names.join(", "));
    };
    print!("{json}");
    Ok(())
}

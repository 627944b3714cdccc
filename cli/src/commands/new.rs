//! `sluice new`: project templates.

use std::path::PathBuf;

use anyhow::Context;
use sluice_cli::templates::{self, Language};

/// What `sluice new` creates.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Customer logic exporting `sluice:pipeline/transform`, ready to build.
    Logic {
        /// The language of the logic.
        #[arg(long, value_name = "rust|python|js")]
        lang: Language,
        /// The project's name; also its directory unless `--dir` is given.
        name: String,
        /// Where to create the project.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs `sluice new`.
pub fn run(what: What) -> anyhow::Result<()> {
    match what {
        What::Logic { lang, name, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files =
                templates::write_logic(lang, &name, &dir).with_context(|| format!("creating {}", dir.display()))?;
            for file in files {
                println!("created {}", file.display());
            }
            println!("build it as {}/README.md says", dir.display());
            Ok(())
        }
    }
}

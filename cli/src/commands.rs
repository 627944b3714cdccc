//! The subcommands, one module each: its arguments (`Args`) and what it does (`run`).

pub mod compose;
pub mod deploy;
pub mod dev;
pub mod lattice;
pub mod new;
pub mod render;
pub mod run;
pub mod schema;
pub mod sign;
pub mod status;
pub mod tap;
pub mod test;
pub mod undeploy;

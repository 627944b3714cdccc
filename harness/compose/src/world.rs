//! The world of a component, read back from its binary.

use std::fmt;

use thiserror::Error;
use wit_component::DecodedWasm;
use wit_parser::{Resolve, WorldId, WorldItem, WorldKey};

/// A component whose WIT could not be read.
#[derive(Debug, Error)]
#[error("cannot read the WIT of {what}: {reason}")]
pub struct WorldError {
    /// What the binary is.
    pub what: String,
    /// Why its WIT could not be read.
    pub reason: String,
}

/// A component's decoded WIT: the types behind its imports and exports.
pub struct Decoded {
    /// Every package the component's imports and exports refer to.
    pub resolve: Resolve,
    /// The component's world.
    pub world: WorldId,
}

impl Decoded {
    /// Decodes the WIT of the component `bytes`; `what` names it in errors.
    pub fn new(what: &str, bytes: &[u8]) -> Result<Self, WorldError> {
        let error = |reason: String| WorldError {
            what: what.to_string(),
            reason,
        };
        match wit_component::decode(bytes).map_err(|e| error(format!("{e:#}")))? {
            DecodedWasm::Component(resolve, world) => Ok(Self { resolve, world }),
            DecodedWasm::WitPackage(..) => Err(error("it is a WIT package, not a component".into())),
        }
    }

    /// The world's imports and exports by name.
    pub fn summary(&self) -> World {
        let world = &self.resolve.worlds[self.world];
        let item = |(key, item): (&WorldKey, &WorldItem)| Item {
            name: self.resolve.name_world_key(key),
            interface: matches!(key, WorldKey::Interface(_)) && matches!(item, WorldItem::Interface { .. }),
        };
        World {
            imports: world.imports.iter().map(item).collect(),
            exports: world.exports.iter().map(item).collect(),
        }
    }
}

/// One import or export of a world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `wasi:http/types@0.2.10`, or a plain name for a function or an unnamed interface.
    pub name: String,
    /// Whether it is a named interface (the only kind `sluice compose` can police or stub).
    pub interface: bool,
}

/// A world by the names of its imports and exports, printed as WIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// What the component needs, in the component's order.
    pub imports: Vec<Item>,
    /// What the component offers.
    pub exports: Vec<Item>,
}

impl World {
    /// Reads the world of the component `bytes`; `what` names it in errors.
    pub fn of(what: &str, bytes: &[u8]) -> Result<Self, WorldError> {
        Ok(Decoded::new(what, bytes)?.summary())
    }

    /// The names of the imports.
    pub fn import_names(&self) -> Vec<&str> {
        self.imports.iter().map(|i| i.name.as_str()).collect()
    }

    /// The names of the exports.
    pub fn export_names(&self) -> Vec<&str> {
        self.exports.iter().map(|i| i.name.as_str()).collect()
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "world step {{")?;
        for item in &self.imports {
            writeln!(f, "  import {};", item.name)?;
        }
        for item in &self.exports {
            writeln!(f, "  export {};", item.name)?;
        }
        write!(f, "}}")
    }
}

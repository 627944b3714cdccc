//! Composing a pipeline step: trusted `in` + the customer's logic + trusted `out` (+ trap stubs and
//! the limits component) into one component whose world is `export ingest; import sink;` plus the
//! imports the policy allows.

use std::fmt::Write as _;

use thiserror::Error;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions, NodeId, PackageId};
use wit_parser::WorldKey;

use crate::component::{self, ComponentError};
use crate::limits::{self, Limits, LimitsError, LIMITS_INTERFACE};
use crate::policy::Policy;
use crate::stub::{self, StubError};
use crate::trusted;
use crate::world::{Decoded, World, WorldError};

/// The interface a step exports: sources deliver batches through it.
pub const INGEST: &str = "sluice:pipeline/ingest@0.1.0";
/// The interface a step imports: where its output goes.
pub const SINK: &str = "sluice:pipeline/sink@0.1.0";
/// The interface customer logic exports.
pub const TRANSFORM: &str = "sluice:pipeline/transform@0.1.0";

/// What to do with an import the policy forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyMode {
    /// Refuse the logic, naming every forbidden import.
    #[default]
    Refuse,
    /// Satisfy each forbidden import with a stub whose every function traps.
    Trap,
}

/// How to compose a step.
#[derive(Debug, Clone, Default)]
pub struct ComposeOptions {
    /// What the logic may import.
    pub policy: Policy,
    /// What happens to imports the policy forbids.
    pub deny: DenyMode,
    /// The step's output limits, enforced by the trusted `out` component.
    pub limits: Limits,
}

/// A composed step.
#[derive(Debug, Clone)]
pub struct Composed {
    /// The step component.
    pub bytes: Vec<u8>,
    /// Its world, read back from the binary.
    pub world: World,
    /// The logic's imports that were satisfied with trap stubs.
    pub stubbed: Vec<String>,
}

/// Why a step could not be composed.
#[derive(Debug, Error)]
pub enum ComposeError {
    /// A binary is not a usable component.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// A component's WIT could not be read.
    #[error(transparent)]
    World(#[from] WorldError),
    /// The logic does not export `transform`.
    #[error("the logic does not export {TRANSFORM} (it exports: {})", list_or_nothing(.exports))]
    NotLogic {
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// The logic imports what the policy forbids (refuse mode).
    #[error("{}", forbidden_message(.imports, .rules))]
    Forbidden {
        /// Every forbidden import, in the component's order.
        imports: Vec<String>,
        /// The rules of the policy.
        rules: Vec<String>,
    },
    /// Forbidden imports that are not named interfaces cannot be stubbed.
    #[error("the logic imports {}, which are not named interfaces and cannot be stubbed", .imports.join(", "))]
    Unstubbable {
        /// The imports.
        imports: Vec<String>,
    },
    /// An allowed import uses types of a forbidden one, so the host cannot provide it alone.
    #[error("the policy allows {allowed} but forbids {needs}, whose types it uses: allow {needs} too")]
    NotClosed {
        /// The allowed import.
        allowed: String,
        /// The forbidden interface it depends on.
        needs: String,
    },
    /// A trap stub could not be generated.
    #[error(transparent)]
    Stub(#[from] StubError),
    /// The limits component could not be generated.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The composition graph refused a connection or could not be encoded and validated.
    #[error("composition failed: {0}")]
    Graph(String),
}

fn list_or_nothing(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_string()
    } else {
        items.join(", ")
    }
}

fn forbidden_message(imports: &[String], rules: &[String]) -> String {
    let mut message = format!("the logic imports {} interface(s) the policy forbids:\n", imports.len());
    for import in imports {
        let _ = writeln!(message, "  - {import}");
    }
    let _ = write!(
        message,
        "allowed: {} (and sluice:pipeline/types); compose with --deny=trap to satisfy the \
         forbidden imports with stubs that trap when called",
        rules.join(", ")
    );
    message
}

/// Composes `logic` (a component, or a core module built with `wit-bindgen`) into a step.
pub fn compose(logic: &[u8], options: &ComposeOptions) -> Result<Composed, ComposeError> {
    let logic = component::from_bytes("the logic", logic)?;
    let decoded = Decoded::new("the logic", &logic)?;
    let logic_world = decoded.summary();
    if !logic_world.export_names().contains(&TRANSFORM) {
        return Err(ComposeError::NotLogic {
            exports: logic_world.exports.iter().map(|e| e.name.clone()).collect(),
        });
    }
    let forbidden: Vec<String> = options
        .policy
        .forbidden(&logic_world)
        .into_iter()
        .map(|item| item.name.clone())
        .collect();
    let stub = if forbidden.is_empty() {
        None
    } else {
        match options.deny {
            DenyMode::Refuse => {
                return Err(ComposeError::Forbidden {
                    imports: forbidden,
                    rules: options.policy.rules().iter().map(|r| r.to_string()).collect(),
                })
            }
            DenyMode::Trap => {
                let unstubbable: Vec<String> = logic_world
                    .imports
                    .iter()
                    .filter(|item| !item.interface)
                    .map(|item| item.name.clone())
                    .collect();
                if !unstubbable.is_empty() {
                    return Err(ComposeError::Unstubbable { imports: unstubbable });
                }
                check_closed(&decoded, &forbidden)?;
                Some(stub::trap_stub(&decoded, &forbidden)?)
            }
        }
    };

    let in_component = trusted::in_component()?;
    let out_component = trusted::out_component()?;
    let out_decoded = Decoded::new("the trusted out component", &out_component)?;
    let limits_component = limits::limits_component(&out_decoded, options.limits)?;

    let bytes = Graph::default().build(Parts {
        in_component,
        logic,
        out_component,
        limits: limits_component,
        stub: stub.map(|bytes| (bytes, forbidden.clone())),
    })?;
    let world = World::of("the composed step", &bytes)?;
    Ok(Composed {
        bytes,
        world,
        stubbed: if options.deny == DenyMode::Trap {
            forbidden
        } else {
            Vec::new()
        },
    })
}

/// Composes a relay step: the trusted `in` and `out` components around an identity logic (every
/// batch goes out as it came in). A multi-step pipeline renders one relay per sink fed from a
/// JetStream hop, so a sink provider is always called by a trusted component. The output limits
/// of `options` apply; its policy and deny mode do not matter (the identity logic imports nothing).
pub fn relay(options: &ComposeOptions) -> Result<Composed, ComposeError> {
    compose(&trusted::identity_component()?, options)
}

/// Checks that no allowed import of the logic uses types of a forbidden one: the host provides
/// the allowed ones and a stub the forbidden ones, and a type cannot come from both.
fn check_closed(logic: &Decoded, forbidden: &[String]) -> Result<(), ComposeError> {
    let resolve = &logic.resolve;
    for (key, _) in resolve.worlds[logic.world].imports.iter() {
        let WorldKey::Interface(id) = key else {
            continue;
        };
        let name = resolve.name_world_key(key);
        if forbidden.contains(&name) {
            continue;
        }
        for dep in resolve.interface_direct_deps(*id) {
            let dep_name = resolve.name_world_key(&WorldKey::Interface(dep));
            if forbidden.contains(&dep_name) {
                return Err(ComposeError::NotClosed {
                    allowed: name,
                    needs: dep_name,
                });
            }
        }
    }
    Ok(())
}

/// The components of a step.
struct Parts {
    in_component: Vec<u8>,
    logic: Vec<u8>,
    out_component: Vec<u8>,
    limits: Vec<u8>,
    /// The trap stub and the interfaces it exports.
    stub: Option<(Vec<u8>, Vec<String>)>,
}

/// A `wac-graph` composition with errors turned into [`ComposeError::Graph`].
#[derive(Default)]
struct Graph {
    graph: CompositionGraph,
}

impl Graph {
    fn build(mut self, parts: Parts) -> Result<Vec<u8>, ComposeError> {
        let limits = self.instantiate("sluice:limits", parts.limits)?;
        let out = self.instantiate("sluice:out", parts.out_component)?;
        self.connect(limits, LIMITS_INTERFACE, out)?;

        let logic_package = self.register("sluice:logic", parts.logic)?;
        let stub = match parts.stub {
            Some((bytes, interfaces)) => Some((self.instantiate("sluice:trap-stub", bytes)?, interfaces)),
            None => None,
        };
        let logic = self.graph.instantiate(logic_package);
        if let Some((stub, interfaces)) = stub {
            for interface in &interfaces {
                self.connect(stub, interface, logic)?;
            }
        }

        let input = self.instantiate("sluice:in", parts.in_component)?;
        self.connect(logic, TRANSFORM, input)?;
        self.connect(out, SINK, input)?;
        let ingest = self.graph.alias_instance_export(input, INGEST).map_err(graph_error)?;
        self.graph.export(ingest, INGEST).map_err(graph_error)?;
        self.graph
            .encode(EncodeOptions {
                define_components: true,
                validate: true,
                processor: None,
            })
            .map_err(graph_error)
    }

    fn register(&mut self, name: &str, bytes: Vec<u8>) -> Result<PackageId, ComposeError> {
        let package = Package::from_bytes(name, None, bytes, self.graph.types_mut())
            .map_err(|e| ComposeError::Graph(format!("{name}: {e:#}")))?;
        self.graph.register_package(package).map_err(graph_error)
    }

    fn instantiate(&mut self, name: &str, bytes: Vec<u8>) -> Result<NodeId, ComposeError> {
        let package = self.register(name, bytes)?;
        Ok(self.graph.instantiate(package))
    }

    /// Feeds `from`'s export `interface` to `to`'s import of the same name.
    fn connect(&mut self, from: NodeId, interface: &str, to: NodeId) -> Result<(), ComposeError> {
        let export = self.graph.alias_instance_export(from, interface).map_err(graph_error)?;
        self.graph
            .set_instantiation_argument(to, interface, export)
            .map_err(|e| ComposeError::Graph(format!("connecting {interface}: {e:#}")))
    }
}

fn graph_error(e: impl Into<anyhow::Error>) -> ComposeError {
    ComposeError::Graph(format!("{:#}", e.into()))
}

//! The engine's view of a MIL program, on top of the prost wire types in `crate::proto`.
//!
//! Nothing here edits generated code: behaviour is added through helper traits (`value`), a read-only
//! index of the graph (`graph`), and explicit rewrite operations (`rewrite`).

pub mod access;
pub mod assemble;
pub mod build;
pub mod decode_budget;
pub mod entries;
pub mod fault;
pub mod graph;
pub mod model;
pub mod names;
pub mod op_file;
pub mod ops;
pub mod renames;
pub mod rewrite;
pub mod spill;
pub mod split;
pub mod stream;
pub mod texts;
pub mod value;
pub mod wire;

pub use access::OpPath;
pub use entries::Entries;
pub use graph::{GraphView, OpInfo, UseSite};
pub use model::{decode_model, encode_model, LoadedModel};
pub use ops::{decode_op, encode_op};
pub use value::{OperationExt, TensorTypeExt, ValueExt};

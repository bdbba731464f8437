//! The model interface lives in the runtime (the engine drives models through it); this
//! re-export keeps `kiln_models::model` the place architectures import it from.

pub use kiln_runtime::model::*;

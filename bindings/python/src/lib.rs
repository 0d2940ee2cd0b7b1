//! `model_router._native`: the Python binding of router-core (pyo3).
//!
//! Thin by design: every function converts its arguments to core types, calls router-core with
//! the GIL released, and converts the answer and the errors back. Map:
//!
//! | module | what |
//! | --- | --- |
//! | `router.rs` | `Router`: every public method of `router_core::Router` |
//! | `decision.rs` | `Decision` (the core decision, also the in-flight guard) and `Routed` (`with router.routed(...)`) |
//! | `events.rs` | callbacks and `EventStream` (an iterator waiting with the GIL released) |
//! | `request.rs` | route requests: a fast path for canonical keywords, serde for the rest |
//! | `outcome.rs` | `report(...)` keywords -> `Outcome` |
//! | `convert.rs` | Python values <-> serde (documents read as JSON, errors naming the path) |
//! | `errors.rs` | `ModelRouterError` and one subclass per `Error::kind()`, mapped in one place |
//! | `clock.rs` | `ManualClock` for tests |
//!
//! The Python package (`python/model_router`) re-exports this module and ships the `.pyi`
//! stubs; see bindings/python/README.md and docs/bindings.md.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use pyo3::prelude::*;

mod clock;
mod convert;
mod decision;
mod errors;
mod events;
mod outcome;
mod request;
mod router;

/// Make this thread's routing decisions reproducible: reseed the random generator the router
/// uses on the calling thread (weighted random, power of two, tie-breaks).
#[pyfunction]
fn seed_thread(seed: u64) {
    router_core::seed_thread(seed);
}

/// The module: classes, exceptions, `seed_thread`, `STRATEGIES`, `ERROR_CLASSES`.
#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<router::Router>()?;
    m.add_class::<decision::Decision>()?;
    m.add_class::<decision::Routed>()?;
    m.add_class::<events::EventStream>()?;
    m.add_class::<clock::ManualClock>()?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(seed_thread, m)?)?;
    m.add("STRATEGIES", router::strategies(m.py())?)?;
    m.add(
        "ERROR_CLASSES",
        pyo3::types::PyTuple::new(m.py(), outcome::ERROR_CLASSES)?,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

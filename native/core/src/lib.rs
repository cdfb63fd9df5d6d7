//! `explainserve-core`: the bookkeeping behind ExplainServe's attribution methods, in pure Rust.
//!
//! Masks are `(p, g)` arrays of `0/1` bytes (`1` = unit replaced). Token scores are aggregated into
//! unit scores; per-row model outputs are turned into attributions by the estimators. Nothing here
//! knows about Python or torch.

pub mod aggregate;
mod buffer;
pub mod error;
pub mod estimators;
pub mod expand;
pub mod grouping;
mod linalg;
pub mod masks;
pub mod qmc;
pub mod rng;
pub mod shap;

pub use error::{CoreError, Result};

//! Unit masks for the perturbation methods (see docs/native.md, "Masks").

use ndarray::Array2;

use crate::qmc::Sampler;
use crate::Result;

pub use crate::shap::{kernel_shap_masks, ShapDesign};

/// Occlusion: the zero row then the identity, `(g + 1, g)`.
pub fn occlusion_masks(g: usize) -> Result<Array2<u8>> {
    let _ = g;
    todo!()
}

/// LIME: `n` rows, each unit replaced with probability `prob`.
pub fn bernoulli_masks(n: usize, g: usize, prob: f64, seed: u64) -> Result<Array2<u8>> {
    let _ = (n, g, prob, seed);
    todo!()
}

/// Sobol (Fel et al. 2021): rows `[A; B; C_1 .. C_g]`, `((g + 2) k, g)`.
pub fn sobol_masks(g: usize, k: usize, sampler: Sampler, seed: u64) -> Result<Array2<u8>> {
    let _ = (g, k, sampler, seed);
    todo!()
}

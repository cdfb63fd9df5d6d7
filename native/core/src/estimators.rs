//! Attributions from per-row model outputs: occlusion, LIME, KernelSHAP, Sobol.

use std::str::FromStr;

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::{CoreError, Result};

/// LIME's distance between a perturbed row and the original input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    Cosine,
    Hamming,
    Euclidean,
}

impl FromStr for Distance {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "hamming" => Ok(Self::Hamming),
            "euclidean" => Ok(Self::Euclidean),
            _ => Err(CoreError::UnknownStrategy {
                kind: "distance",
                name: s.to_owned(),
                expected: "cosine, hamming, euclidean",
            }),
        }
    }
}

/// First- and total-order Sobol indices, each `(t, g)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SobolIndices {
    pub first: Array2<f64>,
    pub total: Array2<f64>,
}

/// Occlusion deltas `f(x) - f(x without unit i)`, `(t, g)`.
pub fn occlusion_scores(outputs: ArrayView2<f64>) -> Result<Array2<f64>> {
    let _ = outputs;
    todo!()
}

/// LIME: weighted ridge coefficients, `(t, g)`.
pub fn lime_scores(
    masks: ArrayView2<u8>,
    outputs: ArrayView2<f64>,
    distance: Distance,
    kernel_width: Option<f64>,
    alpha: f64,
) -> Result<Array2<f64>> {
    let _ = (masks, outputs, distance, kernel_width, alpha);
    todo!()
}

/// KernelSHAP: constrained weighted least squares, `(t, g)`.
pub fn kernel_shap_scores(
    masks: ArrayView2<u8>,
    weights: ArrayView1<f64>,
    outputs: ArrayView2<f64>,
) -> Result<Array2<f64>> {
    let _ = (masks, weights, outputs);
    todo!()
}

/// Sobol first- and total-order indices (Jansen estimators).
pub fn sobol_indices(outputs: ArrayView2<f64>, g: usize, k: usize) -> Result<SobolIndices> {
    let _ = (outputs, g, k);
    todo!()
}

//! KernelSHAP: the coalition design (enumerated or kernel-sampled) and its weights.

use ndarray::{Array1, Array2};

use crate::Result;

/// Masks of a KernelSHAP design and the regression weight of each row.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapDesign {
    pub masks: Array2<u8>,
    pub weights: Array1<f64>,
}

/// The KernelSHAP design for `g` units and a budget of `n` rows.
pub fn kernel_shap_masks(n: usize, g: usize, seed: u64) -> Result<ShapDesign> {
    let _ = (n, g, seed);
    todo!()
}

//! Token scores to unit scores.

use std::str::FromStr;

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::{CoreError, Result};

/// How the scores of a unit's tokens are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Mean,
    Max,
    Min,
    Sum,
    /// The value of largest magnitude, sign kept.
    SignedMax,
}

impl FromStr for Strategy {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "max" => Ok(Self::Max),
            "min" => Ok(Self::Min),
            "sum" => Ok(Self::Sum),
            "signed_max" => Ok(Self::SignedMax),
            _ => Err(CoreError::UnknownStrategy {
                kind: "aggregation strategy",
                name: s.to_owned(),
                expected: "mean, max, min, sum, signed_max",
            }),
        }
    }
}

/// `(r, n_units)` unit scores from `(r, n)` token scores.
pub fn aggregate(
    scores: ArrayView2<f32>,
    token_to_unit: ArrayView1<i64>,
    n_units: usize,
    strategy: Strategy,
) -> Result<Array2<f32>> {
    let _ = (scores, token_to_unit, n_units, strategy);
    todo!()
}

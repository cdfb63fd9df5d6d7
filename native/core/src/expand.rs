//! Unit masks to perturbed token-id rows.

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::Result;

/// `(p, n)` ids: token `i` of row `r` is `replacement_id` where its unit is masked in row `r`.
pub fn expand_ids(
    masks: ArrayView2<u8>,
    token_to_unit: ArrayView1<i64>,
    input_ids: ArrayView1<i64>,
    replacement_id: i64,
) -> Result<Array2<i64>> {
    let _ = (masks, token_to_unit, input_ids, replacement_id);
    todo!()
}

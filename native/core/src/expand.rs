//! Unit masks to perturbed token-id rows.

use ndarray::{Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::buffer::{zeroed, zeroed_array2};
use crate::{CoreError, Result};

/// Rows of work handed to one rayon task at least, so small inputs stay cheap.
const MIN_ROWS_PER_TASK: usize = 8;

/// Checks `token_to_unit` against `g` units: every entry is -1 (no unit) or in `0..g`.
pub(crate) fn check_token_units(
    token_to_unit: impl IntoIterator<Item = i64>,
    g: usize,
) -> Result<()> {
    for (i, u) in token_to_unit.into_iter().enumerate() {
        if u < -1 || usize::try_from(u).is_ok_and(|u| u >= g) {
            return Err(CoreError::IdOutOfRange(format!(
                "token {i} belongs to unit {u}, but units are numbered 0..{g} (or -1 for none)"
            )));
        }
    }
    Ok(())
}

/// `(p, n)` ids: token `i` of row `r` is `replacement_id` where its unit is masked in row `r`.
///
/// Precisely, `out[r, i] = replacement_id` if `token_to_unit[i] >= 0` and
/// `masks[r, token_to_unit[i]] == 1`, else `input_ids[i]`. Lengths of `token_to_unit` and
/// `input_ids` that differ → [`CoreError::Shape`]; a unit id `>= g` (the number of mask columns)
/// or `< -1`, or a negative `replacement_id` → [`CoreError::IdOutOfRange`].
// The views are taken by value because that is the public signature the bindings are written
// against; an `ArrayView` is a cheap handle, so nothing is copied.
#[allow(clippy::needless_pass_by_value)]
pub fn expand_ids(
    masks: ArrayView2<u8>,
    token_to_unit: ArrayView1<i64>,
    input_ids: ArrayView1<i64>,
    replacement_id: i64,
) -> Result<Array2<i64>> {
    let (p, g) = masks.dim();
    let n = input_ids.len();
    if token_to_unit.len() != n {
        return Err(CoreError::Shape(format!(
            "token_to_unit has {} entries but input_ids has {n}",
            token_to_unit.len()
        )));
    }
    check_token_units(token_to_unit.iter().copied(), g)?;
    if replacement_id < 0 {
        return Err(CoreError::IdOutOfRange(format!(
            "the replacement id must be a token id >= 0, got {replacement_id}"
        )));
    }
    // The output grows with p n: a size that overflows, exceeds isize::MAX bytes or that the
    // allocator refuses is an error, never an abort. It is allocated first, so the per-token
    // tables below are never larger than it.
    let too_many = || CoreError::TooLarge(format!("{p} rows of {n} tokens to expand"));
    let mut out = zeroed_array2::<i64>(p, n).ok_or_else(too_many)?;
    if p == 0 || n == 0 {
        return Ok(out);
    }

    // Column of each token in a row buffer `[mask row .., 0]`: tokens without a unit read the
    // trailing 0 and are never replaced, so the inner loop has no branch on the unit.
    let mut columns = zeroed::<usize>(n).ok_or_else(too_many)?;
    for (c, &u) in columns.iter_mut().zip(&token_to_unit) {
        *c = usize::try_from(u).unwrap_or(g);
    }
    let mut ids = zeroed::<i64>(n).ok_or_else(too_many)?;
    for (dst, &id) in ids.iter_mut().zip(&input_ids) {
        *dst = id;
    }

    out.as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(n)
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each_init(
            || vec![0u8; g + 1],
            |row_mask, (r, out_row)| {
                let mask = masks.row(r);
                match mask.as_slice() {
                    Some(m) => row_mask[..g].copy_from_slice(m),
                    None => {
                        for (dst, &m) in row_mask.iter_mut().zip(mask.iter()) {
                            *dst = m;
                        }
                    }
                }
                let row_mask = &row_mask[..=g];
                for ((o, &c), &id) in out_row.iter_mut().zip(&columns).zip(&ids) {
                    *o = if row_mask[c] == 1 { replacement_id } else { id };
                }
            },
        );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1, ShapeBuilder};
    use proptest::prelude::*;

    fn naive(
        masks: &ArrayView2<u8>,
        t2u: &ArrayView1<i64>,
        ids: &ArrayView1<i64>,
        rep: i64,
    ) -> Array2<i64> {
        let (p, n) = (masks.nrows(), ids.len());
        let mut out = Array2::zeros((p, n));
        for r in 0..p {
            for i in 0..n {
                out[[r, i]] = ids[i];
                for u in 0..masks.ncols() {
                    if t2u[i] == u as i64 && masks[[r, u]] == 1 {
                        out[[r, i]] = rep;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn small_exact() {
        let masks = array![[0u8, 0], [1, 0], [0, 1], [1, 1]];
        let t2u = array![-1i64, 0, 0, 1, -1];
        let ids = array![101i64, 7, 8, 9, 102];
        let out = expand_ids(masks.view(), t2u.view(), ids.view(), 0).unwrap();
        assert_eq!(
            out,
            array![
                [101, 7, 8, 9, 102],
                [101, 0, 0, 9, 102],
                [101, 7, 8, 0, 102],
                [101, 0, 0, 0, 102]
            ]
        );
    }

    #[test]
    fn errors() {
        let masks = array![[0u8, 1]];
        let ids = array![5i64, 6];
        let err = expand_ids(masks.view(), array![0i64].view(), ids.view(), 0).unwrap_err();
        assert!(matches!(err, CoreError::Shape(_)), "{err}");
        let err = expand_ids(masks.view(), array![0i64, 2].view(), ids.view(), 0).unwrap_err();
        assert!(
            matches!(&err, CoreError::IdOutOfRange(m) if m.contains("unit 2")),
            "{err}"
        );
        let err = expand_ids(masks.view(), array![-2i64, 0].view(), ids.view(), 0).unwrap_err();
        assert!(matches!(err, CoreError::IdOutOfRange(_)), "{err}");
        let err = expand_ids(masks.view(), array![0i64, 1].view(), ids.view(), -1).unwrap_err();
        assert!(
            matches!(&err, CoreError::IdOutOfRange(m) if m.contains("-1")),
            "{err}"
        );
        // p n grows with both inputs: 2^40 rows (a view of width 0, no memory) by 2^24 tokens
        // (a broadcast view of one) is 2^67 bytes of output.
        let tall = ndarray::ArrayView2::<u8>::from_shape((1 << 40, 0), &[]).unwrap();
        let none = array![-1i64];
        let many = none.broadcast(1 << 24).unwrap();
        let err = expand_ids(tall, many, many, 0).unwrap_err();
        assert!(
            matches!(&err, CoreError::TooLarge(m) if m.contains("to expand")),
            "{err}"
        );
    }

    #[test]
    fn empty_edges() {
        let masks = Array2::<u8>::zeros((0, 2));
        let out = expand_ids(masks.view(), array![0i64].view(), array![4i64].view(), 0).unwrap();
        assert_eq!(out.dim(), (0, 1));
        let masks = Array2::<u8>::zeros((3, 0));
        let none = Array1::<i64>::zeros(0);
        let out = expand_ids(masks.view(), none.view(), none.view(), 0).unwrap();
        assert_eq!(out.dim(), (3, 0));
        let out = expand_ids(masks.view(), array![-1i64].view(), array![4i64].view(), 0).unwrap();
        assert_eq!(out, array![[4], [4], [4]]);
    }

    #[test]
    fn non_contiguous_inputs() {
        let masks = Array2::from_shape_vec((3, 2).f(), vec![1u8, 0, 1, 0, 1, 1]).unwrap();
        let t2u_full = array![1i64, 9, 0, 9, -1];
        let ids_full = array![10i64, 0, 11, 0, 12];
        let t2u = t2u_full.slice(ndarray::s![..;2]);
        let ids = ids_full.slice(ndarray::s![..;2]);
        let out = expand_ids(masks.view(), t2u, ids, 3).unwrap();
        assert_eq!(out, naive(&masks.view(), &t2u, &ids, 3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn equals_naive(
            p in 0usize..12,
            g in 1usize..8,
            n in 0usize..30,
            seed in any::<u64>(),
            transpose in any::<bool>(),
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let masks = Array2::from_shape_fn((p, g), |_| rng.below(2) as u8);
            let masks = if transpose {
                masks.t().as_standard_layout().into_owned().reversed_axes()
            } else {
                masks
            };
            let t2u = Array1::from_shape_fn(n, |_| rng.below(g as u64 + 1) as i64 - 1);
            let ids = Array1::from_shape_fn(n, |_| rng.below(1000) as i64);
            let out = expand_ids(masks.view(), t2u.view(), ids.view(), 1000).unwrap();
            prop_assert_eq!(out, naive(&masks.view(), &t2u.view(), &ids.view(), 1000));
        }
    }
}

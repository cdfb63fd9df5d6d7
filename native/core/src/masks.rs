//! Unit masks for the perturbation methods (see docs/native.md, "Masks").
//!
//! A mask is a `(p, g)` array of `0/1` bytes, `1` = the unit is replaced.

use ndarray::Array2;
use rayon::prelude::*;

use crate::qmc::{self, Sampler};
use crate::rng::Rng;
use crate::{CoreError, Result};

pub use crate::shap::{kernel_shap_masks, ShapDesign};

/// Rows of work handed to one rayon task at least, so small masks stay cheap.
const MIN_ROWS_PER_TASK: usize = 16;

fn check_units(g: usize) -> Result<()> {
    if g == 0 {
        Err(CoreError::EmptyUnits)
    } else {
        Ok(())
    }
}

/// A zeroed `(rows, g)` mask, or `InvalidParameter` if it cannot be allocated.
fn zeroed(rows: usize, g: usize) -> Result<Array2<u8>> {
    match rows.checked_mul(g) {
        Some(cells) if isize::try_from(cells).is_ok() => Ok(Array2::zeros((rows, g))),
        _ => Err(CoreError::InvalidParameter(format!(
            "a mask of {rows} rows by {g} units is too large"
        ))),
    }
}

/// Occlusion: the zero row then the identity, `(g + 1, g)`: row 0 keeps every unit, row `i + 1`
/// replaces unit `i` alone.
///
/// `g = 0` → [`CoreError::EmptyUnits`].
pub fn occlusion_masks(g: usize) -> Result<Array2<u8>> {
    check_units(g)?;
    let rows = g.checked_add(1).ok_or_else(|| {
        CoreError::InvalidParameter(format!("{g} units are too many for an occlusion mask"))
    })?;
    let mut masks = zeroed(rows, g)?;
    for i in 0..g {
        masks[[i + 1, i]] = 1;
    }
    Ok(masks)
}

/// LIME: `n` rows, each unit replaced with probability `prob`, `(n, g)`.
///
/// Cell `(r, j)` is 1 iff `u < prob`, `u` the `j`-th `next_f64` of `Rng::for_stream(seed, r)`.
/// `g = 0` → [`CoreError::EmptyUnits`]; `n = 0` or `prob` outside [0, 1] (or NaN) →
/// [`CoreError::InvalidParameter`].
pub fn bernoulli_masks(n: usize, g: usize, prob: f64, seed: u64) -> Result<Array2<u8>> {
    check_units(g)?;
    if n == 0 {
        return Err(CoreError::InvalidParameter(
            "the number of rows must be at least 1, got 0".to_owned(),
        ));
    }
    if !(0.0..=1.0).contains(&prob) {
        return Err(CoreError::InvalidParameter(format!(
            "the replacement probability must be in [0, 1], got {prob}"
        )));
    }
    let mut masks = zeroed(n, g)?;
    // `next_f64` is `(x >> 11) * 2^-53`, so `u < prob` iff `x >> 11 < ceil(prob * 2^53)`,
    // exactly (both sides are integers below 2^53 + 1, and `prob * 2^53` is exact).
    let threshold = (prob * (1u64 << 53) as f64).ceil() as u64;
    // When no draw, or every draw, is below the threshold the outcome is known; the streams are per
    // row, so skipping them changes nothing.
    if threshold == 0 {
        return Ok(masks);
    }
    if threshold >= 1 << 53 {
        masks.fill(1);
        return Ok(masks);
    }
    masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(g)
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(r, row)| {
            let mut rng = Rng::for_stream(seed, r as u64);
            for cell in row {
                *cell = u8::from((rng.next_u64() >> 11) < threshold);
            }
        });
    Ok(masks)
}

/// Sobol (Fel et al. 2021): rows `[A; B; C_1 .. C_g]`, `((g + 2) k, g)`.
///
/// `A` and `B` are the first and last `g` columns of `qmc::points(k, 2 g, sampler, seed)`, `C_i`
/// is `A` with column `i` from `B`, and a cell is 1 (replaced) iff its value is below 0.5.
/// `g = 0` → [`CoreError::EmptyUnits`]; `k = 0` or a design too large →
/// [`CoreError::InvalidParameter`].
pub fn sobol_masks(g: usize, k: usize, sampler: Sampler, seed: u64) -> Result<Array2<u8>> {
    check_units(g)?;
    if k == 0 {
        return Err(CoreError::InvalidParameter(
            "the number of points must be at least 1, got 0".to_owned(),
        ));
    }
    let rows = g
        .checked_add(2)
        .and_then(|blocks| blocks.checked_mul(k))
        .ok_or_else(|| {
            CoreError::InvalidParameter(format!(
                "a Sobol design of {k} points for {g} units is too large"
            ))
        })?;
    let mut masks = zeroed(rows, g)?;
    let dim = g.checked_mul(2).ok_or_else(|| {
        CoreError::InvalidParameter(format!("{g} units are too many for a Sobol design"))
    })?;
    let design = qmc::points(k, dim, sampler, seed)?;
    // Row r of `ab` is [A_r, B_r] as bits.
    let ab: Vec<u8> = design.iter().map(|&v| u8::from(v < 0.5)).collect();
    masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(g)
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(row_index, row)| {
            let (block, r) = (row_index / k, row_index % k);
            let (a, b) = ab[r * dim..(r + 1) * dim].split_at(g);
            match block {
                0 => row.copy_from_slice(a),
                1 => row.copy_from_slice(b),
                _ => {
                    let i = block - 2;
                    row.copy_from_slice(a);
                    row[i] = b[i];
                }
            }
        });
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s};
    use proptest::prelude::{
        any, prop_assert, prop_assert_eq, prop_assert_ne, prop_oneof, proptest, Just,
    };
    use proptest::strategy::Strategy;
    use proptest::test_runner::Config as ProptestConfig;

    #[test]
    fn occlusion_small() {
        assert_eq!(
            occlusion_masks(3).unwrap(),
            array![[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
        );
        assert_eq!(occlusion_masks(1).unwrap(), array![[0], [1]]);
        assert_eq!(occlusion_masks(0), Err(CoreError::EmptyUnits));
    }

    #[test]
    fn bernoulli_matches_row_streams() {
        let (n, g, prob, seed) = (5, 7, 0.3, 42);
        let masks = bernoulli_masks(n, g, prob, seed).unwrap();
        for r in 0..n {
            let mut rng = Rng::for_stream(seed, r as u64);
            for j in 0..g {
                assert_eq!(masks[[r, j]], u8::from(rng.next_f64() < prob));
            }
        }
    }

    #[test]
    fn bernoulli_edges_and_errors() {
        assert!(bernoulli_masks(4, 3, 0.0, 1)
            .unwrap()
            .iter()
            .all(|&m| m == 0));
        assert!(bernoulli_masks(4, 3, 1.0, 1)
            .unwrap()
            .iter()
            .all(|&m| m == 1));
        assert_eq!(bernoulli_masks(4, 0, 0.5, 1), Err(CoreError::EmptyUnits));
        for prob in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = bernoulli_masks(4, 3, prob, 1).unwrap_err();
            assert!(matches!(err, CoreError::InvalidParameter(_)), "{err}");
        }
        assert!(matches!(
            bernoulli_masks(0, 3, 0.5, 1),
            Err(CoreError::InvalidParameter(_))
        ));
    }

    #[test]
    fn bernoulli_frequency() {
        for prob in [0.1, 0.5, 0.9] {
            let masks = bernoulli_masks(400, 500, prob, 3).unwrap();
            let freq = masks.iter().map(|&m| f64::from(m)).sum::<f64>() / 200_000.0;
            // Binomial sd is at most 0.0012 here.
            assert!((freq - prob).abs() < 0.006, "prob {prob}: frequency {freq}");
        }
    }

    #[test]
    fn sobol_masks_layout_small() {
        let (g, k, seed) = (3, 4, 8);
        let masks = sobol_masks(g, k, Sampler::Sobol, seed).unwrap();
        let design = qmc::points(k, 2 * g, Sampler::Sobol, seed).unwrap();
        let bits = design.mapv(|v| u8::from(v < 0.5));
        assert_eq!(masks.slice(s![0..k, ..]), bits.slice(s![.., 0..g]));
        assert_eq!(masks.slice(s![k..2 * k, ..]), bits.slice(s![.., g..]));
        // Column i of C_i is B's, the rest A's.
        let c1 = masks.slice(s![3 * k..4 * k, ..]);
        assert_eq!(c1.column(0), bits.column(0));
        assert_eq!(c1.column(1), bits.column(g + 1));
        assert_eq!(c1.column(2), bits.column(2));
    }

    #[test]
    fn sobol_masks_errors() {
        assert_eq!(
            sobol_masks(0, 4, Sampler::Halton, 1),
            Err(CoreError::EmptyUnits)
        );
        assert!(matches!(
            sobol_masks(3, 0, Sampler::Halton, 1),
            Err(CoreError::InvalidParameter(_))
        ));
        assert!(matches!(
            sobol_masks(usize::MAX / 2, 4, Sampler::Halton, 1),
            Err(CoreError::InvalidParameter(_))
        ));
    }

    fn sampler() -> impl Strategy<Value = Sampler> {
        prop_oneof![
            Just(Sampler::Sobol),
            Just(Sampler::Halton),
            Just(Sampler::LatinHypercube)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn occlusion_rows(g in 1usize..80) {
            let masks = occlusion_masks(g).unwrap();
            prop_assert_eq!(masks.dim(), (g + 1, g));
            prop_assert!(masks.row(0).iter().all(|&m| m == 0));
            for i in 0..g {
                let row = masks.row(i + 1);
                prop_assert_eq!(row.iter().map(|&m| usize::from(m)).sum::<usize>(), 1);
                prop_assert_eq!(row[i], 1);
            }
        }

        #[test]
        fn bernoulli_shape_and_seed(
            n in 1usize..60, g in 1usize..60, prob in 0.0f64..=1.0, seed in any::<u64>()
        ) {
            let masks = bernoulli_masks(n, g, prob, seed).unwrap();
            prop_assert_eq!(masks.dim(), (n, g));
            prop_assert!(masks.iter().all(|&m| m <= 1));
            prop_assert_eq!(&masks, &bernoulli_masks(n, g, prob, seed).unwrap());
        }

        #[test]
        fn bernoulli_other_seed_differs(seed in any::<u64>()) {
            let a = bernoulli_masks(16, 32, 0.5, seed).unwrap();
            let b = bernoulli_masks(16, 32, 0.5, seed.wrapping_add(1)).unwrap();
            prop_assert_ne!(a, b);
        }

        #[test]
        fn sobol_masks_blocks(
            g in 1usize..20, k in 1usize..20, s in sampler(), seed in any::<u64>()
        ) {
            let masks = sobol_masks(g, k, s, seed).unwrap();
            prop_assert_eq!(masks.dim(), ((g + 2) * k, g));
            prop_assert!(masks.iter().all(|&m| m <= 1));
            let a = masks.slice(s![0..k, ..]);
            let b = masks.slice(s![k..2 * k, ..]);
            for i in 0..g {
                let c = masks.slice(s![(i + 2) * k..(i + 3) * k, ..]);
                for j in 0..g {
                    let from = if j == i { b.column(j) } else { a.column(j) };
                    prop_assert_eq!(c.column(j), from);
                }
            }
        }
    }
}

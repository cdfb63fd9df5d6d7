//! KernelSHAP: the coalition design (enumerated or kernel-sampled) and its weights.

use ndarray::{s, Array1, Array2};
use rayon::prelude::*;

use crate::buffer::zeroed;
use crate::masks;
use crate::rng::Rng;
use crate::{CoreError, Result};

/// Masks of a KernelSHAP design and the regression weight of each row.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapDesign {
    /// `(p, g)` masks, `1` = unit replaced.
    pub masks: Array2<u8>,
    /// `(p,)` regression weight of each row (0 for the all-kept and all-replaced rows).
    pub weights: Array1<f64>,
}

/// Largest `g` whose `2^g` coalitions may be enumerated.
const MAX_ENUMERATED_UNITS: usize = 30;

/// The KernelSHAP design for `g` units and a budget of `n` rows.
///
/// If `2^g <= n` (and `g <= 30`) every coalition is enumerated (row `r` replaces the units whose
/// bit is set in `r`) with Shapley-kernel weights; otherwise row 0 keeps everything, row 1
/// replaces everything and the other rows are complementary pairs whose number of kept units is
/// drawn from the Shapley kernel, each with weight 1. See docs/native.md, "KernelSHAP masks".
/// `g = 0` → [`CoreError::EmptyUnits`]; `n < 2` → [`CoreError::InvalidParameter`]; a design too
/// large to allocate → [`CoreError::TooLarge`].
pub fn kernel_shap_masks(n: usize, g: usize, seed: u64) -> Result<ShapDesign> {
    if g == 0 {
        return Err(CoreError::EmptyUnits);
    }
    if n < 2 {
        return Err(CoreError::InvalidParameter(format!(
            "KernelSHAP needs at least 2 rows (all kept and all replaced), got n_rows = {n}"
        )));
    }
    if g <= MAX_ENUMERATED_UNITS && (1usize << g) <= n {
        enumerated(g)
    } else {
        sampled(n, g, seed)
    }
}

/// `C(g, k)`, exact in f64 for the `g <= 30` of the enumerated design.
fn binomial(g: usize, k: usize) -> f64 {
    let k = k.min(g - k);
    (0..k).fold(1.0, |c, i| c * (g - i) as f64 / (i + 1) as f64)
}

/// The Shapley kernel weight of a coalition of `k` kept units out of `g` (0 for `k = 0` or `g`,
/// whose rows the estimator enforces exactly).
fn shapley_kernel(g: usize, k: usize) -> f64 {
    if k == 0 || k == g {
        0.0
    } else {
        (g - 1) as f64 / (binomial(g, k) * k as f64 * (g - k) as f64)
    }
}

/// `(p,)` weights, or `TooLarge` if they cannot be allocated.
fn weights_buffer(p: usize, g: usize) -> Result<Array1<f64>> {
    zeroed::<f64>(p)
        .map(Array1::from_vec)
        .ok_or_else(|| CoreError::TooLarge(format!("a KernelSHAP design of {p} rows by {g} units")))
}

fn enumerated(g: usize) -> Result<ShapDesign> {
    let p = 1usize << g;
    let mut masks = masks::zeroed(p, g)?;
    let mut weights = weights_buffer(p, g)?;
    masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(g)
        .with_min_len(MIN_CELLS_PER_TASK.div_ceil(g))
        .enumerate()
        .for_each(|(r, row)| {
            for (j, cell) in row.iter_mut().enumerate() {
                *cell = ((r >> j) & 1) as u8;
            }
        });
    let kernel: Vec<f64> = (0..=g).map(|k| shapley_kernel(g, k)).collect();
    for (r, w) in weights.iter_mut().enumerate() {
        *w = kernel[g - r.count_ones() as usize];
    }
    Ok(ShapDesign { masks, weights })
}

/// Cells of work handed to one rayon task at least.
const MIN_CELLS_PER_TASK: usize = 1 << 14;

fn sampled(n: usize, g: usize, seed: u64) -> Result<ShapDesign> {
    let mut masks = masks::zeroed(n, g)?;
    let mut weights = weights_buffer(n, g)?;
    weights.slice_mut(s![2..]).fill(1.0);
    let data = masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout");
    data[g..2 * g].fill(1);
    if n == 2 {
        return Ok(ShapDesign { masks, weights });
    }
    let too_large = || CoreError::TooLarge(format!("a KernelSHAP design for {g} units"));
    // Cumulative P(k) ∝ (g - 1) / (k (g - k)) for k = 1..g-1 (the constant g - 1 cancels).
    let mut cdf = zeroed::<f64>(g - 1).ok_or_else(too_large)?;
    let mut acc = 0.0;
    for (k, c) in (1..g).zip(cdf.iter_mut()) {
        acc += 1.0 / (k as f64 * (g - k) as f64);
        *c = acc;
    }
    let total = acc;
    let cdf = &cdf;
    data[2 * g..]
        .par_chunks_mut(2 * g)
        .with_min_len(MIN_CELLS_PER_TASK.div_ceil(2 * g))
        .enumerate()
        // Each task's shuffle buffer of the g units, allocated fallibly (it is 8 g bytes).
        .try_for_each_init(
            || zeroed::<usize>(g),
            |units, (m, pair)| {
                let units = units.as_mut().ok_or(())?;
                let row = 2 * m + 2;
                let mut rng = Rng::for_stream(seed, row as u64);
                let u = rng.next_f64() * total;
                let kept = (1 + cdf.partition_point(|&c| c <= u)).min(g - 1);
                let (first, complement) = pair.split_at_mut(g);
                first.fill(1);
                // The first `kept` entries of a partial Fisher-Yates shuffle: a uniform kept set.
                for (i, unit) in units.iter_mut().enumerate() {
                    *unit = i;
                }
                for i in 0..kept {
                    let j = i + rng.below((g - i) as u64) as usize;
                    units.swap(i, j);
                    first[units[i]] = 0;
                }
                for (c, &f) in complement.iter_mut().zip(first.iter()) {
                    *c = 1 - f;
                }
                Ok(())
            },
        )
        .map_err(|()| too_large())?;
    Ok(ShapDesign { masks, weights })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn enumerated_design_small() {
        let d = kernel_shap_masks(10, 3, 0).unwrap();
        assert_eq!(d.masks.nrows(), 8);
        assert_eq!(d.masks.row(0).to_vec(), vec![0, 0, 0]);
        assert_eq!(d.masks.row(5).to_vec(), vec![1, 0, 1]);
        assert_eq!(d.masks.row(7).to_vec(), vec![1, 1, 1]);
        // g = 3: k = 1 or 2 kept units -> (3 - 1) / (3 * 1 * 2) = 1/3.
        let third = 1.0 / 3.0;
        assert_eq!(
            d.weights.to_vec(),
            vec![0.0, third, third, third, third, third, third, 0.0]
        );
        let d = kernel_shap_masks(16, 4, 0).unwrap();
        // k = 2 of 4: 3 / (6 * 2 * 2) = 1/8; k = 1 or 3: 3 / (4 * 1 * 3) = 1/4.
        assert!((d.weights[0b0011] - 0.125).abs() < 1e-15);
        assert!((d.weights[0b0111] - 0.25).abs() < 1e-15);
    }

    #[test]
    fn one_unit_has_two_rows() {
        let d = kernel_shap_masks(100, 1, 3).unwrap();
        assert_eq!(d.masks, ndarray::array![[0], [1]]);
        assert_eq!(d.weights.to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn errors() {
        assert_eq!(kernel_shap_masks(10, 0, 0), Err(CoreError::EmptyUnits));
        assert!(matches!(
            kernel_shap_masks(0, 3, 0),
            Err(CoreError::InvalidParameter(_))
        ));
        assert!(matches!(
            kernel_shap_masks(1, 1, 0),
            Err(CoreError::InvalidParameter(_))
        ));
    }

    #[test]
    fn sizes_too_large_are_too_large() {
        // n g overflows (it used to wrap and panic).
        for (n, g) in [
            (1 << 62, 40),
            (usize::MAX, 31),
            (2, usize::MAX),
            (1 << 40, 1 << 40),
        ] {
            let err = kernel_shap_masks(n, g, 0).unwrap_err();
            assert!(
                matches!(err, CoreError::TooLarge(_)),
                "n = {n}, g = {g}: {err}"
            );
        }
        // Representable, but beyond any machine's memory.
        assert!(matches!(
            kernel_shap_masks(1 << 56, 40, 0),
            Err(CoreError::TooLarge(_))
        ));
    }

    #[test]
    fn sampled_sizes_follow_the_kernel() {
        // g > 30 is never enumerated.
        let g = 31;
        let n = 40_002;
        let d = kernel_shap_masks(n, g, 11).unwrap();
        let mut counts = vec![0usize; g + 1];
        for r in (2..n).step_by(2) {
            let kept = d.masks.row(r).iter().filter(|&&v| v == 0).count();
            counts[kept] += 1;
        }
        let norm: f64 = (1..g).map(|k| 1.0 / (k * (g - k)) as f64).sum();
        let pairs = (n - 2) / 2;
        for (k, &count) in counts.iter().enumerate().take(g).skip(1) {
            let expected = pairs as f64 / (k * (g - k)) as f64 / norm;
            assert!(
                (count as f64 - expected).abs() < 5.0 * expected.sqrt(),
                "k = {k}: {count} vs {expected}"
            );
        }
        assert_eq!(counts[0] + counts[g], 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sampled_design_structure(g in 2usize..40, extra in 0usize..30, seed in any::<u64>()) {
            // A budget too small to enumerate.
            let n = if g < 5 { (1usize << g) - 1 } else { 2 + extra };
            let d = kernel_shap_masks(n, g, seed).unwrap();
            prop_assert_eq!(d.masks.dim(), (n, g));
            prop_assert!(d.masks.row(0).iter().all(|&v| v == 0));
            prop_assert!(d.masks.row(1).iter().all(|&v| v == 1));
            let mut expected = vec![1.0; n];
            expected[..2].fill(0.0);
            prop_assert_eq!(d.weights.to_vec(), expected);
            for r in 2..n {
                let replaced = d.masks.row(r).iter().map(|&v| usize::from(v)).sum::<usize>();
                prop_assert!(replaced >= 1 && replaced < g, "row {} replaces {}", r, replaced);
                if r % 2 == 1 {
                    for j in 0..g {
                        prop_assert_eq!(d.masks[[r, j]], 1 - d.masks[[r - 1, j]]);
                    }
                }
            }
            prop_assert_eq!(&kernel_shap_masks(n, g, seed).unwrap(), &d);
        }

        #[test]
        fn enumerated_design_structure(g in 1usize..10, slack in 0usize..100) {
            let n = (1usize << g) + slack;
            let d = kernel_shap_masks(n, g, 0).unwrap();
            prop_assert_eq!(d.masks.nrows(), 1 << g);
            for r in 0..1usize << g {
                for j in 0..g {
                    prop_assert_eq!(usize::from(d.masks[[r, j]]), (r >> j) & 1);
                }
                let kept = g - r.count_ones() as usize;
                prop_assert!((d.weights[r] - shapley_kernel(g, kept)).abs() < 1e-15);
            }
        }
    }
}

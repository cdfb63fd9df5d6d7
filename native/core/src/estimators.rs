//! Attributions from per-row model outputs: occlusion, LIME, KernelSHAP, Sobol.

use std::str::FromStr;

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::linalg::{solve_psd, Penalty};
use crate::{CoreError, Result};

/// LIME's distance between a perturbed row and the original input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// `1 - cos(z, 1)` (1 when nothing is kept).
    Cosine,
    /// The fraction of replaced units.
    Hamming,
    /// `sqrt(#replaced)`.
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
    /// First-order indices `S_i`, `(t, g)`.
    pub first: Array2<f64>,
    /// Total-order indices `ST_i`, `(t, g)`.
    pub total: Array2<f64>,
}

/// Occlusion deltas `f(x) - f(x without unit i)`, `(t, g)`.
///
/// `outputs` is `(g + 1, t)`, laid out as `masks::occlusion_masks`: row 0 is the original input,
/// row `i + 1` has unit `i` replaced.
// The signature is the contract the Python bindings are written against; an `ArrayView` is a
// cheap handle, so nothing is copied.
#[allow(clippy::needless_pass_by_value)]
pub fn occlusion_scores(outputs: ArrayView2<f64>) -> Result<Array2<f64>> {
    let (p, t) = outputs.dim();
    if p < 2 {
        return Err(CoreError::Shape(format!(
            "occlusion needs the original row and at least one occluded row, got outputs of \
             shape ({p}, {t})"
        )));
    }
    let original = outputs.row(0).to_owned().insert_axis(Axis(1));
    let occluded = outputs.slice_move(s![1.., ..]).reversed_axes();
    Ok(&original - &occluded)
}

/// LIME: weighted ridge coefficients, `(t, g)`.
///
/// Each row's kept vector `z = 1 - mask` is weighted by `exp(-d(z, 1)² / w²)`
/// (`w = kernel_width`, default `0.75 sqrt(g)`); every target's outputs are regressed on `z` with
/// an unpenalised intercept and ridge penalty `alpha >= 0`.
// The signature is the contract the Python bindings are written against; an `ArrayView` is a
// cheap handle, so nothing is copied.
#[allow(clippy::needless_pass_by_value)]
pub fn lime_scores(
    masks: ArrayView2<u8>,
    outputs: ArrayView2<f64>,
    distance: Distance,
    kernel_width: Option<f64>,
    alpha: f64,
) -> Result<Array2<f64>> {
    let (p, g) = masks.dim();
    let t = outputs.ncols();
    if g == 0 {
        return Err(CoreError::EmptyUnits);
    }
    check_rows("LIME", &masks, &outputs)?;
    if p == 0 {
        return Err(CoreError::Shape(format!(
            "LIME needs at least one row, got masks of shape (0, {g})"
        )));
    }
    if let Some(w) = kernel_width {
        if !(w.is_finite() && w > 0.0) {
            return Err(CoreError::InvalidParameter(format!(
                "kernel_width must be a finite number > 0, got {w}"
            )));
        }
    }
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(CoreError::InvalidParameter(format!(
            "alpha must be a finite number >= 0, got {alpha}"
        )));
    }
    let z = kept_vectors(&masks)?;
    let width = kernel_width.unwrap_or(0.75 * (g as f64).sqrt());
    let gf = g as f64;
    let weights: Array1<f64> = z
        .rows()
        .into_iter()
        .map(|row| {
            let kept = row.sum();
            let d = match distance {
                Distance::Cosine => 1.0 - (kept / gf).sqrt(),
                Distance::Hamming => (gf - kept) / gf,
                Distance::Euclidean => (gf - kept).sqrt(),
            };
            (-(d * d) / (width * width)).exp()
        })
        .collect();
    let total: f64 = weights.sum();
    if total <= 0.0 {
        // Every weight underflowed: no row says anything about the input.
        return Ok(Array2::zeros((t, g)));
    }
    // Weighted centring removes the (unpenalised) intercept; sqrt(w) turns the weighted normal
    // equations into plain ones.
    let z_mean = weights.dot(&z) / total;
    let y_mean = weights.dot(&outputs) / total;
    let sqrt_w = weights.mapv(f64::sqrt).insert_axis(Axis(1));
    let mut x = (&z - &z_mean) * &sqrt_w;
    for (mut column, mask) in x.columns_mut().into_iter().zip(masks.columns()) {
        // A unit that never varies says nothing; centring would leave rounding noise in its
        // column, which the singular-system ridge could blow up.
        if mask.iter().all(|&v| v == mask[0]) {
            column.fill(0.0);
        }
    }
    let y = (&outputs - &y_mean) * &sqrt_w;
    let mut gram = x.t().dot(&x);
    gram.diag_mut().mapv_inplace(|v| v + alpha);
    let rhs = x.t().dot(&y);
    Ok(solve_psd(&gram, &rhs, Penalty::Identity).t().to_owned())
}

/// KernelSHAP: constrained weighted least squares, `(t, g)`.
///
/// The all-kept row gives `f(x)` and the all-replaced row `f(∅)`; the other rows are fitted by
/// weighted least squares under the exact constraint `sum(phi) = f(x) - f(∅)`, which is
/// eliminated through the last unit. With the enumerated design of `shap::kernel_shap_masks` the
/// result is the exact Shapley value. A singular system gets a tiny ridge that shrinks towards
/// the equal split of `f(x) - f(∅)`, so the result is always finite.
// The signature is the contract the Python bindings are written against; an `ArrayView` is a
// cheap handle, so nothing is copied.
#[allow(clippy::needless_pass_by_value)]
pub fn kernel_shap_scores(
    masks: ArrayView2<u8>,
    weights: ArrayView1<f64>,
    outputs: ArrayView2<f64>,
) -> Result<Array2<f64>> {
    let (p, g) = masks.dim();
    let t = outputs.ncols();
    if g == 0 {
        return Err(CoreError::EmptyUnits);
    }
    check_rows("KernelSHAP", &masks, &outputs)?;
    if weights.len() != p {
        return Err(CoreError::Shape(format!(
            "KernelSHAP masks have {p} rows but weights has {} entries",
            weights.len()
        )));
    }
    if let Some((r, w)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
    {
        return Err(CoreError::InvalidParameter(format!(
            "KernelSHAP weights must be finite and >= 0, got {w} at row {r}"
        )));
    }
    let z = kept_vectors(&masks)?;
    let gf = g as f64;
    let kept_counts: Vec<usize> = masks
        .rows()
        .into_iter()
        .map(|row| row.iter().filter(|&&v| v == 0).count())
        .collect();
    let find = |count: usize, what: &str| {
        kept_counts.iter().position(|&k| k == count).ok_or_else(|| {
            CoreError::Shape(format!(
                "KernelSHAP needs an {what} row among the {p} rows of masks ({p}, {g})"
            ))
        })
    };
    let full = find(g, "all-kept (mask of zeros)")?;
    let empty = find(0, "all-replaced (mask of ones)")?;
    let f_empty = outputs.row(empty);
    let gap = &outputs.row(full) - &f_empty;
    let mut phi = Array2::zeros((t, g));
    if g == 1 {
        phi.column_mut(0).assign(&gap);
        return Ok(phi);
    }
    // phi = gap / g + delta with sum(delta) = 0 and delta_last = -sum(delta_0..g-1):
    // y - f(∅) - |z| gap / g = sum_{j < last} (z_j - z_last) delta_j.
    let last = g - 1;
    let sqrt_w = weights.mapv(f64::sqrt).insert_axis(Axis(1));
    let x = (&z.slice(s![.., ..last]) - &z.slice(s![.., last..])) * &sqrt_w;
    let fractions = Array1::from_iter(kept_counts.iter().map(|&k| k as f64 / gf));
    let share = fractions.insert_axis(Axis(1)) * gap.view().insert_axis(Axis(0));
    let y = (&outputs - &f_empty - &share) * &sqrt_w;
    let gram = x.t().dot(&x);
    let rhs = x.t().dot(&y);
    let delta = solve_psd(&gram, &rhs, Penalty::IdentityPlusOnes);
    for j in 0..t {
        let mut sum = 0.0;
        for i in 0..last {
            let v = gap[j] / gf + delta[[i, j]];
            phi[[j, i]] = v;
            sum += v;
        }
        // Efficiency holds to rounding by construction.
        phi[[j, last]] = gap[j] - sum;
    }
    Ok(phi)
}

/// Sobol first- and total-order indices (Jansen estimators).
///
/// `outputs` is `((g + 2) k, t)`, laid out as `masks::sobol_masks`: blocks `A`, `B`, `C_1..C_g` of
/// `k` rows each. With `V` the variance over the `2k` rows of `A` and `B`:
/// `S_i = (V - mean (f(B) - f(C_i))² / 2) / V` and `ST_i = mean (f(A) - f(C_i))² / 2 / V`; a target
/// with `V = 0` gets zeros.
// The signature is the contract the Python bindings are written against; an `ArrayView` is a
// cheap handle, so nothing is copied.
#[allow(clippy::needless_pass_by_value)]
pub fn sobol_indices(outputs: ArrayView2<f64>, g: usize, k: usize) -> Result<SobolIndices> {
    if g == 0 {
        return Err(CoreError::EmptyUnits);
    }
    if k == 0 {
        return Err(CoreError::InvalidParameter(
            "the number of Sobol points k must be at least 1, got 0".to_owned(),
        ));
    }
    let (p, t) = outputs.dim();
    let expected = g.checked_add(2).and_then(|blocks| blocks.checked_mul(k));
    if expected != Some(p) {
        return Err(CoreError::Shape(format!(
            "Sobol outputs must have (g + 2) k = ({g} + 2) * {k} rows, got outputs of shape \
             ({p}, {t})"
        )));
    }
    let mut first = Array2::zeros((t, g));
    let mut total = Array2::zeros((t, g));
    let kf = k as f64;
    let half_mean_sq = |a: ArrayView1<f64>, b: ArrayView1<f64>| {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / (2.0 * kf)
    };
    for j in 0..t {
        let column = outputs.column(j);
        let ab = column.slice(s![..2 * k]);
        let (lo, hi) = ab
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        if hi <= lo && !ab.iter().any(|v| v.is_nan()) {
            // A constant target (V = 0) has nothing to apportion.
            continue;
        }
        let mean = ab.sum() / (2.0 * kf);
        let variance = ab.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (2.0 * kf);
        let f_a = column.slice(s![..k]);
        let f_b = column.slice(s![k..2 * k]);
        for i in 0..g {
            let f_c = column.slice(s![(i + 2) * k..(i + 3) * k]);
            first[[j, i]] = (variance - half_mean_sq(f_b, f_c)) / variance;
            total[[j, i]] = half_mean_sq(f_a, f_c) / variance;
        }
    }
    Ok(SobolIndices { first, total })
}

/// Masks and outputs must have the same number of rows.
fn check_rows(method: &str, masks: &ArrayView2<u8>, outputs: &ArrayView2<f64>) -> Result<()> {
    if masks.nrows() == outputs.nrows() {
        Ok(())
    } else {
        Err(CoreError::Shape(format!(
            "{method} masks of shape {:?} and outputs of shape {:?} have different numbers of rows",
            masks.dim(),
            outputs.dim()
        )))
    }
}

/// The kept vectors `z = 1 - mask` as floats; a mask value other than 0 or 1 is an error.
fn kept_vectors(masks: &ArrayView2<u8>) -> Result<Array2<f64>> {
    if let Some(((r, c), v)) = masks.indexed_iter().find(|(_, &v)| v > 1) {
        return Err(CoreError::InvalidParameter(format!(
            "masks must hold only 0 (kept) and 1 (replaced), got {v} at ({r}, {c})"
        )));
    }
    Ok(masks.mapv(|v| f64::from(1 - v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::shap::kernel_shap_masks;
    use ndarray::array;
    use proptest::prelude::*;

    /// Outputs `(p, t)` of `f` evaluated on each row's kept vector.
    fn evaluate(masks: &Array2<u8>, mut f: impl FnMut(&[f64]) -> Vec<f64>) -> Array2<f64> {
        let rows: Vec<Vec<f64>> = masks
            .rows()
            .into_iter()
            .map(|m| f(&m.iter().map(|&v| f64::from(1 - v)).collect::<Vec<_>>()))
            .collect();
        let t = rows.first().map_or(0, Vec::len);
        Array2::from_shape_fn((rows.len(), t), |(r, j)| rows[r][j])
    }

    fn random_masks(p: usize, g: usize, prob: f64, seed: u64) -> Array2<u8> {
        let mut data = Vec::with_capacity(p * g);
        for r in 0..p {
            let mut rng = Rng::for_stream(seed, r as u64);
            data.extend((0..g).map(|_| u8::from(rng.next_f64() < prob)));
        }
        Array2::from_shape_vec((p, g), data).unwrap()
    }

    fn assert_close(a: &Array2<f64>, b: &Array2<f64>, tol: f64) {
        assert_eq!(a.dim(), b.dim());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "\n{a}\n!=\n{b}\n(tolerance {tol})");
        }
    }

    /// Shapley values of the game `v` (indexed by the bit set of kept units) from the definition.
    fn brute_force_shapley(v: &[f64], g: usize) -> Vec<f64> {
        let fact = |n: usize| (1..=n).map(|i| i as f64).product::<f64>();
        (0..g)
            .map(|i| {
                (0..1usize << g)
                    .filter(|s| s & (1 << i) == 0)
                    .map(|s| {
                        let size = s.count_ones() as usize;
                        fact(size) * fact(g - size - 1) / fact(g) * (v[s | (1 << i)] - v[s])
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn distance_names() {
        assert_eq!("hamming".parse::<Distance>(), Ok(Distance::Hamming));
        assert!(matches!(
            "manhattan".parse::<Distance>(),
            Err(CoreError::UnknownStrategy { .. })
        ));
    }

    #[test]
    fn occlusion_exact() {
        let outputs = array![[1.0, 10.0], [0.5, 10.0], [1.25, 4.0], [-1.0, 12.5]];
        let scores = occlusion_scores(outputs.view()).unwrap();
        assert_eq!(scores, array![[0.5, -0.25, 2.0], [0.0, 6.0, -2.5]]);
        assert!(matches!(
            occlusion_scores(Array2::zeros((1, 2)).view()),
            Err(CoreError::Shape(_))
        ));
        assert_eq!(
            occlusion_scores(Array2::zeros((3, 0)).view())
                .unwrap()
                .dim(),
            (0, 2)
        );
    }

    #[test]
    fn lime_with_alpha_zero_recovers_linear_coefficients() {
        let coef = [0.5, -2.0, 3.0, 0.0, 1.25];
        let masks = random_masks(400, coef.len(), 0.5, 1);
        let outputs = evaluate(&masks, |z| {
            let lin: f64 = z.iter().zip(&coef).map(|(a, b)| a * b).sum();
            vec![7.0 + lin, -lin]
        });
        for distance in [Distance::Cosine, Distance::Hamming, Distance::Euclidean] {
            let scores = lime_scores(masks.view(), outputs.view(), distance, None, 0.0).unwrap();
            let expected =
                Array2::from_shape_fn((2, 5), |(j, i)| if j == 0 { coef[i] } else { -coef[i] });
            assert_close(&scores, &expected, 1e-9);
        }
    }

    #[test]
    fn lime_ridge_keeps_the_ranking_and_shrinks() {
        let coef = [0.2, -1.0, 3.0, 0.7, -0.1, 1.5];
        let masks = random_masks(300, coef.len(), 0.3, 5);
        let mut noise = Rng::new(3);
        let outputs = evaluate(&masks, |z| {
            let lin: f64 = z.iter().zip(&coef).map(|(a, b)| a * b).sum();
            vec![lin + 0.05 * (noise.next_f64() - 0.5)]
        });
        let scores =
            lime_scores(masks.view(), outputs.view(), Distance::Cosine, None, 1.0).unwrap();
        let mut by_score: Vec<usize> = (0..coef.len()).collect();
        by_score.sort_by(|&a, &b| scores[[0, b]].total_cmp(&scores[[0, a]]));
        assert_eq!(by_score, vec![2, 5, 3, 0, 4, 1], "{scores}");
        let strong =
            lime_scores(masks.view(), outputs.view(), Distance::Cosine, None, 1e4).unwrap();
        let norm = |a: &Array2<f64>| a.iter().map(|v| v * v).sum::<f64>();
        assert!(norm(&strong) < norm(&scores));
    }

    #[test]
    fn lime_weights_follow_the_kernel() {
        // Rows z = (1, 1), (0, 1), (0, 1) with outputs 1, 0, 1: the all-kept row has d = 0 and
        // weight 1, the other two the same distance d and weight w = exp(-d² / width²).
        let masks = array![[0u8, 0], [1, 0], [1, 0]];
        let outputs = array![[1.0], [0.0], [1.0]];
        // Closed-form weighted ridge slope of unit 0 (weighted centring, penalty alpha).
        let slope = |w: f64, alpha: f64| {
            let total = 1.0 + 2.0 * w;
            let (z_mean, y_mean) = (1.0 / total, (1.0 + w) / total);
            let sxx = (1.0 - z_mean).powi(2) + 2.0 * w * z_mean * z_mean;
            let sxy =
                (1.0 - z_mean) * (1.0 - y_mean) + w * z_mean * y_mean - w * z_mean * (1.0 - y_mean);
            sxy / (sxx + alpha)
        };
        let default_width = 0.75 * 2.0f64.sqrt();
        let cases = [
            (Distance::Cosine, None, 1.0 - 0.5f64.sqrt(), default_width),
            (Distance::Hamming, None, 0.5, default_width),
            (Distance::Euclidean, None, 1.0, default_width),
            (Distance::Euclidean, Some(0.5), 1.0, 0.5),
        ];
        for (distance, width, d, w_used) in cases {
            let w = (-(d * d) / (w_used * w_used)).exp();
            let s = lime_scores(masks.view(), outputs.view(), distance, width, 0.3).unwrap();
            assert!(
                (s[[0, 0]] - slope(w, 0.3)).abs() < 1e-12,
                "{distance:?}: {s}"
            );
            // Unit 1 is always kept: its centred column is zero, so it gets exactly nothing.
            assert!(s[[0, 1]].abs() < f64::MIN_POSITIVE, "{s}");
        }
        // With alpha = 0 the system is singular (unit 1 never varies): the tiny-ridge fallback
        // still gives the least-squares slope 1 - 0.5 of unit 0 and 0 for unit 1, not NaN.
        let s = lime_scores(masks.view(), outputs.view(), Distance::Cosine, None, 0.0).unwrap();
        assert!((s[[0, 0]] - 0.5).abs() < 1e-9, "{s}");
        assert!(s[[0, 1]].abs() < f64::MIN_POSITIVE, "{s}");
    }

    #[test]
    fn lime_errors() {
        let masks = array![[0u8, 1], [1, 0]];
        let outputs = array![[1.0], [2.0]];
        let lime = |m: ArrayView2<u8>, o: ArrayView2<f64>, w: Option<f64>, a: f64| {
            lime_scores(m, o, Distance::Cosine, w, a)
        };
        assert!(matches!(
            lime(masks.view(), outputs.slice(s![..1, ..]), None, 1.0),
            Err(CoreError::Shape(_))
        ));
        assert!(matches!(
            lime(masks.view(), outputs.view(), Some(0.0), 1.0),
            Err(CoreError::InvalidParameter(_))
        ));
        assert!(matches!(
            lime(masks.view(), outputs.view(), None, -1.0),
            Err(CoreError::InvalidParameter(_))
        ));
        assert!(matches!(
            lime(masks.view(), outputs.view(), None, f64::NAN),
            Err(CoreError::InvalidParameter(_))
        ));
        assert_eq!(
            lime(Array2::zeros((2, 0)).view(), outputs.view(), None, 1.0),
            Err(CoreError::EmptyUnits)
        );
        assert!(matches!(
            lime(array![[0u8, 2], [1, 0]].view(), outputs.view(), None, 1.0),
            Err(CoreError::InvalidParameter(ref m)) if m.contains("(0, 1)")
        ));
    }

    #[test]
    fn kernel_shap_additive_is_exact_for_both_designs() {
        let c = [1.5, -0.25, 0.0, 2.0, -3.0, 0.75, 0.125, 4.0, -1.0, 0.5];
        let g = c.len();
        let additive = |z: &[f64]| {
            let lin: f64 = z.iter().zip(&c).map(|(a, b)| a * b).sum();
            vec![0.3 + lin, 2.0 * lin]
        };
        for n in [1 << g, 300] {
            let design = kernel_shap_masks(n, g, 17).unwrap();
            assert_eq!(design.masks.nrows() == 1 << g, n == 1 << g);
            let outputs = evaluate(&design.masks, additive);
            let phi =
                kernel_shap_scores(design.masks.view(), design.weights.view(), outputs.view())
                    .unwrap();
            let expected = Array2::from_shape_fn((2, g), |(j, i)| c[i] * (1.0 + j as f64));
            assert_close(&phi, &expected, 1e-9);
        }
    }

    #[test]
    fn kernel_shap_small_exact_values() {
        // g = 2, v(∅) = 0, v({0}) = 1, v({1}) = 2, v({0, 1}) = 5: Shapley (2, 3).
        let d = kernel_shap_masks(4, 2, 0).unwrap();
        let outputs = evaluate(&d.masks, |z| vec![z[0] + 2.0 * z[1] + 2.0 * z[0] * z[1]]);
        let phi = kernel_shap_scores(d.masks.view(), d.weights.view(), outputs.view()).unwrap();
        assert_close(&phi, &array![[2.0, 3.0]], 1e-12);
        // g = 1: phi = f(x) - f(∅).
        let phi = kernel_shap_scores(
            array![[1u8], [0]].view(),
            array![0.0, 0.0].view(),
            array![[1.0, 4.0], [3.0, -1.0]].view(),
        )
        .unwrap();
        assert_eq!(phi, array![[2.0], [-5.0]]);
    }

    #[test]
    fn kernel_shap_without_information_splits_equally() {
        // Only the two constraint rows: the tiny ridge gives the equal split, never NaN.
        let masks = array![[0u8, 0, 0, 0], [1, 1, 1, 1]];
        let outputs = array![[10.0], [2.0]];
        let phi =
            kernel_shap_scores(masks.view(), array![0.0, 0.0].view(), outputs.view()).unwrap();
        assert_close(&phi, &array![[2.0, 2.0, 2.0, 2.0]], 1e-9);
    }

    #[test]
    fn kernel_shap_errors() {
        let masks = array![[0u8, 0], [1, 0]];
        let outputs = array![[1.0], [2.0]];
        let w = array![1.0, 1.0];
        assert!(matches!(
            kernel_shap_scores(masks.view(), w.view(), outputs.view()),
            Err(CoreError::Shape(ref m)) if m.contains("all-replaced")
        ));
        let masks = array![[1u8, 1], [1, 0]];
        assert!(matches!(
            kernel_shap_scores(masks.view(), w.view(), outputs.view()),
            Err(CoreError::Shape(ref m)) if m.contains("all-kept")
        ));
        let masks = array![[0u8, 0], [1, 1]];
        assert!(matches!(
            kernel_shap_scores(masks.view(), array![1.0].view(), outputs.view()),
            Err(CoreError::Shape(_))
        ));
        assert!(matches!(
            kernel_shap_scores(masks.view(), array![1.0, -1.0].view(), outputs.view()),
            Err(CoreError::InvalidParameter(_))
        ));
        assert!(matches!(
            kernel_shap_scores(masks.view(), w.view(), outputs.slice(s![..1, ..])),
            Err(CoreError::Shape(_))
        ));
        assert_eq!(
            kernel_shap_scores(Array2::zeros((2, 0)).view(), w.view(), outputs.view()),
            Err(CoreError::EmptyUnits)
        );
    }

    /// Ishigami on [-pi, pi]^3 and `u1 + 2 u2 + 4 u1 u3` (u uniform on [-1/2, 1/2]) evaluated on
    /// the real-valued analogue of the Sobol design `[A; B; C_1; C_2; C_3]`.
    #[test]
    fn sobol_indices_match_analytic_values() {
        let g = 3;
        let k = 20_000;
        let mut rng = Rng::new(2021);
        let a = Array2::from_shape_fn((k, g), |_| rng.next_f64());
        let b = Array2::from_shape_fn((k, g), |_| rng.next_f64());
        let mut rows = a.clone();
        rows.append(Axis(0), b.view()).unwrap();
        for i in 0..g {
            let mut c = a.clone();
            c.column_mut(i).assign(&b.column(i));
            rows.append(Axis(0), c.view()).unwrap();
        }
        let pi = std::f64::consts::PI;
        let outputs = Array2::from_shape_fn(((g + 2) * k, 2), |(r, j)| {
            let x = rows.row(r);
            if j == 0 {
                let (x1, x2, x3) = (
                    pi * (2.0 * x[0] - 1.0),
                    pi * (2.0 * x[1] - 1.0),
                    pi * (2.0 * x[2] - 1.0),
                );
                x1.sin() + 7.0 * x2.sin().powi(2) + 0.1 * x3.powi(4) * x1.sin()
            } else {
                let u = [x[0] - 0.5, x[1] - 0.5, x[2] - 0.5];
                u[0] + 2.0 * u[1] + 4.0 * u[0] * u[2]
            }
        });
        let idx = sobol_indices(outputs.view(), g, k).unwrap();
        let (a7, b01) = (7.0f64, 0.1f64);
        let v1 = 0.5 * (1.0 + b01 * pi.powi(4) / 5.0).powi(2);
        let v2 = a7 * a7 / 8.0;
        let v13 = b01 * b01 * pi.powi(8) * (1.0 / 18.0 - 1.0 / 50.0);
        let v = v1 + v2 + v13;
        let expected_first = array![[v1 / v, v2 / v, 0.0], [3.0 / 19.0, 12.0 / 19.0, 0.0]];
        let expected_total = array![
            [(v1 + v13) / v, v2 / v, v13 / v],
            [7.0 / 19.0, 12.0 / 19.0, 4.0 / 19.0]
        ];
        assert_close(&idx.first, &expected_first, 0.03);
        assert_close(&idx.total, &expected_total, 0.03);
    }

    #[test]
    fn sobol_small_exact_values_and_constant_target() {
        // g = 1, k = 2: A = (1, 3), B = (2, 6), C_1 = (0, 4); second target constant.
        let outputs = array![
            [1.0, 5.0],
            [3.0, 5.0],
            [2.0, 5.0],
            [6.0, 5.0],
            [0.0, 5.0],
            [4.0, 5.0]
        ];
        let idx = sobol_indices(outputs.view(), 1, 2).unwrap();
        // mean 3, V = (4 + 0 + 1 + 9) / 4 = 3.5; mean (B - C)² / 2 = (4 + 4) / 4 = 2;
        // mean (A - C)² / 2 = (1 + 1) / 4 = 0.5.
        assert_close(&idx.first, &array![[1.5 / 3.5], [0.0]], 1e-15);
        assert_close(&idx.total, &array![[0.5 / 3.5], [0.0]], 1e-15);
    }

    #[test]
    fn sobol_errors() {
        let outputs = Array2::<f64>::zeros((8, 1));
        assert_eq!(
            sobol_indices(outputs.view(), 0, 2),
            Err(CoreError::EmptyUnits)
        );
        assert!(matches!(
            sobol_indices(outputs.view(), 2, 0),
            Err(CoreError::InvalidParameter(_))
        ));
        assert!(matches!(
            sobol_indices(outputs.view(), 3, 2),
            Err(CoreError::Shape(ref m)) if m.contains("(8, 1)")
        ));
        assert!(sobol_indices(outputs.view(), 2, 2).is_ok());
        // (g + 2) k would wrap to the number of rows (usize::MAX + 2 = 1): still a shape error.
        let one = Array2::<f64>::zeros((1, 1));
        assert!(matches!(
            sobol_indices(one.view(), usize::MAX, 1),
            Err(CoreError::Shape(_))
        ));
    }

    /// End to end with the mask generators: occlusion, and Sobol on an additive function of the
    /// binary masks (each cell is Bernoulli(1/2), so `S_i = ST_i = c_i² / sum c²`).
    #[test]
    fn with_the_mask_generators() {
        let c = [3.0, -1.0, 0.0, 2.0];
        let f =
            |m: ArrayView1<u8>| -> f64 { m.iter().zip(&c).map(|(&v, ci)| f64::from(v) * ci).sum() };
        let masks = crate::masks::occlusion_masks(c.len()).unwrap();
        let outputs = Array2::from_shape_fn((masks.nrows(), 1), |(r, _)| f(masks.row(r)));
        let scores = occlusion_scores(outputs.view()).unwrap();
        assert_close(&scores, &array![[-3.0, 1.0, 0.0, -2.0]], 0.0);

        let k = 4096;
        let sampler = crate::qmc::Sampler::Sobol;
        let masks = crate::masks::sobol_masks(c.len(), k, sampler, 7).unwrap();
        let outputs = Array2::from_shape_fn((masks.nrows(), 1), |(r, _)| f(masks.row(r)));
        let idx = sobol_indices(outputs.view(), c.len(), k).unwrap();
        let norm: f64 = c.iter().map(|v| v * v).sum();
        let expected = Array2::from_shape_fn((1, c.len()), |(_, i)| c[i] * c[i] / norm);
        assert_close(&idx.first, &expected, 0.05);
        assert_close(&idx.total, &expected, 0.05);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any game on g <= 8 players: the enumerated design gives its Shapley values exactly.
        #[test]
        fn kernel_shap_enumerated_is_exact_shapley(g in 1usize..=8, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let games: Vec<Vec<f64>> = (0..2)
                .map(|_| (0..1usize << g).map(|_| 10.0 * rng.next_f64() - 5.0).collect())
                .collect();
            let design = kernel_shap_masks(1 << g, g, seed).unwrap();
            // Row r replaces the units whose bit is set in r, so it keeps the complement.
            let full = (1usize << g) - 1;
            let outputs = Array2::from_shape_fn((1 << g, 2), |(r, j)| games[j][!r & full]);
            let phi = kernel_shap_scores(design.masks.view(), design.weights.view(), outputs.view())
                .unwrap();
            for (j, game) in games.iter().enumerate() {
                let exact = brute_force_shapley(game, g);
                for i in 0..g {
                    prop_assert!((phi[[j, i]] - exact[i]).abs() < 1e-9, "{} vs {:?}", phi, exact);
                }
                let sum: f64 = phi.row(j).sum();
                prop_assert!((sum - (game[full] - game[0])).abs() < 1e-9);
            }
        }

        /// Efficiency is exact and the result finite for any design, however few rows it has.
        #[test]
        fn kernel_shap_efficiency_always_holds(
            g in 1usize..30, n in 2usize..60, seed in any::<u64>()
        ) {
            let design = kernel_shap_masks(n, g, seed).unwrap();
            let mut rng = Rng::new(seed ^ 1);
            let outputs =
                Array2::from_shape_fn((design.masks.nrows(), 3), |_| rng.next_f64() * 4.0 - 2.0);
            let phi = kernel_shap_scores(design.masks.view(), design.weights.view(), outputs.view())
                .unwrap();
            let find = |value: u8| {
                design
                    .masks
                    .rows()
                    .into_iter()
                    .position(|row| row.iter().all(|&v| v == value))
                    .unwrap()
            };
            let (full, empty) = (find(0), find(1));
            for j in 0..3 {
                prop_assert!(phi.row(j).iter().all(|v| v.is_finite()));
                let gap = outputs[[full, j]] - outputs[[empty, j]];
                prop_assert!((phi.row(j).sum() - gap).abs() < 1e-9);
            }
        }

        /// The intercept is unpenalised: shifting the outputs changes nothing; scaling them scales
        /// the coefficients.
        #[test]
        fn lime_is_shift_invariant_and_scale_equivariant(
            g in 1usize..12, p in 1usize..60, seed in any::<u64>(), alpha in 0.0f64..3.0
        ) {
            let masks = random_masks(p, g, 0.5, seed);
            let mut rng = Rng::new(seed);
            let outputs = Array2::from_shape_fn((p, 1), |_| rng.next_f64());
            let fit = |y: &Array2<f64>| {
                lime_scores(masks.view(), y.view(), Distance::Hamming, None, alpha).unwrap()
            };
            let base = fit(&outputs);
            let shifted = outputs.mapv(|v| v + 100.0);
            let scaled = outputs.mapv(|v| -3.0 * v);
            let s1 = fit(&shifted);
            let s2 = fit(&scaled);
            for i in 0..g {
                prop_assert!(base[[0, i]].is_finite());
                let tol = 1e-6 * (1.0 + base[[0, i]].abs());
                prop_assert!((s1[[0, i]] - base[[0, i]]).abs() < tol);
                prop_assert!((s2[[0, i]] + 3.0 * base[[0, i]]).abs() < tol);
            }
        }

        /// A function of unit 0 alone: every other unit has total (and first) index exactly 0,
        /// since `C_i` differs from `A` only in column `i`.
        #[test]
        fn sobol_units_without_effect_get_zero_total(
            g in 1usize..6, k in 2usize..40, seed in any::<u64>()
        ) {
            let mut rng = Rng::new(seed);
            let a: Vec<f64> = (0..k).map(|_| rng.next_f64()).collect();
            let b: Vec<f64> = (0..k).map(|_| rng.next_f64()).collect();
            let f = |x: f64| (3.0 * x).sin();
            let outputs = Array2::from_shape_fn(((g + 2) * k, 1), |(r, _)| {
                let (block, row) = (r / k, r % k);
                match block {
                    1 | 2 => f(b[row]),
                    _ => f(a[row]),
                }
            });
            let idx = sobol_indices(outputs.view(), g, k).unwrap();
            // C_1 (block 2) takes column 0 from B, so f(C_1) = f(B): S_0 = 1.
            prop_assert!((idx.first[[0, 0]] - 1.0).abs() < 1e-12);
            for i in 1..g {
                prop_assert!(idx.total[[0, i]].abs() < f64::MIN_POSITIVE);
            }
        }
    }
}

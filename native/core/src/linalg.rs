//! Small dense linear algebra for the estimators: symmetric positive (semi)definite solves by
//! Cholesky, with a tiny ridge when the system is (numerically) singular.

use ndarray::Array2;

/// A pivot below this fraction of the largest diagonal entry counts as zero: the matrix is
/// treated as singular rather than inverted into huge, meaningless numbers.
const PIVOT_TOL: f64 = 1e-12;

/// The fallback ridge is this fraction of the matrix's trace (docs/native.md).
const RIDGE: f64 = 1e-10;

/// The shape of the fallback ridge penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Penalty {
    /// `lambda * I`: shrinks every coefficient towards 0.
    Identity,
    /// `lambda * (I + 1 1^T)`: for `m` free coefficients `d_1..d_m` of a vector whose last entry is
    /// `-sum(d)`, this is `lambda * |d_full|²`, the penalty symmetric in all `m + 1` entries.
    IdentityPlusOnes,
}

/// The lower Cholesky factor of the `m x m` matrix `a` (row-major), or `None` when a pivot is not
/// clearly positive (singular, indefinite or NaN).
fn cholesky(a: &[f64], m: usize) -> Option<Vec<f64>> {
    let scale = (0..m).map(|i| a[i * m + i].abs()).fold(0.0, f64::max);
    let tol = PIVOT_TOL * scale;
    let mut l = vec![0.0; m * m];
    for j in 0..m {
        let (head, tail) = l.split_at_mut(j * m);
        let row_j = &mut tail[..m];
        // Row j left of the diagonal, from rows 0..j already computed.
        for k in 0..j {
            let row_k = &head[k * m..k * m + k];
            let s = a[j * m + k] - dot(&row_j[..k], row_k);
            row_j[k] = s / head[k * m + k];
        }
        let d = a[j * m + j] - dot(&row_j[..j], &row_j[..j]);
        if d.is_nan() || d <= tol || d <= 0.0 {
            return None;
        }
        row_j[j] = d.sqrt();
    }
    Some(l)
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Solves `L L^T x = b` in place for one right-hand side.
fn cholesky_solve(l: &[f64], m: usize, x: &mut [f64]) {
    for i in 0..m {
        let s = x[i] - dot(&l[i * m..i * m + i], &x[..i]);
        x[i] = s / l[i * m + i];
    }
    for i in (0..m).rev() {
        let mut s = x[i];
        for k in i + 1..m {
            s -= l[k * m + i] * x[k];
        }
        x[i] = s / l[i * m + i];
    }
}

/// Solves `a x = b` for a symmetric positive semidefinite `a` (`m x m`) and every column of `b`
/// (`m x t`) with one factorisation. When `a` is singular, `a + lambda P` is solved instead, with
/// `lambda = 1e-10 trace(a)` (grown until the factorisation succeeds) and `P` the `penalty`, so the
/// result is a finite, minimum-norm-like solution, never NaN (unless `b` holds NaN).
pub(crate) fn solve_psd(a: &Array2<f64>, b: &Array2<f64>, penalty: Penalty) -> Array2<f64> {
    let m = a.nrows();
    assert_eq!(a.ncols(), m, "solve_psd needs a square matrix");
    assert_eq!(
        b.nrows(),
        m,
        "solve_psd: right-hand side has the wrong number of rows"
    );
    let t = b.ncols();
    let dense: Vec<f64> = a.iter().copied().collect();
    let factor = cholesky(&dense, m).or_else(|| {
        let trace: f64 = (0..m).map(|i| dense[i * m + i]).sum();
        let mut lambda = if trace.is_finite() && trace > 0.0 {
            RIDGE * trace
        } else {
            1.0
        };
        for _ in 0..16 {
            let mut ridged = dense.clone();
            for i in 0..m {
                for j in 0..m {
                    let p = match penalty {
                        Penalty::Identity => f64::from(u8::from(i == j)),
                        Penalty::IdentityPlusOnes => 1.0 + f64::from(u8::from(i == j)),
                    };
                    ridged[i * m + j] += lambda * p;
                }
            }
            if let Some(l) = cholesky(&ridged, m) {
                return Some(l);
            }
            lambda *= 100.0;
        }
        None
    });
    let mut x = Array2::zeros((m, t));
    let Some(l) = factor else {
        // Only reachable for a matrix with non-finite entries: no solution is better than NaN.
        return x;
    };
    let mut column = vec![0.0; m];
    for j in 0..t {
        for (c, v) in column.iter_mut().zip(b.column(j)) {
            *c = *v;
        }
        cholesky_solve(&l, m, &mut column);
        for (dst, v) in x.column_mut(j).iter_mut().zip(&column) {
            *dst = *v;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn solves_spd_system_for_several_right_hand_sides() {
        let a = array![[4.0, 2.0, 0.6], [2.0, 5.0, 1.0], [0.6, 1.0, 3.0]];
        let x_true = array![[1.0, -2.0], [0.5, 0.0], [-3.0, 7.0]];
        let b = a.dot(&x_true);
        let x = solve_psd(&a, &b, Penalty::Identity);
        for (u, v) in x.iter().zip(&x_true) {
            assert!((u - v).abs() < 1e-12, "{x} vs {x_true}");
        }
    }

    #[test]
    fn singular_system_gets_finite_minimum_norm_solution() {
        // Two identical columns: the minimum-norm solution splits the weight equally.
        let a = array![[1.0, 1.0], [1.0, 1.0]];
        let b = array![[2.0], [2.0]];
        let x = solve_psd(&a, &b, Penalty::Identity);
        assert!(
            (x[[0, 0]] - 1.0).abs() < 1e-6 && (x[[1, 0]] - 1.0).abs() < 1e-6,
            "{x}"
        );
        let zero = Array2::<f64>::zeros((3, 3));
        let rhs = Array2::<f64>::zeros((3, 2));
        let x = solve_psd(&zero, &rhs, Penalty::IdentityPlusOnes);
        assert!(x.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn empty_system() {
        let a = Array2::<f64>::zeros((0, 0));
        let b = Array2::<f64>::zeros((0, 3));
        assert_eq!(solve_psd(&a, &b, Penalty::Identity).dim(), (0, 3));
    }
}

//! Unit masks for the perturbation methods (see docs/native.md, "Masks").
//!
//! A mask is a `(p, g)` array of `0/1` bytes, `1` = the unit is replaced.

use ndarray::Array2;
use rayon::prelude::*;

use crate::buffer::zeroed_array2;
use crate::qmc::{self, Sampler};
use crate::rng::Rng;
use crate::{CoreError, Result};

pub use crate::shap::{kernel_shap_masks, ShapDesign};

/// Cells of work handed to one rayon task at least, so small masks stay cheap.
const MIN_CELLS_PER_TASK: usize = 1 << 14;

/// Sobol masks of fewer cells are filled on the calling thread (see [`sobol_masks`]).
const PARALLEL_FILL_CELLS: usize = 1 << 22;

/// Rows of `g` cells per rayon task at least.
fn min_rows(g: usize) -> usize {
    MIN_CELLS_PER_TASK.div_ceil(g.max(1))
}

fn check_units(g: usize) -> Result<()> {
    if g == 0 {
        Err(CoreError::EmptyUnits)
    } else {
        Ok(())
    }
}

/// A zeroed `(rows, g)` mask, or `TooLarge` if it cannot be allocated: `rows * g`
/// overflows, exceeds `isize::MAX` bytes, or the allocator refuses (docs/native.md, "Masks").
pub(crate) fn zeroed(rows: usize, g: usize) -> Result<Array2<u8>> {
    zeroed_array2(rows, g)
        .ok_or_else(|| CoreError::TooLarge(format!("a mask of {rows} rows by {g} units")))
}

/// Occlusion: the zero row then the identity, `(g + 1, g)`: row 0 keeps every unit, row `i + 1`
/// replaces unit `i` alone.
///
/// `g = 0` → [`CoreError::EmptyUnits`]; a mask too large → [`CoreError::TooLarge`].
pub fn occlusion_masks(g: usize) -> Result<Array2<u8>> {
    check_units(g)?;
    let rows = g
        .checked_add(1)
        .ok_or_else(|| CoreError::TooLarge(format!("an occlusion mask of {g} units")))?;
    let mut masks = zeroed(rows, g)?;
    // Row i + 1 has its 1 at column i: flat index (i + 1) g + i = g + i (g + 1).
    let flat = masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout");
    for cell in flat[g..].iter_mut().step_by(g + 1) {
        *cell = 1;
    }
    Ok(masks)
}

/// The 16-bit threshold of a replacement probability: `round(prob * 65536)` (halves up), in
/// `0..=65536`. `prob * 65536` is exact, so this is the nearest multiple of `2^-16`.
#[must_use]
pub fn bernoulli_threshold(prob: f64) -> u32 {
    (prob * 65536.0).round() as u32
}

/// LIME: `n` rows, each unit replaced with probability `prob` (to 16 bits), `(n, g)`.
///
/// Row `r` draws from `Rng::for_stream(seed, r)`; each `next_u64` gives four cells, in column
/// order, from its 16-bit lanes (bits 0-15, 16-31, 32-47, 48-63), and a cell is 1 iff its lane is
/// below `t = bernoulli_threshold(prob) = round(prob * 65536)`. The bits of the last draw of a row
/// that no cell uses are discarded. `g = 0` → [`CoreError::EmptyUnits`]; `n = 0`, `prob` outside
/// [0, 1] (or NaN) → [`CoreError::InvalidParameter`]; a mask too large → [`CoreError::TooLarge`].
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
    let threshold = bernoulli_threshold(prob);
    // With t = 0 no lane, with t = 65536 every lane, is below t: the outcome is known, and the
    // streams are per row, so skipping them changes nothing.
    if threshold == 0 {
        return Ok(masks);
    }
    if threshold >= 1 << 16 {
        masks.fill(1);
        return Ok(masks);
    }
    let t = threshold as u16;
    masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(g)
        .with_min_len(min_rows(g))
        .enumerate()
        .for_each(|(r, row)| bernoulli_row(row, Rng::for_stream(seed, r as u64), t));
    Ok(masks)
}

/// Cells of a row handled per block: the lanes of a block's draws are spread into a buffer on
/// the stack, then compared with the threshold in one pass the compiler vectorises.
const BERNOULLI_BLOCK: usize = 256;

/// One row of [`bernoulli_masks`]: cell `j` is lane `j % 4` of draw `j / 4` below `t`.
fn bernoulli_row(row: &mut [u8], mut rng: Rng, t: u16) {
    let mut lanes = [0u16; BERNOULLI_BLOCK];
    for block in row.chunks_mut(BERNOULLI_BLOCK) {
        // Blocks are a multiple of 4 cells long except the last, whose final draw is only partly
        // used; its other lanes are computed and discarded.
        let lanes = &mut lanes[..block.len().next_multiple_of(4)];
        for quad in lanes.chunks_exact_mut(4) {
            let x = rng.next_u64();
            quad.copy_from_slice(&[
                x as u16,
                (x >> 16) as u16,
                (x >> 32) as u16,
                (x >> 48) as u16,
            ]);
        }
        for (cell, &lane) in block.iter_mut().zip(lanes.iter()) {
            *cell = u8::from(lane < t);
        }
    }
}

/// Sobol (Fel et al. 2021): rows `[A; B; C_1 .. C_g]`, `((g + 2) k, g)`.
///
/// `A` and `B` are the first and last `g` columns of `qmc::points(k, 2 g, sampler, seed)`, `C_i`
/// is `A` with column `i` from `B`, and a cell is 1 (replaced) iff its value is below 0.5.
/// `g = 0` → [`CoreError::EmptyUnits`]; `k = 0` → [`CoreError::InvalidParameter`]; a design too
/// large → [`CoreError::TooLarge`].
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
            CoreError::TooLarge(format!("a Sobol design of {k} points for {g} units"))
        })?;
    let too_large = || CoreError::TooLarge(format!("a mask of {rows} rows by {g} units"));
    let cells = rows.checked_mul(g).ok_or_else(too_large)?;
    let dim = g.checked_mul(2).ok_or_else(too_large)?;
    // The output is allocated before the design is computed, so a size too large fails at once.
    // Row r of the design `ab` is [A_r, B_r] as bits, thresholded as the points are generated.
    if cells < PARALLEL_FILL_CELLS {
        // Small: appended row by row on this thread, each cell written once.
        let mut data = Vec::new();
        data.try_reserve_exact(cells).map_err(|_| too_large())?;
        let ab = qmc::below_half(k, dim, sampler, seed)?;
        let rows_ab = || ab.chunks_exact(dim).map(|row| row.split_at(g));
        rows_ab().for_each(|(a, _)| data.extend_from_slice(a));
        rows_ab().for_each(|(_, b)| data.extend_from_slice(b));
        for i in 0..g {
            for (a, b) in rows_ab() {
                data.extend_from_slice(a);
                let last = data.len() - g + i;
                data[last] = b[i];
            }
        }
        return Ok(Array2::from_shape_vec((rows, g), data).expect("rows * g cells"));
    }
    // Large: fresh (lazily zeroed, huge-page) memory filled by all threads.
    let mut masks = zeroed(rows, g)?;
    let ab = qmc::below_half(k, dim, sampler, seed)?;
    masks
        .as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(g)
        .with_min_len(min_rows(g))
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

    /// The contract, cell by cell: lane `j % 4` of draw `j / 4` of row `r`'s stream below `t`.
    fn bernoulli_naive(n: usize, g: usize, prob: f64, seed: u64) -> Array2<u8> {
        let t = u64::from(bernoulli_threshold(prob));
        let mut masks = Array2::zeros((n, g));
        for r in 0..n {
            let mut rng = Rng::for_stream(seed, r as u64);
            let mut x = 0;
            for j in 0..g {
                if j % 4 == 0 {
                    x = rng.next_u64();
                }
                masks[[r, j]] = u8::from((x >> (16 * (j % 4))) & 0xFFFF < t);
            }
        }
        masks
    }

    #[test]
    fn bernoulli_matches_row_streams() {
        for (n, g, prob, seed) in [
            (5, 7, 0.3, 42),
            (3, 8, 0.5, 1),
            (4, 1, 0.9, 7),
            (2, 13, 1e-5, 3),
        ] {
            assert_eq!(
                bernoulli_masks(n, g, prob, seed).unwrap(),
                bernoulli_naive(n, g, prob, seed)
            );
        }
        // Row 0, seed 42: the first draw's four lanes are the first four cells.
        let x = Rng::for_stream(42, 0).next_u64();
        let masks = bernoulli_masks(1, 4, 0.5, 42).unwrap();
        for l in 0..4 {
            assert_eq!(masks[[0, l]], u8::from((x >> (16 * l)) & 0xFFFF < 32768));
        }
    }

    #[test]
    fn bernoulli_threshold_rounds_to_sixteen_bits() {
        assert_eq!(bernoulli_threshold(0.0), 0);
        assert_eq!(bernoulli_threshold(1.0), 65536);
        assert_eq!(bernoulli_threshold(0.5), 32768);
        assert_eq!(bernoulli_threshold(0.3), 19661); // 19660.8
                                                     // Exactly half a step rounds up; just below it rounds down.
        assert_eq!(bernoulli_threshold(0.5 / 65536.0), 1);
        assert_eq!(bernoulli_threshold(0.49 / 65536.0), 0);
        assert_eq!(bernoulli_threshold(1.0 - 0.5 / 65536.0), 65536);
        // Below half a step nothing is replaced, within half a step of 1 everything is.
        assert!(bernoulli_masks(20, 30, 0.4 / 65536.0, 5)
            .unwrap()
            .iter()
            .all(|&m| m == 0));
        assert!(bernoulli_masks(20, 30, 1.0 - 0.4 / 65536.0, 5)
            .unwrap()
            .iter()
            .all(|&m| m == 1));
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

    /// The masks from the thresholded `f64` design, block by block, the slow way.
    fn sobol_naive(g: usize, k: usize, sampler: Sampler, seed: u64) -> Array2<u8> {
        let bits = qmc::points(k, 2 * g, sampler, seed)
            .unwrap()
            .mapv(|v| u8::from(v < 0.5));
        Array2::from_shape_fn(((g + 2) * k, g), |(row, j)| {
            let (block, r) = (row / k, row % k);
            let from_b = block == 1 || (block >= 2 && block - 2 == j);
            bits[[r, if from_b { g + j } else { j }]]
        })
    }

    #[test]
    fn sobol_masks_equal_the_thresholded_design_small_and_large() {
        // The second size is past PARALLEL_FILL_CELLS (filled by all threads), the first not.
        for (g, k) in [(9, 5), (1024, 4)] {
            assert!(((g + 2) * k * g >= PARALLEL_FILL_CELLS) == (g == 1024));
            for sampler in [Sampler::Sobol, Sampler::Halton, Sampler::LatinHypercube] {
                assert_eq!(
                    sobol_masks(g, k, sampler, 21).unwrap(),
                    sobol_naive(g, k, sampler, 21),
                    "{sampler:?} g = {g}"
                );
            }
        }
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
            Err(CoreError::TooLarge(_))
        ));
    }

    #[test]
    fn sizes_too_large_are_too_large() {
        let too_large = |r: Result<Array2<u8>>| matches!(r, Err(CoreError::TooLarge(_)));
        assert!(too_large(occlusion_masks(usize::MAX)));
        assert!(too_large(occlusion_masks(1 << 31)));
        assert!(too_large(bernoulli_masks(1 << 40, 1 << 40, 0.5, 0)));
        assert!(too_large(bernoulli_masks(1 << 31, 1 << 31, 0.5, 0)));
        assert!(too_large(sobol_masks(
            1 << 40,
            1 << 10,
            Sampler::LatinHypercube,
            0
        )));
        assert!(too_large(sobol_masks(1 << 20, 1 << 10, Sampler::Halton, 0)));
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
            prop_assert_eq!(&masks, &bernoulli_naive(n, g, prob, seed));
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

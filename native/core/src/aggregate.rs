//! Token scores to unit scores.
//!
//! The token → unit map is turned once into, for each unit, the runs of consecutive tokens it
//! owns (one token per unit at token granularity, one run for a word or a sentence); each row
//! then reduces contiguous slices per unit with the accumulator in registers, rows in parallel.

use std::str::FromStr;

use ndarray::{s, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::buffer::{zeroed, zeroed_array2};
use crate::expand::check_token_units;
use crate::{CoreError, Result};

/// How the scores of a unit's tokens are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The mean, accumulated in f64.
    Mean,
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
    /// The sum, accumulated in f64 (0 for a unit without tokens).
    Sum,
    /// The value of largest magnitude, sign kept; on a tie in magnitude the first token wins.
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

/// Blocks of rows handed to one rayon task at least, so small inputs stay cheap.
const MIN_BLOCKS_PER_TASK: usize = 1;

/// For each unit, its runs of consecutive tokens, in token order (CSR over units).
struct Runs {
    /// Runs of unit `u` are `ranges[offsets[u]..offsets[u + 1]]`.
    offsets: Vec<usize>,
    /// `(start, end)` token ranges, end exclusive.
    ranges: Vec<(usize, usize)>,
    /// Number of tokens of each unit.
    counts: Vec<usize>,
}

impl Runs {
    /// `token_to_unit` must already be checked against `n_units`; `None` if a per-unit table
    /// cannot be allocated.
    fn new(token_to_unit: &[i64], n_units: usize) -> Option<Self> {
        // A new run starts wherever a token's unit differs from its predecessor's.
        let mut n_runs = zeroed::<usize>(n_units)?;
        let mut counts = zeroed::<usize>(n_units)?;
        let mut previous = -1i64;
        for &u in token_to_unit {
            if u >= 0 {
                counts[u as usize] += 1;
                if u != previous {
                    n_runs[u as usize] += 1;
                }
            }
            previous = u;
        }
        // offsets[u + 1] = total runs of units 0..=u; `next` then walks each unit's slots.
        let mut offsets = zeroed::<usize>(n_units.checked_add(1)?)?;
        let mut total = 0;
        for (o, &c) in offsets[1..].iter_mut().zip(&n_runs) {
            total += c;
            *o = total;
        }
        let mut next = n_runs;
        next.copy_from_slice(&offsets[..n_units]);
        let mut ranges = vec![(0, 0); total];
        let mut start = 0;
        for (i, &u) in token_to_unit.iter().enumerate() {
            let ends_run = token_to_unit.get(i + 1) != Some(&u);
            if ends_run {
                if u >= 0 {
                    let slot = &mut next[u as usize];
                    ranges[*slot] = (start, i + 1);
                    *slot += 1;
                }
                start = i + 1;
            }
        }
        Some(Self {
            offsets,
            ranges,
            counts,
        })
    }
}

/// How a row is reduced, from the cheapest layout that fits the token → unit map.
enum Plan {
    /// Unit `u` is token `start + u` alone (all tokens, or tokens between special tokens): the
    /// unit scores are a copy of a slice of the row.
    Slice(usize),
    /// Every unit is exactly one token (token granularity): unit `u` is token `tokens[u]`, and
    /// every strategy returns that token's score unchanged.
    OneToken(Vec<usize>),
    /// Every unit is one run of consecutive tokens `(start, end)` (`start == end` when empty).
    OneRun(Vec<(usize, usize)>),
    /// Anything else.
    Runs(Runs),
}

impl Plan {
    /// `None` if a per-unit table cannot be allocated.
    fn new(token_to_unit: &[i64], n_units: usize) -> Option<Self> {
        let runs = Runs::new(token_to_unit, n_units)?;
        let n_runs = |u: usize| runs.offsets[u + 1] - runs.offsets[u];
        Some(if (0..n_units).all(|u| runs.counts[u] == 1) {
            // One run of one token per unit: `ranges` has exactly n_units entries (<= n).
            let tokens: Vec<usize> = runs.ranges.iter().map(|&(start, _)| start).collect();
            if tokens.iter().enumerate().all(|(u, &t)| t == tokens[0] + u) {
                Self::Slice(tokens[0])
            } else {
                Self::OneToken(tokens)
            }
        } else if (0..n_units).all(|u| n_runs(u) <= 1) {
            let mut spans = Vec::new();
            spans.try_reserve_exact(n_units).ok()?;
            spans.extend((0..n_units).map(|u| {
                if n_runs(u) == 1 {
                    runs.ranges[runs.offsets[u]]
                } else {
                    (0, 0)
                }
            }));
            Self::OneRun(spans)
        } else {
            Self::Runs(runs)
        })
    }
}

/// One reduction: an accumulator fed the unit's tokens one by one, in token order, then
/// finished with the unit's token count.
trait Kernel: Sync {
    type Acc: Copy;
    const INIT: Self::Acc;
    fn step(acc: Self::Acc, value: f32) -> Self::Acc;
    fn finish(acc: Self::Acc, count: usize) -> f32;
}

struct Sum;
struct Mean;
struct Max;
struct Min;
struct SignedMax;

// Sums start at -0.0, the exact additive identity, so a one-token unit gives its score bit for
// bit (as `Plan::OneToken` assumes).
impl Kernel for Sum {
    type Acc = f64;
    const INIT: f64 = -0.0;
    #[inline]
    fn step(acc: f64, value: f32) -> f64 {
        acc + f64::from(value)
    }
    fn finish(acc: f64, count: usize) -> f32 {
        if count == 0 {
            0.0
        } else {
            acc as f32
        }
    }
}

impl Kernel for Mean {
    type Acc = f64;
    const INIT: f64 = -0.0;
    #[inline]
    fn step(acc: f64, value: f32) -> f64 {
        acc + f64::from(value)
    }
    fn finish(acc: f64, count: usize) -> f32 {
        if count == 0 {
            f32::NAN
        } else {
            (acc / count as f64) as f32
        }
    }
}

/// `(best, saw_nan)`: `f32::max` would skip NaN, the contract propagates it.
impl Kernel for Max {
    type Acc = (f32, bool);
    const INIT: (f32, bool) = (f32::NEG_INFINITY, false);
    #[inline]
    fn step((best, nan): (f32, bool), value: f32) -> (f32, bool) {
        (
            if value > best { value } else { best },
            nan | value.is_nan(),
        )
    }
    fn finish((best, nan): (f32, bool), count: usize) -> f32 {
        if nan || count == 0 {
            f32::NAN
        } else {
            best
        }
    }
}

impl Kernel for Min {
    type Acc = (f32, bool);
    const INIT: (f32, bool) = (f32::INFINITY, false);
    #[inline]
    fn step((best, nan): (f32, bool), value: f32) -> (f32, bool) {
        (
            if value < best { value } else { best },
            nan | value.is_nan(),
        )
    }
    fn finish((best, nan): (f32, bool), count: usize) -> f32 {
        if nan || count == 0 {
            f32::NAN
        } else {
            best
        }
    }
}

/// `(best, |best|, saw_nan)`; the magnitude starts below every real one so the first token wins
/// ties (also between 0.0 and -0.0).
impl Kernel for SignedMax {
    type Acc = (f32, f32, bool);
    const INIT: (f32, f32, bool) = (0.0, -1.0, false);
    #[inline]
    fn step((best, best_abs, nan): (f32, f32, bool), value: f32) -> Self::Acc {
        let a = value.abs();
        let better = a > best_abs;
        (
            if better { value } else { best },
            if better { a } else { best_abs },
            nan | value.is_nan(),
        )
    }
    fn finish((best, _, nan): (f32, f32, bool), count: usize) -> f32 {
        if nan || count == 0 {
            f32::NAN
        } else {
            best
        }
    }
}

/// Feeds `R` rows' tokens `start..end` into their accumulators, token by token: the `R` rows are
/// independent chains, so their additions (or comparisons) overlap instead of waiting on each
/// other, and the loop over a unit's tokens runs once for `R` rows.
#[inline]
// `i` indexes the R runs in lockstep, which no single iterator expresses.
#[allow(clippy::needless_range_loop)]
fn feed_rows<K: Kernel, const R: usize>(
    acc: &mut [K::Acc; R],
    rows: &[&[f32]; R],
    start: usize,
    end: usize,
) {
    let runs: [&[f32]; R] = std::array::from_fn(|r| &rows[r][start..end]);
    for i in 0..end - start {
        for r in 0..R {
            acc[r] = K::step(acc[r], runs[r][i]);
        }
    }
}

/// Reduces `R` rows (each `n` token scores) into `out`, `R` rows of `n_units` unit scores.
fn reduce_rows<K: Kernel, const R: usize>(plan: &Plan, rows: &[&[f32]; R], out: &mut [f32]) {
    let n_units = out.len() / R;
    let mut outs = out.chunks_exact_mut(n_units);
    let mut outs: [&mut [f32]; R] = std::array::from_fn(|_| outs.next().expect("R output rows"));
    match plan {
        Plan::Slice(start) => {
            for (o, row) in outs.iter_mut().zip(rows) {
                o.copy_from_slice(&row[*start..*start + n_units]);
            }
        }
        Plan::OneToken(tokens) => {
            for (o, row) in outs.iter_mut().zip(rows) {
                for (cell, &t) in o.iter_mut().zip(tokens) {
                    *cell = row[t];
                }
            }
        }
        Plan::OneRun(spans) => {
            for (u, &(start, end)) in spans.iter().enumerate() {
                let mut acc = [K::INIT; R];
                feed_rows::<K, R>(&mut acc, rows, start, end);
                // Finished together (the compiler pairs the divisions of a mean), then scattered.
                let done: [f32; R] = std::array::from_fn(|r| K::finish(acc[r], end - start));
                for (o, &d) in outs.iter_mut().zip(&done) {
                    o[u] = d;
                }
            }
        }
        Plan::Runs(runs) => {
            for (u, (window, &count)) in runs.offsets.windows(2).zip(&runs.counts).enumerate() {
                let mut acc = [K::INIT; R];
                for &(start, end) in &runs.ranges[window[0]..window[1]] {
                    feed_rows::<K, R>(&mut acc, rows, start, end);
                }
                let done: [f32; R] = std::array::from_fn(|r| K::finish(acc[r], count));
                for (o, &d) in outs.iter_mut().zip(&done) {
                    o[u] = d;
                }
            }
        }
    }
}

/// Rows reduced together by [`reduce_rows`].
const BLOCK_ROWS: usize = 8;

/// Runs [`reduce_rows`] over the rows of `scores`, blocks of `R` rows in parallel (the last block
/// may be shorter and goes row by row). Rows that are not contiguous are copied first.
fn aggregate_with<K: Kernel, const R: usize>(
    scores: &ArrayView2<f32>,
    plan: &Plan,
    out: &mut Array2<f32>,
) {
    let (n_rows, n_units) = out.dim();
    let n = scores.ncols();
    out.as_slice_mut()
        .expect("a fresh array is in standard layout")
        .par_chunks_mut(R * n_units)
        .with_min_len(MIN_BLOCKS_PER_TASK)
        .enumerate()
        .for_each_init(Vec::new, |buffer: &mut Vec<f32>, (b, out_block)| {
            let first = b * R;
            let count = R.min(n_rows - first);
            let block = scores.slice(s![first..first + count, ..]);
            // Contiguous rows are read in place; otherwise the block is copied row-major.
            let contiguous = block.rows().into_iter().all(|row| row.as_slice().is_some());
            if !contiguous {
                buffer.clear();
                buffer.extend(block.iter().copied());
            }
            let row = |r: usize| -> &[f32] {
                if contiguous {
                    scores.row(first + r).to_slice().expect("a contiguous row")
                } else {
                    &buffer[r * n..(r + 1) * n]
                }
            };
            if count == R {
                let rows: [&[f32]; R] = std::array::from_fn(row);
                reduce_rows::<K, R>(plan, &rows, out_block);
            } else {
                for (r, out_row) in out_block.chunks_exact_mut(n_units).enumerate() {
                    reduce_rows::<K, 1>(plan, &[row(r)], out_row);
                }
            }
        });
}

/// `(r, n_units)` unit scores from `(r, n)` token scores.
///
/// Tokens with unit -1 are ignored; a unit with a NaN token in a row is NaN in that row; a unit
/// without tokens is NaN (0 for [`Strategy::Sum`]). `token_to_unit` of a length other than `n` →
/// [`CoreError::Shape`]; a unit id `>= n_units` or `< -1` → [`CoreError::IdOutOfRange`].
// The views are taken by value because that is the public signature the bindings are written
// against; an `ArrayView` is a cheap handle, so nothing is copied.
#[allow(clippy::needless_pass_by_value)]
pub fn aggregate(
    scores: ArrayView2<f32>,
    token_to_unit: ArrayView1<i64>,
    n_units: usize,
    strategy: Strategy,
) -> Result<Array2<f32>> {
    let (rows, n) = scores.dim();
    if token_to_unit.len() != n {
        return Err(CoreError::Shape(format!(
            "scores have {n} tokens per row but token_to_unit has {} entries",
            token_to_unit.len()
        )));
    }
    check_token_units(token_to_unit.iter().copied(), n_units)?;
    let too_many = || CoreError::TooLarge(format!("{rows} rows of {n_units} units"));
    // The output and the per-unit tables grow with n_units, which need not match any input size:
    // a size that overflows, exceeds isize::MAX bytes or that the allocator refuses is an error.
    let mut out = zeroed_array2::<f32>(rows, n_units).ok_or_else(too_many)?;
    if rows == 0 || n_units == 0 {
        return Ok(out);
    }
    let mut units = zeroed::<i64>(n).ok_or_else(too_many)?;
    for (dst, &u) in units.iter_mut().zip(&token_to_unit) {
        *dst = u;
    }
    let plan = Plan::new(&units, n_units).ok_or_else(too_many)?;
    match strategy {
        Strategy::Mean => aggregate_with::<Mean, BLOCK_ROWS>(&scores, &plan, &mut out),
        Strategy::Max => aggregate_with::<Max, BLOCK_ROWS>(&scores, &plan, &mut out),
        Strategy::Min => aggregate_with::<Min, BLOCK_ROWS>(&scores, &plan, &mut out),
        Strategy::Sum => aggregate_with::<Sum, BLOCK_ROWS>(&scores, &plan, &mut out),
        // Three accumulators per row: half the block keeps them all in registers.
        Strategy::SignedMax => {
            aggregate_with::<SignedMax, { BLOCK_ROWS / 2 }>(&scores, &plan, &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{aggregate, CoreError, Strategy};
    use ndarray::{array, s, Array1, Array2, ArrayView1, ArrayView2, ShapeBuilder};
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;
    use proptest::test_runner::Config as ProptestConfig;

    const ALL: [Strategy; 5] = [
        Strategy::Mean,
        Strategy::Max,
        Strategy::Min,
        Strategy::Sum,
        Strategy::SignedMax,
    ];

    /// The contract, written the slow way.
    fn naive(
        scores: &ArrayView2<f32>,
        t2u: &[i64],
        n_units: usize,
        strategy: Strategy,
    ) -> Array2<f32> {
        Array2::from_shape_fn((scores.nrows(), n_units), |(r, u)| {
            let values: Vec<f32> = (0..t2u.len())
                .filter(|&i| t2u[i] == u as i64)
                .map(|i| scores[[r, i]])
                .collect();
            if values.iter().any(|v| v.is_nan()) {
                return f32::NAN;
            }
            if values.is_empty() {
                return if strategy == Strategy::Sum {
                    0.0
                } else {
                    f32::NAN
                };
            }
            let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
            match strategy {
                Strategy::Sum => sum as f32,
                Strategy::Mean => (sum / values.len() as f64) as f32,
                Strategy::Max => values
                    .iter()
                    .copied()
                    .fold(values[0], |m, v| if v > m { v } else { m }),
                Strategy::Min => values
                    .iter()
                    .copied()
                    .fold(values[0], |m, v| if v < m { v } else { m }),
                Strategy::SignedMax => {
                    let mut best = values[0];
                    for &v in &values[1..] {
                        if v.abs() > best.abs() {
                            best = v;
                        }
                    }
                    best
                }
            }
        })
    }

    fn same(a: &Array2<f32>, b: &Array2<f32>) -> bool {
        a.dim() == b.dim()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn strategy_names() {
        assert_eq!("signed_max".parse::<Strategy>(), Ok(Strategy::SignedMax));
        assert_eq!("mean".parse::<Strategy>(), Ok(Strategy::Mean));
        assert!(matches!(
            "median".parse::<Strategy>(),
            Err(CoreError::UnknownStrategy { .. })
        ));
    }

    #[test]
    fn small_exact() {
        let scores = array![
            [1.0f32, -3.0, 2.0, 5.0, 7.0],
            [0.5, 0.5, f32::NAN, -1.0, 1.0]
        ];
        let t2u = array![0i64, 0, 1, -1, 1];
        let run = |s| aggregate(scores.view(), t2u.view(), 3, s).unwrap();
        let nan = f32::NAN;
        assert!(same(
            &run(Strategy::Mean),
            &array![[-1.0, 4.5, nan], [0.5, nan, nan]]
        ));
        assert!(same(
            &run(Strategy::Sum),
            &array![[-2.0, 9.0, 0.0], [1.0, nan, 0.0]]
        ));
        assert!(same(
            &run(Strategy::Max),
            &array![[1.0, 7.0, nan], [0.5, nan, nan]]
        ));
        assert!(same(
            &run(Strategy::Min),
            &array![[-3.0, 2.0, nan], [0.5, nan, nan]]
        ));
        assert!(same(
            &run(Strategy::SignedMax),
            &array![[-3.0, 7.0, nan], [0.5, nan, nan]]
        ));
    }

    #[test]
    fn signed_max_first_wins_ties() {
        let scores = array![[2.0f32, -2.0, -0.0, 0.0, -4.0, 4.0]];
        let t2u = array![0i64, 0, 1, 1, 2, 2];
        let out = aggregate(scores.view(), t2u.view(), 3, Strategy::SignedMax).unwrap();
        assert!(same(&out, &array![[2.0, -0.0, -4.0]]));
    }

    #[test]
    fn errors() {
        let scores = array![[1.0f32, 2.0]];
        let err = aggregate(scores.view(), array![0i64].view(), 1, Strategy::Mean).unwrap_err();
        assert!(
            matches!(&err, CoreError::Shape(m) if m.contains('2')),
            "{err}"
        );
        let err = aggregate(scores.view(), array![0i64, 1].view(), 1, Strategy::Mean).unwrap_err();
        assert!(
            matches!(&err, CoreError::IdOutOfRange(m) if m.contains("unit 1")),
            "{err}"
        );
        let err = aggregate(scores.view(), array![0i64, -3].view(), 1, Strategy::Mean).unwrap_err();
        assert!(matches!(err, CoreError::IdOutOfRange(_)), "{err}");
        // n_units is not bounded by the input: an output too large is an error, not an
        // overflow or an allocation abort.
        let t2u = array![0i64, -1];
        for n_units in [usize::MAX, 1 << 62, 1 << 60] {
            let err = aggregate(scores.view(), t2u.view(), n_units, Strategy::Sum).unwrap_err();
            assert!(
                matches!(&err, CoreError::TooLarge(m) if m.contains("units")),
                "{n_units}: {err}"
            );
        }
        let empty = Array2::<f32>::zeros((0, 2));
        let err = aggregate(empty.view(), t2u.view(), usize::MAX, Strategy::Max).unwrap_err();
        assert!(matches!(err, CoreError::TooLarge(_)), "{err}");
    }

    #[test]
    fn empty_edges() {
        let scores = Array2::<f32>::zeros((0, 2));
        let out = aggregate(scores.view(), array![0i64, 1].view(), 2, Strategy::Max).unwrap();
        assert_eq!(out.dim(), (0, 2));
        let scores = Array2::<f32>::zeros((2, 0));
        let none = Array1::<i64>::zeros(0);
        let out = aggregate(scores.view(), none.view(), 2, Strategy::Sum).unwrap();
        assert_eq!(out, Array2::zeros((2, 2)));
        let out = aggregate(scores.view(), none.view(), 0, Strategy::Sum).unwrap();
        assert_eq!(out.dim(), (2, 0));
    }

    #[test]
    fn interleaved_units_and_non_contiguous_scores() {
        let full = Array2::from_shape_fn((4, 12).f(), |(r, i)| (r * 12 + i) as f32 - 20.0);
        let scores = full.slice(s![..;2, ..;2]);
        let t2u = [1i64, 0, 1, 1, -1, 0];
        for strategy in ALL {
            let out = aggregate(scores, ArrayView1::from(&t2u), 2, strategy).unwrap();
            assert!(
                same(&out, &naive(&scores, &t2u, 2, strategy)),
                "{strategy:?}"
            );
        }
    }

    fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
        proptest::sample::select(ALL.to_vec())
    }

    /// Rows of scores (with some NaN and repeated magnitudes), a token → unit map and `n_units`.
    fn case() -> impl proptest::strategy::Strategy<Value = (Array2<f32>, Vec<i64>, usize)> {
        // Up to 20 rows: whole blocks of rows and a shorter last block.
        (0usize..21, 0usize..25, 1usize..7).prop_flat_map(|(rows, n, units)| {
            let value = prop_oneof![
                8 => -4i32..=4,
                1 => Just(i32::MIN),
            ]
            .prop_map(|v| {
                if v == i32::MIN {
                    f32::NAN
                } else {
                    v as f32 * 0.5
                }
            });
            (
                proptest::collection::vec(value, rows * n),
                proptest::collection::vec(-1i64..units as i64, n),
            )
                .prop_map(move |(values, t2u)| {
                    (
                        Array2::from_shape_vec((rows, n), values).unwrap(),
                        t2u,
                        units,
                    )
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn equals_naive((scores, t2u, units) in case(), strategy in strategy()) {
            let t2u_view = ArrayView1::from(&t2u);
            let out = aggregate(scores.view(), t2u_view, units, strategy).unwrap();
            prop_assert!(same(&out, &naive(&scores.view(), &t2u, units, strategy)));
            // Column-major rows (copied per block), and contiguous rows of a wider array.
            let fortran = scores.t().as_standard_layout().into_owned().reversed_axes();
            let from_fortran = aggregate(fortran.view(), t2u_view, units, strategy).unwrap();
            prop_assert!(same(&out, &from_fortran));
            let mut wide = Array2::<f32>::zeros((scores.nrows(), scores.ncols() + 3));
            wide.slice_mut(s![.., 1..=scores.ncols()]).assign(&scores);
            let inner = wide.slice(s![.., 1..=scores.ncols()]);
            prop_assert!(same(&out, &aggregate(inner, t2u_view, units, strategy).unwrap()));
        }

        #[test]
        fn constant_rows(
            c in -1e6f32..1e6, n in 1usize..30, units in 1usize..5, seed in any::<u64>()
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let t2u: Vec<i64> = (0..n).map(|_| rng.below(units as u64 + 1) as i64 - 1).collect();
            let scores = Array2::from_elem((3, n), c);
            for strategy in [Strategy::Mean, Strategy::Max, Strategy::Min, Strategy::SignedMax] {
                let out = aggregate(scores.view(), ArrayView1::from(&t2u), units, strategy).unwrap();
                for u in 0..units {
                    let present = t2u.contains(&(u as i64));
                    for r in 0..3 {
                        if present {
                            prop_assert_eq!(out[[r, u]].to_bits(), c.to_bits());
                        } else {
                            prop_assert!(out[[r, u]].is_nan());
                        }
                    }
                }
            }
        }

        #[test]
        fn sum_preserves_row_totals(
            rows in 1usize..5, n in 1usize..40, units in 1usize..6, seed in any::<u64>()
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let t2u: Vec<i64> = (0..n).map(|_| rng.below(units as u64 + 1) as i64 - 1).collect();
            // Small integers: every partial sum is exact, so totals agree exactly.
            let scores = Array2::from_shape_fn((rows, n), |_| rng.below(201) as f32 - 100.0);
            let out = aggregate(scores.view(), ArrayView1::from(&t2u), units, Strategy::Sum).unwrap();
            for r in 0..rows {
                let expected = (0..n)
                    .filter(|&i| t2u[i] >= 0)
                    .fold(0.0f32, |total, i| total + scores[[r, i]]);
                let total = out.row(r).iter().fold(0.0f32, |total, &v| total + v);
                prop_assert_eq!(total.to_bits(), expected.to_bits());
            }
        }

        #[test]
        fn signed_max_is_a_largest_member(
            (scores, t2u, units) in case()
        ) {
            let out = aggregate(scores.view(), ArrayView1::from(&t2u), units, Strategy::SignedMax)
                .unwrap();
            for r in 0..scores.nrows() {
                for u in 0..units {
                    let members: Vec<f32> = (0..t2u.len())
                        .filter(|&i| t2u[i] == u as i64)
                        .map(|i| scores[[r, i]])
                        .collect();
                    let v = out[[r, u]];
                    if members.is_empty() || members.iter().any(|m| m.is_nan()) {
                        prop_assert!(v.is_nan());
                    } else {
                        prop_assert!(members.contains(&v));
                        prop_assert!(members.iter().all(|m| m.abs() <= v.abs()));
                    }
                }
            }
        }

        #[test]
        fn nan_spoils_only_its_unit(
            n in 2usize..30, units in 2usize..6, seed in any::<u64>(), strategy in strategy()
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let t2u: Vec<i64> = (0..n).map(|i| (i % units) as i64).collect();
            let mut scores = Array2::from_shape_fn((2, n), |_| rng.next_f64() as f32);
            let poisoned = rng.below(n as u64) as usize;
            scores[[1, poisoned]] = f32::NAN;
            let out = aggregate(scores.view(), ArrayView1::from(&t2u), units, strategy).unwrap();
            for u in 0..units {
                let empty_nan = u >= n && strategy != Strategy::Sum;
                prop_assert_eq!(out[[0, u]].is_nan(), empty_nan);
                prop_assert_eq!(out[[1, u]].is_nan(), u == poisoned % units || empty_nan);
            }
        }
    }
}

//! Space-filling designs in [0, 1)^d: scrambled Sobol, scrambled Halton, Latin hypercube.
//!
//! Every design is a pure function of `(k, d, sampler, seed)`: the random streams are indexed by
//! dimension (or by block of 256 dimensions for Sobol), never shared between threads, so the
//! points are the same on every machine and for every thread count.

use std::str::FromStr;

use ndarray::Array2;
use rayon::prelude::*;

use crate::buffer::{zeroed, zeroed_array2, Zeroable};
use crate::rng::Rng;
use crate::{CoreError, Result};

/// Which design generates the points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// Owen-scrambled Sobol (`sobol_burley`), at most [`MAX_SOBOL_POINTS`] points.
    Sobol,
    /// Halton with the first `d` primes, scrambled by random digit permutations.
    Halton,
    /// Latin hypercube: one point per stratum `[i / k, (i + 1) / k)` in every dimension.
    LatinHypercube,
}

impl FromStr for Sampler {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sobol" => Ok(Self::Sobol),
            "halton" => Ok(Self::Halton),
            "latin_hypercube" => Ok(Self::LatinHypercube),
            _ => Err(CoreError::UnknownStrategy {
                kind: "sampler",
                name: s.to_owned(),
                expected: "sobol, halton, latin_hypercube",
            }),
        }
    }
}

/// The longest scrambled Sobol design: `sobol_burley` indexes samples with 16 bits.
pub const MAX_SOBOL_POINTS: usize = 1 << 16;

/// Dimensions of `sobol_burley`; higher dimensions reuse them under another seed.
const SOBOL_DIMS: usize = sobol_burley::NUM_DIMENSIONS as usize;

/// `k` points of dimension `d`, `(k, d)`, every coordinate in [0, 1).
///
/// `k = 0`, `d = 0` or `k > 65536` with the Sobol sampler → [`CoreError::InvalidParameter`]; a
/// design too large to allocate → [`CoreError::TooLarge`].
pub fn points(k: usize, d: usize, sampler: Sampler, seed: u64) -> Result<Array2<f64>> {
    check_design(k, d, sampler)?;
    let mut out = zeroed_array2::<f64>(k, d).ok_or_else(|| too_large(k, d))?;
    let flat = out
        .as_slice_mut()
        .expect("a fresh array is in standard layout");
    fill_design(flat, k, d, sampler, seed, |v| v).ok_or_else(|| too_large(k, d))?;
    Ok(out)
}

/// The design of [`points`] thresholded at 0.5, without the `f64` array: `(k, d)` row-major
/// bytes, `1` where the coordinate is `< 0.5`. Same errors as [`points`].
pub(crate) fn below_half(k: usize, d: usize, sampler: Sampler, seed: u64) -> Result<Vec<u8>> {
    check_design(k, d, sampler)?;
    let cells = k.checked_mul(d).ok_or_else(|| too_large(k, d))?;
    let mut out = zeroed::<u8>(cells).ok_or_else(|| too_large(k, d))?;
    fill_design(&mut out, k, d, sampler, seed, |v| u8::from(v < 0.5))
        .ok_or_else(|| too_large(k, d))?;
    Ok(out)
}

fn too_large(k: usize, d: usize) -> CoreError {
    CoreError::TooLarge(format!("a design of {k} points of dimension {d}"))
}

fn check_design(k: usize, d: usize, sampler: Sampler) -> Result<()> {
    if k == 0 {
        return Err(CoreError::InvalidParameter(
            "the number of points must be at least 1, got 0".to_owned(),
        ));
    }
    if d == 0 {
        return Err(CoreError::InvalidParameter(
            "the dimension of the points must be at least 1, got 0".to_owned(),
        ));
    }
    if sampler == Sampler::Sobol && k > MAX_SOBOL_POINTS {
        return Err(CoreError::InvalidParameter(format!(
            "the sobol sampler supports at most {MAX_SOBOL_POINTS} points, got {k}"
        )));
    }
    Ok(())
}

/// Cells of work handed to one rayon task at least: below this, threads cost more than they save.
const MIN_CELLS_PER_TASK: usize = 1 << 14;

/// Tasks of at least [`MIN_CELLS_PER_TASK`] cells, in items of `cells_per_item` cells.
fn min_items(cells_per_item: usize) -> usize {
    MIN_CELLS_PER_TASK.div_ceil(cells_per_item.max(1))
}

/// Writes `map(x[i, j])` to `out[i * d + j]` for the `(k, d)` design `x`; `None` if a working
/// buffer cannot be allocated.
fn fill_design<T, M>(
    out: &mut [T],
    k: usize,
    d: usize,
    sampler: Sampler,
    seed: u64,
    map: M,
) -> Option<()>
where
    T: Zeroable + Send + Sync,
    M: Fn(f64) -> T + Sync,
{
    match sampler {
        Sampler::Sobol => {
            sobol(out, d, seed, map);
            Some(())
        }
        Sampler::Halton => {
            let primes = first_primes(d)?;
            by_columns(out, k, d, map, |j, scratch| {
                halton_column(k, primes[j], j, seed, &mut scratch.values);
            })
        }
        Sampler::LatinHypercube => by_columns(out, k, d, map, |j, scratch| {
            latin_hypercube_column(k, j, seed, scratch);
        }),
    }
}

/// The 32-bit `sobol_burley` seed of dimensions `256 b .. 256 (b + 1)`: the top half of the first
/// draw of stream `b` of `seed`, so each block of 256 dimensions is an independent scramble.
fn sobol_seed(seed: u64, block: usize) -> u32 {
    (Rng::for_stream(seed, block as u64).next_u64() >> 32) as u32
}

/// Scrambled Sobol points, row by row (the caller checked `k <= MAX_SOBOL_POINTS`).
fn sobol<T, M>(out: &mut [T], d: usize, seed: u64, map: M)
where
    T: Send,
    M: Fn(f64) -> T + Sync,
{
    let seeds: Vec<u32> = (0..d.div_ceil(SOBOL_DIMS))
        .map(|block| sobol_seed(seed, block))
        .collect();
    let point = |(i, row): (usize, &mut [T])| {
        // Dimension j = 4 s + l lies in set s % 64 of block s / 64 (256 = 64 sets of 4), and
        // `sample_4d` equals four calls of `sample`.
        for (s, quad) in row.chunks_mut(4).enumerate() {
            let set = (s % (SOBOL_DIMS / 4)) as u32;
            let values = sobol_burley::sample_4d(i as u32, set, seeds[s / (SOBOL_DIMS / 4)]);
            for (x, v) in quad.iter_mut().zip(values) {
                *x = map(f64::from(v));
            }
        }
    };
    if out.len() < MIN_PARALLEL_CELLS {
        out.chunks_mut(d).enumerate().for_each(point);
    } else {
        out.par_chunks_mut(d)
            .with_min_len(MIN_PARALLEL_CELLS.div_ceil(d))
            .enumerate()
            .for_each(point);
    }
}

/// Per-thread working memory of the column generators.
struct Scratch {
    /// The `k` values of the column being generated.
    values: Vec<f64>,
    /// The strata of a Latin hypercube column.
    strata: Vec<usize>,
}

impl Scratch {
    /// Room for columns of `k` points (the generators never grow it), or `None` if it cannot be
    /// allocated.
    fn for_points(k: usize) -> Option<Self> {
        let mut scratch = Self {
            values: Vec::new(),
            strata: Vec::new(),
        };
        scratch.values.try_reserve_exact(k).ok()?;
        scratch.strata.try_reserve_exact(k).ok()?;
        Some(scratch)
    }
}

/// Designs of fewer cells than this are generated on the calling thread: handing them to the
/// thread pool would cost more than it saves.
const MIN_PARALLEL_CELLS: usize = 1 << 12;

/// Fills the row-major `(k, d)` `out` with `map` of columns computed independently (in
/// parallel) by `column(j, scratch)`, which leaves column `j` in `scratch.values`. The columns go
/// through a column-major buffer of `k d` cells; `None` if it cannot be allocated.
fn by_columns<T, M, C>(out: &mut [T], k: usize, d: usize, map: M, column: C) -> Option<()>
where
    T: Zeroable + Send + Sync,
    M: Fn(f64) -> T + Sync,
    C: Fn(usize, &mut Scratch) + Sync,
{
    let mut columns = zeroed::<T>(k * d)?;
    let fill = |scratch: &mut Option<Scratch>, (j, col): (usize, &mut [T])| {
        let scratch = scratch.as_mut()?;
        column(j, scratch);
        for (c, &v) in col.iter_mut().zip(&scratch.values) {
            *c = map(v);
        }
        Some(())
    };
    let transpose = |columns: &[T], (i, row): (usize, &mut [T])| {
        for (j, x) in row.iter_mut().enumerate() {
            *x = columns[j * k + i];
        }
    };
    if k * d < MIN_PARALLEL_CELLS {
        let mut scratch = Scratch::for_points(k);
        columns
            .chunks_mut(k)
            .enumerate()
            .try_for_each(|item| fill(&mut scratch, item))?;
        out.chunks_mut(d)
            .enumerate()
            .for_each(|item| transpose(&columns, item));
    } else {
        columns
            .par_chunks_mut(k)
            .with_min_len(MIN_PARALLEL_CELLS.div_ceil(k))
            .enumerate()
            .try_for_each_init(|| Scratch::for_points(k), fill)?;
        let columns = &columns;
        out.par_chunks_mut(d)
            .with_min_len(min_items(d))
            .enumerate()
            .for_each(|item| transpose(columns, item));
    }
    Some(())
}

/// The first `d` primes, by a sieve of Eratosthenes up to Rosser's bound
/// `p_d < d (ln d + ln ln d)` (d >= 6); `None` if the sieve cannot be allocated.
fn first_primes(d: usize) -> Option<Vec<u64>> {
    if d == 0 {
        return Some(Vec::new());
    }
    let df = d.max(6) as f64;
    let limit = ((df * (df.ln() + df.ln().ln())).ceil() as usize).saturating_add(1);
    let mut composite = zeroed::<bool>(limit.checked_add(1)?)?;
    let mut primes = Vec::new();
    primes.try_reserve_exact(d).ok()?;
    for n in 2..=limit {
        if composite[n] {
            continue;
        }
        primes.push(n as u64);
        if primes.len() == d {
            break;
        }
        for multiple in (n * n..=limit).step_by(n) {
            composite[multiple] = true;
        }
    }
    Some(primes)
}

/// Column `j` of a scrambled Halton design in base `b` (the `j`-th prime): digit position `l`
/// of the radical inverse goes through its own random permutation `pi_l` of `0..b`.
///
/// `L` positions are kept, the most with `b^L <= 2^53`, so the value `N / b^L` is computed from an
/// exact integer `N = sum_l pi_l(digit_l) b^(L - 1 - l) < b^L` and is always below 1. Only the
/// images of the digits that occur are drawn: at position `l` the indices `0..k` use the digits
/// `0..m_l`, `m_l = min(b, ceil(k / b^l))`, and stream `j` of `seed` draws `pi_l(0..m_l)`, position
/// after position, by a forward (partial) Fisher-Yates shuffle of `0..b`.
fn halton_column(k: usize, b: u64, j: usize, seed: u64, out: &mut Vec<f64>) {
    let mut positions = 1usize;
    let mut scale = b;
    while let Some(next) = scale.checked_mul(b).filter(|&s| s <= 1 << 53) {
        scale = next;
        positions += 1;
    }

    let mut rng = Rng::for_stream(seed, j as u64);
    // tables[l][digit] = pi_l(digit) b^(L - 1 - l); positions where only digit 0 occurs add up
    // to the constant `tail`.
    let mut tables: Vec<Vec<u64>> = Vec::new();
    let mut tail = 0u64;
    let mut weight = scale / b;
    let mut block = 1u64; // b^l, saturating once beyond k
    let mut perm: Vec<u64> = Vec::new();
    for _ in 0..positions {
        let used = (k as u64).div_ceil(block).min(b);
        if used == 1 {
            tail += rng.below(b) * weight;
        } else {
            perm.clear();
            perm.extend(0..b);
            let mut table = Vec::with_capacity(used as usize);
            for i in 0..used as usize {
                let pick = i + rng.below(b - i as u64) as usize;
                perm.swap(i, pick);
                table.push(perm[i] * weight);
            }
            tables.push(table);
        }
        weight /= b;
        block = block.saturating_mul(b);
    }

    let denominator = scale as f64;
    out.clear();
    out.extend((0..k as u64).map(|index| {
        let mut n = tail;
        let mut rest = index;
        for table in &tables {
            n += table[(rest % b) as usize];
            rest /= b;
        }
        n as f64 / denominator
    }));
}

/// Column `j` of a Latin hypercube: stream `j` of `seed` shuffles the strata `0..k`, then draws
/// one uniform jitter per point; point `i` is `(stratum_i + u_i) / k`, kept inside its stratum
/// `[s / k, (s + 1) / k)` (both bounds computed in f64) despite rounding.
fn latin_hypercube_column(k: usize, j: usize, seed: u64, scratch: &mut Scratch) {
    let mut rng = Rng::for_stream(seed, j as u64);
    let strata = &mut scratch.strata;
    strata.clear();
    strata.extend(0..k);
    rng.shuffle(strata);
    let kf = k as f64;
    scratch.values.clear();
    scratch.values.extend(strata.iter().map(|&s| {
        let x = (s as f64 + rng.next_f64()) / kf;
        let hi = (s + 1) as f64 / kf;
        if x < hi {
            x
        } else {
            // The largest double below `hi` (hi > 0), still >= s / k since k < 2^52.
            f64::from_bits(hi.to_bits() - 1)
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strata_counts(column: impl Iterator<Item = f64>, bins: usize) -> Vec<usize> {
        let mut counts = vec![0usize; bins];
        for x in column {
            // Exact bin by comparison against the same f64 bounds the generators use.
            let mut b = ((x * bins as f64) as usize).min(bins - 1);
            while b > 0 && x < b as f64 / bins as f64 {
                b -= 1;
            }
            while b + 1 < bins && x >= (b + 1) as f64 / bins as f64 {
                b += 1;
            }
            counts[b] += 1;
        }
        counts
    }

    #[test]
    fn sampler_names() {
        assert_eq!("sobol".parse::<Sampler>(), Ok(Sampler::Sobol));
        assert_eq!("halton".parse::<Sampler>(), Ok(Sampler::Halton));
        assert_eq!(
            "latin_hypercube".parse::<Sampler>(),
            Ok(Sampler::LatinHypercube)
        );
        assert!(matches!(
            "lhs".parse::<Sampler>(),
            Err(CoreError::UnknownStrategy { .. })
        ));
    }

    #[test]
    fn errors() {
        for s in [Sampler::Sobol, Sampler::Halton, Sampler::LatinHypercube] {
            assert!(matches!(
                points(0, 3, s, 1),
                Err(CoreError::InvalidParameter(_))
            ));
            assert!(matches!(
                points(3, 0, s, 1),
                Err(CoreError::InvalidParameter(_))
            ));
            // The Sobol sampler refuses more than 65536 points before sizing anything.
            let err = points(usize::MAX, 2, s, 1).unwrap_err();
            if s == Sampler::Sobol {
                assert!(matches!(err, CoreError::InvalidParameter(_)), "{err}");
            } else {
                assert!(matches!(err, CoreError::TooLarge(_)), "{err}");
            }
        }
        let err = points(MAX_SOBOL_POINTS + 1, 1, Sampler::Sobol, 0).unwrap_err();
        assert!(err.to_string().contains("65537"), "{err}");
        assert!(points(MAX_SOBOL_POINTS, 1, Sampler::Sobol, 0).is_ok());
    }

    #[test]
    fn primes() {
        assert_eq!(
            first_primes(10).unwrap(),
            vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
        );
        assert_eq!(first_primes(1024).unwrap()[1023], 8161);
        assert_eq!(first_primes(1).unwrap(), vec![2]);
        assert!(first_primes(0).unwrap().is_empty());
    }

    #[test]
    fn sobol_matches_one_dimension_calls() {
        let seed = 99;
        let d = 600;
        let x = points(8, d, Sampler::Sobol, seed).unwrap();
        for i in 0..8 {
            for j in 0..d {
                let expected = sobol_burley::sample(
                    i as u32,
                    (j % SOBOL_DIMS) as u32,
                    sobol_seed(seed, j / SOBOL_DIMS),
                );
                assert_eq!(x[[i, j]].to_bits(), f64::from(expected).to_bits());
            }
        }
        // Blocks of 256 dimensions are scrambled differently.
        assert_ne!(x.column(0), x.column(256));
    }

    #[test]
    fn below_half_thresholds_the_points() {
        // Sizes on both sides of MIN_PARALLEL_CELLS: generated on one thread, then by the pool.
        for (k, d) in [(3, 5), (7, 1024), (300, 40)] {
            for s in [Sampler::Sobol, Sampler::Halton, Sampler::LatinHypercube] {
                let bits = below_half(k, d, s, 5).unwrap();
                let expected = points(k, d, s, 5).unwrap().mapv(|v| u8::from(v < 0.5));
                assert_eq!(
                    bits,
                    expected.into_raw_vec_and_offset().0,
                    "{s:?} ({k}, {d})"
                );
            }
        }
    }

    #[test]
    fn halton_unscrambled_structure() {
        // With k = b^m, every digit position that varies is a bijection, so base 2 gives one
        // point per 1/8 and base 3 one point per 1/9.
        let x = points(8, 1, Sampler::Halton, 5).unwrap();
        assert_eq!(strata_counts(x.column(0).iter().copied(), 8), vec![1; 8]);
        let x = points(9, 2, Sampler::Halton, 5).unwrap();
        assert_eq!(strata_counts(x.column(1).iter().copied(), 9), vec![1; 9]);
    }

    #[test]
    fn latin_hypercube_small() {
        let x = points(4, 3, Sampler::LatinHypercube, 11).unwrap();
        for col in x.columns() {
            assert_eq!(strata_counts(col.iter().copied(), 4), vec![1; 4]);
        }
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
        fn in_unit_cube_and_reproducible(
            k in 1usize..200, d in 1usize..40, s in sampler(), seed in any::<u64>()
        ) {
            let x = points(k, d, s, seed).unwrap();
            prop_assert_eq!(x.dim(), (k, d));
            prop_assert!(x.iter().all(|v| (0.0..1.0).contains(v)));
            prop_assert_eq!(&x, &points(k, d, s, seed).unwrap());
            if k >= 4 {
                prop_assert_ne!(&x, &points(k, d, s, seed ^ 1).unwrap());
            }
        }

        #[test]
        fn latin_hypercube_one_point_per_stratum(
            k in 1usize..300, d in 1usize..8, seed in any::<u64>()
        ) {
            let x = points(k, d, Sampler::LatinHypercube, seed).unwrap();
            for col in x.columns() {
                prop_assert_eq!(strata_counts(col.iter().copied(), k), vec![1; k]);
            }
        }

        #[test]
        fn sobol_power_of_two_is_stratified(
            m in 0u32..11, d in 1usize..300, seed in any::<u64>()
        ) {
            let k = 1usize << m;
            let x = points(k, d, Sampler::Sobol, seed).unwrap();
            for col in x.columns() {
                prop_assert_eq!(strata_counts(col.iter().copied(), k), vec![1; k]);
            }
        }

        #[test]
        fn halton_prime_powers_are_stratified(
            j in 0usize..6, m in 1u32..4, extra in 0usize..3, seed in any::<u64>()
        ) {
            let b = first_primes(j + 1).unwrap()[j] as usize;
            let k = b.pow(m);
            let x = points(k, j + 1 + extra, Sampler::Halton, seed).unwrap();
            prop_assert_eq!(strata_counts(x.column(j).iter().copied(), k), vec![1; k]);
        }
    }
}

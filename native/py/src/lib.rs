//! `explainserve._native`: thin pyo3 bindings over `explainserve-core`.
//!
//! Arrays come in as numpy arrays of an exact dtype and are read in place (no copy); results are
//! handed to numpy without a copy. Every call releases the GIL around the core work. Core errors
//! become the exception classes below (all subclasses of `NativeError`, itself a `ValueError`).

use explainserve_core as es;
use explainserve_core::aggregate::Strategy;
use explainserve_core::estimators::Distance;
use explainserve_core::grouping::Granularity;
use explainserve_core::qmc::Sampler;
use explainserve_core::CoreError;
use numpy::ndarray::Array2;
use numpy::{
    Element, IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{create_exception, IntoPyObjectExt};

create_exception!(
    _native,
    NativeError,
    PyValueError,
    "Base class of every error raised by the native core."
);
create_exception!(
    _native,
    ShapeError,
    NativeError,
    "Arrays whose shapes or lengths do not fit together."
);
create_exception!(
    _native,
    EmptyUnitsError,
    NativeError,
    "A call that needs at least one unit got none."
);
create_exception!(
    _native,
    IdOutOfRangeError,
    NativeError,
    "An id (unit, token, offset) outside its valid range."
);
create_exception!(
    _native,
    UnknownStrategyError,
    NativeError,
    "An unknown strategy, sampler, distance or granularity name."
);
create_exception!(
    _native,
    InvalidParameterError,
    NativeError,
    "A numeric parameter outside its domain."
);
create_exception!(
    _native,
    TooLargeError,
    NativeError,
    "An output too large to allocate (more memory than the process can get)."
);

/// An error on its way out of a binding (polars-python's `PyPolarsErr` pattern): `?` turns a
/// core error or a Python one into it, and pyo3 turns it into the exception of the matching
/// class, so no binding converts errors by hand.
enum NativeErr {
    Core(CoreError),
    Python(PyErr),
}

impl From<CoreError> for NativeErr {
    fn from(err: CoreError) -> Self {
        Self::Core(err)
    }
}

impl From<PyErr> for NativeErr {
    fn from(err: PyErr) -> Self {
        Self::Python(err)
    }
}

impl From<NativeErr> for PyErr {
    fn from(err: NativeErr) -> Self {
        let err = match err {
            NativeErr::Python(err) => return err,
            NativeErr::Core(err) => err,
        };
        let msg = err.to_string();
        match err {
            CoreError::Shape(_) => ShapeError::new_err(msg),
            CoreError::EmptyUnits => EmptyUnitsError::new_err(msg),
            CoreError::IdOutOfRange(_) => IdOutOfRangeError::new_err(msg),
            CoreError::UnknownStrategy { .. } => UnknownStrategyError::new_err(msg),
            CoreError::InvalidParameter(_) => InvalidParameterError::new_err(msg),
            CoreError::TooLarge(_) => TooLargeError::new_err(msg),
        }
    }
}

/// What every binding that can fail returns.
type NativeResult<T> = Result<T, NativeErr>;

/// Describes what `obj` is, for type errors ("2-D float64 array", "list", ...).
fn describe(obj: &Bound<'_, PyAny>) -> String {
    if let Ok(arr) = obj.cast::<numpy::PyUntypedArray>() {
        let dtype = arr
            .dtype()
            .str()
            .map_or_else(|_| "?".to_owned(), |s| s.to_string());
        return format!("{}-D {dtype} array", arr.ndim());
    }
    obj.get_type()
        .name()
        .map_or_else(|_| "object".to_owned(), |n| n.to_string())
}

/// `obj` as a read-only 2-D array of `T`, or a TypeError naming the argument and what it got.
fn arr2<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: &str,
) -> PyResult<PyReadonlyArray2<'py, T>> {
    obj.extract::<PyReadonlyArray2<'py, T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "argument '{name}' must be a 2-D numpy array of {dtype}, got {}",
            describe(obj)
        ))
    })
}

/// `obj` as a read-only 1-D array of `T`, or a TypeError naming the argument and what it got.
fn arr1<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    obj.extract::<PyReadonlyArray1<'py, T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "argument '{name}' must be a 1-D numpy array of {dtype}, got {}",
            describe(obj)
        ))
    })
}

/// Occlusion masks `(n_units + 1, n_units)` uint8: the zero row, then the identity.
#[pyfunction]
fn occlusion_masks(py: Python<'_>, n_units: usize) -> NativeResult<Bound<'_, PyArray2<u8>>> {
    let out = py.detach(|| es::masks::occlusion_masks(n_units))?;
    Ok(out.into_pyarray(py))
}

/// LIME masks `(n_rows, n_units)` uint8: each unit replaced with probability `prob`.
#[pyfunction]
fn bernoulli_masks(
    py: Python<'_>,
    n_rows: usize,
    n_units: usize,
    prob: f64,
    seed: u64,
) -> NativeResult<Bound<'_, PyArray2<u8>>> {
    let out = py.detach(|| es::masks::bernoulli_masks(n_rows, n_units, prob, seed))?;
    Ok(out.into_pyarray(py))
}

/// KernelSHAP design: `(masks (p, n_units) uint8, weights (p,) float64)`.
#[pyfunction]
fn kernel_shap_masks(
    py: Python<'_>,
    n_rows: usize,
    n_units: usize,
    seed: u64,
) -> NativeResult<Bound<'_, PyTuple>> {
    let design = py.detach(|| es::masks::kernel_shap_masks(n_rows, n_units, seed))?;
    Ok(PyTuple::new(
        py,
        [
            design.masks.into_pyarray(py).into_any(),
            design.weights.into_pyarray(py).into_any(),
        ],
    )?)
}

/// Sobol masks `((n_units + 2) * n_points, n_units)` uint8: rows `[A; B; C_1 .. C_g]`.
#[pyfunction]
fn sobol_masks<'py>(
    py: Python<'py>,
    n_units: usize,
    n_points: usize,
    sampler: &str,
    seed: u64,
) -> NativeResult<Bound<'py, PyArray2<u8>>> {
    let sampler: Sampler = sampler.parse()?;
    let out = py.detach(|| es::masks::sobol_masks(n_units, n_points, sampler, seed))?;
    Ok(out.into_pyarray(py))
}

/// `(n_points, dim)` float64 points in [0, 1) of the given design.
#[pyfunction]
fn qmc_points<'py>(
    py: Python<'py>,
    n_points: usize,
    dim: usize,
    sampler: &str,
    seed: u64,
) -> NativeResult<Bound<'py, PyArray2<f64>>> {
    let sampler: Sampler = sampler.parse()?;
    let out = py.detach(|| es::qmc::points(n_points, dim, sampler, seed))?;
    Ok(out.into_pyarray(py))
}

/// Groups one input's tokens into units: `(token_to_unit (n,) int64, spans (u, 2) int64)`.
#[pyfunction]
#[pyo3(signature = (granularity, special_mask, offsets, word_ids, text))]
fn group_units<'py>(
    py: Python<'py>,
    granularity: &str,
    special_mask: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    word_ids: Option<&Bound<'py, PyAny>>,
    text: &str,
) -> NativeResult<Bound<'py, PyTuple>> {
    let granularity: Granularity = granularity.parse()?;
    let special = arr1::<bool>(special_mask, "special_mask", "bool")?;
    let offsets = arr2::<i64>(offsets, "offsets", "int64")?;
    let word_ids = word_ids
        .map(|w| arr1::<i64>(w, "word_ids", "int64"))
        .transpose()?;
    let special = special.as_array();
    let offsets = offsets.as_array();
    let word_ids = word_ids.as_ref().map(PyReadonlyArray1::as_array);
    let grouping = py.detach(|| {
        if offsets.ncols() != 2 {
            return Err(CoreError::Shape(format!(
                "offsets must have shape (n, 2), got ({}, {})",
                offsets.nrows(),
                offsets.ncols()
            )));
        }
        let mut spans = Vec::with_capacity(offsets.nrows());
        for (i, row) in offsets.rows().into_iter().enumerate() {
            let (s, e) = (row[0], row[1]);
            if s < 0 || e < 0 {
                return Err(CoreError::IdOutOfRange(format!(
                    "offset of token {i} is negative: ({s}, {e})"
                )));
            }
            spans.push((s as usize, e as usize));
        }
        let special: Vec<bool> = special.iter().copied().collect();
        let word_ids: Option<Vec<i64>> = word_ids.map(|w| w.iter().copied().collect());
        es::grouping::group(granularity, &special, &spans, word_ids.as_deref(), text)
    })?;
    let n_units = grouping.spans.len();
    let flat: Vec<i64> = grouping
        .spans
        .iter()
        .flat_map(|&(s, e)| [s as i64, e as i64])
        .collect();
    let spans = Array2::from_shape_vec((n_units, 2), flat).expect("two values per span");
    Ok(PyTuple::new(
        py,
        [
            PyArray1::from_vec(py, grouping.token_to_unit).into_any(),
            spans.into_pyarray(py).into_any(),
        ],
    )?)
}

/// Sentence spans of `text`: a list of `(start, end)` character indices.
#[pyfunction]
fn sentence_spans(py: Python<'_>, text: &str) -> Vec<(usize, usize)> {
    py.detach(|| es::grouping::sentence_spans(text))
}

/// Perturbed id rows `(p, n)` int64 from unit masks, the token -> unit map and the input ids.
#[pyfunction]
fn expand_ids<'py>(
    py: Python<'py>,
    masks: &Bound<'py, PyAny>,
    token_to_unit: &Bound<'py, PyAny>,
    input_ids: &Bound<'py, PyAny>,
    replacement_id: i64,
) -> NativeResult<Bound<'py, PyArray2<i64>>> {
    let masks = arr2::<u8>(masks, "masks", "uint8")?;
    let t2u = arr1::<i64>(token_to_unit, "token_to_unit", "int64")?;
    let ids = arr1::<i64>(input_ids, "input_ids", "int64")?;
    let (masks, t2u, ids) = (masks.as_array(), t2u.as_array(), ids.as_array());
    let out = py.detach(|| es::expand::expand_ids(masks, t2u, ids, replacement_id))?;
    Ok(out.into_pyarray(py))
}

/// Unit scores `(r, n_units)` float32 from token scores `(r, n)` float32.
#[pyfunction]
fn aggregate<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    token_to_unit: &Bound<'py, PyAny>,
    n_units: usize,
    strategy: &str,
) -> NativeResult<Bound<'py, PyArray2<f32>>> {
    let strategy: Strategy = strategy.parse()?;
    let scores = arr2::<f32>(scores, "scores", "float32")?;
    let t2u = arr1::<i64>(token_to_unit, "token_to_unit", "int64")?;
    let (scores, t2u) = (scores.as_array(), t2u.as_array());
    let out = py.detach(|| es::aggregate::aggregate(scores, t2u, n_units, strategy))?;
    Ok(out.into_pyarray(py))
}

/// Occlusion deltas `(t, g)` from outputs `(g + 1, t)` laid out as `occlusion_masks`.
#[pyfunction]
fn occlusion_scores<'py>(
    py: Python<'py>,
    outputs: &Bound<'py, PyAny>,
) -> NativeResult<Bound<'py, PyArray2<f64>>> {
    let outputs = arr2::<f64>(outputs, "outputs", "float64")?;
    let outputs = outputs.as_array();
    let out = py.detach(|| es::estimators::occlusion_scores(outputs))?;
    Ok(out.into_pyarray(py))
}

/// LIME coefficients `(t, g)`: weighted ridge of outputs `(p, t)` on the kept vectors.
#[pyfunction]
#[pyo3(signature = (masks, outputs, distance = "cosine", kernel_width = None, alpha = 1.0))]
fn lime_scores<'py>(
    py: Python<'py>,
    masks: &Bound<'py, PyAny>,
    outputs: &Bound<'py, PyAny>,
    distance: &str,
    kernel_width: Option<f64>,
    alpha: f64,
) -> NativeResult<Bound<'py, PyArray2<f64>>> {
    let distance: Distance = distance.parse()?;
    let masks = arr2::<u8>(masks, "masks", "uint8")?;
    let outputs = arr2::<f64>(outputs, "outputs", "float64")?;
    let (masks, outputs) = (masks.as_array(), outputs.as_array());
    let out =
        py.detach(|| es::estimators::lime_scores(masks, outputs, distance, kernel_width, alpha))?;
    Ok(out.into_pyarray(py))
}

/// KernelSHAP values `(t, g)` under the efficiency constraint.
#[pyfunction]
fn kernel_shap_scores<'py>(
    py: Python<'py>,
    masks: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    outputs: &Bound<'py, PyAny>,
) -> NativeResult<Bound<'py, PyArray2<f64>>> {
    let masks = arr2::<u8>(masks, "masks", "uint8")?;
    let weights = arr1::<f64>(weights, "weights", "float64")?;
    let outputs = arr2::<f64>(outputs, "outputs", "float64")?;
    let (masks, weights, outputs) = (masks.as_array(), weights.as_array(), outputs.as_array());
    let out = py.detach(|| es::estimators::kernel_shap_scores(masks, weights, outputs))?;
    Ok(out.into_pyarray(py))
}

/// Sobol `(first, total)` indices, each `(t, g)`, from outputs laid out as `sobol_masks`.
#[pyfunction]
fn sobol_indices<'py>(
    py: Python<'py>,
    outputs: &Bound<'py, PyAny>,
    n_units: usize,
    n_points: usize,
) -> NativeResult<Bound<'py, PyTuple>> {
    let outputs = arr2::<f64>(outputs, "outputs", "float64")?;
    let outputs = outputs.as_array();
    let idx = py.detach(|| es::estimators::sobol_indices(outputs, n_units, n_points))?;
    Ok(PyTuple::new(
        py,
        [
            idx.first.into_pyarray(py).into_any(),
            idx.total.into_pyarray(py).into_any(),
        ],
    )?)
}

/// The module: functions, exception classes and the core version.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for (name, exc) in [
        ("NativeError", py.get_type::<NativeError>()),
        ("ShapeError", py.get_type::<ShapeError>()),
        ("EmptyUnitsError", py.get_type::<EmptyUnitsError>()),
        ("IdOutOfRangeError", py.get_type::<IdOutOfRangeError>()),
        (
            "UnknownStrategyError",
            py.get_type::<UnknownStrategyError>(),
        ),
        (
            "InvalidParameterError",
            py.get_type::<InvalidParameterError>(),
        ),
        ("TooLargeError", py.get_type::<TooLargeError>()),
    ] {
        m.add(name, exc.into_bound_py_any(py)?)?;
    }
    m.add_function(wrap_pyfunction!(occlusion_masks, m)?)?;
    m.add_function(wrap_pyfunction!(bernoulli_masks, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_shap_masks, m)?)?;
    m.add_function(wrap_pyfunction!(sobol_masks, m)?)?;
    m.add_function(wrap_pyfunction!(qmc_points, m)?)?;
    m.add_function(wrap_pyfunction!(group_units, m)?)?;
    m.add_function(wrap_pyfunction!(sentence_spans, m)?)?;
    m.add_function(wrap_pyfunction!(expand_ids, m)?)?;
    m.add_function(wrap_pyfunction!(aggregate, m)?)?;
    m.add_function(wrap_pyfunction!(occlusion_scores, m)?)?;
    m.add_function(wrap_pyfunction!(lime_scores, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_shap_scores, m)?)?;
    m.add_function(wrap_pyfunction!(sobol_indices, m)?)?;
    Ok(())
}
